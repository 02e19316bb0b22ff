//! Training: schedules, batches, checkpoints and the loop shared by every trainer.

pub mod batches;
pub mod checkpoint;
pub mod file_schedule;
pub(crate) mod schedule;
pub(crate) mod trainer;

pub use batches::{Batch, RowSource, Rows};
pub use trainer::{fit, Objective, Run, Summary, METRICS};
