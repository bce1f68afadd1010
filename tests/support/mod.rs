//! Real peers for the networking tests: an Orthanc PACS started per test on loopback, and the
//! DCMTK command-line tools as a second, independent DICOM implementation.
//!
//! Nothing here is mocked. When a server or tool is missing the test fails and names the
//! Debian package to install (`tools/install_test_servers.sh` installs all of them); it never
//! skips, so a green run means the protocol code really talked to these peers.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod dcmtk;
pub mod orthanc;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// The repository root (fixtures are read from here).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The 20-slice MR series shipped in `assets/samples`, in slice order.
pub fn mr_series() -> Vec<PathBuf> {
    let dir = repo().join("assets/samples/mr_brain_series");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 20, "the MR sample series has 20 slices");
    files
}

/// A small DICOM fixture from `tests/data/dicom`.
pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/data/dicom").join(name)
}

/// A TCP port on loopback that was free a moment ago. The listener is dropped before the
/// port is handed out, so a race with another process is possible; servers started on it
/// report a bind failure clearly and the callers retry.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on 127.0.0.1");
    listener.local_addr().unwrap().port()
}

/// The path of `program`, searched in `PATH` and the sbin folders (Debian installs Orthanc in
/// /usr/sbin, which is not in every user's PATH). Panics naming the package to install.
pub fn require_program(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return candidate;
        }
    }
    panic!(
        "`{program}` is not installed; these tests need the real server/tool. Install the Debian \
         package `{package}` (run `sudo tools/install_test_servers.sh`, which installs orthanc, \
         orthanc-dicomweb, dcmtk and dicom3tools)"
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
