//! Evaluation: the papers' metrics on generated versus reference showers.

pub mod calo_features;
pub mod stats;
pub mod zdc_metrics;
