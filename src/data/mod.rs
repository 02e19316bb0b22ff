//! Data: detector geometry, file formats, preprocessing, splits and synthetic generators.

pub mod channels;
pub mod geometry;
pub mod synth;
