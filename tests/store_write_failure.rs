//! A store that cannot write mid-file (issue 14: "a full disk in the store"): `melo net listen`
//! runs under a file size limit (RLIMIT_FSIZE through bash's `ulimit -f`, with SIGXFSZ
//! ignored so a write past it fails with EFBIG as a write to a full disk fails with ENOSPC).
//! Works for any user, root included, where a read-only folder would not stop root.
//!
//! DCMTK's storescu sends a small instance, one larger than the limit, then another small one:
//! the large one is refused with "out of resources" and a message naming the file and the
//! system's reason, nothing of it is left in the folder or the index, and the SCP goes on
//! receiving.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use melo::store::{split_part10, StudyStore};
use support::dcmtk;

/// Every file under `dir` except the index, its journal and the lock file.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            if p.is_dir() {
                stack.push(p);
            } else if !name.starts_with(melo::store::INDEX_FILE) && name != melo::store::LOCK_FILE {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn sop_uid(file: &Path) -> String {
    let bytes = std::fs::read(file).unwrap();
    split_part10(&bytes).unwrap().meta.media_storage_sop_instance_uid().trim_end_matches('\0').to_string()
}

#[test]
fn a_write_that_fails_midway_is_refused_and_leaves_nothing() {
    let bash = support::require_program("bash", "bash");
    let dir = tempfile::tempdir().unwrap();
    // The index is made before the limit applies: the limit is for the instance files.
    drop(StudyStore::open(dir.path()).unwrap());
    let small = [support::fixture("MR_small.dcm"), support::fixture("CT_small.dcm")];
    // An MR slice of the sample series: 133 KB once its zero padding is cut, over the limit.
    let large = support::mr_series().remove(0);
    let port = support::free_port();
    let log = dir.path().join("listen.log");
    // 128 KiB: above the small instances and the index's growth, below the large instance.
    let mut listen = Command::new(bash)
        .arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 128 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_melo"))
        .args(["net", "listen", "--bind", "127.0.0.1", "--port", &port.to_string(), "--allow", "STORESCU"])
        .arg("--store")
        .arg(dir.path())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = dcmtk::wait_for_echo("STORESCU", "MELO", port);
    let first = dcmtk::storescu("STORESCU", "MELO", port, &[&small[0]]);
    let mut verbose = Command::new(dcmtk::program("storescu"));
    verbose.args(["-v", "-R", "-to", "20", "-ta", "20", "-td", "20", "-aet", "STORESCU", "-aec", "MELO", "127.0.0.1"]);
    verbose.arg(port.to_string()).arg(&large);
    let refused = dcmtk::run(verbose);
    let after = dcmtk::storescu("STORESCU", "MELO", port, &[&small[1]]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = listen.kill();
    let _ = listen.wait();
    assert!(up, "melo net listen did not answer C-ECHO");
    assert!(first.status.success(), "{}", dcmtk::text(&first));
    assert!(after.status.success(), "the SCP stopped receiving after the failure: {}", dcmtk::text(&after));

    // storescu got the failure status (it exits 0 for a refused instance; its log says so).
    let said: String = dcmtk::text(&refused).lines().filter(|l| !l.contains("DcmItem")).collect::<Vec<_>>().join("\n");
    assert!(said.contains("Refused: OutOfResources"), "{said}");
    // The SCP says what failed and why.
    let printed = std::fs::read_to_string(&log).unwrap();
    let line = printed
        .lines()
        .find(|l| l.starts_with("refused ") && l.contains(&sop_uid(&large)))
        .unwrap_or_else(|| panic!("no refusal of the large instance:\n{printed}"));
    assert!(line.contains("0xA700") && line.contains("File too large"), "{line}");

    // Nothing of it in the folder (no temporary, no half file) or the index.
    let store = StudyStore::open(dir.path()).unwrap();
    assert_eq!(store.recovery(), &Default::default(), "nothing left to repair");
    assert_eq!(store.instance_count().unwrap(), 2);
    let kept: Vec<String> = files(dir.path()).iter().filter(|p| p != &&log).map(|p| sop_uid(p)).collect();
    let mut expected: Vec<String> = small.iter().map(|f| sop_uid(f)).collect();
    let mut kept_sorted = kept.clone();
    kept_sorted.sort();
    expected.sort();
    assert_eq!(kept_sorted, expected, "only the two small instances are in the folder");
}
