//! zdcflow: fast calorimeter simulation with normalizing flows.
//!
//! ```text
//! file ─▶ data (HDF5 / npz readers, preprocessing) ─▶ flow (MADE + RQS stacks)
//!      ─▶ train (NLL) / distill (PDD) / sample ─▶ postprocessing ─▶ file / eval metrics
//! ```
//!
//! The binary only parses arguments ([`cli`]); every subcommand is a function of this library
//! ([`commands`]).

pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub(crate) mod detector;
pub mod device;
pub mod diagnostics;
pub mod distill;
pub mod error;
pub(crate) mod eval;
pub mod export;
pub mod flow;
pub mod models;
pub(crate) mod nn;
pub(crate) mod optim;
pub(crate) mod sample;
pub mod train;
pub(crate) mod util;

pub use error::{Error, Result};
