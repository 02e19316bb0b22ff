//! Data: detector geometry, file formats, preprocessing, splits and synthetic generators.

pub mod calo;
pub mod calo_files;
pub mod channels;
pub mod geometry;
pub mod h5;
pub mod open;
pub mod preprocess;
pub mod split;
pub mod synth;
pub mod zdc;
