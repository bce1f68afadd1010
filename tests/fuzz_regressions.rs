//! Inputs the fuzz targets (`fuzz/`) found crashing, aborting or allocating gigabytes, kept so
//! the fixes stay fixed (tests/data/fuzz/README.md). Each must give a clear error, not a panic
//! or an abort.

use melo::image::{load_dicom_bytes, load_image_bytes, LoadOptions};

fn fuzz_file(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz").join(name)).unwrap()
}

/// Text values whose header claims more than the file holds are refused before dicom-rs
/// zero-fills a buffer of that size (without the check: 285 MB – 2 GB per file).
#[test]
fn lying_text_lengths_are_refused_before_any_allocation() {
    for (name, expected) in [
        ("dicom_abort_string_length_implicit.dcm", "claims 2013265926 bytes"),
        ("dicom_abort_string_length_no_meta.dcm", "claims 285278480 bytes"),
        ("dicom_abort_private_or_virtual_vr.dcm", "claims 1191118597 bytes"),
    ] {
        let err = load_image_bytes(&fuzz_file(name), &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err}");
    }
}

/// Known weakness, not fixed (docs/reliability.md): dicom-rs reads byte values and, in these
/// files, headers the length walk cannot follow, by zero-filling the claimed size first. They
/// still end in a clear error, never a crash.
#[test]
fn lying_byte_lengths_and_desynchronised_headers_still_end_in_errors() {
    for name in ["dicom_oom_UN_sequence.dcm", "dicom_desync_text_length_no_meta.dcm"] {
        let err = load_dicom_bytes(&fuzz_file(name), &LoadOptions::default()).unwrap_err();
        assert!(!err.to_string().is_empty(), "{name}");
    }
}

#[test]
fn npz_with_a_lying_entry_size_is_refused() {
    let npz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz/npz_lying_entry_size.npz");
    let opened = melo::train::data::DataSource::open(&npz, None, melo::train::data::SplitFractions::default());
    let err = opened.map(|_| ()).expect_err("a mutated npz is refused").to_string();
    assert!(err.contains("npz_lying_entry_size.npz"), "{err}");
}

#[test]
fn every_fixture_still_decodes_after_the_length_walk() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom");
    let mut decoded = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "dcm")
            && load_dicom_bytes(&std::fs::read(&path).unwrap(), &LoadOptions::default()).is_ok()
        {
            decoded += 1;
        }
    }
    // 19 of the fixtures decode (tests/dicom_pydicom_parity.rs checks their values).
    assert_eq!(decoded, 19);
}
