//! Small helpers shared across subcommands.

pub mod atomic;
