//! Small helpers shared across subcommands.

pub mod atomic;
pub mod interrupt;
pub mod limits;
pub mod progress;
pub mod rng;
