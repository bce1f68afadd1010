//! JPEG Extended decoder (`melo::codec::decode_jpeg_extended`) against pydicom + pylibjpeg
//! (libjpeg) on a real 12-bit DICOM codestream: every sample within 1 (integer and
//! floating-point inverse DCTs may round differently). References:
//! tests/data/codec/README.md.

use std::path::PathBuf;
use std::time::Instant;

use melo::codec::{decode_jpeg_extended, CodecError};

fn read(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/codec").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Samples packed two per three bytes (see tools/codec/make_refs.py).
fn read_u12(name: &str, count: usize) -> Vec<u16> {
    let packed = read(name);
    let mut samples = Vec::with_capacity(count + 1);
    for triple in packed.chunks_exact(3) {
        let (a, b, c) = (u16::from(triple[0]), u16::from(triple[1]), u16::from(triple[2]));
        samples.push(a | (b & 0x0F) << 8);
        samples.push(b >> 4 | c << 4);
    }
    samples.truncate(count);
    assert_eq!(samples.len(), count, "{name}: sample count");
    samples
}

#[test]
fn extended_12_bit_matches_libjpeg_within_one() {
    let stream = read("JPGExtended.jpg");
    let start = Instant::now();
    let frame = decode_jpeg_extended(&stream).expect("JPGExtended decodes");
    eprintln!("decoded {frame:?} in {:.2} ms", start.elapsed().as_secs_f64() * 1e3);
    assert_eq!((frame.width, frame.height, frame.components, frame.bits_per_sample), (256, 1024, 1, 12));
    let expected = read_u12("JPGExtended.u12", 256 * 1024);
    let (max, _) = difference_stats("JPGExtended vs libjpeg", &frame.samples, &expected);
    let exact = frame.samples.iter().zip(&expected).filter(|(a, b)| a == b).count();
    eprintln!("JPGExtended: {exact} of {} samples exact", expected.len());
    assert!(max <= 1, "max |diff| {max}");
    assert!(frame.samples.iter().all(|&s| s <= 4095));
}

/// Max and mean |decoded - expected|, printed for the record.
fn difference_stats(name: &str, decoded: &[u16], expected: &[u16]) -> (u32, f64) {
    assert_eq!(decoded.len(), expected.len(), "{name}: sample count");
    let max = decoded.iter().zip(expected).map(|(&a, &b)| u32::from(a.abs_diff(b))).max();
    let sum: u64 = decoded.iter().zip(expected).map(|(&a, &b)| u64::from(a.abs_diff(b))).sum();
    let mean = sum as f64 / decoded.len() as f64;
    let max = max.unwrap_or(0);
    eprintln!("{name}: max |diff| {max}, mean |diff| {mean:.6} over {} samples", decoded.len());
    (max, mean)
}

/// 8-bit baseline streams (SOF0) against libjpeg-turbo via Pillow, components as coded
/// (YCbCr for the JFIF ones, RGB for the Adobe one): interleaved 3-component MCUs, an odd
/// 3 x 3 image (partial blocks), and an RGB stream.
#[test]
fn baseline_8_bit_colour_matches_libjpeg_turbo_within_one() {
    for (stem, width, height) in
        [("SC_rgb_jpeg_dcmtk", 100, 100), ("SC_rgb_small_odd_jpeg", 3, 3), ("SC_rgb_dcmtk_eb_cr", 100, 100)]
    {
        let frame = decode_jpeg_extended(&read(&format!("{stem}.jpg"))).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_eq!(
            (frame.width, frame.height, frame.components, frame.bits_per_sample),
            (width, height, 3, 8),
            "{stem}"
        );
        let expected: Vec<u16> = read(&format!("{stem}.u8")).iter().map(|&b| u16::from(b)).collect();
        let (max, _) = difference_stats(stem, &frame.samples, &expected);
        assert!(max <= 1, "{stem}: max |diff| {max}");
    }
}

/// pydicom's JPEG-lossy.dcm declares a sequential scan with spectral selection 0..0
/// (Se = 0), which T.81 forbids; pydicom's decoders reject it, and so must we.
#[test]
fn invalid_scan_header_is_an_error() {
    let stream = read("JPEG-lossy.jpg");
    match decode_jpeg_extended(&stream) {
        Err(CodecError::Invalid(message)) => assert!(message.contains("Se = 0"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Truncated streams are errors; corrupted ones may decode or fail, but must return.
/// (Sized to run quickly in unoptimized test builds.)
#[test]
fn truncated_and_corrupted_streams_do_not_panic() {
    let small = read("SC_rgb_jpeg_dcmtk.jpg");
    let large = read("JPGExtended.jpg");
    // Every prefix short of the last bytes of the scan is an error.
    for cut in 0..small.len() - 4 {
        assert!(decode_jpeg_extended(&small[..cut]).is_err(), "prefix of {cut} bytes");
    }
    for cut in (0..large.len() - 4).step_by(211) {
        assert!(decode_jpeg_extended(&large[..cut]).is_err(), "prefix of {cut} bytes");
    }
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (original, rounds) in [(&small, 300), (&large, 20)] {
        for _ in 0..rounds {
            let mut stream = original.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % stream.len() as u64) as usize;
                stream[at] = next() as u8;
            }
            let _ = decode_jpeg_extended(&stream);
        }
    }
}

#[test]
fn rejects_other_codestreams() {
    assert!(decode_jpeg_extended(&[]).is_err());
    assert!(decode_jpeg_extended(&[0xFF, 0xD8, 0xFF, 0xD9]).is_err());
    let jpeg_ls = read("JPEGLSNearLossless_08.jls");
    assert!(matches!(decode_jpeg_extended(&jpeg_ls), Err(CodecError::Unsupported(_))));
}
