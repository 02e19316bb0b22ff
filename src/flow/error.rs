//! The flow library's own error type: a file it could not read or write, a weights file that
//! does not fit the model, or a tensor error. The application maps it onto its own errors.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },

    /// A weights or spec file that does not fit the model asked for.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = FlowError> = std::result::Result<T, E>;

impl FlowError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), err: source }
    }

    pub fn checkpoint(path: &Path, msg: impl Into<String>) -> Self {
        Self::Checkpoint { path: path.to_path_buf(), msg: msg.into() }
    }
}
