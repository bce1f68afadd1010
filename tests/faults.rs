//! Faults on save: a full disk must give an error and keep the previous file whole, with no
//! temporary left behind — through the atomic-write helper and through `melo convert`.
//!
//! A real full disk is made with a 64 KiB tmpfs. As root (CI) the test mounts it directly;
//! otherwise it re-runs itself inside a user + mount namespace (`unshare --user
//! --map-root-user --mount`), where an unprivileged user may mount a tmpfs, and asserts that
//! run passed. Where neither works the test fails with both reasons, so a run that cannot make
//! the full disk never passes without checking it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Set in the re-run inside the namespace, so a failing mount there fails instead of recursing.
const IN_NAMESPACE: &str = "MELO_FAULTS_IN_MOUNT_NAMESPACE";

struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(bytes: usize) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temporary folder for the tmpfs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Self { dir })
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A mounted `bytes`-byte tmpfs for test `name`, or `None` when the mount needs a namespace:
/// then `name` has just been run (and has passed, asserted here) in a child process inside one.
fn tiny_fs_for(name: &str, bytes: usize) -> Option<TinyFs> {
    let direct = match TinyFs::mount(bytes) {
        Ok(fs) => return Some(fs),
        Err(e) => e,
    };
    assert!(
        std::env::var_os(IN_NAMESPACE).is_none(),
        "cannot mount a {bytes}-byte tmpfs for {name} even inside a user namespace: {direct}"
    );
    let exe = std::env::current_exe().expect("path of this test binary");
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount"])
        .arg(exe)
        .args(["--exact", name, "--test-threads=1"])
        .env(IN_NAMESPACE, "1")
        .output()
        .unwrap_or_else(|e| panic!("mount failed ({direct}) and unshare cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name}: mount failed ({direct}); the run in a user + mount namespace did not pass:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    None
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn disk_full_save_errors_and_keeps_previous_file() {
    // None: the test ran, and passed, in a mount namespace (see `tiny_fs_for`).
    let Some(fs) = tiny_fs_for("disk_full_save_errors_and_keeps_previous_file", 64 * 1024) else { return };
    let target = fs.path().join("report.json");
    let small = vec![b'a'; 16 * 1024];
    melo::atomic::write_bytes_atomic(&target, &small).unwrap();

    let big = vec![b'b'; 256 * 1024];
    let err = melo::atomic::write_bytes_atomic(&target, &big).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("report.json"), "error names the file: {text}");
    assert_eq!(std::fs::read(&target).unwrap(), small, "previous file kept whole");
    assert_eq!(entries(fs.path()), vec![target.clone()], "no temporary left behind");
}

#[test]
fn convert_onto_full_disk_exits_nonzero_and_keeps_previous_output() {
    // None: the test ran, and passed, in a mount namespace (see `tiny_fs_for`).
    let Some(fs) = tiny_fs_for("convert_onto_full_disk_exits_nonzero_and_keeps_previous_output", 64 * 1024) else {
        return;
    };
    // The CT sample: 512×512 f32 = 1 MiB of .npy, which does not fit in 64 KiB.
    let ct = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/ct");
    let input = entries(&ct).into_iter().find(|p| p.is_file() && !p.ends_with("README.md")).expect("CT sample");
    let before = std::fs::read(&input).unwrap();
    let out = fs.path().join("out.npy");
    std::fs::write(&out, b"previous").unwrap();

    let result = Command::new(env!("CARGO_BIN_EXE_melo")).arg("convert").arg(&input).arg(&out).output().unwrap();
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    assert_eq!(entries(fs.path()), vec![out.clone()]);
    assert_eq!(std::fs::read(&input).unwrap(), before, "input untouched");
}

#[test]
fn load_limits_come_from_the_environment_and_bad_values_are_refused() {
    let ct = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/ct/693_J2KR.dcm");
    // 512×512 = 262,144 samples: refused under a 100,000-sample limit, with the variable named.
    let out = Command::new(env!("CARGO_BIN_EXE_melo"))
        .args(["info"])
        .arg(&ct)
        .env("MELO_MAX_SAMPLES", "100000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limit 100000") && stderr.contains("MELO_MAX_SAMPLES"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_melo"))
        .args(["info"])
        .arg(&ct)
        .env("MELO_MAX_FRAMES", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MELO_MAX_FRAMES"));

    let ok = Command::new(env!("CARGO_BIN_EXE_melo"))
        .args(["info"])
        .arg(&ct)
        .env("MELO_MAX_SAMPLES", "1_000_000")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

/// `melo train` killed (SIGKILL, no chance to clean up) after its first epoch checkpoint: no
/// adapter appears under the output name, and `--resume` finishes the run from the checkpoint.
#[test]
fn killed_training_leaves_no_adapter_and_resumes() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/medmnist/breastmnist.npz");
    if !data.is_file() {
        panic!("{} is missing (see ../shared/data/README.md)", data.display());
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("breast.safetensors");
    let checkpoint = dir.path().join("breast.ckpt");
    let train = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_melo"));
        c.arg("train").arg("--data").arg(&data).arg("--out").arg(&out);
        c.args(["--size", "28", "--rank", "2", "--batch", "8", "--epochs", "40", "--limit", "16", "--quiet"]);
        c.args(["--labels", "malignant,normal_or_benign"]);
        c.args(extra);
        c
    };
    let mut child = train(&[]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let started = std::time::Instant::now();
    while !checkpoint.is_file() {
        assert!(child.try_wait().unwrap().is_none(), "training ended before its first checkpoint");
        assert!(started.elapsed().as_secs() < 600, "no checkpoint after 10 minutes");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed run must not leave an adapter");

    let resumed = train(&["--resume", "--stop-after", "2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    // Stopped again on purpose two epochs later: resumed from the checkpoint, still no adapter.
    assert!(stderr.contains("resuming") && stderr.contains("stopped after epoch"), "{stderr}");
    assert!(!out.exists());
    let finished = train(&["--resume"]).output().unwrap();
    assert!(finished.status.success(), "{}", String::from_utf8_lossy(&finished.stderr));
    let adapter = melo::model::Adapter::load(&out).unwrap();
    assert_eq!(adapter.metadata().rank, 2);
    assert!(!checkpoint.exists(), "a finished run removes its checkpoint");
}
