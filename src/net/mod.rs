//! PACS networking (DICOM upper layer, DIMSE): C-ECHO, C-FIND, C-STORE, C-GET and C-MOVE as
//! an SCU; an SCP receiving into the local study store (`crate::store`) and answering C-FIND
//! and C-MOVE from it.
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
pub mod qr_scp;
pub mod query;
pub mod scp;
pub mod scu;
pub mod sop;

pub use error::{Error, Result};
pub use peer::Peer;
pub use query::{Level, Model, QueryKeys};
pub use scp::{ScpConfig, ScpEvent, ScpHandle, StoreScp, DEFAULT_MAX_ASSOCIATIONS};
pub use scu::{echo, find, get, move_to, store, RetrieveProgress, RetrieveReport, ScuOptions, SentFile};
