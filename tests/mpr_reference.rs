//! MPR of the shipped 20-slice MR series against pydicom + numpy
//! (`tools/mpr/reference.py` → `tests/data/mpr_reference.json`): every plane of every kind is
//! bit-for-bit numpy's reformat of pydicom's volume (float32 after the modality LUT, slices
//! ordered along the normal); irregular series are refused with the reason.

mod common;

use std::path::{Path, PathBuf};

use melo::image::{load_image, LoadOptions, MedicalImage};
use melo::series::scan_folder;
use melo::volume::{NotAVolume, PlaneKind, Volume};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn reference() -> Value {
    let path = common::repo().join("tests/data/mpr_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The one series under `folder`, decoded in the order the viewer gets it.
fn load_series(folder: &Path) -> Vec<MedicalImage> {
    let scan = scan_folder(folder).unwrap();
    assert_eq!(scan.series.len(), 1, "one series under {}", folder.display());
    scan.series[0].files.iter().map(|f| load_image(f, &LoadOptions::default()).unwrap()).collect()
}

fn mr_folder() -> PathBuf {
    common::repo().join("assets/samples/mr_brain_series")
}

fn sha(values: &[f32]) -> String {
    let mut hasher = Sha256::new();
    for v in values {
        hasher.update(v.to_le_bytes());
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn key(kind: PlaneKind) -> &'static str {
    match kind {
        PlaneKind::Acquired => "acquired",
        PlaneKind::Reformat1 => "reformat1",
        PlaneKind::Reformat2 => "reformat2",
    }
}

#[test]
fn planes_equal_numpy_reformats_of_the_pydicom_volume() {
    let refs = reference();
    let mut images = load_series(&mr_folder());
    // Handed over backwards: the volume orders the slices along the normal itself.
    images.reverse();
    let volume = Volume::build(&images).expect("the shipped MR series forms a volume");
    let g = &volume.geometry;
    let names: Vec<String> = g
        .order
        .iter()
        .map(|&i| images[i].meta.source.as_ref().unwrap().file_name().unwrap().to_string_lossy().into())
        .collect();
    let want_names: Vec<String> = serde_json::from_value(refs["files"].clone()).unwrap();
    assert_eq!(names, want_names, "order along the normal");
    let shape: Vec<usize> = serde_json::from_value(refs["shape"].clone()).unwrap();
    assert_eq!([g.slices(), g.rows, g.cols], [shape[0], shape[1], shape[2]]);
    let spacing: Vec<f64> = serde_json::from_value(refs["pixel_spacing"].clone()).unwrap();
    assert_eq!(g.pixel_spacing.to_vec(), spacing);
    let slice_mm = refs["slice_spacing"].as_f64().unwrap();
    assert!((g.slice_spacing - slice_mm).abs() < 1e-9, "slice spacing {} vs {slice_mm}", g.slice_spacing);
    assert_eq!(g.last_slice_on_top(), refs["last_slice_on_top"].as_bool().unwrap());
    // Tilted 7.7° about the x axis: oblique, so not called axial/coronal/sagittal.
    assert!(!g.is_axis_aligned(), "obliquity {}°", g.obliquity_degrees());
    assert!((g.obliquity_degrees() - 7.71).abs() < 0.01, "{}", g.obliquity_degrees());
    assert_eq!(
        PlaneKind::ALL.map(|k| g.plane_name(k)),
        ["Acquired".to_string(), "Reformat 1".into(), "Reformat 2".into()]
    );
    assert_eq!(PlaneKind::ALL.map(|k| g.nearest_patient_plane(k)), ["axial", "coronal", "sagittal"]);

    for kind in PlaneKind::ALL {
        let want = &refs["planes"][key(kind)];
        let hashes: Vec<String> = serde_json::from_value(want["sha256"].clone()).unwrap();
        assert_eq!(hashes.len(), g.count(kind), "{kind:?} count");
        let plane_shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
        for (index, hash) in hashes.iter().enumerate() {
            let plane = volume.plane(kind, index).unwrap();
            assert_eq!([plane.height, plane.width], [plane_shape[0], plane_shape[1]], "{kind:?} {index} shape");
            if let Some(row) = want["middle_rows"].get(index.to_string()) {
                let row: Vec<f32> = serde_json::from_value(row.clone()).unwrap();
                let y = plane.height / 2;
                assert_eq!(
                    plane.values[y * plane.width..(y + 1) * plane.width],
                    row[..],
                    "{kind:?} {index} middle row"
                );
            }
            assert_eq!(&sha(&plane.values), hash, "{kind:?} plane {index} differs from numpy's");
        }
        // The aspect: the reformats' rows are one slice spacing apart.
        let plane = volume.plane(kind, 0).unwrap();
        let down = if kind == PlaneKind::Acquired { spacing[0] } else { slice_mm };
        let across = if kind == PlaneKind::Reformat2 { spacing[0] } else { spacing[1] };
        assert!(
            (plane.pixel_mm[0] - down).abs() < 1e-9 && plane.pixel_mm[1] == across,
            "{kind:?} {:?}",
            plane.pixel_mm
        );
    }
    assert!(volume.plane(PlaneKind::Acquired, 20).is_none());
}

/// The MR series copied into a temporary folder, with the files `change` picks left out or
/// doubled.
fn copy_series(change: impl Fn(&str) -> usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(mr_folder()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        for copy in 0..change(&name) {
            std::fs::copy(&file, dir.path().join(format!("{copy}_{name}"))).unwrap();
        }
    }
    dir
}

#[test]
fn a_series_with_a_slice_missing_is_refused_with_the_gap() {
    let dir = copy_series(|name| usize::from(name != "brain_008.dcm"));
    let images = load_series(dir.path());
    assert_eq!(images.len(), 19);
    let err = Volume::build(&images).unwrap_err();
    let NotAVolume::Irregular { slice, previous, gap, typical } = err else { panic!("not an irregular gap: {err}") };
    assert_eq!((slice, previous), (8, 7));
    assert!((gap - 14.03).abs() < 0.01 && (typical - 6.97).abs() < 0.01, "{gap} {typical}");
    assert_eq!(err.to_string(), "slice 8 is 14.03 mm from slice 7, the others 6.97 mm");
}

#[test]
fn a_series_with_a_slice_twice_is_refused_as_duplicate() {
    let dir = copy_series(|name| if name == "brain_010.dcm" { 2 } else { 1 });
    let images = load_series(dir.path());
    assert_eq!(images.len(), 21);
    let err = Volume::build(&images).unwrap_err();
    assert!(matches!(err, NotAVolume::Duplicate { first: 10, second: 11, .. }), "{err}");
    assert!(err.to_string().starts_with("slices 10 and 11 are at the same position"), "{err}");
}
