//! The words shown over and under the image: corner overlays and the value under the cursor.
//! Plain functions of the metadata, so what is (and is not) shown can be tested without a UI.

use crate::image::{ImageMeta, MedicalImage, Window};

/// Patient name, ID and birth date, one per line; only the non-empty ones.
/// Callers show these only while patient details are not hidden.
pub fn patient_lines(meta: &ImageMeta) -> Vec<String> {
    [
        (String::new(), &meta.patient_name),
        ("ID ".to_string(), &meta.patient_id),
        ("Born ".to_string(), &meta.patient_birth_date),
    ]
    .into_iter()
    .filter(|(_, value)| !value.trim().is_empty())
    .map(|(prefix, value)| format!("{prefix}{}", value.trim()))
    .collect()
}

/// Modality and body part, series number, series and study description: whichever of them
/// `meta` has. Metadata that went through `without_phi` has no descriptions (the basic
/// confidentiality profile removes them) but keeps the rest.
pub fn study_lines(meta: &ImageMeta) -> Vec<String> {
    let mut lines = Vec::new();
    let modality = meta.modality.trim();
    let body_part = meta.body_part.trim();
    match (modality.is_empty(), body_part.is_empty()) {
        (false, false) => lines.push(format!("{modality} {body_part}")),
        (false, true) => lines.push(modality.to_string()),
        (true, false) => lines.push(body_part.to_string()),
        (true, true) => {}
    }
    if let Some(number) = meta.series_number {
        lines.push(format!("Series {number}"));
    }
    for text in [&meta.series_description, &meta.study_description] {
        if !text.trim().is_empty() {
            lines.push(text.trim().to_string());
        }
    }
    lines
}

/// "Slice 3/20", or "Frame" when the stack is the frames of one file.
pub fn position_line(index: usize, count: usize, single_multiframe_file: bool) -> String {
    let noun = if single_multiframe_file { "Frame" } else { "Slice" };
    format!("{noun} {}/{}", index + 1, count)
}

/// "W 400  L 40". Dragging gives fractional values; decimals only matter for narrow windows
/// (e.g. on 0..1 data).
pub fn window_line(window: Window) -> String {
    let short = |value: f64| {
        if value.abs() >= 10.0 {
            format_number(value.round())
        } else {
            format_number(value)
        }
    };
    format!("W {}  L {}", short(window.width), short(window.center))
}

/// Screen pixels per image pixel, as a percentage.
pub fn zoom_line(zoom_points: f32, pixels_per_point: f32) -> String {
    format!("Zoom {:.0}%", zoom_points * pixels_per_point * 100.0)
}

/// Integers without decimals, other values with at most two.
pub fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if (value - value.round()).abs() < 1e-6 {
        return format!("{value:.0}");
    }
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// "x 12  y 40  -1000 HU", or an RGB triplet for colour images; `None` outside the image.
pub fn probe_text(image: &MedicalImage, frame: usize, col: usize, row: usize) -> Option<String> {
    let values = image.value_at(frame, col, row)?;
    let value = match values {
        [grey] => {
            let units = image.meta.units.trim();
            let number = format_number(f64::from(*grey));
            if units.is_empty() {
                number
            } else {
                format!("{number} {units}")
            }
        }
        [r, g, b] => format!(
            "RGB ({}, {}, {})",
            format_number(f64::from(*r)),
            format_number(f64::from(*g)),
            format_number(f64::from(*b))
        ),
        other => other.iter().map(|v| format_number(f64::from(*v))).collect::<Vec<_>>().join(", "),
    };
    Some(format!("x {col}  y {row}  {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(format_number(400.0), "400");
        assert_eq!(format_number(-1000.0), "-1000");
        assert_eq!(format_number(0.5), "0.5");
        assert_eq!(format_number(1.234_56), "1.23");
        assert_eq!(window_line(Window { center: 914.82, width: 3362.04 }), "W 3362  L 915");
        assert_eq!(window_line(Window { center: 0.25, width: 0.5 }), "W 0.5  L 0.25");
    }

    #[test]
    fn empty_patient_fields_give_no_lines() {
        let mut meta = ImageMeta { patient_name: "Doe^Jane".into(), ..ImageMeta::default() };
        assert_eq!(patient_lines(&meta), vec!["Doe^Jane".to_string()]);
        meta = meta.without_phi();
        assert!(patient_lines(&meta).is_empty());
    }

    /// What the top corners show of a header with patient details shown and hidden: the
    /// descriptions, name, ID and birth date go, modality, body part and series number stay.
    #[test]
    fn hidden_overlay_shows_no_description_or_name() {
        let meta = ImageMeta {
            modality: "MR".into(),
            body_part: "HEAD".into(),
            series_number: Some(7),
            series_description: "T1 SAG Rossi follow-up".into(),
            study_description: "BRAIN Dr. Weiss protocol".into(),
            patient_name: "Rossi Maria".into(),
            patient_id: "PID-4711".into(),
            patient_birth_date: "19520314".into(),
            ..ImageMeta::default()
        };
        let shown = [patient_lines(&meta), study_lines(&meta)].concat().join("\n");
        for secret in ["T1 SAG Rossi follow-up", "BRAIN Dr. Weiss protocol", "Rossi Maria", "PID-4711", "19520314"] {
            assert!(shown.contains(secret), "{secret:?} shown while not hidden: {shown}");
        }

        let hidden_meta = meta.without_phi();
        let hidden = [patient_lines(&hidden_meta), study_lines(&hidden_meta)].concat().join("\n");
        for secret in ["Rossi", "Weiss", "T1 SAG", "BRAIN", "PID-4711", "19520314"] {
            assert!(!hidden.contains(secret), "{secret:?} shown while hidden: {hidden}");
        }
        assert_eq!(study_lines(&hidden_meta), vec!["MR HEAD".to_string(), "Series 7".to_string()]);
    }

    #[test]
    fn probe_shows_units_and_rgb() {
        let mut image = MedicalImage {
            meta: ImageMeta { units: "HU".into(), ..ImageMeta::default() },
            frames: 1,
            rows: 1,
            cols: 2,
            channels: 1,
            values: vec![-1000.0, 40.0],
        };
        assert_eq!(probe_text(&image, 0, 1, 0).as_deref(), Some("x 1  y 0  40 HU"));
        assert!(probe_text(&image, 0, 2, 0).is_none());
        image.channels = 3;
        image.cols = 1;
        image.values = vec![1.0, 2.0, 3.0];
        assert_eq!(probe_text(&image, 0, 0, 0).as_deref(), Some("x 0  y 0  RGB (1, 2, 3)"));
    }
}
