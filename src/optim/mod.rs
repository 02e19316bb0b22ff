//! Optimisers shared by training ([`crate::train`]) and the evaluation classifier.

pub mod adam;

pub use adam::Adam;
