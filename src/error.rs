//! One error type for the library, so the CLI and the GUI can show a one-line reason.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
