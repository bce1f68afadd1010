//! Faults on save: a full disk must give an error and keep the previous file whole, with no
//! temporary left behind — through the atomic-write helper and through `melo convert`.
//!
//! A real full disk is made with a 64 KiB tmpfs. Mounting needs root (CI and this workstation's
//! build machines run as root); where it is not allowed the test says so and checks nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(bytes: usize) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Self { dir })
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
    let Some(fs) = TinyFs::mount(64 * 1024) else {
        eprintln!("cannot mount a tmpfs here (not root?): disk-full test not run");
        return;
    };
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
    let Some(fs) = TinyFs::mount(64 * 1024) else {
        eprintln!("cannot mount a tmpfs here (not root?): disk-full test not run");
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

    let ok = Command::new(env!("CARGO_BIN_EXE_melo")).args(["info"]).arg(&ct).env("MELO_MAX_SAMPLES", "1_000_000").output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}
