//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/data` beside the repository, if present. A test that needs it must fail when it
/// is absent (use [`require_shared_data`]), never pass without checking anything.
pub fn shared_data() -> Option<PathBuf> {
    let p = repo().join("../shared/data");
    p.is_dir().then_some(p)
}

/// `../shared/data` beside the repository (CI and developer machines have it); panics with a
/// message naming what is missing, so a run without it fails instead of skipping `what`.
pub fn require_shared_data(what: &str) -> PathBuf {
    shared_data().unwrap_or_else(|| {
        panic!(
            "{} is missing: {what} needs the shared data set beside the repository (see the README)",
            repo().join("../shared/data").display()
        )
    })
}

/// eframe storage in memory, as the real window's would be on disk.
#[derive(Default)]
pub struct MemoryStorage(pub std::collections::HashMap<String, String>);

impl eframe::Storage for MemoryStorage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.into(), value);
    }
    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }
    fn flush(&mut self) {}
}
