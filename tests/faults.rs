//! Faults on save: a full disk must give an error and keep the previous file whole, with no
//! temporary left behind — through the atomic-write helper and through `melo convert`.
//!
//! A real full disk is made with a 64 KiB tmpfs. Mounting needs root (CI and this workstation's
//! build machines run as root); where the mount fails the test fails with mount's own message,
//! so a run that cannot make the full disk never passes without checking it.

use std::path::{Path, PathBuf};
use std::process::Command;

struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(bytes: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder for the tmpfs");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount for the disk-full test: {e}"));
        assert!(
            out.status.success(),
            "cannot mount a {bytes}-byte tmpfs for the disk-full test (it needs root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Self { dir }
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

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn disk_full_save_errors_and_keeps_previous_file() {
    let fs = TinyFs::mount(64 * 1024);
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
    let fs = TinyFs::mount(64 * 1024);
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
