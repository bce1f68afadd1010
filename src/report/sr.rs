//! A DICOM Comprehensive SR of a diagnosis following TID 1500 (Measurement Report): the
//! observer context (TID 1002, a device: this program), the source image in the image
//! library (TID 1600), and per task one measurement group (TID 1501) with the algorithm
//! identification (TID 4019: adapter name = task, version, backbone sha256) and every class
//! probability as a numeric value in percent (UCUM "%").
//!
//! Class labels have no standard codes, so each gets a code in a private coding scheme
//! ([`LABEL_SCHEME`]) declared in the Coding Scheme Identification Sequence; the code is a
//! digest of task and label, stable across runs so a PACS can query by it.

use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use sha2::{Digest, Sha256};

use super::{code, new_uid, now_da_tm, put_seq, put_str, truncate, Result, SourceInstance};
use super::{Error, MANUFACTURER, RESEARCH_USE_ONLY, SOFTWARE_VERSION};
use crate::model::engine::Prediction;

/// Private coding scheme of the class-probability concepts and findings.
pub const LABEL_SCHEME: &str = "99MELO";

/// TID 4019's algorithm identification of one task's adapter.
#[derive(Debug, Clone)]
pub struct Algorithm {
    /// The adapter's task name (its Algorithm Name).
    pub name: String,
    /// The software version that ran it.
    pub version: String,
    /// sha256 of the backbone weights the adapter was bound to.
    pub backbone_sha256: String,
}

impl Algorithm {
    pub fn new(task: &str, backbone_sha256: &str) -> Algorithm {
        Algorithm {
            name: task.to_string(),
            version: format!("{MANUFACTURER} {SOFTWARE_VERSION}"),
            backbone_sha256: backbone_sha256.to_string(),
        }
    }
}

/// The code of "probability of `label`" for `task` in [`LABEL_SCHEME`]: "L" and 12 hex digits
/// of sha256(task, label) (Code Value is at most 16 characters).
pub fn label_code(task: &str, label: &str) -> String {
    let digest =
        Sha256::new().chain_update(task.as_bytes()).chain_update([0]).chain_update(label.as_bytes()).finalize();
    let hex: String = digest[..6].iter().map(|b| format!("{b:02X}")).collect();
    format!("L{hex}")
}

/// One content item: Relationship Type (absent for the root), Value Type, Concept Name.
fn item(relationship: Option<&str>, value_type: &str, concept: InMemDicomObject) -> InMemDicomObject {
    let mut it = InMemDicomObject::new_empty();
    if let Some(r) = relationship {
        put_str(&mut it, tags::RELATIONSHIP_TYPE, VR::CS, r);
    }
    put_str(&mut it, tags::VALUE_TYPE, VR::CS, value_type);
    put_seq(&mut it, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![concept]);
    it
}

fn text_item(relationship: &str, concept: InMemDicomObject, value: &str) -> InMemDicomObject {
    let mut it = item(Some(relationship), "TEXT", concept);
    put_str(&mut it, tags::TEXT_VALUE, VR::UT, value);
    it
}

fn code_item(relationship: &str, concept: InMemDicomObject, value: InMemDicomObject) -> InMemDicomObject {
    let mut it = item(Some(relationship), "CODE", concept);
    put_seq(&mut it, tags::CONCEPT_CODE_SEQUENCE, vec![value]);
    it
}

fn uid_item(relationship: &str, concept: InMemDicomObject, uid: &str) -> InMemDicomObject {
    let mut it = item(Some(relationship), "UIDREF", concept);
    put_str(&mut it, tags::UID, VR::UI, uid);
    it
}

fn container(relationship: &str, concept: InMemDicomObject, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut it = item(Some(relationship), "CONTAINER", concept);
    put_str(&mut it, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(&mut it, tags::CONTENT_SEQUENCE, children);
    it
}

/// A NUM item in percent. DS holds at most 16 characters: four decimals are plenty for a
/// probability and fit.
fn percent_item(concept: InMemDicomObject, probability: f32) -> InMemDicomObject {
    let mut it = item(Some("CONTAINS"), "NUM", concept);
    let mut value = InMemDicomObject::new_empty();
    put_str(&mut value, tags::NUMERIC_VALUE, VR::DS, &format!("{:.4}", 100.0 * f64::from(probability)));
    put_seq(&mut value, tags::MEASUREMENT_UNITS_CODE_SEQUENCE, vec![code("%", "UCUM", "%")]);
    put_seq(&mut it, tags::MEASURED_VALUE_SEQUENCE, vec![value]);
    it
}

/// TID 1002 with a device observer: this program.
fn observer_context(device_uid: &str) -> Vec<InMemDicomObject> {
    vec![
        code_item("HAS OBS CONTEXT", code("121005", "DCM", "Observer Type"), code("121007", "DCM", "Device")),
        uid_item("HAS OBS CONTEXT", code("121012", "DCM", "Device Observer UID"), device_uid),
        text_item("HAS OBS CONTEXT", code("121013", "DCM", "Device Observer Name"), MANUFACTURER),
        text_item("HAS OBS CONTEXT", code("121014", "DCM", "Device Observer Manufacturer"), MANUFACTURER),
        text_item("HAS OBS CONTEXT", code("121015", "DCM", "Device Observer Model Name"), SOFTWARE_VERSION),
    ]
}

/// TID 1501: one task's measurement group.
fn measurement_group(prediction: &Prediction, algorithm: &Algorithm) -> Result<InMemDicomObject> {
    if prediction.labels.len() != prediction.probabilities.len() || prediction.labels.is_empty() {
        return Err(Error::Invalid(format!(
            "task {}: {} labels for {} probabilities",
            prediction.task,
            prediction.labels.len(),
            prediction.probabilities.len()
        )));
    }
    if prediction.probabilities.iter().any(|p| !p.is_finite()) {
        return Err(Error::Invalid(format!("task {}: a probability is not a finite number", prediction.task)));
    }
    let task = &prediction.task;
    let (top_label, _) = prediction.top();
    let label_concept =
        |label: &str| code(&label_code(task, label), LABEL_SCHEME, &format!("Probability of {label} ({task})"));
    let mut children = vec![
        text_item("HAS OBS CONTEXT", code("112039", "DCM", "Tracking Identifier"), &truncate(task, 64)),
        uid_item("HAS OBS CONTEXT", code("112040", "DCM", "Tracking Unique Identifier"), &new_uid()),
        code_item(
            "HAS CONCEPT MOD",
            code("121071", "DCM", "Finding"),
            code(&label_code(task, top_label), LABEL_SCHEME, &format!("{top_label} ({task})")),
        ),
        // TID 4019
        text_item("HAS CONCEPT MOD", code("111001", "DCM", "Algorithm Name"), task),
        text_item("HAS CONCEPT MOD", code("111003", "DCM", "Algorithm Version"), &algorithm.version),
        text_item(
            "HAS CONCEPT MOD",
            code("111002", "DCM", "Algorithm Parameters"),
            &format!(
                "backbone sha256 {}; calibrated {}; {} probabilities; {}; {RESEARCH_USE_ONLY}",
                algorithm.backbone_sha256,
                prediction.calibrated,
                if prediction.multi_label { "independent (multi-label)" } else { "softmax" },
                match prediction.caveats() {
                    c if c.is_empty() => "in distribution".to_string(),
                    c => c,
                },
            ),
        ),
    ];
    for (label, &p) in prediction.labels.iter().zip(&prediction.probabilities) {
        children.push(percent_item(label_concept(label), p));
    }
    Ok(container("CONTAINS", code("125007", "DCM", "Measurement Group"), children))
}

/// The TID 1500 Comprehensive SR of `predictions` (one measurement group each) about
/// `source`; `backbone_sha256` identifies the backbone every adapter ran on.
pub fn build(source: &SourceInstance, predictions: &[Prediction], backbone_sha256: &str) -> Result<InMemDicomObject> {
    if predictions.is_empty() {
        return Err(Error::Invalid("no prediction to report".into()));
    }
    let (date, time) = now_da_tm();
    let mut obj = InMemDicomObject::new_empty();
    // SOP common
    put_str(&mut obj, tags::SOP_CLASS_UID, VR::UI, uids::COMPREHENSIVE_SR_STORAGE);
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &new_uid());
    put_str(&mut obj, tags::INSTANCE_CREATION_DATE, VR::DA, &date);
    put_str(&mut obj, tags::INSTANCE_CREATION_TIME, VR::TM, &time);
    // Coding schemes beyond the standard's own: the private one of the labels.
    let mut scheme = InMemDicomObject::new_empty();
    put_str(&mut scheme, tags::CODING_SCHEME_DESIGNATOR, VR::SH, LABEL_SCHEME);
    put_str(&mut scheme, tags::CODING_SCHEME_NAME, VR::ST, "MeLo Workstation diagnosis adapter labels");
    put_str(&mut scheme, tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION, VR::ST, MANUFACTURER);
    put_seq(&mut obj, tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE, vec![scheme]);
    // Patient, general study
    source.copy_patient_and_study(&mut obj);
    // SR document series
    put_str(&mut obj, tags::MODALITY, VR::CS, "SR");
    put_str(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, &new_uid());
    put_str(&mut obj, tags::SERIES_NUMBER, VR::IS, "9901");
    put_str(&mut obj, tags::SERIES_DESCRIPTION, VR::LO, "MeLo diagnosis (research use only)");
    put_seq(&mut obj, tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, vec![]);
    // General equipment
    put_str(&mut obj, tags::MANUFACTURER, VR::LO, MANUFACTURER);
    put_str(&mut obj, tags::SOFTWARE_VERSIONS, VR::LO, SOFTWARE_VERSION);
    // SR document general
    put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &date);
    put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &time);
    put_str(&mut obj, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put_str(&mut obj, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_seq(&mut obj, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    // The evidence: the source instance, by study, series and instance.
    let mut series = InMemDicomObject::new_empty();
    put_str(&mut series, tags::SERIES_INSTANCE_UID, VR::UI, &source.series_instance_uid);
    put_seq(&mut series, tags::REFERENCED_SOP_SEQUENCE, vec![source.sop_reference()]);
    let mut study = InMemDicomObject::new_empty();
    put_str(&mut study, tags::STUDY_INSTANCE_UID, VR::UI, &source.study_instance_uid);
    put_seq(&mut study, tags::REFERENCED_SERIES_SEQUENCE, vec![series]);
    put_seq(&mut obj, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE, vec![study]);

    // SR document content: the TID 1500 tree.
    let mut children = vec![code_item(
        "HAS CONCEPT MOD",
        code("121049", "DCM", "Language of Content Item and Descendants"),
        code("en-US", "RFC5646", "English (United States)"),
    )];
    children.extend(observer_context(&new_uid()));
    children.push(code_item(
        "HAS CONCEPT MOD",
        code("121058", "DCM", "Procedure reported"),
        code("363679005", "SCT", "Imaging procedure"),
    ));
    // TID 1600: the image library with the one source image.
    let mut image = InMemDicomObject::new_empty();
    put_str(&mut image, tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS");
    put_str(&mut image, tags::VALUE_TYPE, VR::CS, "IMAGE");
    put_seq(&mut image, tags::REFERENCED_SOP_SEQUENCE, vec![source.sop_reference()]);
    let group = container("CONTAINS", code("126200", "DCM", "Image Library Group"), vec![image]);
    children.push(container("CONTAINS", code("111028", "DCM", "Image Library"), vec![group]));
    let mut groups = Vec::with_capacity(predictions.len());
    for p in predictions {
        groups.push(measurement_group(p, &Algorithm::new(&p.task, backbone_sha256))?);
    }
    children.push(container("CONTAINS", code("126010", "DCM", "Imaging Measurements"), groups));

    put_str(&mut obj, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(&mut obj, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code("126000", "DCM", "Imaging Measurement Report")]);
    put_str(&mut obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    let mut template = InMemDicomObject::new_empty();
    put_str(&mut template, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put_str(&mut template, tags::TEMPLATE_IDENTIFIER, VR::CS, "1500");
    put_seq(&mut obj, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template]);
    put_seq(&mut obj, tags::CONTENT_SEQUENCE, children);
    Ok(obj)
}
