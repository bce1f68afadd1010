//! Errors of the PACS networking layer: every failure a user can meet (peer down, association
//! refused, wrong AE title, timeout, abort, failure status) is one sentence naming the peer.

use super::dimse::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `AET@HOST:PORT` or an option value that cannot be used.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot connect to {peer}: {reason}")]
    Connect { peer: String, reason: String },
    #[error("{peer} refused the association: {reason}")]
    Rejected { peer: String, reason: String },
    #[error("{peer} accepted the association but none of the proposed services ({what})")]
    NoPresentationContext { peer: String, what: String },
    #[error("{peer} aborted the association{during}")]
    Aborted { peer: String, during: String },
    #[error("{peer} did not answer within {seconds} s{during}")]
    Timeout { peer: String, seconds: u64, during: String },
    #[error("connection to {peer} lost{during}: {reason}")]
    Connection { peer: String, during: String, reason: String },
    /// The peer broke the DIMSE protocol (malformed command, data before a command, …).
    #[error("{peer}: protocol error: {reason}")]
    Protocol { peer: String, reason: String },
    /// A DIMSE operation completed with a failure status.
    #[error("{peer}: {operation} failed: {status}{comment}")]
    Status { peer: String, operation: &'static str, status: Status, comment: String },
    #[error("cannot send {file}: {reason}")]
    File { file: String, reason: String },
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("operation cancelled")]
    Cancelled,
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The CLI reports every failure through the library error type.
impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(crate::store::Error::Io(io)) => crate::Error::Io(io),
            other => crate::Error::Invalid(other.to_string()),
        }
    }
}
