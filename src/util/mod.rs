//! Small helpers shared across subcommands.

pub mod atomic;
pub mod interrupt;
pub mod limits;
pub mod output_guard;
pub mod progress;
pub mod rng;
pub mod temp_files;
