//! zdcflow: fast calorimeter simulation with normalizing flows.
//!
//! ```text
//! file ─▶ data (HDF5 / npz readers, preprocessing) ─▶ flow (MADE + RQS stacks)
//!      ─▶ train (NLL) / distill (PDD) / sample ─▶ postprocessing ─▶ file / eval metrics
//! ```
//!
//! The binary only parses arguments ([`cli`]); every subcommand is a function of this library.

pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod demo;
pub mod device;
pub mod distill;
pub mod error;
pub mod eval;
pub mod export;
pub mod flow;
pub mod generate;
pub mod inspect;
pub mod models;
pub(crate) mod nn;
pub mod sample;
pub mod selftest;
pub mod train;
pub(crate) mod util;

pub use error::{Error, Result};
