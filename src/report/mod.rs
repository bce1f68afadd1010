//! Diagnosis results as DICOM objects that go back to the PACS: a Comprehensive SR following
//! TID 1500 ([`sr`]) and a Secondary Capture with the heatmap and the result burned in
//! ([`sc`]). Both reference the source instance and copy its patient and study modules, so a
//! PACS files them in the source's study; both get new SOP and Series Instance UIDs.
//!
//! What is shared lives here: the source instance's identity ([`SourceInstance`]), new UIDs,
//! the date stamp, element helpers and the atomic Part 10 write.

pub mod content;
pub mod font;
pub mod sc;
pub mod send;
pub mod sr;

use std::path::{Path, PathBuf};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, Length, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

/// The statement every result carries: these adapters are not cleared for clinical use.
pub const RESEARCH_USE_ONLY: &str = "RESEARCH USE ONLY - not for diagnostic use";
/// Manufacturer and model written into the objects and the SR's device observer.
pub const MANUFACTURER: &str = "MeLo Workstation";
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    #[error("{path}: cannot read the source DICOM instance: {reason}")]
    Source { path: PathBuf, reason: String },
    #[error("{path}: the source has no {attribute}; a result must reference a DICOM instance")]
    MissingSourceAttribute { path: PathBuf, attribute: &'static str },
    #[error("cannot build the DICOM object: {0}")]
    Build(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<crate::Error> for Error {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Io(io) => Error::Io(io),
            other => Error::Build(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The source image's identity and the modules a derived object copies from it: the patient
/// module and the general study module (a result belongs to the same patient and study).
#[derive(Debug, Clone)]
pub struct SourceInstance {
    pub path: PathBuf,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub modality: String,
    /// Patient and general study attributes as found (absent ones are written empty).
    copied: Vec<DataElement<InMemDicomObject>>,
}

/// Patient module and General Study module attributes copied verbatim (type 2 ones are
/// written empty when the source lacks them).
const COPIED: &[(Tag, VR, bool)] = &[
    (tags::SPECIFIC_CHARACTER_SET, VR::CS, false),
    (tags::PATIENT_NAME, VR::PN, true),
    (tags::PATIENT_ID, VR::LO, true),
    (tags::ISSUER_OF_PATIENT_ID, VR::LO, false),
    (tags::PATIENT_BIRTH_DATE, VR::DA, true),
    (tags::PATIENT_SEX, VR::CS, true),
    (tags::STUDY_DATE, VR::DA, true),
    (tags::STUDY_TIME, VR::TM, true),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN, true),
    (tags::STUDY_ID, VR::SH, true),
    (tags::ACCESSION_NUMBER, VR::SH, true),
    (tags::STUDY_DESCRIPTION, VR::LO, false),
];

impl SourceInstance {
    /// Reads the header of a DICOM file (not its pixel data).
    pub fn read(path: &Path) -> Result<SourceInstance> {
        // The viewer's reader: it also takes files that dicom-rs alone refuses (zero padding
        // after the pixel data, a file meta group in the wrong VR).
        let source_error = |reason: String| Error::Source { path: path.to_path_buf(), reason };
        let bytes = std::fs::read(path).map_err(|e| source_error(e.to_string()))?;
        let (obj, _) = crate::image::parse_dicom_object(&bytes).map_err(|e| source_error(e.to_string()))?;
        let text = |tag: Tag| -> Option<String> {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| clean(&s))
                .filter(|s| !s.is_empty())
        };
        let required = |tag: Tag, attribute: &'static str| {
            text(tag).ok_or_else(|| Error::MissingSourceAttribute { path: path.to_path_buf(), attribute })
        };
        let mut copied = Vec::new();
        for &(tag, vr, type2) in COPIED {
            match obj.element_opt(tag).ok().flatten() {
                Some(e) => copied.push(DataElement::new(
                    tag,
                    e.vr(),
                    e.value().primitive().cloned().unwrap_or(PrimitiveValue::Empty),
                )),
                None if type2 => copied.push(DataElement::new(tag, vr, PrimitiveValue::Empty)),
                None => {}
            }
        }
        Ok(SourceInstance {
            path: path.to_path_buf(),
            sop_class_uid: required(tags::SOP_CLASS_UID, "SOP Class UID")?,
            sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            study_instance_uid: required(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series_instance_uid: required(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            modality: text(tags::MODALITY).unwrap_or_default(),
            copied,
        })
    }

    /// Puts the patient and study modules (and the Study Instance UID) into `obj`.
    pub(crate) fn copy_patient_and_study(&self, obj: &mut InMemDicomObject) {
        for e in &self.copied {
            obj.put(e.clone());
        }
        put_str(obj, tags::STUDY_INSTANCE_UID, VR::UI, &self.study_instance_uid);
    }

    /// An item naming this instance: Referenced SOP Class and Instance UIDs.
    pub(crate) fn sop_reference(&self) -> InMemDicomObject {
        let mut item = InMemDicomObject::new_empty();
        put_str(&mut item, tags::REFERENCED_SOP_CLASS_UID, VR::UI, &self.sop_class_uid);
        put_str(&mut item, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &self.sop_instance_uid);
        item
    }
}

/// A value without DICOM padding (trailing spaces, NULs).
fn clean(s: &str) -> String {
    s.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string()
}

/// A new UID under the 2.25 root: a random (version 4) UUID written as one decimal integer,
/// so no organisational root has to be registered and no two runs collide.
pub fn new_uid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0F) | 0x40;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

/// Now in UTC as DICOM DA and TM (YYYYMMDD, HHMMSS). UTC because the objects carry no
/// timezone offset and the machine's zone is not known to be the PACS's.
pub fn now_da_tm() -> (String, String) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil conversion.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}{month:02}{day:02}"), format!("{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60))
}

pub(crate) fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

pub(crate) fn put_empty(obj: &mut InMemDicomObject, tag: Tag, vr: VR) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
}

pub(crate) fn put_u16(obj: &mut InMemDicomObject, tag: Tag, value: u16) {
    obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

pub(crate) fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED)));
}

/// A code item: Code Value, Coding Scheme Designator, Code Meaning.
pub(crate) fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::CODE_VALUE, VR::SH, value);
    put_str(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    put_str(&mut item, tags::CODE_MEANING, VR::LO, &truncate(meaning, 64));
    item
}

/// `s` cut to at most `max` characters (DICOM value lengths are limits, not suggestions).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Writes `obj` as a DICOM Part 10 file (Explicit VR Little Endian) atomically: a crash
/// leaves the old file or the new one, never half of one.
pub fn write_part10(obj: InMemDicomObject, path: &Path) -> Result<()> {
    let file = obj
        .with_meta(
            dicom_object::meta::FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .implementation_version_name(format!("MELO_{}", SOFTWARE_VERSION.replace('.', "_"))),
        )
        .map_err(|e| Error::Build(e.to_string()))?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|e| Error::Build(e.to_string()))?;
    crate::atomic::write_bytes_atomic(path, &bytes)?;
    Ok(())
}

/// A result object a diagnosis can be written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultKind {
    /// The TID 1500 Comprehensive SR ([`sr`]).
    Sr,
    /// The Secondary Capture with the heatmap and the result burned in ([`sc`]).
    Sc,
}

impl ResultKind {
    pub fn label(self) -> &'static str {
        match self {
            ResultKind::Sr => "SR",
            ResultKind::Sc => "Secondary Capture",
        }
    }

    /// A file name for the object of `task` (the task name is an adapter's, never a patient's).
    pub fn file_name(self, task: &str) -> String {
        let task: String = task.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        match self {
            ResultKind::Sr => format!("{task}_sr.dcm"),
            ResultKind::Sc => format!("{task}_sc.dcm"),
        }
    }
}

/// Runs `task` on frame `frame` of `image` (read from a DICOM file: the objects reference it)
/// and writes each of `outputs` atomically, the way `melo predict --sr/--sc` does: with a
/// Secondary Capture the prediction is the explanation's (one forward for both). Refuses an
/// output that would replace the source file. Returns the prediction reported.
pub fn write_results(
    engine: &mut crate::model::Engine,
    image: &crate::image::MedicalImage,
    frame: usize,
    task: &str,
    outputs: &[(ResultKind, PathBuf)],
) -> Result<crate::model::engine::Prediction> {
    let path = image
        .meta
        .source
        .as_deref()
        .ok_or_else(|| Error::Invalid("the image was not read from a file; a result must reference one".into()))?;
    for (kind, out) in outputs {
        crate::atomic::refuse_overwriting_inputs(kind.label(), out, &[path])?;
    }
    let source = SourceInstance::read(path)?;
    engine.switch(task).map_err(|e| Error::Build(e.to_string()))?;
    let explanation = if outputs.iter().any(|(k, _)| *k == ResultKind::Sc) {
        Some(engine.explain(image, frame).map_err(|e| Error::Build(e.to_string()))?)
    } else {
        None
    };
    let prediction = match &explanation {
        Some(e) => e.prediction.clone(),
        None => engine.predict_frame(image, frame).map_err(|e| Error::Build(e.to_string()))?,
    };
    for (kind, out) in outputs {
        let obj = match (kind, &explanation) {
            (ResultKind::Sr, _) => sr::build(&source, std::slice::from_ref(&prediction), engine.backbone().sha256())?,
            (ResultKind::Sc, Some(explanation)) => sc::build(&source, image, frame, explanation)?,
            // Not reached: an explanation is made whenever an SC is asked for.
            (ResultKind::Sc, None) => return Err(Error::Invalid("no heatmap for the secondary capture".into())),
        };
        write_part10(obj, out)?;
    }
    Ok(prediction)
}

/// Our implementation class UID (2.25 form of a fixed UUID drawn once for MeLo Workstation).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.207563946310349245093727183925546378263";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_uids_are_valid_2_25_uids() {
        let a = new_uid();
        assert!(a.starts_with("2.25.") && a.len() <= 64 && a[5..].chars().all(|c| c.is_ascii_digit()), "{a}");
        assert!(!a[5..].starts_with('0'));
        assert_ne!(a, new_uid());
    }

    #[test]
    fn date_stamp_has_dicom_shapes() {
        let (da, tm) = now_da_tm();
        assert_eq!((da.len(), tm.len()), (8, 6));
        assert!(da.starts_with("20") && da.chars().chain(tm.chars()).all(|c| c.is_ascii_digit()));
    }
}
