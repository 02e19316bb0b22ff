//! Looking at a file, a build and a machine: file summaries (`inspect`), the build's checks on a
//! device (`selftest`) and timings of the papers' stacks (`bench`). The subcommands that print
//! them are in [`crate::commands`].

pub(crate) mod inspect;
pub mod perf;
pub(crate) mod selftest;
