//! PACS networking (DICOM upper layer, DIMSE): C-ECHO, C-FIND, C-STORE, C-GET and C-MOVE as
//! an SCU, and a C-STORE SCP receiving into the local study store (`crate::store`).
//!
//! Built on dicom-rs's `dicom-ul` for associations and PDUs; the message layer (command sets,
//! P-DATA fragmentation) is [`dimse`]. Free of any GUI: the CLI (`melo net`) and the window
//! drive the same functions. Every call blocks; the window runs them on worker threads.
//! [`dicomweb`] is the HTTP counterpart (QIDO-RS, WADO-RS, STOW-RS).

pub mod bench;
pub mod cli;
pub mod dicomweb;
pub mod dimse;
pub mod error;
pub mod peer;
pub mod query;
pub mod scp;
pub mod scu;
pub mod sop;

pub use error::{Error, Result};
pub use peer::Peer;
pub use query::{Level, Model, QueryKeys};
pub use scp::{ScpConfig, ScpEvent, ScpHandle, StoreScp};
pub use scu::{echo, find, get, move_to, store, RetrieveProgress, RetrieveReport, ScuOptions, SentFile};
