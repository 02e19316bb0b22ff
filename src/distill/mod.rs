//! Distillation of IAF students from MAF teachers (PDD), with the ZDC channel loss and
//! inverse-diversity weights.

pub mod diversity;
pub mod objective;

pub use objective::{ChannelLoss, DistillObjective, Distillation, LossParts, Terms};
