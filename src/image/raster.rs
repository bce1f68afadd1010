//! PNG and JPEG files: 8- or 16-bit grey, or RGB (alpha dropped).

use std::path::Path;

use super::{ImageMeta, LoadOptions, MedicalImage};
use crate::error::{Error, Result};

pub fn load_raster(path: &Path, options: &LoadOptions) -> Result<MedicalImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut image = load_raster_bytes(&bytes, options)?;
    image.meta.source = Some(path.to_path_buf());
    Ok(image)
}

pub(crate) fn load_raster_bytes(bytes: &[u8], options: &LoadOptions) -> Result<MedicalImage> {
    let format = image::guess_format(bytes).map_err(|e| Error::Decode(e.to_string()))?;
    if format == image::ImageFormat::Png {
        check_png_palette(bytes)?;
    }
    // As for DICOM pixel data: a third-party decoder that panics on hostile data fails this
    // file only.
    std::panic::catch_unwind(|| decode_raster(bytes, format, options))
        .map_err(|_| Error::Decode("decoder crashed on malformed image data".into()))?
}

/// png 0.18.1 copies a `PLTE` palette three bytes at a time without checking that it holds
/// whole RGB entries, and panics on one that does not (a 40-byte palette: fuzz finding,
/// `tests/data/fuzz/png_panic_palette_length.png`). PNG allows 1–256 entries of 3 bytes.
/// Anything else the header reader rejects is left to the full decode, which says so.
fn check_png_palette(bytes: &[u8]) -> Result<()> {
    let Ok(reader) = png::Decoder::new(std::io::Cursor::new(bytes)).read_info() else {
        return Ok(());
    };
    match reader.info().palette.as_deref() {
        Some(palette) if palette.is_empty() || palette.len() % 3 != 0 || palette.len() > 3 * 256 => {
            Err(Error::Decode(format!("PNG palette (PLTE) of {} bytes is not 1 to 256 RGB entries", palette.len())))
        }
        _ => Ok(()),
    }
}

fn decode_raster(bytes: &[u8], format: image::ImageFormat, options: &LoadOptions) -> Result<MedicalImage> {
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(options.limits.max_samples.saturating_mul(4));
    reader.limits(limits);
    let (w, h) = reader.into_dimensions().map_err(|e| Error::Decode(e.to_string()))?;
    options.limits.check(u64::from(h), u64::from(w), 1, 3)?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(options.limits.max_samples.saturating_mul(8));
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| Error::Decode(e.to_string()))?;
    let color = decoded.color();
    let (channels, values): (usize, Vec<f32>) = if color.has_color() {
        let rgb = decoded.to_rgb32f();
        let scale = if color.bytes_per_pixel() / color.channel_count() > 1 { 65535.0 } else { 255.0 };
        (3, rgb.into_raw().into_iter().map(|v| (v * scale).round()).collect())
    } else if color.bytes_per_pixel() / color.channel_count() > 1 {
        (1, decoded.to_luma16().into_raw().into_iter().map(f32::from).collect())
    } else {
        (1, decoded.to_luma8().into_raw().into_iter().map(f32::from).collect())
    };
    let meta = ImageMeta {
        modality: "OT".into(),
        photometric: if channels == 3 { "RGB".into() } else { "MONOCHROME2".into() },
        transfer_syntax: format!("{format:?}"),
        bits_stored: if values.iter().any(|&v| v > 255.0) { 16 } else { 8 },
        ..ImageMeta::default()
    };
    Ok(MedicalImage { meta, frames: 1, rows: h as usize, cols: w as usize, channels, values })
}
