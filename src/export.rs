//! Exports of decoded images: `.npy` float32 values after the modality LUT, and `.png` of the
//! windowed display. Every write is atomic (see `atomic`).

use std::borrow::Cow;
use std::path::Path;

use npyz::WriterBuilder;

use crate::atomic::write_atomic;
use crate::display::{render_rgba, Voi};
use crate::error::{Error, Result};
use crate::image::MedicalImage;

/// Writes all frames as float32, shape (frames, rows, cols) or (frames, rows, cols, 3).
pub fn write_npy(image: &MedicalImage, path: &Path) -> Result<()> {
    write_atomic(path, |w| encode_npy(image, w))
}

/// The `.npy` bytes of [`write_npy`], into any writer.
pub fn encode_npy(image: &MedicalImage, w: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut shape = vec![image.frames as u64, image.rows as u64, image.cols as u64];
    if image.channels == 3 {
        shape.push(3);
    }
    let mut writer = npyz::WriteOptions::<f32>::new().default_dtype().shape(&shape).writer(w).begin_nd()?;
    writer.extend(image.values.iter().copied())?;
    writer.finish()
}

/// Writes the display image of one frame as 8-bit PNG (grey or RGB).
pub fn write_png(image: &MedicalImage, frame: usize, voi: &Voi, path: &Path) -> Result<()> {
    let encoded = encode_png(image, frame, voi)?;
    crate::atomic::write_bytes_atomic(path, &encoded)
}

/// The PNG bytes of [`write_png`].
pub fn encode_png(image: &MedicalImage, frame: usize, voi: &Voi) -> Result<Vec<u8>> {
    if frame >= image.frames {
        return Err(Error::Invalid(format!("frame {frame} out of range (image has {})", image.frames)));
    }
    let rgba = render_rgba(image, frame, voi);
    let (color, bytes): (image::ExtendedColorType, Vec<u8>) = if image.is_color() {
        (image::ExtendedColorType::Rgb8, rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect())
    } else {
        (image::ExtendedColorType::L8, rgba.chunks_exact(4).map(|p| p[0]).collect())
    };
    let mut encoded = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut encoded),
        &bytes,
        image.cols as u32,
        image.rows as u32,
        color,
    )
    .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(encoded)
}

/// A text field for a CSV cell that a spreadsheet opens as text (OWASP, CSV injection): a
/// value starting with `=`, `+`, `-`, `@`, tab or carriage return gets a leading `'` so it is
/// not run as a formula, and a value holding a comma, quote, CR or LF is quoted with its
/// quotes doubled (RFC 4180).
pub fn csv_field(value: &str) -> Cow<'_, str> {
    let formula = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = value.contains([',', '"', '\r', '\n']);
    if !formula && !quote {
        return Cow::Borrowed(value);
    }
    let text = if formula { format!("'{value}") } else { value.to_string() };
    if quote {
        Cow::Owned(format!("\"{}\"", text.replace('"', "\"\"")))
    } else {
        Cow::Owned(text)
    }
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_cannot_become_formulas_or_break_rows() {
        for (value, want) in [
            ("member-0001", "member-0001"),
            ("=HYPERLINK(\"http://x\")", "\"'=HYPERLINK(\"\"http://x\"\")\""),
            ("+1", "'+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tcmd", "'\tcmd"),
            ("a\rb", "\"a\rb\""),
            ("a,b", "\"a,b\""),
            ("a\nb", "\"a\nb\""),
            ("say \"hi\"", "\"say \"\"hi\"\"\""),
        ] {
            assert_eq!(csv_field(value), want, "{value:?}");
        }
    }
}
