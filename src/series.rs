//! Folders become series: DICOM files grouped by Series Instance UID and ordered along the
//! slice normal (Image Position Patient), else by Instance Number; each raster its own series.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::{sniff, FileKind, ImageMeta};

/// One series of files (one file per slice, or one multi-frame file).
#[derive(Debug, Clone)]
pub struct Series {
    pub uid: String,
    pub description: String,
    pub modality: String,
    pub files: Vec<PathBuf>,
}

impl Series {
    /// The series strip's text for the series at `index` (0-based) of the list. Shown:
    /// its description, then modality and file count. Hidden: the description is Series
    /// Description (0008,103E), which the basic confidentiality profile removes, or a file
    /// name (which can be a patient's name or a SOP Instance UID), so only the position in
    /// the list ("#3", not to be read as the DICOM Series Number the overlay shows), the
    /// modality (kept by the profile) and the count remain.
    pub fn strip_label(&self, index: usize, hide_patient_details: bool) -> String {
        let files = self.files.len();
        let modality = if self.modality.trim().is_empty() { "?" } else { self.modality.trim() };
        let counts = format!("{modality} · {files} file{}", if files == 1 { "" } else { "s" });
        if hide_patient_details {
            format!("#{}\n{counts}", index + 1)
        } else {
            format!("{}\n{counts}", self.description)
        }
    }
}

/// A file that could not be read while scanning, with the reason.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
    /// False for files that are not images at all (READMEs, licences): not worth a warning.
    pub looks_like_image: bool,
}

/// The series found under a folder (recursively), and what was skipped.
#[derive(Debug, Default)]
pub struct FolderScan {
    pub series: Vec<Series>,
    pub skipped: Vec<Skipped>,
}

const MAX_FILES: usize = 100_000;

/// Lists every regular file under `root`, sorted, never following symlinked folders.
fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() && files.len() < MAX_FILES {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

struct Header {
    path: PathBuf,
    meta: ImageMeta,
}

/// Scans a folder into series. Unreadable files are reported, not fatal.
pub fn scan_folder(root: &Path) -> Result<FolderScan> {
    Ok(group_files(walk(root)?))
}

/// Groups loose files (dropped on the window, given on the command line) and folders into
/// series, exactly as a folder scan would.
pub fn scan_paths(paths: &[PathBuf]) -> Result<FolderScan> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(walk(p)?);
        } else {
            files.push(p.clone());
        }
    }
    Ok(group_files(files))
}

fn group_files(paths: Vec<PathBuf>) -> FolderScan {
    let mut scan = FolderScan::default();
    let mut dicoms: Vec<Header> = Vec::new();
    for path in paths {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                scan.skipped.push(Skipped { path, reason: e.to_string(), looks_like_image: true });
                continue;
            }
        };
        match sniff(&bytes) {
            FileKind::Png | FileKind::Jpeg => scan.series.push(Series {
                uid: path.display().to_string(),
                description: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                modality: "OT".into(),
                files: vec![path],
            }),
            FileKind::Dicom => match crate::image::parse_header_bytes(&bytes) {
                Ok(meta) => dicoms.push(Header { path, meta }),
                Err(e) => {
                    let looks_like_image = !matches!(e, Error::NotDicom(_));
                    scan.skipped.push(Skipped { path, reason: e.to_string(), looks_like_image });
                }
            },
        }
    }
    let mut groups: Vec<(String, Vec<Header>)> = Vec::new();
    for h in dicoms {
        let uid = if h.meta.series_uid.is_empty() { h.path.display().to_string() } else { h.meta.series_uid.clone() };
        match groups.iter_mut().find(|(u, _)| *u == uid) {
            Some((_, members)) => members.push(h),
            None => groups.push((uid, vec![h])),
        }
    }
    for (uid, mut members) in groups {
        order_slices(&mut members);
        let first = &members[0].meta;
        scan.series.push(Series {
            uid,
            description: if first.series_description.is_empty() {
                first.modality.clone()
            } else {
                first.series_description.clone()
            },
            modality: first.modality.clone(),
            files: members.into_iter().map(|h| h.path).collect(),
        });
    }
    scan
}

/// Position along the slice normal when every slice has geometry, else instance number.
fn order_slices(members: &mut [Header]) {
    let normal = members[0]
        .meta
        .image_orientation
        .map(|o| [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]]);
    let all_positioned = members.iter().all(|h| h.meta.image_position.is_some());
    match normal {
        Some(n) if all_positioned => members.sort_by(|a, b| {
            let d = |h: &Header| {
                let p = h.meta.image_position.unwrap_or_default();
                p[0] * n[0] + p[1] * n[1] + p[2] * n[2]
            };
            d(a).total_cmp(&d(b)).then_with(|| a.path.cmp(&b.path))
        }),
        _ => members.sort_by(|a, b| {
            a.meta
                .instance_number
                .unwrap_or(i64::MAX)
                .cmp(&b.meta.instance_number.unwrap_or(i64::MAX))
                .then_with(|| a.path.cmp(&b.path))
        }),
    }
}
