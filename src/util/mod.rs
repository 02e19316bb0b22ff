//! Small helpers shared across subcommands.

pub mod atomic;
pub mod interrupt;
pub mod progress;
pub mod rng;
