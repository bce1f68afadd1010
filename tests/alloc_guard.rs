//! The allocation cap around dicom-rs parsing (src/alloc_guard.rs), with the guarded allocator
//! installed as in the `melo` binary. Its own test binary: the peak-RSS check must not see the
//! memory of other tests.

use melo::alloc_guard::{with_allocation_limit, GuardedAllocator};
use melo::image::{load_dicom_bytes, LoadOptions};

#[global_allocator]
static ALLOCATOR: GuardedAllocator = GuardedAllocator;

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

#[test]
fn lying_length_in_a_tiny_file_is_refused_without_allocating_gigabytes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz/dicom_oom_UN_sequence.dcm");
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len(), 674);
    let err = load_dicom_bytes(&bytes, &LoadOptions::default()).unwrap_err();
    assert!(!err.to_string().is_empty());
    // Unguarded, dicom-rs zero-fills a 3.7 GB buffer for this file (peak RSS ≈ 3.6 GiB).
    let peak = peak_rss_mib();
    assert!(peak < 512, "peak RSS {peak} MiB");
    assert!(melo::alloc_guard::is_installed());
}

#[test]
fn fallible_reservations_above_the_cap_fail_and_the_cap_is_lifted_after() {
    let refused = with_allocation_limit(1 << 20, || Vec::<u8>::new().try_reserve_exact(2 << 20).is_err());
    assert!(refused);
    let allowed = with_allocation_limit(1 << 20, || Vec::<u8>::new().try_reserve_exact(512 << 10).is_ok());
    assert!(allowed);
    // Outside the closure the thread has no cap again.
    let mut v = Vec::<u8>::new();
    assert!(v.try_reserve_exact(8 << 20).is_ok());
}

#[test]
fn every_fixture_still_decodes_under_the_cap() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dicom");
    let mut decoded = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "dcm") {
            let bytes = std::fs::read(&path).unwrap();
            if load_dicom_bytes(&bytes, &LoadOptions::default()).is_ok() {
                decoded += 1;
            }
        }
    }
    // 19 of the fixtures decode (tests/dicom_pydicom_parity.rs checks their values).
    assert_eq!(decoded, 19);
}

/// Fuzzing finds (tests/data/fuzz/README.md): each gives a clear error, without aborting and
/// without a gigabyte allocation.
#[test]
fn fuzz_regressions_are_clear_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz");
    for (name, expected) in [
        ("dicom_abort_string_length_implicit.dcm", "claims 2013265926 bytes"),
        ("dicom_abort_string_length_no_meta.dcm", "claims 285278480 bytes"),
        ("dicom_abort_private_or_virtual_vr.dcm", "claims 1191118597 bytes"),
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let err = melo::image::load_image_bytes(&bytes, &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains(expected), "{name}: {err}");
    }
    let npz = dir.join("npz_lying_entry_size.npz");
    let opened = melo::train::data::DataSource::open(&npz, None, melo::train::data::SplitFractions::default());
    let err = opened.map(|_| ()).expect_err("a mutated npz is refused").to_string();
    assert!(err.contains("npz_lying_entry_size.npz"), "{err}");
    assert!(peak_rss_mib() < 512, "peak RSS {} MiB", peak_rss_mib());
}
