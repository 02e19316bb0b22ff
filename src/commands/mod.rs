//! Subcommands as short library functions that wire the pieces together (the binary only parses
//! their arguments, see [`crate::cli`]).

pub mod export_onnx;
pub mod flow;
pub mod flow_dir;
pub mod import_detector;
pub mod import_nflows;
pub mod log_prob;
