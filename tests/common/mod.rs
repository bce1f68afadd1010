//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/data` beside the repository, if present (CI and developer machines have it).
pub fn shared_data() -> Option<PathBuf> {
    let p = repo().join("../shared/data");
    p.is_dir().then_some(p)
}
