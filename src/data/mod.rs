//! Data: detector geometry, file formats, preprocessing, splits and synthetic generators.

pub mod calo;
pub mod calo_files;
pub mod channels;
pub(crate) mod check;
pub mod geometry;
pub(crate) mod h5;
pub(crate) mod open;
pub(crate) mod preprocess;
pub(crate) mod pth;
pub(crate) mod split;
pub mod synth;
pub mod zdc;
