//! Errors of the diffusion models. Every bad input (missing or inconsistent config, weights of
//! the wrong shape, an image size the model does not take) ends here as a sentence a user can
//! act on; nothing in `diffusion` panics on data.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// A `config.json` / `scheduler_config.json` that is not JSON or not the expected object.
    #[error("{path}: not a valid {what} ({reason})")]
    Json { path: PathBuf, what: &'static str, reason: String },
    /// A tokenizer file (`vocab.json`, `merges.txt`, the token configs) that cannot be used.
    #[error("{path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// A config whose values contradict each other or the model family.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A config option that diffusers has but this port does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A tensor is missing from the weights file or has the wrong shape.
    #[error("{context}: {reason}")]
    Weights { context: String, reason: String },
    /// An input (image batch, timestep) the model cannot take.
    #[error("{0}")]
    Input(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A JSON file parsed into `T`: the read error names the file, the parse error names it and
/// `what` it was meant to be.
pub(crate) fn read_json_file<T: serde::de::DeserializeOwned>(path: &std::path::Path, what: &'static str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), what, reason: e.to_string() })
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io(crate::error::IoError { path: path.into(), source })
    }
}

/// The CLI reports every failure through the library error type.
impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => crate::Error::Io(e),
            other => crate::Error::Invalid(other.to_string()),
        }
    }
}
