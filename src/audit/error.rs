//! Errors of the privacy audit: a clear sentence for every bad input (model folder, sample
//! sets, parameters); nothing in `audit` panics on data.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// The target model could not be loaded or run.
    #[error("target model: {0}")]
    Model(#[from] crate::diffusion::Error),
    /// A member / non-member set that cannot be read or does not fit the model.
    #[error("{0}")]
    Data(String),
    /// Audit parameters that contradict each other or the model.
    #[error("invalid audit parameters: {0}")]
    Params(String),
    #[error("attack classifier: {0}")]
    Classifier(String),
    #[error("audit cancelled")]
    Cancelled,
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Errors of the rest of the library (atomic writes).
    #[error(transparent)]
    Melo(#[from] crate::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io(crate::error::IoError { path: path.into(), source })
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
