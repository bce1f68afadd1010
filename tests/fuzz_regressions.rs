//! Inputs the fuzz targets (`fuzz/`) found crashing, aborting or allocating gigabytes, kept so
//! the fixes stay fixed (tests/data/fuzz/README.md). Each must give a clear error, not a panic
//! or an abort.

use melo::image::{load_dicom_bytes, load_image_bytes, LoadOptions};

fn fuzz_file(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz").join(name)).unwrap()
}

/// The error the DICOM loader gives for a regression file (it must give one).
fn dicom_error(name: &str) -> String {
    load_dicom_bytes(&fuzz_file(name), &LoadOptions::default()).unwrap_err().to_string()
}

/// The error the window's entry point (any format) gives for a regression file.
fn image_error(name: &str) -> String {
    load_image_bytes(&fuzz_file(name), &LoadOptions::default()).unwrap_err().to_string()
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
        let err = image_error(name);
        assert!(err.contains(expected), "{name}: {err}");
    }
}

/// File meta elements whose header claims more than the file holds: dicom-object's own meta
/// reader zero-filled the claimed size (4.0 GiB and 0.76 GiB peaks) before failing.
#[test]
fn lying_meta_lengths_are_refused_before_any_allocation() {
    for (name, expected) in [
        ("dicom_oom_meta_uid_length.dcm", "file meta element (0002,0012) claims 4294959104 bytes"),
        ("dicom_oom_meta_instance_uid_length.dcm", "file meta element (0002,0003) claims 774963264 bytes"),
    ] {
        let err = dicom_error(name);
        assert!(err.contains(expected), "{name}: {err}");
    }
}

/// Byte values and headers the length walk cannot follow: dicom-rs 0.10.1 zero-filled the
/// claimed size before reading (peaks of 3.5 GiB and 1.2 GiB); the vendored dicom-parser
/// (`vendor/README.md`) grows its buffers only with the bytes actually read. Each file is decoded
/// in a child process so that its peak resident memory is its own.
#[test]
#[cfg(target_os = "linux")]
fn lying_byte_lengths_and_desynchronised_headers_end_in_errors_without_a_large_allocation() {
    for name in ["dicom_oom_UN_sequence.dcm", "dicom_desync_text_length_no_meta.dcm"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["decode_in_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_FILE, name)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        let field =
            |key: &str| stdout.lines().find_map(|l| Some(l.split_once(key)?.1)).unwrap_or_else(|| panic!("{stdout}"));
        let peak_kib: u64 = field("child-peak-kib: ").trim().parse().unwrap();
        let error = field("child-error: ");
        eprintln!("{name}: peak {} MiB, {error}", peak_kib / 1024);
        assert!(!error.is_empty() && error != "none", "{name}: decoded without an error");
        assert!(peak_kib < 256 * 1024, "{name}: peak resident memory {peak_kib} KiB");
    }
}

const CHILD_FILE: &str = "MELO_FUZZ_CHILD_FILE";

/// Runs only as the child of the test above (it does nothing otherwise): decodes one file and
/// prints the error and the process's peak resident memory.
#[test]
fn decode_in_child() {
    let Some(name) = std::env::var_os(CHILD_FILE) else { return };
    let result = load_dicom_bytes(&fuzz_file(name.to_str().unwrap()), &LoadOptions::default());
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap();
    println!("child-error: {}", result.err().map_or("none".to_string(), |e| e.to_string()));
    println!("child-peak-kib: {}", hwm.trim().trim_end_matches("kB").trim());
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
    // 22 of the fixtures decode (tests/dicom_pydicom_parity.rs checks their values).
    assert_eq!(decoded, 22);
}

/// A scheduler config claiming 5 × 10¹² training timesteps: building its noise schedule tried
/// to allocate 20 TB and aborted (found by `fuzz/diffusers_config`); now refused as a config
/// error.
#[test]
fn scheduler_with_a_huge_timestep_count_is_refused() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz/scheduler_huge_num_train_timesteps.json");
    // Reading the config validates it (as `melo audit` reads a model folder).
    let err = melo::diffusion::SchedulerConfig::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("num_train_timesteps 5144444444444"), "{err}");
}

/// A JPEG 2000 file whose decoded component is larger than its DICOM Rows × Columns: dicom-rs
/// 0.10.1's JPEG 2000 adapter indexed past its output buffer and panicked (found by
/// `fuzz/dicom_decode`); the codestream's size is now checked before decoding.
#[test]
fn jpeg2000_frame_larger_than_the_header_is_refused() {
    let err = dicom_error("dicom_panic_jpeg2k_component_overrun.dcm");
    assert!(err.contains("JPEG 2000 frame is"), "{err}");
}

/// A baseline JPEG frame whose DHT segment declares length 0 (fuzzer mutation of a
/// corpus file, `fuzz/dicom_decode` round 3): the colour-marker look-ahead sliced backwards and
/// panicked (contained, but a panic). Now the look-ahead stops and the JPEG decoder refuses
/// the stream, as pydicom's plugins do ("Huffman table length must be at least two bytes").
#[test]
fn jpeg_segment_shorter_than_its_length_field_is_an_error_not_a_panic() {
    let err = dicom_error("dicom_panic_jpeg_segment_length.dcm");
    assert!(!err.contains("decoder crashed"), "the look-ahead still panics: {err}");
    assert!(err.contains("JPEG"), "{err}");
}

/// A palette PNG whose PLTE chunk is 40 bytes, not whole RGB entries (fuzzer mutation,
/// `fuzz/raster_decode` round 3): png 0.18.1 slices past it and panicked, and the raster path
/// had no `catch_unwind`, so `melo info` / `melo convert` crashed. The palette is checked
/// before decoding now (Pillow refuses the file too).
#[test]
fn png_palette_of_partial_entries_is_an_error_not_a_panic() {
    let err = image_error("png_panic_palette_length.png");
    assert!(err.contains("PNG palette (PLTE) of 40 bytes"), "{err}");
}

/// 115 bytes, found by `fuzz/raster_decode` (round 3): the group length (0002,0000) has an
/// unknown VR, so its value sits after a 12-byte header; the meta walk read it from the 8-byte
/// position, ended the group early and missed a (0002,0002) claiming 4,076,863,492 bytes,
/// which dicom-object's meta reader then zero-filled (peak 3.8 GiB).
#[test]
fn group_length_with_an_unknown_vr_does_not_hide_a_lying_meta_length() {
    let err = image_error("dicom_oom_meta_group_length_vr.dcm");
    assert!(err.contains("file meta element (0002,0002) claims 4076863492 bytes"), "{err}");
}

/// An RGB baseline JPEG without JFIF/Adobe marker whose second component is sampled 3 × 1
/// (fuzzer mutation of a corpus file, `fuzz/dicom_decode` round 3): asked for no colour
/// transform, jpeg-decoder 0.3.2 overran its output row and panicked (contained, but a panic).
/// A subsampled stream now keeps the codec's own colour rule and decodes.
#[test]
fn subsampled_rgb_jpeg_without_colour_marker_decodes_without_a_panic() {
    let image = load_dicom_bytes(&fuzz_file("dicom_panic_jpeg_subsampled_rgb.dcm"), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((image.rows, image.cols, image.channels), (256, 256, 3));
}

/// 2,493 bytes, header 512 × 400, whose JPEG Lossless frame header says 65023 × 64623
/// (`fuzz/dicom_decode` round 3): jpeg-decoder decoded the whole frame before our size check,
/// and `melo info` grew to 24 GB before it was killed. The frame size is now read from the
/// codestream and compared before decoding, as for JPEG 2000.
#[test]
fn jpeg_frame_larger_than_the_header_is_refused_before_decoding() {
    let err = dicom_error("dicom_oom_jpeg_lossless_frame_size.dcm");
    assert!(err.contains("JPEG frame is 65023×64623, header says 512×400"), "{err}");
}
