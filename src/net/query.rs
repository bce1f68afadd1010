//! C-FIND / C-GET / C-MOVE identifiers: information models, levels, the query keys a user
//! types, and the attributes each level returns (PS3.4 C.6).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use super::error::{Error, Result};

/// Query/Retrieve information model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Model {
    #[default]
    StudyRoot,
    PatientRoot,
}

impl Model {
    pub fn find_sop_class(self) -> &'static str {
        match self {
            Model::StudyRoot => uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND,
            Model::PatientRoot => uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND,
        }
    }
    pub fn get_sop_class(self) -> &'static str {
        match self {
            Model::StudyRoot => uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_GET,
            Model::PatientRoot => uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_GET,
        }
    }
    pub fn move_sop_class(self) -> &'static str {
        match self {
            Model::StudyRoot => uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE,
            Model::PatientRoot => uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE,
        }
    }
}

impl FromStr for Model {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "study" | "study-root" => Ok(Model::StudyRoot),
            "patient" | "patient-root" => Ok(Model::PatientRoot),
            _ => Err(Error::Invalid(format!("unknown information model {s:?}: expected study or patient"))),
        }
    }
}

/// Query/Retrieve level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Level {
    Patient,
    Study,
    Series,
    Image,
}

impl Level {
    pub fn keyword(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

impl FromStr for Level {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "PATIENT" => Ok(Level::Patient),
            "STUDY" => Ok(Level::Study),
            "SERIES" => Ok(Level::Series),
            "IMAGE" | "INSTANCE" => Ok(Level::Image),
            _ => Err(Error::Invalid(format!("unknown level {s:?}: expected patient, study, series or image"))),
        }
    }
}

/// What a user can search on. Empty fields are not matched (they are still returned).
/// Patient name matching is the PACS's: `*` and `?` wildcards, usually case-sensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryKeys {
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    /// `YYYYMMDD`
    pub birth_date: Option<String>,
    /// `YYYYMMDD`, or a range `YYYYMMDD-YYYYMMDD` / `YYYYMMDD-` / `-YYYYMMDD`.
    pub study_date: Option<String>,
    pub modality: Option<String>,
    pub accession: Option<String>,
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
}

/// Attributes returned at each level, with their VRs. The unique keys of the levels above
/// are added as needed by [`identifier`].
fn return_keys(model: Model, level: Level) -> Vec<(Tag, VR)> {
    let patient = vec![
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
    ];
    match level {
        Level::Patient => {
            let mut k = patient;
            k.push((tags::NUMBER_OF_PATIENT_RELATED_STUDIES, VR::IS));
            k
        }
        Level::Study => {
            // Study Root carries the patient attributes at the study level; Patient Root
            // queries them at the patient level only.
            let mut k = if model == Model::StudyRoot { patient } else { Vec::new() };
            k.extend([
                (tags::STUDY_INSTANCE_UID, VR::UI),
                (tags::STUDY_DATE, VR::DA),
                (tags::STUDY_TIME, VR::TM),
                (tags::ACCESSION_NUMBER, VR::SH),
                (tags::STUDY_ID, VR::SH),
                (tags::STUDY_DESCRIPTION, VR::LO),
                (tags::MODALITIES_IN_STUDY, VR::CS),
                (tags::NUMBER_OF_STUDY_RELATED_SERIES, VR::IS),
                (tags::NUMBER_OF_STUDY_RELATED_INSTANCES, VR::IS),
            ]);
            k
        }
        Level::Series => vec![
            (tags::SERIES_INSTANCE_UID, VR::UI),
            (tags::MODALITY, VR::CS),
            (tags::SERIES_NUMBER, VR::IS),
            (tags::SERIES_DESCRIPTION, VR::LO),
            (tags::NUMBER_OF_SERIES_RELATED_INSTANCES, VR::IS),
        ],
        Level::Image => {
            vec![(tags::SOP_INSTANCE_UID, VR::UI), (tags::SOP_CLASS_UID, VR::UI), (tags::INSTANCE_NUMBER, VR::IS)]
        }
    }
}

/// The identifier of a C-FIND at `level`: the level's return keys, matching values from
/// `keys`, and the unique keys of the levels above (hierarchical query, PS3.4 C.4.1.2.1).
/// A key that cannot be matched at this level is refused rather than silently dropped.
pub fn find_identifier(model: Model, level: Level, keys: &QueryKeys) -> Result<InMemDicomObject> {
    check_model_level(model, level)?;
    check_parents(model, level, keys)?;
    let mut obj = InMemDicomObject::new_empty();
    put(&mut obj, tags::QUERY_RETRIEVE_LEVEL, VR::CS, level.keyword());
    for (tag, vr) in return_keys(model, level) {
        put(&mut obj, tag, vr, "");
    }
    let patient_keys_here = level == Level::Patient || (level == Level::Study && model == Model::StudyRoot);
    let mut set = |tag: Tag, vr: VR, value: &Option<String>, allowed: bool, option: &str| -> Result<()> {
        if let Some(v) = value {
            if !allowed {
                return Err(Error::Invalid(format!("{option} cannot be matched at the {level} level")));
            }
            put(&mut obj, tag, vr, v);
        }
        Ok(())
    };
    set(tags::PATIENT_NAME, VR::PN, &keys.patient_name, patient_keys_here, "patient name")?;
    set(tags::PATIENT_BIRTH_DATE, VR::DA, &keys.birth_date, patient_keys_here, "birth date")?;
    // Patient ID is also the parent key of Patient Root queries below the patient level.
    set(tags::PATIENT_ID, VR::LO, &keys.patient_id, patient_keys_here || model == Model::PatientRoot, "patient ID")?;
    set(tags::STUDY_DATE, VR::DA, &keys.study_date, level == Level::Study, "study date")?;
    set(tags::ACCESSION_NUMBER, VR::SH, &keys.accession, level == Level::Study, "accession number")?;
    match level {
        Level::Study => set(tags::MODALITIES_IN_STUDY, VR::CS, &keys.modality, true, "modality")?,
        _ => set(tags::MODALITY, VR::CS, &keys.modality, level == Level::Series, "modality")?,
    }
    set(tags::STUDY_INSTANCE_UID, VR::UI, &keys.study_uid, level >= Level::Study, "study UID")?;
    set(tags::SERIES_INSTANCE_UID, VR::UI, &keys.series_uid, level >= Level::Series, "series UID")?;
    set(tags::SOP_INSTANCE_UID, VR::UI, &keys.sop_instance_uid, level == Level::Image, "SOP instance UID")?;
    check_values(keys)?;
    Ok(obj)
}

/// The identifier of a C-GET / C-MOVE at `level`: the unique keys down to that level.
pub fn retrieve_identifier(model: Model, level: Level, keys: &QueryKeys) -> Result<InMemDicomObject> {
    check_model_level(model, level)?;
    check_parents(model, level, keys)?;
    let own_key = match level {
        Level::Patient => keys.patient_id.as_ref(),
        Level::Study => keys.study_uid.as_ref(),
        Level::Series => keys.series_uid.as_ref(),
        Level::Image => keys.sop_instance_uid.as_ref(),
    };
    if own_key.is_none() {
        let option = match level {
            Level::Patient => "a patient ID",
            Level::Study => "a study UID",
            Level::Series => "a series UID",
            Level::Image => "a SOP instance UID",
        };
        return Err(Error::Invalid(format!("a retrieve at the {level} level needs {option}")));
    }
    let mut obj = InMemDicomObject::new_empty();
    put(&mut obj, tags::QUERY_RETRIEVE_LEVEL, VR::CS, level.keyword());
    if let (Some(id), true) = (&keys.patient_id, model == Model::PatientRoot || level == Level::Patient) {
        put(&mut obj, tags::PATIENT_ID, VR::LO, id);
    }
    let uid_keys = [
        (Level::Study, tags::STUDY_INSTANCE_UID, &keys.study_uid),
        (Level::Series, tags::SERIES_INSTANCE_UID, &keys.series_uid),
        (Level::Image, tags::SOP_INSTANCE_UID, &keys.sop_instance_uid),
    ];
    for (at, tag, value) in uid_keys {
        if let (Some(v), true) = (value, level >= at) {
            // Several UIDs (list of UID matching) are separated by backslashes.
            put(&mut obj, tag, VR::UI, v);
        }
    }
    Ok(obj)
}

fn check_model_level(model: Model, level: Level) -> Result<()> {
    if model == Model::StudyRoot && level == Level::Patient {
        return Err(Error::Invalid(
            "the Study Root model has no PATIENT level; use the Patient Root model (--model patient)".into(),
        ));
    }
    Ok(())
}

/// Hierarchical queries name the unique key of every level above the one asked for.
fn check_parents(model: Model, level: Level, keys: &QueryKeys) -> Result<()> {
    let missing = if model == Model::PatientRoot && level > Level::Patient && keys.patient_id.is_none() {
        Some("a patient ID (Patient Root queries below the PATIENT level)")
    } else if level > Level::Study && keys.study_uid.is_none() {
        Some("a study UID")
    } else if level > Level::Series && keys.series_uid.is_none() {
        Some("a series UID")
    } else {
        None
    };
    match missing {
        Some(what) => Err(Error::Invalid(format!("a query at the {level} level needs {what}"))),
        None => Ok(()),
    }
}

/// Dates as DICOM wants them; a typo would otherwise match nothing without a word.
fn check_values(keys: &QueryKeys) -> Result<()> {
    let is_date = |d: &str| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit());
    if let Some(d) = &keys.birth_date {
        if !is_date(d) {
            return Err(Error::Invalid(format!("birth date {d:?} is not YYYYMMDD")));
        }
    }
    if let Some(r) = &keys.study_date {
        let ok = match r.split_once('-') {
            Some((a, b)) => {
                (a.is_empty() || is_date(a)) && (b.is_empty() || is_date(b)) && !(a.is_empty() && b.is_empty())
            }
            None => is_date(r),
        };
        if !ok {
            return Err(Error::Invalid(format!(
                "study date {r:?} is not YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be left open)"
            )));
        }
    }
    Ok(())
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    let value = if value.is_empty() { PrimitiveValue::Empty } else { PrimitiveValue::from(value) };
    obj.put(DataElement::new(tag, vr, value));
}

/// A C-FIND match as keyword → value (multiple values joined by `\`), for printing and JSON.
pub fn match_to_map(obj: &InMemDicomObject) -> BTreeMap<String, String> {
    use dicom_core::dictionary::DataDictionary;
    let dict = dicom_dictionary_std::StandardDataDictionary;
    let mut out = BTreeMap::new();
    for element in obj {
        let tag = element.header().tag;
        if tag == tags::SPECIFIC_CHARACTER_SET {
            continue;
        }
        let name = dict
            .by_tag(tag)
            .map(|e| e.alias.to_string())
            .unwrap_or_else(|| format!("{:04X}{:04X}", tag.group(), tag.element()));
        let value = element.to_str().map(|s| s.trim_end_matches(['\0', ' ']).to_string()).unwrap_or_default();
        out.insert(name, value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
        obj.element_opt(tag).unwrap().map(|e| e.to_str().unwrap().trim_end_matches(['\0', ' ']).to_string())
    }

    #[test]
    fn study_level_identifier_carries_keys_and_return_keys() {
        let keys = QueryKeys {
            patient_name: Some("DOE*".into()),
            study_date: Some("20010101-20011231".into()),
            modality: Some("MR".into()),
            ..Default::default()
        };
        let obj = find_identifier(Model::StudyRoot, Level::Study, &keys).unwrap();
        assert_eq!(text(&obj, tags::QUERY_RETRIEVE_LEVEL).as_deref(), Some("STUDY"));
        assert_eq!(text(&obj, tags::PATIENT_NAME).as_deref(), Some("DOE*"));
        assert_eq!(text(&obj, tags::MODALITIES_IN_STUDY).as_deref(), Some("MR"));
        assert_eq!(text(&obj, tags::STUDY_INSTANCE_UID).as_deref(), Some(""));
    }

    #[test]
    fn misplaced_or_missing_keys_are_refused() {
        let name = QueryKeys { patient_name: Some("X".into()), study_uid: Some("1.2".into()), ..Default::default() };
        let err = find_identifier(Model::StudyRoot, Level::Series, &name).unwrap_err().to_string();
        assert!(err.contains("patient name cannot be matched at the SERIES level"), "{err}");
        let err = find_identifier(Model::StudyRoot, Level::Series, &QueryKeys::default()).unwrap_err().to_string();
        assert!(err.contains("needs a study UID"), "{err}");
        let err = find_identifier(Model::StudyRoot, Level::Patient, &QueryKeys::default()).unwrap_err().to_string();
        assert!(err.contains("no PATIENT level"), "{err}");
        let err = find_identifier(Model::PatientRoot, Level::Study, &QueryKeys::default()).unwrap_err().to_string();
        assert!(err.contains("needs a patient ID"), "{err}");
        let bad_date = QueryKeys { study_date: Some("2001-01-01".into()), ..Default::default() };
        assert!(find_identifier(Model::StudyRoot, Level::Study, &bad_date).is_err());
        let err = retrieve_identifier(
            Model::StudyRoot,
            Level::Series,
            &QueryKeys { study_uid: Some("1.2".into()), ..Default::default() },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs a series UID"), "{err}");
    }
}
