//! The library's error type: every variant names the file (or config key) it is about, so the
//! binary can print one line that tells a user what to fix.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },

    /// Not HDF5, truncated, unreadable.
    #[error("{}: {msg}", path.display())]
    Hdf5 { path: PathBuf, msg: String },

    /// A dataset with the wrong name, shape, dtype or values (NaN, negative energies, …).
    #[error("{}: dataset '{dataset}': {msg}", path.display())]
    Data { path: PathBuf, dataset: String, msg: String },

    /// A file whose overall layout is not one zdcflow knows.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },

    /// A configuration value out of range, or an unknown key.
    #[error("config key '{key}': {msg}")]
    Config { key: String, msg: String },

    /// A checkpoint or model directory that does not fit the model asked for.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },

    /// The loss stopped being finite.
    #[error("non-finite loss ({value}) at step {step} (epoch {epoch}); the last good checkpoint is kept")]
    NonFinite { step: u64, epoch: usize, value: f64 },

    #[error("interrupted")]
    Interrupted,

    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), err: source }
    }

    pub fn data(path: &Path, dataset: &str, msg: impl Into<String>) -> Self {
        Self::Data { path: path.to_path_buf(), dataset: dataset.to_string(), msg: msg.into() }
    }

    pub fn format(path: &Path, msg: impl Into<String>) -> Self {
        Self::Format { path: path.to_path_buf(), msg: msg.into() }
    }

    pub fn config(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::Config { key: key.into(), msg: msg.into() }
    }

    pub fn checkpoint(path: &Path, msg: impl Into<String>) -> Self {
        Self::Checkpoint { path: path.to_path_buf(), msg: msg.into() }
    }
}

/// The flow library's errors, as the same one-line messages.
impl From<crate::flow::error::FlowError> for Error {
    fn from(e: crate::flow::error::FlowError) -> Self {
        use crate::flow::error::FlowError as F;
        match e {
            F::Io { path, err } => Self::Io { path, err },
            F::Checkpoint { path, msg } => Self::Checkpoint { path, msg },
            F::Invalid(m) => Self::Invalid(m),
            F::Candle(e) => Self::Candle(e),
        }
    }
}
