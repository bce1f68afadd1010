//! Query/retrieve on our SCP: C-FIND and C-MOVE answered from the study store's index, so
//! another node (a second workstation, a PACS) can search what we received and have it sent
//! to one of the destinations the user configured (PS3.4 Annex C).
//!
//! Study Root and Patient Root, every level. Matching follows PS3.4 C.2.2.2: single values,
//! `*`/`?` wildcards (person names case-insensitively, as most archives do), date ranges, UID
//! lists. Keys we do not index are returned empty and do not restrict the matches. A C-MOVE
//! names its destination by AE title; only configured destinations are sent to, anything else
//! is answered 0xA801 (move destination unknown) before a single file moves.

use std::net::TcpStream;
use std::path::PathBuf;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::SyncAssociation;

use super::dimse::{field, Command, Link, Message, Status};
use super::error::Result;
use super::peer::Peer;
use super::query::Level;
use super::scu::{self, ScuOptions};
use crate::store::{IndexLevel, IndexRow, StudyStore};

/// Failure: identifier does not match SOP class (PS3.4 C.4.1.1.4).
const IDENTIFIER_MISMATCH: Status = Status(0xA900);
/// Failure: unable to process.
const UNABLE_TO_PROCESS: Status = Status(0xC001);
/// C-MOVE failure: move destination unknown.
pub const MOVE_DESTINATION_UNKNOWN: Status = Status(0xA801);
/// C-MOVE refused: out of resources, unable to perform sub-operations.
const UNABLE_TO_PERFORM_SUB_OPERATIONS: Status = Status(0xA702);

/// What the query/retrieve SCP reports (in [`super::scp::ScpEvent`]).
#[derive(Debug, Clone)]
pub enum QrOutcome {
    Found { matches: usize },
    Moved { destination: String, completed: usize, failed: usize },
    Refused { status: Status, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Study,
    Patient,
}

fn root_of(sop_class: &str, find: bool) -> Option<Root> {
    let (study, patient) = if find {
        (
            uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND,
            uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND,
        )
    } else {
        (
            uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE,
            uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE,
        )
    };
    if sop_class == study {
        Some(Root::Study)
    } else if sop_class == patient {
        Some(Root::Patient)
    } else {
        None
    }
}

/// The identifier of a request, decoded in its presentation context's transfer syntax, with
/// its model and level checked.
fn identifier<A: SyncAssociation<TcpStream>>(
    link: &Link<A>,
    message: &Message,
    find: bool,
) -> std::result::Result<(InMemDicomObject, Level, String), (Status, String)> {
    let sop_class = message.command.str(tags::AFFECTED_SOP_CLASS_UID).unwrap_or_default();
    let root = root_of(&sop_class, find)
        .ok_or((Status::SOP_CLASS_NOT_SUPPORTED, format!("{sop_class} is not a query/retrieve model we serve")))?;
    let data = message.data.as_deref().ok_or((IDENTIFIER_MISMATCH, "no identifier".to_string()))?;
    let ts_uid = link.transfer_syntax(message.context_id).unwrap_or_default();
    let ts = TransferSyntaxRegistry
        .get(&ts_uid)
        .ok_or((Status::CANNOT_UNDERSTAND, format!("unknown transfer syntax {ts_uid}")))?;
    let obj = InMemDicomObject::read_dataset_with_ts(data, ts)
        .map_err(|e| (Status::CANNOT_UNDERSTAND, format!("unreadable identifier: {e}")))?;
    let level: Level = text(&obj, tags::QUERY_RETRIEVE_LEVEL)
        .parse()
        .map_err(|_| (IDENTIFIER_MISMATCH, "no valid Query/Retrieve Level".to_string()))?;
    if root == Root::Study && level == Level::Patient {
        return Err((IDENTIFIER_MISMATCH, "the Study Root model has no PATIENT level".into()));
    }
    Ok((obj, level, ts_uid))
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.trim_matches(['\0', ' ']).to_string()))
        .unwrap_or_default()
}

fn index_level(level: Level) -> IndexLevel {
    match level {
        Level::Patient => IndexLevel::Patient,
        Level::Study => IndexLevel::Study,
        Level::Series => IndexLevel::Series,
        Level::Image => IndexLevel::Instance,
    }
}

/// A single-valued UID key (a list, or a wildcard, cannot narrow the index query).
fn single_uid(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let v = text(obj, tag);
    (!v.is_empty() && !v.contains(['\\', '*', '?'])).then_some(v)
}

/// Rows of the index at `level` that match every key of `identifier`.
fn matches(store: &StudyStore, identifier: &InMemDicomObject, level: Level) -> crate::store::Result<Vec<IndexRow>> {
    let study = single_uid(identifier, tags::STUDY_INSTANCE_UID);
    let series = if level >= Level::Series { single_uid(identifier, tags::SERIES_INSTANCE_UID) } else { None };
    let rows = store.index_rows(index_level(level), study.as_deref(), series.as_deref())?;
    Ok(rows.into_iter().filter(|row| row_matches(row, identifier, level)).collect())
}

/// The value of an attribute for a row, when we index it and it belongs at `level` or above.
/// `None`: not ours to match or return (it comes back empty).
fn value_of(row: &IndexRow, tag: Tag, level: Level) -> Option<Vec<String>> {
    let one = |s: &str| Some(vec![s.to_string()]);
    let number = |n: Option<i64>| Some(vec![n.map(|n| n.to_string()).unwrap_or_default()]);
    let count = |n: usize| Some(vec![n.to_string()]);
    match tag {
        t if t == tags::PATIENT_ID => one(&row.patient_id),
        t if t == tags::PATIENT_NAME => one(&row.patient_name),
        t if t == tags::PATIENT_BIRTH_DATE => one(&row.birth_date),
        t if t == tags::PATIENT_SEX => one(&row.sex),
        t if t == tags::NUMBER_OF_PATIENT_RELATED_STUDIES && level == Level::Patient => count(row.related),
        _ if level == Level::Patient => None,
        t if t == tags::STUDY_INSTANCE_UID => one(&row.study_uid),
        t if t == tags::STUDY_DATE => one(&row.study_date),
        t if t == tags::STUDY_TIME => one(&row.study_time),
        t if t == tags::ACCESSION_NUMBER => one(&row.accession),
        t if t == tags::STUDY_DESCRIPTION => one(&row.study_description),
        t if t == tags::MODALITIES_IN_STUDY && level == Level::Study => Some(row.modalities_in_study.clone()),
        t if t == tags::NUMBER_OF_STUDY_RELATED_SERIES && level == Level::Study => count(row.related),
        t if t == tags::NUMBER_OF_STUDY_RELATED_INSTANCES && level == Level::Study => count(row.related_instances),
        _ if level == Level::Study => None,
        t if t == tags::SERIES_INSTANCE_UID => one(&row.series_uid),
        t if t == tags::MODALITY => one(&row.modality),
        t if t == tags::SERIES_NUMBER => number(row.series_number),
        t if t == tags::SERIES_DESCRIPTION => one(&row.series_description),
        t if t == tags::NUMBER_OF_SERIES_RELATED_INSTANCES && level == Level::Series => count(row.series_instances),
        _ if level == Level::Series => None,
        t if t == tags::SOP_INSTANCE_UID => one(&row.sop_instance_uid),
        t if t == tags::SOP_CLASS_UID => one(&row.sop_class_uid),
        t if t == tags::INSTANCE_NUMBER => number(row.instance_number),
        _ => None,
    }
}

fn row_matches(row: &IndexRow, identifier: &InMemDicomObject, level: Level) -> bool {
    identifier.iter().all(|element| {
        let tag = element.header().tag;
        if tag == tags::QUERY_RETRIEVE_LEVEL || tag == tags::SPECIFIC_CHARACTER_SET {
            return true;
        }
        let key = element.to_str().map(|s| s.trim_matches(['\0', ' ']).to_string()).unwrap_or_default();
        if key.is_empty() || key == "*" {
            return true; // universal matching
        }
        let Some(values) = value_of(row, tag, level) else { return true };
        let vr = element.vr();
        values.iter().any(|value| value_matches(&key, value, vr))
    })
}

/// PS3.4 C.2.2.2 matching of one key against one value.
pub fn value_matches(key: &str, value: &str, vr: VR) -> bool {
    let value = value.trim_matches(['\0', ' ']);
    match vr {
        // List of UID matching: any of the UIDs.
        VR::UI => key.split('\\').any(|k| k.trim_matches(['\0', ' ']) == value),
        VR::DA | VR::TM | VR::DT if key.contains('-') => {
            let (from, to) = key.split_once('-').expect("contains '-'");
            // Only the digits count: "20010101" and "2001.01.01" compare alike.
            let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
            let (from, to, v) = (digits(from), digits(to), digits(value));
            !v.is_empty() && (from.is_empty() || v >= from) && (to.is_empty() || v <= to)
        }
        VR::PN => key.split('\\').any(|k| wildcard(&k.to_uppercase(), &value.to_uppercase())),
        VR::IS | VR::DS => key.split('\\').any(|k| k.trim().parse::<f64>().ok() == value.trim().parse::<f64>().ok()),
        _ => key.split('\\').any(|k| wildcard(k, value)),
    }
}

/// `*` any run of characters, `?` one character; everything else literal.
fn wildcard(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    let (mut pi, mut vi, mut star, mut mark) = (0, 0, None, 0);
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = vi;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            vi = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The answer identifier for a row: every key the request named, with our value or empty.
fn answer(row: &IndexRow, identifier: &InMemDicomObject, level: Level) -> InMemDicomObject {
    let mut out = InMemDicomObject::new_empty();
    let mut non_ascii = false;
    for element in identifier.iter() {
        let tag = element.header().tag;
        if tag == tags::SPECIFIC_CHARACTER_SET {
            continue;
        }
        let value = if tag == tags::QUERY_RETRIEVE_LEVEL {
            PrimitiveValue::from(level.keyword())
        } else {
            match value_of(row, tag, level) {
                Some(values) if values.iter().any(|v| !v.is_empty()) => {
                    non_ascii |= values.iter().any(|v| !v.is_ascii());
                    PrimitiveValue::Strs(values.into_iter().collect())
                }
                _ => PrimitiveValue::Empty,
            }
        };
        out.put(DataElement::new(tag, element.vr(), value));
    }
    if non_ascii {
        // The index holds decoded text; UTF-8 says what it is.
        out.put(DataElement::new(tags::SPECIFIC_CHARACTER_SET, VR::CS, PrimitiveValue::from("ISO_IR 192")));
    }
    out
}

fn respond<A: SyncAssociation<TcpStream>>(
    link: &mut Link<A>,
    message: &Message,
    response: u16,
    status: Status,
    comment: Option<&str>,
    data: Option<&[u8]>,
) -> Result<()> {
    let sop_class = message.command.str(tags::AFFECTED_SOP_CLASS_UID).unwrap_or_default();
    let mut rsp = Command::new(response)
        .with_str(tags::AFFECTED_SOP_CLASS_UID, VR::UI, &sop_class)
        .with_u16(tags::MESSAGE_ID_BEING_RESPONDED_TO, message.command.message_id().unwrap_or(0))
        .with_u16(tags::STATUS, status.0);
    if let Some(c) = comment {
        // Error Comment is LO: at most 64 characters.
        let c: String = c.chars().filter(|c| *c != '\\').take(64).collect();
        rsp = rsp.with_str(tags::ERROR_COMMENT, VR::LO, &c);
    }
    link.send(message.context_id, &rsp, data, "query/retrieve response")
}

/// Answers a C-FIND request: one pending response per match, then success.
pub(crate) fn handle_find<A: SyncAssociation<TcpStream>>(
    link: &mut Link<A>,
    message: &Message,
    store: &StudyStore,
) -> (QrOutcome, Result<()>) {
    let (identifier, level, ts_uid) = match identifier(link, message, true) {
        Ok(x) => x,
        Err((status, reason)) => {
            let sent = respond(link, message, field::C_FIND_RSP, status, Some(&reason), None);
            return (QrOutcome::Refused { status, reason }, sent);
        }
    };
    let rows = match matches(store, &identifier, level) {
        Ok(rows) => rows,
        Err(e) => {
            let reason = e.to_string();
            let sent = respond(link, message, field::C_FIND_RSP, UNABLE_TO_PROCESS, Some(&reason), None);
            return (QrOutcome::Refused { status: UNABLE_TO_PROCESS, reason }, sent);
        }
    };
    let ts = TransferSyntaxRegistry.get(&ts_uid).expect("checked in identifier()");
    for row in &rows {
        let mut bytes = Vec::new();
        if let Err(e) = answer(row, &identifier, level).write_dataset_with_ts(&mut bytes, ts) {
            let reason = format!("cannot encode a match: {e}");
            let sent = respond(link, message, field::C_FIND_RSP, UNABLE_TO_PROCESS, Some(&reason), None);
            return (QrOutcome::Refused { status: UNABLE_TO_PROCESS, reason }, sent);
        }
        if let Err(e) = respond(link, message, field::C_FIND_RSP, Status::PENDING, None, Some(&bytes)) {
            return (QrOutcome::Found { matches: rows.len() }, Err(e));
        }
    }
    let sent = respond(link, message, field::C_FIND_RSP, Status::SUCCESS, None, None);
    (QrOutcome::Found { matches: rows.len() }, sent)
}

/// The C-MOVE response command with sub-operation counters.
fn move_counts(status: Status, remaining: Option<usize>, completed: usize, failed: usize) -> Vec<(Tag, u16)> {
    let clamp = |n: usize| n.min(u16::MAX as usize) as u16;
    let mut v = vec![
        (tags::STATUS, status.0),
        (tags::NUMBER_OF_COMPLETED_SUBOPERATIONS, clamp(completed)),
        (tags::NUMBER_OF_FAILED_SUBOPERATIONS, clamp(failed)),
        (tags::NUMBER_OF_WARNING_SUBOPERATIONS, 0),
    ];
    if let Some(r) = remaining {
        v.push((tags::NUMBER_OF_REMAINING_SUBOPERATIONS, clamp(r)));
    }
    v
}

fn respond_move<A: SyncAssociation<TcpStream>>(
    link: &mut Link<A>,
    message: &Message,
    counts: &[(Tag, u16)],
    comment: Option<&str>,
) -> Result<()> {
    let sop_class = message.command.str(tags::AFFECTED_SOP_CLASS_UID).unwrap_or_default();
    let mut rsp = Command::new(field::C_MOVE_RSP)
        .with_str(tags::AFFECTED_SOP_CLASS_UID, VR::UI, &sop_class)
        .with_u16(tags::MESSAGE_ID_BEING_RESPONDED_TO, message.command.message_id().unwrap_or(0));
    for (tag, value) in counts {
        rsp = rsp.with_u16(*tag, *value);
    }
    if let Some(c) = comment {
        let c: String = c.chars().filter(|c| *c != '\\').take(64).collect();
        rsp = rsp.with_str(tags::ERROR_COMMENT, VR::LO, &c);
    }
    link.send(message.context_id, &rsp, None, "C-MOVE response")
}

/// Answers a C-MOVE request: the matching instances are sent by C-STORE, on an association of
/// our own, to the destination configured under the requested AE title; a pending response
/// follows each of them.
pub(crate) fn handle_move<A: SyncAssociation<TcpStream>>(
    link: &mut Link<A>,
    message: &Message,
    store: &StudyStore,
    our_aet: &str,
    destinations: &[Peer],
    timeout: std::time::Duration,
) -> (QrOutcome, Result<()>) {
    let refuse = |link: &mut Link<A>, status: Status, reason: String| {
        let sent = respond_move(link, message, &move_counts(status, None, 0, 0), Some(&reason));
        (QrOutcome::Refused { status, reason }, sent)
    };
    let (identifier, level, _) = match identifier(link, message, false) {
        Ok(x) => x,
        Err((status, reason)) => return refuse(link, status, reason),
    };
    let wanted = message.command.str(tags::MOVE_DESTINATION).unwrap_or_default().trim().to_string();
    let Some(destination) = destinations.iter().find(|d| d.aet.trim() == wanted) else {
        return refuse(link, MOVE_DESTINATION_UNKNOWN, format!("move destination {wanted:?} unknown"));
    };
    // A retrieve names the unique key of its level (and those above it); anything more would
    // be a query, which is C-FIND's job.
    let own_key = match level {
        Level::Patient => tags::PATIENT_ID,
        Level::Study => tags::STUDY_INSTANCE_UID,
        Level::Series => tags::SERIES_INSTANCE_UID,
        Level::Image => tags::SOP_INSTANCE_UID,
    };
    if text(&identifier, own_key).is_empty() {
        return refuse(link, IDENTIFIER_MISMATCH, format!("a {level} retrieve needs its unique key"));
    }
    let rows = match matches(store, &identifier, Level::Image) {
        Ok(rows) => rows,
        Err(e) => return refuse(link, UNABLE_TO_PROCESS, e.to_string()),
    };
    let files: Vec<PathBuf> = rows.into_iter().filter_map(|r| r.path).collect();
    let total = files.len();
    let options = ScuOptions { calling_aet: our_aet.to_string(), timeout, ..Default::default() };
    let (mut completed, mut failed) = (0usize, 0usize);
    let mut response_error = None;
    let result = if files.is_empty() {
        Ok(Vec::new())
    } else {
        scu::store(destination, &options, &files, &mut |sent| {
            if sent.ok() {
                completed += 1;
            } else {
                failed += 1;
            }
            if response_error.is_none() {
                let remaining = total - completed - failed;
                let counts = move_counts(Status::PENDING, Some(remaining), completed, failed);
                if let Err(e) = respond_move(link, message, &counts, None) {
                    response_error = Some(e);
                }
            }
        })
    };
    if let Some(e) = response_error {
        return (QrOutcome::Moved { destination: wanted, completed, failed }, Err(e));
    }
    match result {
        Ok(_) => {
            let status = if failed == 0 { Status::SUCCESS } else { Status::SUB_OPERATIONS_WARNING };
            let sent = respond_move(link, message, &move_counts(status, None, completed, failed), None);
            (QrOutcome::Moved { destination: wanted, completed, failed }, sent)
        }
        Err(e) => {
            // The destination could not be reached or broke off: what was not sent failed.
            let failed = total - completed;
            let reason = e.to_string();
            let counts = move_counts(UNABLE_TO_PERFORM_SUB_OPERATIONS, None, completed, failed);
            let sent = respond_move(link, message, &counts, Some(&reason));
            (QrOutcome::Refused { status: UNABLE_TO_PERFORM_SUB_OPERATIONS, reason }, sent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_rules_of_ps3_4_c_2_2_2() {
        assert!(value_matches("DOE*", "DOE^JOHN", VR::PN));
        assert!(value_matches("doe^j?hn", "DOE^JOHN", VR::PN), "names match case-insensitively");
        assert!(!value_matches("DOE", "DOE^JOHN", VR::PN));
        assert!(value_matches("MR\\CT", "CT", VR::CS));
        assert!(!value_matches("mr", "MR", VR::CS), "code strings are case-sensitive");
        assert!(value_matches("20010101-20011231", "20010615", VR::DA));
        assert!(value_matches("-20011231", "20010615", VR::DA));
        assert!(value_matches("20010101-", "20010615", VR::DA));
        assert!(!value_matches("20020101-", "20010615", VR::DA));
        assert!(!value_matches("20010101-", "", VR::DA), "an empty date is outside every range");
        assert!(value_matches("1.2.3\\1.2.4", "1.2.4", VR::UI));
        assert!(!value_matches("1.2.3", "1.2.30", VR::UI));
        assert!(value_matches("7", "7", VR::IS));
        assert!(wildcard("*a*b?", "xxaybz") && !wildcard("a*", "ba") && wildcard("**", ""));
    }
}
