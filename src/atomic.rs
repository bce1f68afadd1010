//! Atomic saves: write a temporary file in the destination folder, fsync it, rename it over
//! the target. A crash or a full disk leaves either the old file or the new one, never half.
//!
//! A process killed between creating the temporary file and renaming it leaves a
//! `.melo-XXXXXX.partial` behind; the next save into that folder removes such files once they
//! are an hour old (younger ones may belong to a save still running in another process).
//!
//! [`refuse_overwriting_inputs`] is the one check every command runs before it starts work, so
//! that no output lands on (or inside) what the command reads.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// Writes `path` atomically with whatever `fill` writes into the temporary file.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    remove_stale_partials(dir, SystemTime::now());
    let mut tmp =
        tempfile::Builder::new().prefix(".melo-").suffix(".partial").tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    {
        let mut buffered = std::io::BufWriter::new(tmp.as_file_mut());
        fill(&mut buffered).map_err(|e| Error::io(path, e))?;
        buffered.flush().map_err(|e| Error::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Writes a byte slice atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Prefix and suffix of the temporary files of [`write_atomic`].
const PARTIAL_PREFIX: &str = ".melo-";
const PARTIAL_SUFFIX: &str = ".partial";
/// A temporary file older than this was left by a save that was killed.
pub const STALE_PARTIAL_AGE: Duration = Duration::from_secs(3600);

/// Whether `name` is one of our temporary files: `.melo-` + tempfile's 6 random alphanumeric
/// characters + `.partial`, nothing else (a user's `.melo-notes.partial` is left alone).
fn is_partial_name(name: &str) -> bool {
    name.strip_prefix(PARTIAL_PREFIX)
        .and_then(|rest| rest.strip_suffix(PARTIAL_SUFFIX))
        .is_some_and(|random| random.len() == 6 && random.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Removes our temporary files in `dir` last modified more than [`STALE_PARTIAL_AGE`] before
/// `now`: plain files only (no links, no folders). Best effort: a save must not fail because a
/// leftover could not be removed. Returns how many were removed.
pub fn remove_stale_partials(dir: &Path, now: SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(is_partial_name) {
            continue;
        }
        // `DirEntry::metadata` does not follow links: a link is not a file type we made.
        let Ok(meta) = entry.metadata() else { continue };
        let old =
            meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age > STALE_PARTIAL_AGE);
        if meta.file_type().is_file() && old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Refuses, with a one-line reason, an `output` that is one of `inputs` (the same file, by
/// canonical path or by device and inode) or lies inside an input that is a folder. `what`
/// names the output in the message (e.g. `--heatmap`). Run it before any work, so a mistyped
/// output never replaces a scan, a data set or a model. An output that does not exist yet is
/// compared through its canonical parent folder; inputs that do not exist are skipped (the
/// command reports them itself when it reads them).
pub fn refuse_overwriting_inputs(what: &str, output: &Path, inputs: &[&Path]) -> Result<()> {
    let out = canonical_target(output);
    for input in inputs {
        let Ok(inp) = input.canonicalize() else { continue };
        let inside_folder = inp.is_dir() && out.as_deref().is_some_and(|o| o.starts_with(&inp));
        if inside_folder || out.as_deref() == Some(inp.as_path()) || same_file(output, &inp) {
            return Err(Error::Invalid(format!(
                "{what} {} would overwrite {} {}; choose another output",
                output.display(),
                if inside_folder { "a file inside the input folder" } else { "the input" },
                input.display()
            )));
        }
    }
    Ok(())
}

/// Refuses two outputs of one command that are the same file (the second would replace the
/// first).
pub fn refuse_same_output(what: &str, a: &Path, b: &Path) -> Result<()> {
    let same = match (canonical_target(a), canonical_target(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    };
    if same || b.canonicalize().is_ok_and(|y| same_file(a, &y)) {
        return Err(Error::Invalid(format!(
            "{what}: {} is given twice; the second would replace the first",
            a.display()
        )));
    }
    Ok(())
}

/// The canonical path `path` would have: itself if it exists (links resolved), else its
/// canonical parent joined with its file name.
fn canonical_target(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let name = path.file_name()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(parent.canonicalize().ok()?.join(name))
}

/// Whether two existing paths are one file (hard links included), by device and inode.
#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_old_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for name in [".melo-AbC123.partial", ".melo-notes.partial", ".melo-abc.partial", "scan.partial", "x.dcm"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let now = SystemTime::now();
        // Just written: a save in progress elsewhere, kept.
        assert_eq!(remove_stale_partials(dir.path(), now), 0);
        // Two hours later only the file of our exact pattern goes.
        assert_eq!(remove_stale_partials(dir.path(), now + Duration::from_secs(7200)), 1);
        assert!(!dir.path().join(".melo-AbC123.partial").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
    }

    #[test]
    fn the_next_save_removes_what_a_killed_save_left() {
        let dir = tempfile::tempdir().unwrap();
        let left = dir.path().join(".melo-x1Y2z3.partial");
        let file = std::fs::File::create(&left).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(2 * 3600)).unwrap();
        drop(file);
        write_bytes_atomic(&dir.path().join("out.json"), b"{}").unwrap();
        assert!(!left.exists(), "stale temporary removed");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn outputs_onto_or_inside_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let scan = dir.path().join("scan.png");
        std::fs::write(&scan, b"pixels").unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        let err = refuse_overwriting_inputs("--heatmap", &scan, &[&scan]).unwrap_err().to_string();
        assert!(err.contains("would overwrite the input") && !err.contains('\n'), "{err}");
        // The same file by another spelling.
        let other_spelling = dir.path().join("model/../scan.png");
        assert!(refuse_overwriting_inputs("--heatmap", &other_spelling, &[&scan]).is_err());
        let err = refuse_overwriting_inputs("--out", &model.join("new.json"), &[&model]).unwrap_err().to_string();
        assert!(err.contains("inside the input folder"), "{err}");
        // Beside the input is fine.
        refuse_overwriting_inputs("--heatmap", &dir.path().join("heat.png"), &[&scan, &model]).unwrap();
        assert!(refuse_same_output("--csv", &scan, &dir.path().join("./scan.png")).is_err());
        refuse_same_output("--csv", &scan, &dir.path().join("scores.csv")).unwrap();
    }

    #[test]
    fn replaces_whole_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        write_bytes_atomic(&target, b"first").unwrap();
        write_bytes_atomic(&target, b"second").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_fill_keeps_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        write_bytes_atomic(&target, b"keep me").unwrap();
        let err = write_atomic(&target, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
