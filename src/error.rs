//! One error type for the library, so the CLI and the GUI can show a one-line reason.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("not a DICOM file: {0}")]
    NotDicom(String),
    #[error("cannot read DICOM data: {0}")]
    Parse(String),
    #[error("no pixel data in this DICOM object")]
    NoPixelData,
    #[error("missing or invalid attribute {0}")]
    MissingAttribute(&'static str),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("cannot decode pixel data: {0}")]
    Decode(String),
    #[error("image too large: {0}")]
    TooLarge(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A file operation that failed, with the path it was on. Every module's error type carries
/// this one struct, so an I/O failure keeps its path and source through every conversion.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct IoError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io(IoError { path: path.into(), source })
    }
}
