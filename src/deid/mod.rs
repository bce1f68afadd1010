//! De-identified export: new DICOM files made from the inputs under PS3.15 Annex E's Basic
//! Application Level Confidentiality Profile (the table of `crate::image::deidentify`), with
//! the profile and any option applied named in the output (De-identification Method and its
//! Code Sequence, Patient Identity Removed YES).
//!
//! What this does not do, on purpose: the pixel data is copied byte for byte (the Clean Pixel
//! Data option is not applied), so text burned into the pixels stays; files marked Burned In
//! Annotation YES are reported. Inputs are never modified; each output is written atomically.
//!
//! Compound codes of Table E.1-1 (X/Z, X/D, Z/D, X/Z/D) are resolved the way that keeps every
//! IOD valid whatever its attribute types: an attribute present in the input stays present,
//! emptied (Z) or, for X/D, given a dummy value; sequences coded X/Z/U* are kept with every
//! attribute inside them de-identified the same way (UIDs replaced).

pub mod cli;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_core::value::{DataSetSequence, Value};
use dicom_core::{DataElement, Length, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

use crate::image::deidentify::{element_action, replacement_uid, Action};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    #[error("{path}: not a readable DICOM file: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: cannot write the de-identified copy: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(io) => crate::Error::Io(io),
            other => crate::Error::Invalid(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Options of the profile that may be applied.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Retain Longitudinal Temporal Information with Full Dates (DCM 113106): dates and times
    /// outside the patient module are kept as they are.
    pub retain_dates: bool,
}

/// (code value, code meaning) of the profile and of each option applied, for the
/// De-identification Method Code Sequence (CID 7050).
pub fn method_codes(options: &Options) -> Vec<(&'static str, &'static str)> {
    let mut codes = vec![("113100", "Basic Application Confidentiality Profile")];
    if options.retain_dates {
        codes.push(("113106", "Retain Longitudinal Temporal Information Full Dates Option"));
    }
    codes
}

/// One input's de-identified copy.
#[derive(Debug, Clone)]
pub struct Exported {
    pub input: PathBuf,
    pub output: PathBuf,
    /// The input says text is burned into its pixels (Burned In Annotation YES), which this
    /// export does not remove.
    pub burned_in_annotation: bool,
}

/// A de-identification run: one key for the UIDs, so the same original UID becomes the same
/// new UID in every file of the run (studies and series stay together), and a different one in
/// another run (the key is random and not kept).
pub struct Deidentifier {
    options: Options,
    key: Vec<u8>,
}

impl Deidentifier {
    pub fn new(options: Options) -> Deidentifier {
        let key: [u8; 32] = rand::random();
        Deidentifier { options, key: key.to_vec() }
    }

    /// With a given key (tests; a caller that must map UIDs the same way over several runs).
    pub fn with_key(options: Options, key: &[u8]) -> Deidentifier {
        Deidentifier { options, key: key.to_vec() }
    }

    /// The new UID of `uid` in this run.
    pub fn new_uid(&self, uid: &str) -> String {
        replacement_uid(uid, &self.key)
    }

    /// The de-identified data set of `obj` (pixel data and every kept value as they were).
    pub fn data_set(&self, obj: &InMemDicomObject) -> InMemDicomObject {
        let mut out = self.items(obj);
        put_str(&mut out, tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES");
        let mut method = vec!["PS3.15 E.1 Basic Application Level Confidentiality Profile".to_string()];
        if self.options.retain_dates {
            method.push("Retain Longitudinal Temporal Information Full Dates Option".into());
        }
        method.push("Pixel data untouched: burned-in text not removed".into());
        out.put(DataElement::new(tags::DEIDENTIFICATION_METHOD, VR::LO, PrimitiveValue::Strs(method.into())));
        let codes = method_codes(&self.options)
            .into_iter()
            .map(|(value, meaning)| {
                let mut item = InMemDicomObject::new_empty();
                put_str(&mut item, tags::CODE_VALUE, VR::SH, value);
                put_str(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, "DCM");
                put_str(&mut item, tags::CODE_MEANING, VR::LO, meaning);
                item
            })
            .collect::<Vec<_>>();
        out.put(DataElement::new(
            tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::new(codes, Length::UNDEFINED),
        ));
        let temporal = if self.options.retain_dates { "UNMODIFIED" } else { "REMOVED" };
        put_str(&mut out, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, VR::CS, temporal);
        out
    }

    /// Every element of `obj` through the profile, recursively.
    fn items(&self, obj: &InMemDicomObject) -> InMemDicomObject {
        let mut out = InMemDicomObject::new_empty();
        for elem in obj.iter() {
            if let Some(kept) = self.element(elem) {
                out.put(kept);
            }
        }
        out
    }

    fn element(&self, elem: &DataElement<InMemDicomObject>) -> Option<DataElement<InMemDicomObject>> {
        let tag = elem.header().tag;
        let vr = elem.vr();
        // Group lengths would be stale after any change; they are optional (and retired in
        // data sets), so they go.
        if tag.element() == 0x0000 {
            return None;
        }
        let action = element_action(tag.group(), tag.element(), vr.to_string());
        if self.options.retain_dates && tag.group() != 0x0010 && matches!(vr, VR::DA | VR::DT | VR::TM) {
            return Some(elem.clone());
        }
        match (action, elem.value()) {
            (None, Value::Sequence(seq)) => Some(self.sequence(tag, seq)),
            (None, _) => Some(elem.clone()),
            (Some(Action::Remove), _) => None,
            (Some(Action::RemoveOrEmptyOrReplaceUids), Value::Sequence(seq)) => Some(self.sequence(tag, seq)),
            (Some(Action::RemoveOrEmptyOrReplaceUids), _) => None,
            (Some(Action::ReplaceUid), Value::Primitive(p)) => {
                let uids: Vec<String> = p.to_str().split('\\').map(|u| self.new_uid(u)).collect();
                Some(DataElement::new(tag, vr, PrimitiveValue::Strs(uids.into())))
            }
            (Some(Action::ReplaceUid), _) => None,
            // Sequences: emptied where the code allows it, removed otherwise (a dummy item
            // would be made-up content).
            (
                Some(Action::Empty | Action::EmptyOrDummy | Action::RemoveOrEmpty | Action::RemoveOrEmptyOrDummy),
                Value::Sequence(_),
            ) => Some(DataElement::new(
                tag,
                VR::SQ,
                DataSetSequence::new(Vec::<InMemDicomObject>::new(), Length::UNDEFINED),
            )),
            (Some(_), Value::Sequence(_)) => None,
            (Some(Action::Empty | Action::EmptyOrDummy | Action::RemoveOrEmpty | Action::RemoveOrEmptyOrDummy), _) => {
                Some(DataElement::new(tag, vr, PrimitiveValue::Empty))
            }
            (Some(Action::Dummy | Action::RemoveOrDummy), _) => Some(DataElement::new(tag, vr, dummy(vr))),
        }
    }

    fn sequence(&self, tag: Tag, seq: &DataSetSequence<InMemDicomObject>) -> DataElement<InMemDicomObject> {
        let items: Vec<InMemDicomObject> = seq.items().iter().map(|item| self.items(item)).collect();
        DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
    }

    /// Reads `input`, writes its de-identified copy into `out_dir` as `<new SOP Instance
    /// UID>.dcm` (never the input's name, which may hold a patient's name), in the input's
    /// transfer syntax so the pixel data is copied as it is.
    pub fn export_file(&self, input: &Path, out_dir: &Path) -> Result<Exported> {
        let read_error = |reason: String| Error::Read { path: input.to_path_buf(), reason };
        // The viewer's reader: it also takes files that dicom-rs alone refuses (zero padding
        // after the pixel data, a file meta group in the wrong VR).
        let bytes = std::fs::read(input).map_err(|e| read_error(e.to_string()))?;
        let (file, _) = crate::image::parse_dicom_object(&bytes).map_err(|e| read_error(e.to_string()))?;
        let ts = file.meta().transfer_syntax().trim_end_matches(['\0', ' ']).to_string();
        let text = |tag: Tag| {
            file.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        };
        let sop = text(tags::SOP_INSTANCE_UID)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| read_error("no SOP Instance UID".into()))?;
        let burned_in_annotation = text(tags::BURNED_IN_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("YES"));
        let data = self.data_set(&file);
        let new_sop = self.new_uid(&sop);
        let output = out_dir.join(format!("{new_sop}.dcm"));
        let write_error = |reason: String| Error::Write { path: output.clone(), reason };
        // Never replace a file: here only another input with the same SOP Instance UID (a
        // copy of the same instance) leads to the same name.
        if output.exists() {
            return Err(write_error(format!(
                "an input with the same SOP Instance UID was already written there; {} not written",
                input.display()
            )));
        }
        let out = data
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(ts)
                    .implementation_class_uid(crate::report::IMPLEMENTATION_CLASS_UID)
                    .implementation_version_name(format!("MELO_{}", env!("CARGO_PKG_VERSION").replace('.', "_"))),
            )
            .map_err(|e| write_error(e.to_string()))?;
        let mut bytes = Vec::new();
        out.write_all(&mut bytes).map_err(|e| write_error(e.to_string()))?;
        crate::atomic::write_bytes_atomic(&output, &bytes).map_err(|e| match e {
            crate::Error::Io(io) => Error::Io(io),
            other => write_error(other.to_string()),
        })?;
        Ok(Exported { input: input.to_path_buf(), output, burned_in_annotation })
    }
}

/// What an export run did.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub out_dir: PathBuf,
    pub options: Options,
    pub exported: Vec<Exported>,
    /// Inputs that could not be de-identified, with the reason (one line each).
    pub failed: Vec<(PathBuf, String)>,
}

impl ExportReport {
    /// The closing sentence: how many, where, the profile and the options applied by name
    /// and code, and that the pixel data is untouched.
    pub fn summary(&self) -> String {
        let codes: Vec<String> = method_codes(&self.options).iter().map(|(c, m)| format!("{m} (DCM {c})")).collect();
        format!(
            "{} file(s) de-identified into {}: {}; new UIDs consistent within this run; Patient Identity \
             Removed YES. Pixel data untouched: text burned into the pixels is NOT removed.",
            self.exported.len(),
            self.out_dir.display(),
            codes.join(", ")
        )
    }

    /// Inputs marked Burned In Annotation YES (their pixels may show who the patient is).
    pub fn burned_in(&self) -> Vec<&Path> {
        self.exported.iter().filter(|e| e.burned_in_annotation).map(|e| e.input.as_path()).collect()
    }
}

/// De-identifies `files` into `out_dir` (created if missing) in one run, so UIDs stay
/// consistent across them. Refuses, before any work, an `out_dir` that is or lies inside one of
/// `inputs` (files or folders the caller read `files` from). A file that cannot be
/// de-identified is reported in the result and the others are still written; `progress` sees
/// each outcome as it happens.
pub fn export_files(
    inputs: &[&Path],
    files: &[PathBuf],
    out_dir: &Path,
    options: Options,
    progress: &mut dyn FnMut(&Result<Exported>),
) -> Result<ExportReport> {
    let as_error = |e: crate::Error| match e {
        crate::Error::Io(io) => Error::Io(io),
        other => Error::Invalid(other.to_string()),
    };
    crate::atomic::refuse_overwriting_inputs("the export folder", out_dir, inputs).map_err(as_error)?;
    if files.is_empty() {
        return Err(Error::Invalid("no file among the inputs".into()));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| as_error(crate::Error::io(out_dir, e)))?;
    let run = Deidentifier::new(options.clone());
    let mut report = ExportReport { out_dir: out_dir.to_path_buf(), options, exported: Vec::new(), failed: Vec::new() };
    for file in files {
        let outcome = run.export_file(file, out_dir);
        progress(&outcome);
        match outcome {
            Ok(e) => report.exported.push(e),
            Err(e) => {
                report.failed.push((file.clone(), e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")))
            }
        }
    }
    Ok(report)
}

/// A value of `vr` that stands in for the original (action D): fixed, so it carries nothing.
fn dummy(vr: VR) -> PrimitiveValue {
    match vr {
        VR::DA => "19000101".into(),
        VR::TM => "000000".into(),
        VR::DT => "19000101000000".into(),
        VR::AS => "000Y".into(),
        VR::PN => "ANONYMIZED".into(),
        VR::DS | VR::IS => "0".into(),
        VR::US => PrimitiveValue::from(0u16),
        VR::SS => PrimitiveValue::from(0i16),
        VR::UL => PrimitiveValue::from(0u32),
        VR::SL => PrimitiveValue::from(0i32),
        VR::FL => PrimitiveValue::from(0f32),
        VR::FD => PrimitiveValue::from(0f64),
        VR::OB | VR::OW | VR::UN | VR::OF | VR::OD | VR::OL | VR::OV => PrimitiveValue::Empty,
        // CS is limited to 16 characters of upper case.
        VR::CS => "ANONYMIZED".into(),
        _ => "ANONYMIZED".into(),
    }
}

fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

/// The files under `inputs` (folders searched recursively, in name order).
pub fn collect_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| crate::error::Error::io(input, e)).map_err(|e| match e {
            crate::Error::Io(io) => Error::Io(io),
            other => Error::Invalid(other.to_string()),
        })?;
        if meta.is_dir() {
            let mut found = BTreeMap::new();
            walk(input, &mut found);
            files.extend(found.into_values());
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, found: &mut BTreeMap<PathBuf, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        // Our own temporary files and hidden files are not inputs.
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, found),
            Ok(t) if t.is_file() => {
                found.insert(path.clone(), path);
            }
            _ => {}
        }
    }
}
