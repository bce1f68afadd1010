//! Errors of the diagnosis engine. Every bad input (file, tensor shape, image) ends here with a
//! sentence a user can act on; nothing in `model` panics on data.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// Not a safetensors file, a truncated one, or one with a malformed header.
    #[error("{path}: not a valid safetensors file ({reason})")]
    NotSafetensors { path: PathBuf, reason: String },
    /// A tensor is missing or has the wrong shape or type for this model.
    #[error("{context}: {reason}")]
    Weights { context: String, reason: String },
    /// An adapter file is well-formed safetensors but not a usable adapter.
    #[error("adapter {path}: {reason}")]
    Adapter { path: PathBuf, reason: String },
    /// The adapter was trained on a different backbone than the one loaded.
    #[error(
        "adapter '{task}' was trained on backbone sha256 {expected}, but the loaded backbone is {found}; \
         refusing it (its LoRA deltas and head only make sense on the weights they were trained with)"
    )]
    BackboneMismatch { task: String, expected: String, found: String },
    #[error("no adapter for task '{task}' (registered: {available})")]
    UnknownTask { task: String, available: String },
    #[error("task '{0}' is registered twice")]
    DuplicateTask(String),
    #[error("no diagnosis adapters are registered{hint}")]
    NoAdapters { hint: String },
    #[error("image unsuitable for diagnosis: {0}")]
    Image(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Errors of the rest of the library (image decoding, atomic writes).
    #[error(transparent)]
    Melo(#[from] crate::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io(crate::error::IoError { path: path.into(), source })
    }

    pub(crate) fn weights(context: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Weights { context: context.into(), reason: reason.into() }
    }
}

/// The CLI reports every failure through the library error type.
impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Melo(inner) => inner,
            Error::Io(e) => crate::Error::Io(e),
            other => crate::Error::Invalid(other.to_string()),
        }
    }
}
