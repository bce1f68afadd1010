//! Pure-Rust decoders for the DICOM transfer syntaxes whose codecs the dicom-rs stack only
//! offers through C/C++ libraries (or not at all):
//!
//! * [`decode_jpeg_ls`]: JPEG-LS (ITU-T T.87 | ISO/IEC 14495-1), lossless and near-lossless,
//!   transfer syntaxes 1.2.840.10008.1.2.4.80 and .81;
//! * [`decode_jpeg_extended`]: JPEG Extended, sequential DCT with Huffman coding at 8- or
//!   12-bit precision (ITU-T T.81 processes 2 and 4), transfer syntax 1.2.840.10008.1.2.4.51.
//!
//! Both take one frame's codestream (one item of the encapsulated pixel data, SOI to EOI)
//! and return the decoded samples as a [`Frame`]. They are written to be safe on hostile
//! input: they never panic, every loop is bounded by the image size, they allocate nothing
//! larger than the image the header declares (itself capped at [`MAX_SAMPLES`]), and a
//! codestream that ends early is an error ([`CodecError::Truncated`]), not a zero-filled image.
//!
//! This module depends on nothing else in the crate (only `std`), so that it can be built
//! and tested on its own.

use std::fmt;

mod bytes;
pub mod jpeg12;
pub mod jpeg_ls;

pub use jpeg12::decode_jpeg_extended;
pub use jpeg_ls::decode_jpeg_ls;

/// The most samples (width × height × components) a decoder accepts: 2^28, i.e. 512 MiB
/// of `u16`. Larger headers are refused before anything is allocated.
pub const MAX_SAMPLES: u64 = 1 << 28;

/// One decoded image.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Samples per line (columns).
    pub width: u32,
    /// Lines (rows).
    pub height: u32,
    /// Components per pixel: 1 (grey) or 3 (e.g. R, G, B), as coded.
    pub components: u8,
    /// Precision of the samples as coded (JPEG-LS `P`, JPEG `P`): 2..=16.
    pub bits_per_sample: u8,
    /// `width × height × components` samples, interleaved by pixel (for 3 components
    /// c0, c1, c2 of pixel 0, then of pixel 1, ...), rows top to bottom. The values are the
    /// raw unsigned codestream samples: signed DICOM data is returned as its two's-complement
    /// bit pattern in `bits_per_sample` bits, and no colour transform is applied.
    pub samples: Vec<u16>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("components", &self.components)
            .field("bits_per_sample", &self.bits_per_sample)
            .field("samples", &format_args!("[u16; {}]", self.samples.len()))
            .finish()
    }
}

/// Why a codestream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The data ended (or reached a marker) before the image was complete.
    Truncated(String),
    /// The data violates the standard (a bad marker, an impossible code, ...).
    Invalid(String),
    /// Valid, but uses a feature this decoder does not implement.
    Unsupported(String),
    /// The header declares an image larger than [`MAX_SAMPLES`].
    TooLarge { width: u64, height: u64, components: u64 },
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Truncated(what) => write!(f, "truncated codestream: {what}"),
            CodecError::Invalid(what) => write!(f, "invalid codestream: {what}"),
            CodecError::Unsupported(what) => write!(f, "unsupported codestream feature: {what}"),
            CodecError::TooLarge { width, height, components } => {
                write!(f, "image of {width}×{height}×{components} samples exceeds the limit of {MAX_SAMPLES}")
            }
        }
    }
}

impl std::error::Error for CodecError {}

/// Checks `width × height × components` against [`MAX_SAMPLES`] (and against zero) and
/// returns the sample count.
pub(crate) fn checked_sample_count(width: u32, height: u32, components: usize) -> Result<usize, CodecError> {
    if width == 0 || height == 0 || components == 0 {
        return Err(CodecError::Invalid(format!("empty image ({width}×{height}, {components} components)")));
    }
    let total = u64::from(width) * u64::from(height) * components as u64;
    if total > MAX_SAMPLES {
        return Err(CodecError::TooLarge { width: width.into(), height: height.into(), components: components as u64 });
    }
    Ok(total as usize)
}
