//! Synthetic data that behaves like the real thing, for the demo, the tests and the benchmarks.

pub mod calo;
mod draws;
mod special;
pub(crate) mod zdc;
