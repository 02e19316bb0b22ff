//! Training: Adam, schedules, batches, checkpoints and the loop shared by every trainer.

pub mod adam;
pub mod batches;
pub mod checkpoint;
pub mod file_schedule;
pub mod schedule;
pub mod trainer;

pub use batches::{Batch, RowSource, Rows};
pub use trainer::{fit, Objective, Run, Summary};
