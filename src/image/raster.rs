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
        let scale = if color.bytes_per_pixel() / color.channel_count() as u8 > 1 { 65535.0 } else { 255.0 };
        (3, rgb.into_raw().into_iter().map(|v| (v * scale).round()).collect())
    } else if color.bytes_per_pixel() / color.channel_count() as u8 > 1 {
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
