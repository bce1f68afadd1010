//! Decoded images: pixel values after the modality LUT, plus the metadata a viewer needs.
//!
//! One `MedicalImage` is one file: DICOM (any frame count) or a PNG/JPEG raster. Values are
//! `f32` in the modality's units (HU for CT), interleaved RGB for colour images.

pub mod deidentify;
mod deidentify_table;
mod dicom;
mod jpeg_ls;
mod meta;
mod raster;

/// The whole DICOM object as the viewer reads it (lenient with padding and mis-encoded meta),
/// for the writers of derived and de-identified files.
pub(crate) use dicom::parse as parse_dicom_object;
pub(crate) use dicom::without_trailing_padding;
pub use dicom::{load_dicom, load_dicom_bytes, parse_header as parse_header_bytes};
pub use meta::{ImageMeta, Photometric, TagEntry, VoiLut, Window};
pub use raster::load_raster;

use std::path::Path;

use crate::error::{Error, Result};

/// Limits that protect the viewer from lying headers and decompression bombs.
#[derive(Debug, Clone, Copy)]
pub struct LoadLimits {
    /// Maximum rows × columns × frames × samples of one image.
    pub max_samples: u64,
    /// Maximum number of frames.
    pub max_frames: u32,
}

/// Environment variable overriding [`LoadLimits::max_samples`].
pub const MAX_SAMPLES_ENV: &str = "MELO_MAX_SAMPLES";
/// Environment variable overriding [`LoadLimits::max_frames`].
pub const MAX_FRAMES_ENV: &str = "MELO_MAX_FRAMES";

/// The environment's limits when they are set and valid, else the built-in ones; front ends
/// call [`LoadLimits::from_env`] once at start to report a malformed setting.
impl Default for LoadLimits {
    fn default() -> Self {
        Self::from_env().unwrap_or(Self::BUILT_IN)
    }
}

impl LoadLimits {
    /// 2^30 samples (4 GiB of f32 values, e.g. a 2,048-slice 512² CT) and 10,000 frames.
    pub const BUILT_IN: Self = Self { max_samples: 1 << 30, max_frames: 10_000 };

    /// The built-in limits with `MELO_MAX_SAMPLES` / `MELO_MAX_FRAMES` applied; a value that is
    /// not a positive integer is an error naming the variable.
    pub fn from_env() -> Result<Self> {
        fn read(name: &str) -> Result<Option<u64>> {
            match std::env::var(name) {
                Ok(text) => match text.trim().replace('_', "").parse::<u64>() {
                    Ok(v) if v > 0 => Ok(Some(v)),
                    _ => Err(Error::Invalid(format!("{name}={text:?} is not a positive integer"))),
                },
                Err(std::env::VarError::NotPresent) => Ok(None),
                Err(std::env::VarError::NotUnicode(_)) => Err(Error::Invalid(format!("{name} is not valid text"))),
            }
        }
        let mut limits = Self::BUILT_IN;
        if let Some(v) = read(MAX_SAMPLES_ENV)? {
            limits.max_samples = v;
        }
        if let Some(v) = read(MAX_FRAMES_ENV)? {
            limits.max_frames =
                u32::try_from(v).map_err(|_| Error::Invalid(format!("{MAX_FRAMES_ENV}={v} exceeds {}", u32::MAX)))?;
        }
        Ok(limits)
    }

    pub fn check(&self, rows: u64, cols: u64, frames: u64, samples: u64) -> Result<()> {
        if frames > u64::from(self.max_frames) {
            return Err(Error::TooLarge(format!(
                "{frames} frames (limit {}; raise it with {MAX_FRAMES_ENV})",
                self.max_frames
            )));
        }
        let total = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(frames))
            .and_then(|n| n.checked_mul(samples))
            .unwrap_or(u64::MAX);
        if total > self.max_samples {
            return Err(Error::TooLarge(format!(
                "{rows}×{cols}×{frames}×{samples} samples (limit {}; raise it with {MAX_SAMPLES_ENV})",
                self.max_samples
            )));
        }
        Ok(())
    }
}

/// Options for opening an image file.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub limits: LoadLimits,
}

/// A decoded image with its metadata.
#[derive(Debug, Clone)]
pub struct MedicalImage {
    pub meta: ImageMeta,
    pub frames: usize,
    pub rows: usize,
    pub cols: usize,
    /// 1 (grey) or 3 (RGB, interleaved).
    pub channels: usize,
    /// Values after the modality LUT, frame-major, row-major, channel-interleaved.
    pub values: Vec<f32>,
}

impl MedicalImage {
    pub fn frame_len(&self) -> usize {
        self.rows * self.cols * self.channels
    }

    pub fn frame(&self, index: usize) -> &[f32] {
        let n = self.frame_len();
        &self.values[index * n..(index + 1) * n]
    }

    pub fn is_color(&self) -> bool {
        self.channels == 3
    }

    /// The value(s) at column `x`, row `y` of a frame, or `None` outside the image.
    pub fn value_at(&self, frame: usize, x: usize, y: usize) -> Option<&[f32]> {
        if frame >= self.frames || x >= self.cols || y >= self.rows {
            return None;
        }
        let start = frame * self.frame_len() + (y * self.cols + x) * self.channels;
        Some(&self.values[start..start + self.channels])
    }

    /// Minimum and maximum value over every frame.
    pub fn value_range(&self) -> (f32, f32) {
        self.values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    }

    /// Minimum and maximum of one frame.
    pub fn frame_range(&self, frame: usize) -> (f32, f32) {
        self.frame(frame).iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
    }
}

/// The kinds of file the workstation opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Dicom,
    Png,
    Jpeg,
}

/// Guesses a file's kind from its first bytes (extensions lie, DICOM often has none).
pub fn sniff(bytes: &[u8]) -> FileKind {
    if bytes.starts_with(&[0x89, b'P', b'N', b'G']) {
        FileKind::Png
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        FileKind::Jpeg
    } else {
        FileKind::Dicom
    }
}

/// Opens any supported file: DICOM, PNG or JPEG. The file is only read.
pub fn load_image(path: &Path, options: &LoadOptions) -> Result<MedicalImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut image = load_image_bytes(&bytes, options)?;
    image.meta.source = Some(path.to_path_buf());
    Ok(image)
}

/// Decodes a whole file already in memory (DICOM, PNG or JPEG, told apart by its first bytes).
pub fn load_image_bytes(bytes: &[u8], options: &LoadOptions) -> Result<MedicalImage> {
    match sniff(bytes) {
        FileKind::Dicom => load_dicom_bytes(bytes, options),
        FileKind::Png | FileKind::Jpeg => raster::load_raster_bytes(bytes, options),
    }
}
