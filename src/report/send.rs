//! Sending result objects (SR, SC) to a PACS node: C-STORE to a DIMSE node, STOW-RS to a
//! DICOMweb service. One call, one outcome sentence; blocking (the window runs it on a thread).

use std::path::PathBuf;

use crate::net::cli::Node;
use crate::net::ScuOptions;

/// What a send did: every file stored, said in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub stored: usize,
    pub node: String,
    /// `C-STORE` or `STOW-RS`.
    pub service: &'static str,
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} object(s) stored on {} ({})", self.stored, self.node, self.service)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Net(#[from] crate::net::Error),
    /// The node answered, but did not store every file.
    #[error("{node} stored {stored} of {total} object(s) ({service}){first_reason}")]
    Partial { node: String, service: &'static str, stored: usize, total: usize, first_reason: String },
}

/// Sends `files` to `node`; succeeds only when the node stored every one of them.
pub fn send(node: &Node, options: &ScuOptions, files: &[PathBuf]) -> Result<Sent, SendError> {
    match node {
        Node::Dimse(peer) => {
            let results = crate::net::store(peer, options, files, &mut |_| {})?;
            let stored = results.iter().filter(|r| r.ok()).count();
            if stored < files.len() {
                let first_reason = results
                    .iter()
                    .find(|r| !r.ok())
                    .map(|r| match (&r.error, r.status) {
                        (Some(e), _) => format!(": {e}"),
                        (None, Some(status)) => format!(": {status}"),
                        (None, None) => String::new(),
                    })
                    .unwrap_or_default();
                return Err(SendError::Partial {
                    node: peer.to_string(),
                    service: "C-STORE",
                    stored,
                    total: files.len(),
                    first_reason,
                });
            }
            Ok(Sent { stored, node: peer.to_string(), service: "C-STORE" })
        }
        Node::Web(url) => {
            let answer = crate::net::dicomweb::DicomWebClient::new(url, options.timeout)?.store_files(files)?;
            let (stored, failed) = crate::net::dicomweb::stow_counts(&answer);
            if failed > 0 || stored < files.len() {
                return Err(SendError::Partial {
                    node: url.clone(),
                    service: "STOW-RS",
                    stored,
                    total: files.len(),
                    first_reason: String::new(),
                });
            }
            Ok(Sent { stored, node: url.clone(), service: "STOW-RS" })
        }
    }
}
