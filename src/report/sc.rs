//! A Secondary Capture (RGB) of the diagnosed image with the task's heatmap blended in and the
//! result burned in below it: what a PACS viewer without SR support shows. Marked DERIVED\
//! SECONDARY, Burned In Annotation YES, and "research use only" in both the pixels and Image
//! Comments.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use super::font::{draw_text, CELL};
use super::{new_uid, now_da_tm, put_empty, put_seq, put_str, put_u16, Error, Result, SourceInstance};
use super::{MANUFACTURER, RESEARCH_USE_ONLY, SOFTWARE_VERSION};
use crate::display::{default_voi, render_rgba};
use crate::image::MedicalImage;
use crate::model::engine::Explanation;

/// Strength of the heatmap tint at its maximum (0: invisible, 1: opaque red).
const HEATMAP_ALPHA: f32 = 0.5;

/// The lines burned below the image (and, joined, written to Image Comments).
pub fn result_lines(explanation: &Explanation) -> Vec<String> {
    let p = &explanation.prediction;
    let (label, prob) = p.top();
    let mut lines = vec![format!("{}: {label} {:.1}%", p.task, 100.0 * prob), "heatmap: attention rollout".to_string()];
    // The same caveats the command line prints (out of distribution, uncalibrated …).
    let caveats = p.caveats();
    if !caveats.is_empty() {
        lines.push(caveats);
    }
    lines.push(RESEARCH_USE_ONLY.to_string());
    lines.push(format!("{MANUFACTURER} {SOFTWARE_VERSION}"));
    lines
}

/// `lines` broken at spaces into lines of at most `max` characters (longer words are cut).
fn wrap(lines: &[String], max: usize) -> Vec<String> {
    let max = max.max(1);
    let mut out = Vec::new();
    for line in lines {
        let mut current = String::new();
        for word in line.split(' ') {
            let candidate = if current.is_empty() { word.to_string() } else { format!("{current} {word}") };
            if candidate.chars().count() <= max {
                current = candidate;
                continue;
            }
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            let chars: Vec<char> = word.chars().collect();
            for chunk in chars.chunks(max) {
                current = chunk.iter().collect();
                if current.chars().count() == max {
                    out.push(std::mem::take(&mut current));
                }
            }
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    out
}

/// The RGB pixels: the frame as the viewer shows it by default, the heatmap as a red tint, and
/// a black band below with the result in white. Returns (rows, cols, pixels).
pub fn render(image: &MedicalImage, frame: usize, explanation: &Explanation) -> Result<(usize, usize, Vec<u8>)> {
    let (rows, cols) = (image.rows, image.cols);
    let heat = &explanation.heatmap;
    if heat.rows != rows || heat.cols != cols || heat.values.len() != rows * cols {
        return Err(Error::Invalid(format!(
            "heatmap {}x{} does not match the image {cols}x{rows}",
            heat.cols, heat.rows
        )));
    }
    if frame >= image.frames {
        return Err(Error::Invalid(format!("frame {frame} of an image with {} frame(s)", image.frames)));
    }
    let rgba = render_rgba(image, frame, &default_voi(image, frame));
    // Text scale: an 8-pixel font stays legible on a 512-pixel image; grow it with the width.
    let scale = (cols / 512).max(1);
    let lines = wrap(&result_lines(explanation), cols / (CELL * scale));
    let line_height = (CELL + 3) * scale;
    let band = lines.len() * line_height + 2 * scale;
    let out_rows = rows + band;
    let mut rgb = vec![0u8; out_rows * cols * 3];
    for (i, (px, &h)) in rgba.chunks_exact(4).zip(&heat.values).enumerate() {
        let a = HEATMAP_ALPHA * h.clamp(0.0, 1.0);
        let tint = [255.0, 0.0, 0.0];
        for c in 0..3 {
            rgb[i * 3 + c] = (f32::from(px[c]) * (1.0 - a) + tint[c] * a).round() as u8;
        }
    }
    for (i, line) in lines.iter().enumerate() {
        draw_text(&mut rgb, cols, out_rows, (scale, rows + scale + i * line_height), line, scale, [255, 255, 255]);
    }
    Ok((out_rows, cols, rgb))
}

/// The Secondary Capture Image Storage object of `explanation` on `image` (frame `frame`),
/// read from `source`.
pub fn build(
    source: &SourceInstance,
    image: &MedicalImage,
    frame: usize,
    explanation: &Explanation,
) -> Result<InMemDicomObject> {
    let (rows, cols, pixels) = render(image, frame, explanation)?;
    let rows16 = u16::try_from(rows).map_err(|_| Error::Invalid(format!("{rows} rows do not fit a DICOM image")))?;
    let cols16 = u16::try_from(cols).map_err(|_| Error::Invalid(format!("{cols} columns do not fit a DICOM image")))?;
    let (date, time) = now_da_tm();
    let mut obj = InMemDicomObject::new_empty();
    // SOP common
    put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, uids::SECONDARY_CAPTURE_IMAGE_STORAGE);
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &new_uid());
    put_str(&mut obj, tags::INSTANCE_CREATION_DATE, VR::DA, &date);
    put_str(&mut obj, tags::INSTANCE_CREATION_TIME, VR::TM, &time);
    // Patient, general study
    source.copy_patient_and_study(&mut obj);
    // General series: a new series in the source's study.
    put_str(&mut obj, tags::MODALITY, VR::CS, "OT");
    put_str(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, &new_uid());
    put_str(&mut obj, tags::SERIES_NUMBER, VR::IS, "9902");
    // Type 2C: a derived picture of a whole image states no side of its own.
    put_empty(&mut obj, tags::LATERALITY, VR::CS);
    put_str(&mut obj, tags::SERIES_DESCRIPTION, VR::LO, "MeLo diagnosis heatmap (research use only)");
    // General equipment, SC equipment
    put_str(&mut obj, tags::MANUFACTURER, VR::LO, MANUFACTURER);
    put_str(&mut obj, tags::SOFTWARE_VERSIONS, VR::LO, SOFTWARE_VERSION);
    put_str(&mut obj, tags::CONVERSION_TYPE, VR::CS, "WSD");
    // General image, SC image
    put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_empty(&mut obj, tags::PATIENT_ORIENTATION, VR::CS);
    put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &time);
    put_str(&mut obj, tags::DATE_OF_SECONDARY_CAPTURE, VR::DA, &date);
    put_str(&mut obj, tags::TIME_OF_SECONDARY_CAPTURE, VR::TM, &time);
    obj.put(DataElement::new(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(["DERIVED", "SECONDARY"].map(String::from).into()),
    ));
    put_str(
        &mut obj,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        &format!("Attention-rollout heatmap and diagnosis of task {} burned in", explanation.prediction.task),
    );
    let mut reference = source.sop_reference();
    if image.frames > 1 {
        put_str(&mut reference, tags::REFERENCED_FRAME_NUMBER, VR::IS, &(frame + 1).to_string());
    }
    put_seq(&mut obj, tags::SOURCE_IMAGE_SEQUENCE, vec![reference]);
    put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put_str(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(&mut obj, tags::IMAGE_COMMENTS, VR::LT, &result_lines(explanation).join(". "));
    // Image pixel: 8-bit RGB, interleaved.
    put_u16(&mut obj, tags::SAMPLES_PER_PIXEL, 3);
    put_str(&mut obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    put_u16(&mut obj, tags::PLANAR_CONFIGURATION, 0);
    put_u16(&mut obj, tags::ROWS, rows16);
    put_u16(&mut obj, tags::COLUMNS, cols16);
    put_u16(&mut obj, tags::BITS_ALLOCATED, 8);
    put_u16(&mut obj, tags::BITS_STORED, 8);
    put_u16(&mut obj, tags::HIGH_BIT, 7);
    put_u16(&mut obj, tags::PIXEL_REPRESENTATION, 0);
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(pixels.into())));
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrapping_keeps_every_character_within_the_width() {
        let lines = wrap(&["research use only - not for diagnostic use".into(), "abcdefghijkl".into()], 10);
        assert!(lines.iter().all(|l| l.chars().count() <= 10), "{lines:?}");
        assert_eq!(lines.concat().replace(' ', ""), "researchuseonly-notfordiagnosticuseabcdefghijkl");
    }
}
