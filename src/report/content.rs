//! Reading a DICOM Structured Report back as text: the document's header and its content tree
//! (concept names, values with units, references) as indented lines, so a viewer can show an
//! SR — ours from `melo predict --sr`, or any other — that it has no pixels to draw for.
//!
//! This is a reader for display, not a validator: an item whose value is missing or of a type
//! this does not know is listed with what it has, never dropped, so nothing of the document is
//! hidden from the reader by accident. Patient-identifying values (the patient module, and
//! TID 1006 subject name / ID / birth date items) are marked, so a view can blank them.

use std::path::{Path, PathBuf};

use dicom_core::value::Value;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::{clean, Error, Result};

/// Concepts whose value identifies the patient (TID 1006 Subject Context, Patient): DCM
/// 121029 Subject Name, 121030 Subject ID, 121031 Subject Birth Date.
const SUBJECT_CONCEPTS: &[&str] = &["121029", "121030", "121031"];

/// Items nested deeper than this are not followed (a hostile file could nest without end).
const MAX_DEPTH: usize = 32;
/// At most this many items are listed (the rest is counted in the last line).
const MAX_ITEMS: usize = 10_000;

/// One content item as a line of text.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentLine {
    /// 0 for the root's children, one more per level.
    pub depth: usize,
    /// Relationship Type, e.g. `CONTAINS`, `HAS CONCEPT MOD`.
    pub relationship: String,
    /// Value Type, e.g. `NUM`, `CODE`, `CONTAINER`.
    pub value_type: String,
    /// The concept name's meaning (with its code when it has no meaning).
    pub concept: String,
    /// The value as text: a number with its unit, a code's meaning, a text, a reference.
    pub value: String,
    /// The value identifies the patient (a subject name, ID or birth date).
    pub identifying: bool,
}

/// An SR document as read for display.
#[derive(Debug, Clone, PartialEq)]
pub struct SrDocument {
    pub path: PathBuf,
    /// The root container's concept name, e.g. `Imaging Measurement Report`.
    pub title: String,
    pub sop_class_uid: String,
    /// The SOP class's name when known, e.g. `Comprehensive SR Storage`.
    pub sop_class_name: String,
    pub patient_name: String,
    pub patient_id: String,
    pub patient_birth_date: String,
    pub study_date: String,
    pub content_date: String,
    pub content_time: String,
    pub series_description: String,
    pub manufacturer: String,
    pub completion_flag: String,
    pub verification_flag: String,
    /// The content tree, depth first.
    pub lines: Vec<ContentLine>,
    /// Items left out past [`MAX_ITEMS`] or [`MAX_DEPTH`].
    pub omitted: usize,
}

impl SrDocument {
    /// The document as plain text lines: header, then the tree (two spaces per level).
    /// With `hide_patient`, the patient's name, ID and birth date, and subject-identifying
    /// items, read `(hidden)`.
    pub fn text_lines(&self, hide_patient: bool) -> Vec<String> {
        let patient = |v: &str| if hide_patient { "(hidden)".to_string() } else { v.to_string() };
        let mut out = vec![
            format!("{} ({})", self.title, self.sop_class_name),
            format!(
                "Patient: {}   ID: {}   Birth date: {}",
                patient(&self.patient_name.replace('^', " ")),
                patient(&self.patient_id),
                patient(&self.patient_birth_date)
            ),
            format!(
                "Study date: {}   Content: {} {}   {}",
                self.study_date, self.content_date, self.content_time, self.series_description
            ),
            format!(
                "Completion: {}   Verification: {}   Made by: {}",
                self.completion_flag, self.verification_flag, self.manufacturer
            ),
        ];
        for line in &self.lines {
            let value = if line.identifying && hide_patient { "(hidden)".to_string() } else { line.value.clone() };
            let indent = "  ".repeat(line.depth);
            let text = match (line.concept.is_empty(), value.is_empty()) {
                (_, true) => format!("{indent}{} [{}]", line.concept, line.value_type),
                (true, false) => format!("{indent}[{}] {value}", line.value_type),
                (false, false) => format!("{indent}{}: {value}", line.concept),
            };
            out.push(text);
        }
        if self.omitted > 0 {
            out.push(format!("… {} more item(s) not listed", self.omitted));
        }
        out
    }
}

/// True when `uid` is a Structured Report storage SOP class (PS3.4 B.5: 1.2.840.10008.5.1.4.1.1.88.x).
pub fn is_sr_class(uid: &str) -> bool {
    uid.starts_with("1.2.840.10008.5.1.4.1.1.88.")
}

/// Reads the SR document in `path`; refuses a file that is not an SR.
pub fn read(path: &Path) -> Result<SrDocument> {
    let source_error = |reason: String| Error::Source { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| source_error(e.to_string()))?;
    let (obj, _) = crate::image::parse_dicom_object(&bytes).map_err(|e| source_error(e.to_string()))?;
    let sop_class_uid = text(&obj, tags::SOP_CLASS_UID);
    let modality = text(&obj, tags::MODALITY);
    if !is_sr_class(&sop_class_uid) && !modality.eq_ignore_ascii_case("SR") {
        return Err(source_error(format!("not a structured report (SOP class {sop_class_uid:?})")));
    }
    let sop_class_name = sop_class_name(&sop_class_uid).unwrap_or_else(|| format!("SOP class {sop_class_uid}"));
    let mut doc = SrDocument {
        path: path.to_path_buf(),
        title: concept_of(&obj),
        sop_class_uid,
        sop_class_name,
        patient_name: text(&obj, tags::PATIENT_NAME),
        patient_id: text(&obj, tags::PATIENT_ID),
        patient_birth_date: text(&obj, tags::PATIENT_BIRTH_DATE),
        study_date: text(&obj, tags::STUDY_DATE),
        content_date: text(&obj, tags::CONTENT_DATE),
        content_time: text(&obj, tags::CONTENT_TIME),
        series_description: text(&obj, tags::SERIES_DESCRIPTION),
        manufacturer: text(&obj, tags::MANUFACTURER),
        completion_flag: text(&obj, tags::COMPLETION_FLAG),
        verification_flag: text(&obj, tags::VERIFICATION_FLAG),
        lines: Vec::new(),
        omitted: 0,
    };
    if doc.title.is_empty() {
        doc.title = "Structured report".into();
    }
    let mut lines = Vec::new();
    let mut omitted = 0;
    walk(&obj, 0, &mut lines, &mut omitted);
    doc.lines = lines;
    doc.omitted = omitted;
    Ok(doc)
}

fn walk(obj: &InMemDicomObject, depth: usize, lines: &mut Vec<ContentLine>, omitted: &mut usize) {
    for item in items(obj, tags::CONTENT_SEQUENCE) {
        if depth >= MAX_DEPTH || lines.len() >= MAX_ITEMS {
            *omitted += 1 + count(item);
            continue;
        }
        let concept_code = items(item, tags::CONCEPT_NAME_CODE_SEQUENCE)
            .first()
            .map(|c| text(c, tags::CODE_VALUE))
            .unwrap_or_default();
        lines.push(ContentLine {
            depth,
            relationship: text(item, tags::RELATIONSHIP_TYPE),
            value_type: text(item, tags::VALUE_TYPE),
            concept: concept_of(item),
            value: value_of(item),
            identifying: SUBJECT_CONCEPTS.contains(&concept_code.as_str()),
        });
        walk(item, depth + 1, lines, omitted);
    }
}

/// Items of a nested content tree (for the count of what was left out).
fn count(obj: &InMemDicomObject) -> usize {
    items(obj, tags::CONTENT_SEQUENCE).iter().map(|i| 1 + count(i)).sum()
}

/// The items of a sequence attribute (none when absent or not a sequence).
fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    match obj.element_opt(tag).ok().flatten().map(|e| e.value()) {
        Some(Value::Sequence(seq)) => seq.items(),
        _ => &[],
    }
}

/// Names of the SOP classes an SR of ours (and the common ones of others) holds or refers to
/// (dicom-dictionary-std's SOP class table is behind a feature this build does not enable).
const SOP_CLASS_NAMES: &[(&str, &str)] = &[
    ("1.2.840.10008.5.1.4.1.1.88.11", "Basic Text SR"),
    ("1.2.840.10008.5.1.4.1.1.88.22", "Enhanced SR"),
    ("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR"),
    ("1.2.840.10008.5.1.4.1.1.88.34", "Comprehensive 3D SR"),
    ("1.2.840.10008.5.1.4.1.1.88.35", "Extensible SR"),
    ("1.2.840.10008.5.1.4.1.1.88.40", "Procedure Log"),
    ("1.2.840.10008.5.1.4.1.1.88.50", "Mammography CAD SR"),
    ("1.2.840.10008.5.1.4.1.1.88.59", "Key Object Selection Document"),
    ("1.2.840.10008.5.1.4.1.1.88.65", "Chest CAD SR"),
    ("1.2.840.10008.5.1.4.1.1.88.67", "X-Ray Radiation Dose SR"),
    ("1.2.840.10008.5.1.4.1.1.1", "CR Image"),
    ("1.2.840.10008.5.1.4.1.1.1.1", "Digital X-Ray Image (for presentation)"),
    ("1.2.840.10008.5.1.4.1.1.1.2", "Digital Mammography X-Ray Image (for presentation)"),
    ("1.2.840.10008.5.1.4.1.1.2", "CT Image"),
    ("1.2.840.10008.5.1.4.1.1.4", "MR Image"),
    ("1.2.840.10008.5.1.4.1.1.6.1", "Ultrasound Image"),
    ("1.2.840.10008.5.1.4.1.1.3.1", "Ultrasound Multi-frame Image"),
    ("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture Image"),
    ("1.2.840.10008.5.1.4.1.1.77.1.4", "VL Photographic Image"),
];

/// The standard's name of a SOP class, e.g. `Comprehensive SR`.
fn sop_class_name(uid: &str) -> Option<String> {
    SOP_CLASS_NAMES.iter().find(|(u, _)| *u == uid).map(|(_, name)| name.to_string())
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| clean(&s)).unwrap_or_default()
}

/// A code item as its meaning, or `VALUE (SCHEME)` when it has none.
fn code_text(code: &InMemDicomObject) -> String {
    let meaning = text(code, tags::CODE_MEANING);
    if meaning.is_empty() {
        format!("{} ({})", text(code, tags::CODE_VALUE), text(code, tags::CODING_SCHEME_DESIGNATOR))
    } else {
        meaning
    }
}

fn concept_of(item: &InMemDicomObject) -> String {
    items(item, tags::CONCEPT_NAME_CODE_SEQUENCE).first().map(code_text).unwrap_or_default()
}

/// The value of a content item by its Value Type (PS3.3 C.17.3.2).
fn value_of(item: &InMemDicomObject) -> String {
    let value_type = text(item, tags::VALUE_TYPE);
    match value_type.as_str() {
        "TEXT" => text(item, tags::TEXT_VALUE),
        "CODE" => items(item, tags::CONCEPT_CODE_SEQUENCE).first().map(code_text).unwrap_or_default(),
        "NUM" => match items(item, tags::MEASURED_VALUE_SEQUENCE).first() {
            Some(measured) => {
                let number = text(measured, tags::NUMERIC_VALUE);
                let unit = items(measured, tags::MEASUREMENT_UNITS_CODE_SEQUENCE)
                    .first()
                    // UCUM units are written by their code ("%", "mm"); the meaning of other
                    // schemes' units reads better.
                    .map(|u| {
                        if text(u, tags::CODING_SCHEME_DESIGNATOR) == "UCUM" {
                            text(u, tags::CODE_VALUE)
                        } else {
                            code_text(u)
                        }
                    })
                    .unwrap_or_default();
                match unit.as_str() {
                    "" | "1" => number,
                    _ => format!("{number} {unit}"),
                }
            }
            None => "(no value)".into(),
        },
        "UIDREF" => text(item, tags::UID),
        "DATE" => text(item, tags::DATE),
        "TIME" => text(item, tags::TIME),
        "DATETIME" => text(item, tags::DATE_TIME),
        "PNAME" => text(item, tags::PERSON_NAME).replace('^', " "),
        "IMAGE" | "COMPOSITE" | "WAVEFORM" => match items(item, tags::REFERENCED_SOP_SEQUENCE).first() {
            Some(reference) => {
                let class = text(reference, tags::REFERENCED_SOP_CLASS_UID);
                let class_name = sop_class_name(&class).unwrap_or(class);
                let mut value = format!("{class_name} {}", text(reference, tags::REFERENCED_SOP_INSTANCE_UID));
                let frames = text(reference, tags::REFERENCED_FRAME_NUMBER);
                if !frames.is_empty() {
                    value.push_str(&format!(" frame {frames}"));
                }
                value
            }
            None => "(no reference)".into(),
        },
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{code, put_seq, put_str, write_part10};
    use dicom_core::VR;

    fn item(concept: &str, value_type: &str) -> InMemDicomObject {
        let mut it = InMemDicomObject::new_empty();
        put_str(&mut it, tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS");
        put_str(&mut it, tags::VALUE_TYPE, VR::CS, value_type);
        put_seq(&mut it, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code("1", "99X", concept)]);
        it
    }

    fn sr_file(dir: &Path, root_children: Vec<InMemDicomObject>) -> PathBuf {
        let mut obj = InMemDicomObject::new_empty();
        put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.88.33");
        put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, "2.25.1");
        put_str(&mut obj, tags::PATIENT_NAME, VR::PN, "DOE^JANE");
        put_str(&mut obj, tags::VALUE_TYPE, VR::CS, "CONTAINER");
        put_seq(&mut obj, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code("2", "99X", "Report")]);
        put_seq(&mut obj, tags::CONTENT_SEQUENCE, root_children);
        let path = dir.join("sr.dcm");
        write_part10(obj, &path).unwrap();
        path
    }

    #[test]
    fn deep_trees_are_cut_and_counted_and_odd_items_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        // 40 nested containers: the first 32 levels are listed, the rest counted.
        let mut node = item("leaf", "CONTAINER");
        for _ in 0..39 {
            let mut parent = item("level", "CONTAINER");
            put_seq(&mut parent, tags::CONTENT_SEQUENCE, vec![node]);
            node = parent;
        }
        // A NUM without its measured value and an item of an unknown value type stay listed.
        let doc = read(&sr_file(dir.path(), vec![node, item("empty", "NUM"), item("odd", "SCOORD9")])).unwrap();
        assert_eq!(doc.title, "Report");
        assert_eq!(doc.omitted, 8);
        assert_eq!(doc.lines.len(), MAX_DEPTH + 2);
        assert_eq!(doc.lines[MAX_DEPTH].value, "(no value)");
        assert_eq!(doc.lines[MAX_DEPTH + 1].concept, "odd");
        let text = doc.text_lines(true);
        assert!(text[1].starts_with("Patient: (hidden)"), "{text:?}");
        assert!(!text.join("\n").contains("DOE"));
        assert!(doc.text_lines(false)[1].starts_with("Patient: DOE JANE"));
        assert!(text.last().unwrap().contains("8 more item(s)"));
    }

    #[test]
    fn subject_items_are_marked_identifying() {
        let dir = tempfile::tempdir().unwrap();
        let mut name = InMemDicomObject::new_empty();
        put_str(&mut name, tags::RELATIONSHIP_TYPE, VR::CS, "HAS OBS CONTEXT");
        put_str(&mut name, tags::VALUE_TYPE, VR::CS, "PNAME");
        put_seq(&mut name, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code("121029", "DCM", "Subject Name")]);
        put_str(&mut name, tags::PERSON_NAME, VR::PN, "DOE^JANE");
        let doc = read(&sr_file(dir.path(), vec![name])).unwrap();
        assert!(doc.lines[0].identifying);
        assert_eq!(doc.lines[0].value, "DOE JANE");
        assert!(!doc.text_lines(true).join("\n").contains("DOE"));
    }
}
