//! The SCU side: C-ECHO, C-FIND, C-STORE, C-GET and C-MOVE against a remote node. Each call
//! opens one association, does its work, and releases it (or aborts it on error).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::{ClientAssociation, ClientAssociationOptions, SyncAssociation};

use super::dimse::{field, ul_error, Command, Incoming, Link, Status, SubOperations};
use super::error::{Error, Result};
use super::peer::{check_ae_title, Peer};
use super::query::{find_identifier, retrieve_identifier, Level, Model, QueryKeys};
use super::scp::{handle_store, MAX_DATA_SET};
use super::sop;
use crate::store::{split_part10, StoredInstance, StudyStore};

/// Our side of an association.
#[derive(Debug, Clone)]
pub struct ScuOptions {
    /// Our (calling) AE title.
    pub calling_aet: String,
    /// Connection, read and write timeout.
    pub timeout: Duration,
    /// Largest PDU we accept.
    pub max_pdu: u32,
}

impl Default for ScuOptions {
    fn default() -> Self {
        ScuOptions { calling_aet: "MELO".into(), timeout: Duration::from_secs(30), max_pdu: 262_138 }
    }
}

type ClientLink = Link<ClientAssociation<TcpStream>>;

/// A presentation context to propose: abstract syntax and transfer syntaxes, in preference
/// order.
struct Proposed {
    abstract_syntax: String,
    transfer_syntaxes: Vec<String>,
}

fn proposed(abstract_syntax: &str, transfer_syntaxes: &[&str]) -> Proposed {
    Proposed {
        abstract_syntax: abstract_syntax.to_string(),
        transfer_syntaxes: transfer_syntaxes.iter().map(|s| s.to_string()).collect(),
    }
}

/// Opens an association proposing `contexts`; `scp_role_for` lists SOP classes in which we
/// also take the SCP role (C-GET receives its C-STOREs that way).
fn associate(
    peer: &Peer,
    options: &ScuOptions,
    contexts: &[Proposed],
    scp_role_for: &[&str],
    what: &str,
) -> Result<ClientLink> {
    check_ae_title(&options.calling_aet)?;
    let mut o = ClientAssociationOptions::new()
        .calling_ae_title(options.calling_aet.clone())
        .called_ae_title(peer.aet.clone())
        .max_pdu_length(options.max_pdu)
        .connection_timeout(options.timeout)
        .read_timeout(options.timeout)
        .write_timeout(options.timeout);
    for c in contexts {
        o = o.with_presentation_context(c.abstract_syntax.clone(), c.transfer_syntaxes.clone());
    }
    for uid in scp_role_for {
        o = o.with_role_selection(uid.to_string(), false, true);
    }
    let assoc =
        o.establish(peer.socket_address()).map_err(|e| match ul_error(&peer.to_string(), "", e, options.timeout) {
            // The generic message names no service; say which one the peer does not offer.
            Error::NoPresentationContext { peer, .. } => Error::NoPresentationContext { peer, what: what.to_string() },
            Error::Connection { peer, reason, .. } => Error::Connect { peer, reason },
            other => other,
        })?;
    Ok(Link { assoc, peer: peer.to_string(), timeout: options.timeout, max_data_set: MAX_DATA_SET })
}

/// The accepted context for an abstract syntax (and, when given, a transfer syntax).
fn accepted_context(link: &ClientLink, abstract_syntax: &str) -> Option<(u8, String)> {
    dicom_ul::association::Association::presentation_contexts(&link.assoc)
        .iter()
        .find(|pc| pc.abstract_syntax.trim_end_matches('\0') == abstract_syntax)
        .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches(['\0', ' ']).to_string()))
}

/// Releases the association; a peer that drops the connection instead is not an error once
/// the work is done.
fn release(link: ClientLink) {
    let _ = SyncAssociation::release(link.assoc);
}

fn abort(link: ClientLink) {
    let _ = SyncAssociation::abort(link.assoc);
}

/// Runs `work` on the link; aborts the association when it fails, releases it otherwise.
fn with_link<T>(mut link: ClientLink, work: impl FnOnce(&mut ClientLink) -> Result<T>) -> Result<T> {
    match work(&mut link) {
        Ok(v) => {
            release(link);
            Ok(v)
        }
        Err(e) => {
            abort(link);
            Err(e)
        }
    }
}

fn ts_of(uid: &str) -> Result<&'static dicom_encoding::TransferSyntax> {
    TransferSyntaxRegistry
        .get(uid)
        .ok_or_else(|| Error::Invalid(format!("transfer syntax {uid} is not known to this build")))
}

/// C-ECHO: whether the peer answers; returns the round trip including association set-up.
pub fn echo(peer: &Peer, options: &ScuOptions) -> Result<Duration> {
    let start = Instant::now();
    let link = associate(
        peer,
        options,
        &[proposed(sop::VERIFICATION, &[sop::EXPLICIT_LE, sop::IMPLICIT_LE])],
        &[],
        "Verification (C-ECHO)",
    )?;
    with_link(link, |link| {
        let (ctx, _) = accepted_context(link, sop::VERIFICATION).ok_or_else(|| Error::NoPresentationContext {
            peer: peer.to_string(),
            what: "Verification (C-ECHO)".into(),
        })?;
        let rq = Command::new(field::C_ECHO_RQ)
            .with_str(tags::AFFECTED_SOP_CLASS_UID, VR::UI, sop::VERIFICATION)
            .with_u16(tags::MESSAGE_ID, 1);
        link.send(ctx, &rq, None, "C-ECHO")?;
        let rsp = link.receive_message("C-ECHO")?;
        expect_response(link, &rsp.command, field::C_ECHO_RSP, "C-ECHO")?;
        let status = rsp.command.status().unwrap_or(Status(0xFFFF));
        if !status.is_success() {
            return Err(status_error(peer, "C-ECHO", status, &rsp.command));
        }
        Ok(start.elapsed())
    })
}

fn expect_response(link: &ClientLink, command: &Command, expected: u16, what: &str) -> Result<()> {
    if command.field() != Some(expected) {
        return Err(
            link.protocol(format!("expected a {what} response, got command 0x{:04X}", command.field().unwrap_or(0)))
        );
    }
    Ok(())
}

fn status_error(peer: &Peer, operation: &'static str, status: Status, command: &Command) -> Error {
    Error::Status {
        peer: peer.to_string(),
        operation,
        status,
        comment: command.error_comment().map(|c| format!(": {c}")).unwrap_or_default(),
    }
}

/// C-FIND: every match of `keys` at `level`, as the peer returned them.
pub fn find(
    peer: &Peer,
    options: &ScuOptions,
    model: Model,
    level: Level,
    keys: &QueryKeys,
) -> Result<Vec<InMemDicomObject>> {
    let identifier = find_identifier(model, level, keys)?;
    find_with_identifier(peer, options, model.find_sop_class(), &identifier)
}

/// C-FIND with a ready identifier.
pub fn find_with_identifier(
    peer: &Peer,
    options: &ScuOptions,
    sop_class: &str,
    identifier: &InMemDicomObject,
) -> Result<Vec<InMemDicomObject>> {
    let link = associate(peer, options, &[proposed(sop_class, &[sop::EXPLICIT_LE, sop::IMPLICIT_LE])], &[], "C-FIND")?;
    with_link(link, |link| {
        let (ctx, ts_uid) = accepted_context(link, sop_class)
            .ok_or_else(|| Error::NoPresentationContext { peer: peer.to_string(), what: "C-FIND".into() })?;
        let ts = ts_of(&ts_uid)?;
        let mut data = Vec::new();
        identifier
            .write_dataset_with_ts(&mut data, ts)
            .map_err(|e| Error::Invalid(format!("cannot encode the query: {e}")))?;
        let rq = Command::new(field::C_FIND_RQ)
            .with_str(tags::AFFECTED_SOP_CLASS_UID, VR::UI, sop_class)
            .with_u16(tags::MESSAGE_ID, 1)
            .with_u16(tags::PRIORITY, 0);
        link.send(ctx, &rq, Some(&data), "C-FIND")?;
        let mut matches = Vec::new();
        loop {
            let rsp = link.receive_message("C-FIND")?;
            expect_response(link, &rsp.command, field::C_FIND_RSP, "C-FIND")?;
            let status = rsp.command.status().unwrap_or(Status(0xFFFF));
            if status.is_pending() {
                let bytes =
                    rsp.data.ok_or_else(|| link.protocol("a pending C-FIND response without a match".into()))?;
                let obj = InMemDicomObject::read_dataset_with_ts(&bytes[..], ts)
                    .map_err(|e| link.protocol(format!("unreadable C-FIND match: {e}")))?;
                matches.push(obj);
            } else if status.is_success() || status.is_cancel() {
                return Ok(matches);
            } else {
                return Err(status_error(peer, "C-FIND", status, &rsp.command));
            }
        }
    })
}

/// Outcome of one file in a C-STORE run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SentFile {
    pub file: PathBuf,
    pub sop_instance_uid: String,
    /// `None` when the file was not sent (unreadable, no acceptable context).
    pub status: Option<Status>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

impl SentFile {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.is_success() || s.is_warning())
    }
}

/// A file ready to send: its meta and the byte range of its data set.
struct Outgoing {
    file: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    sop_class: String,
    sop_instance: String,
    ts: String,
}

/// Reads and checks a file before anything goes on the wire: a file that does not parse is
/// never sent.
fn read_outgoing(file: &Path) -> std::result::Result<Outgoing, String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let part10 = split_part10(&bytes)?;
    let ts = part10.meta.transfer_syntax().trim_end_matches(['\0', ' ']).to_string();
    let sop_class = part10.meta.media_storage_sop_class_uid().trim_end_matches(['\0', ' ']).to_string();
    let sop_instance = part10.meta.media_storage_sop_instance_uid().trim_end_matches(['\0', ' ']).to_string();
    let syntax = TransferSyntaxRegistry.get(&ts).ok_or_else(|| format!("unknown transfer syntax {ts}"))?;
    let (obj, data_set) = crate::store::parse_data_set(part10.data_set, syntax)
        .map_err(|e| format!("not a valid DICOM data set: {e}"))?;
    let in_set = obj
        .element_opt(tags::SOP_INSTANCE_UID)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.trim_end_matches(['\0', ' ']).to_string()));
    if in_set.as_deref() != Some(sop_instance.as_str()) {
        return Err("its SOP Instance UID differs between file meta and data set".into());
    }
    // Sent without trailing zero padding, if the file has some.
    let data_start = bytes.len() - part10.data_set.len();
    let data_end = data_start + data_set.len();
    let mut bytes = bytes;
    bytes.truncate(data_end);
    Ok(Outgoing { file: file.to_path_buf(), bytes, data_start, sop_class, sop_instance, ts })
}

/// At most this many presentation contexts per association (the protocol allows 128).
const MAX_CONTEXTS: usize = 120;

/// C-STORE of files to the peer. Every file gets an outcome; unreadable files are reported
/// and skipped, the rest are sent. Files are grouped so that one association proposes at most
/// 120 presentation contexts (one per SOP class and transfer syntax).
pub fn store(
    peer: &Peer,
    options: &ScuOptions,
    files: &[PathBuf],
    progress: &mut dyn FnMut(&SentFile),
) -> Result<Vec<SentFile>> {
    let mut results = Vec::new();
    let mut batches: Vec<Vec<Outgoing>> = Vec::new();
    let mut batch_keys: Vec<Vec<(String, String)>> = Vec::new();
    for file in files {
        match read_outgoing(file) {
            Ok(o) => {
                let key = (o.sop_class.clone(), o.ts.clone());
                let slot = match batch_keys.iter().position(|k| k.contains(&key) || k.len() < MAX_CONTEXTS) {
                    Some(slot) => slot,
                    None => {
                        batch_keys.push(Vec::new());
                        batches.push(Vec::new());
                        batch_keys.len() - 1
                    }
                };
                if !batch_keys[slot].contains(&key) {
                    batch_keys[slot].push(key);
                }
                batches[slot].push(o);
            }
            Err(reason) => {
                let r =
                    SentFile { file: file.clone(), sop_instance_uid: String::new(), status: None, error: Some(reason) };
                progress(&r);
                results.push(r);
            }
        }
    }
    for (batch, keys) in batches.into_iter().zip(batch_keys) {
        store_batch(peer, options, batch, &keys, progress, &mut results)?;
    }
    Ok(results)
}

fn store_batch(
    peer: &Peer,
    options: &ScuOptions,
    batch: Vec<Outgoing>,
    keys: &[(String, String)],
    progress: &mut dyn FnMut(&SentFile),
    results: &mut Vec<SentFile>,
) -> Result<()> {
    // One context per (SOP class, transfer syntax); uncompressed files also offer the other
    // uncompressed syntaxes, into which they can be re-encoded losslessly.
    let contexts: Vec<Proposed> = keys
        .iter()
        .map(|(class, ts)| {
            let mut syntaxes = vec![ts.as_str()];
            if sop::NATIVE.contains(&ts.as_str()) {
                syntaxes.extend(sop::NATIVE.iter().filter(|n| **n != ts.as_str() && **n != sop::EXPLICIT_BE));
            }
            proposed(class, &syntaxes)
        })
        .collect();
    let link = associate(peer, options, &contexts, &[], "C-STORE of these SOP classes")?;
    with_link(link, |link| {
        let accepted: BTreeMap<u8, String> = dicom_ul::association::Association::presentation_contexts(&link.assoc)
            .iter()
            .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches(['\0', ' ']).to_string()))
            .collect();
        for (n, outgoing) in batch.into_iter().enumerate() {
            let key = (outgoing.sop_class.clone(), outgoing.ts.clone());
            // dicom-ul numbers proposed contexts 1, 3, 5, … in the order given.
            let index = keys.iter().position(|k| *k == key).expect("every file's key was proposed");
            let context_id = (2 * index + 1) as u8;
            let mut result = SentFile {
                file: outgoing.file.clone(),
                sop_instance_uid: outgoing.sop_instance.clone(),
                status: None,
                error: None,
            };
            match accepted.get(&context_id) {
                None => {
                    result.error = Some(format!(
                        "{peer} does not accept SOP class {} in transfer syntax {}",
                        outgoing.sop_class, outgoing.ts
                    ))
                }
                Some(ts) => {
                    let data = encode_for(&outgoing, ts)
                        .map_err(|e| Error::File { file: outgoing.file.display().to_string(), reason: e });
                    match data {
                        Err(e) => result.error = Some(e.to_string()),
                        Ok(data) => {
                            let rq = Command::new(field::C_STORE_RQ)
                                .with_str(tags::AFFECTED_SOP_CLASS_UID, VR::UI, &outgoing.sop_class)
                                .with_str(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, &outgoing.sop_instance)
                                .with_u16(tags::MESSAGE_ID, (n % 0xFFFF + 1) as u16)
                                .with_u16(tags::PRIORITY, 0);
                            link.send(context_id, &rq, Some(&data), "C-STORE")?;
                            let rsp = link.receive_message("C-STORE")?;
                            expect_response(link, &rsp.command, field::C_STORE_RSP, "C-STORE")?;
                            let status = rsp.command.status().unwrap_or(Status(0xFFFF));
                            result.status = Some(status);
                            if status.is_failure() {
                                result.error = Some(status_error(peer, "C-STORE", status, &rsp.command).to_string());
                            }
                        }
                    }
                }
            }
            progress(&result);
            results.push(result);
        }
        Ok(())
    })
}

/// The data set in the accepted transfer syntax: the file's own bytes when it is the same,
/// else re-encoded (uncompressed to uncompressed only).
fn encode_for(outgoing: &Outgoing, accepted_ts: &str) -> std::result::Result<Vec<u8>, String> {
    let original = &outgoing.bytes[outgoing.data_start..];
    if accepted_ts == outgoing.ts {
        return Ok(original.to_vec());
    }
    if !(sop::NATIVE.contains(&accepted_ts) && sop::NATIVE.contains(&outgoing.ts.as_str())) {
        return Err(format!("the peer accepted {accepted_ts}, which would need transcoding from {}", outgoing.ts));
    }
    let from = TransferSyntaxRegistry.get(&outgoing.ts).ok_or("unknown transfer syntax")?;
    let to = TransferSyntaxRegistry.get(accepted_ts).ok_or("unknown transfer syntax")?;
    let obj = InMemDicomObject::read_dataset_with_ts(original, from).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(original.len());
    obj.write_dataset_with_ts(&mut out, to).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Progress of a C-GET or C-MOVE, after each response or received instance.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RetrieveProgress {
    pub sub_operations: SubOperations,
    /// Instances stored so far by this C-GET (C-MOVE stores through the SCP instead).
    pub stored: usize,
    pub failed_to_store: usize,
}

/// What a C-GET or C-MOVE did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RetrieveReport {
    pub status: Status,
    pub sub_operations: SubOperations,
    /// Instances this C-GET stored (empty for C-MOVE).
    pub stored: Vec<StoredInstance>,
    /// Instances we refused to store, with the reason.
    pub refused: Vec<(String, String)>,
    pub elapsed: Duration,
}

/// Control a caller has over a running retrieve: return `false` to cancel (a C-CANCEL is
/// sent; complete instances stay stored).
pub type ProgressFn<'a> = &'a mut dyn FnMut(&RetrieveProgress) -> bool;

/// C-GET: the peer sends the matching instances back on this association; each is stored in
/// `store` as it arrives.
pub fn get(
    peer: &Peer,
    options: &ScuOptions,
    model: Model,
    level: Level,
    keys: &QueryKeys,
    store: &StudyStore,
    progress: ProgressFn,
) -> Result<RetrieveReport> {
    let identifier = retrieve_identifier(model, level, keys)?;
    let sop_class = model.get_sop_class();
    let classes = discover_sop_classes(peer, options, model, keys);
    let (contexts, roles) = get_contexts(sop_class, &classes);
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    let link = associate(peer, options, &contexts, &roles, "C-GET")?;
    retrieve(
        link,
        peer,
        sop_class,
        field::C_GET_RQ,
        field::C_GET_RSP,
        "C-GET",
        None,
        &identifier,
        Some(store),
        progress,
    )
}

/// SOP classes of what a retrieve will bring, from the study-level attribute SOP Classes in
/// Study (a C-FIND first). Empty when the peer does not say; the retrieve then proposes the
/// generic contexts.
fn discover_sop_classes(peer: &Peer, options: &ScuOptions, model: Model, keys: &QueryKeys) -> Vec<String> {
    let study_keys =
        QueryKeys { patient_id: keys.patient_id.clone(), study_uid: keys.study_uid.clone(), ..Default::default() };
    let Ok(mut identifier) = find_identifier(model, Level::Study, &study_keys) else { return Vec::new() };
    identifier.put(dicom_core::DataElement::new(tags::SOP_CLASSES_IN_STUDY, VR::UI, dicom_core::PrimitiveValue::Empty));
    let Ok(matches) = find_with_identifier(peer, options, model.find_sop_class(), &identifier) else {
        return Vec::new();
    };
    let mut classes: Vec<String> = Vec::new();
    for m in &matches {
        if let Ok(Some(e)) = m.element_opt(tags::SOP_CLASSES_IN_STUDY) {
            if let Ok(values) = e.to_multi_str() {
                for v in values.iter() {
                    let v = v.trim_end_matches(['\0', ' ']).to_string();
                    if !v.is_empty() && !classes.contains(&v) {
                        classes.push(v);
                    }
                }
            }
        }
    }
    classes
}

/// Largest number of SOP classes proposed with one context per compressed transfer syntax
/// (11 contexts each: uncompressed + 10 compressed; 128 contexts at most per association).
const CLASSES_WITH_EVERY_SYNTAX: usize = 11;

/// Presentation contexts of a C-GET. An acceptor picks one transfer syntax per context by its
/// own preference (Orthanc prefers deflate), and then has to transcode what it stores
/// otherwise, which it may not be able to do (Orthanc has no JPEG 2000 encoder/decoder
/// without plugins). So the SOP classes known to come get one context per compressed syntax,
/// and the peer can send each file as it holds it; the other storage classes get an
/// uncompressed context, then, if room remains, a compressed one.
fn get_contexts(get_class: &str, known: &[String]) -> (Vec<Proposed>, Vec<String>) {
    let mut contexts = vec![proposed(get_class, &[sop::EXPLICIT_LE, sop::IMPLICIT_LE])];
    let mut roles: Vec<String> = Vec::new();
    for class in known.iter().take(CLASSES_WITH_EVERY_SYNTAX) {
        contexts.push(proposed(class, &[sop::EXPLICIT_LE, sop::IMPLICIT_LE]));
        for ts in sop::COMPRESSED {
            contexts.push(proposed(class, &[ts]));
        }
        roles.push(class.clone());
    }
    let others: Vec<&str> = sop::STORAGE.iter().copied().filter(|c| !roles.iter().any(|r| r == c)).collect();
    for class in &others {
        if contexts.len() >= 127 {
            break;
        }
        contexts.push(proposed(class, &[sop::EXPLICIT_LE, sop::IMPLICIT_LE]));
        roles.push(class.to_string());
    }
    for class in &others {
        if contexts.len() >= 127 {
            break;
        }
        if roles.iter().any(|r| r == class) {
            contexts.push(proposed(class, sop::COMPRESSED));
        }
    }
    (contexts, roles)
}

/// C-MOVE: the peer sends the matching instances to `destination` (an AE title it knows, for
/// us: the AE title of our running SCP) on associations of its own.
pub fn move_to(
    peer: &Peer,
    options: &ScuOptions,
    model: Model,
    level: Level,
    keys: &QueryKeys,
    destination: &str,
    progress: ProgressFn,
) -> Result<RetrieveReport> {
    check_ae_title(destination)?;
    let identifier = retrieve_identifier(model, level, keys)?;
    let sop_class = model.move_sop_class();
    let link = associate(peer, options, &[proposed(sop_class, &[sop::EXPLICIT_LE, sop::IMPLICIT_LE])], &[], "C-MOVE")?;
    retrieve(
        link,
        peer,
        sop_class,
        field::C_MOVE_RQ,
        field::C_MOVE_RSP,
        "C-MOVE",
        Some(destination),
        &identifier,
        None,
        progress,
    )
}

#[allow(clippy::too_many_arguments)]
fn retrieve(
    link: ClientLink,
    peer: &Peer,
    sop_class: &str,
    request: u16,
    response: u16,
    operation: &'static str,
    destination: Option<&str>,
    identifier: &InMemDicomObject,
    store: Option<&StudyStore>,
    progress: ProgressFn,
) -> Result<RetrieveReport> {
    let start = Instant::now();
    with_link(link, |link| {
        let (ctx, ts_uid) = accepted_context(link, sop_class)
            .ok_or_else(|| Error::NoPresentationContext { peer: peer.to_string(), what: operation.into() })?;
        let ts = ts_of(&ts_uid)?;
        let mut data = Vec::new();
        identifier
            .write_dataset_with_ts(&mut data, ts)
            .map_err(|e| Error::Invalid(format!("cannot encode the identifier: {e}")))?;
        let mut rq = Command::new(request)
            .with_str(tags::AFFECTED_SOP_CLASS_UID, VR::UI, sop_class)
            .with_u16(tags::MESSAGE_ID, 1)
            .with_u16(tags::PRIORITY, 0);
        if let Some(dest) = destination {
            rq = rq.with_str(tags::MOVE_DESTINATION, VR::AE, dest);
        }
        link.send(ctx, &rq, Some(&data), operation)?;
        let mut state = RetrieveProgress::default();
        let mut stored = Vec::new();
        let mut refused = Vec::new();
        let mut cancelled = false;
        loop {
            let message = match link.receive(operation)? {
                Incoming::Message(m) => m,
                Incoming::Release => {
                    return Err(link.protocol(format!("the peer released the association during {operation}")))
                }
            };
            match message.command.field() {
                Some(field::C_STORE_RQ) if store.is_some() => {
                    let (result, sent) = handle_store(link, &message, store.expect("checked"), &peer.aet);
                    sent?;
                    match result {
                        Ok(instance) => {
                            state.stored += 1;
                            stored.push(instance);
                        }
                        Err((_, reason)) => {
                            state.failed_to_store += 1;
                            let uid = message.command.str(tags::AFFECTED_SOP_INSTANCE_UID).unwrap_or_default();
                            refused.push((uid, reason));
                        }
                    }
                }
                Some(f) if f == response => {
                    let status = message.command.status().unwrap_or(Status(0xFFFF));
                    state.sub_operations = message.command.sub_operations();
                    if !status.is_pending() {
                        if status.is_failure() {
                            return Err(status_error(peer, operation, status, &message.command));
                        }
                        if cancelled || status.is_cancel() {
                            return Err(Error::Cancelled);
                        }
                        return Ok(RetrieveReport {
                            status,
                            sub_operations: state.sub_operations,
                            stored,
                            refused,
                            elapsed: start.elapsed(),
                        });
                    }
                }
                other => {
                    return Err(
                        link.protocol(format!("unexpected command 0x{:04X} during {operation}", other.unwrap_or(0)))
                    )
                }
            }
            if !cancelled && !progress(&state) {
                cancelled = true;
                let cancel = Command::new(field::C_CANCEL_RQ).with_u16(tags::MESSAGE_ID_BEING_RESPONDED_TO, 1);
                link.send(ctx, &cancel, None, "C-CANCEL")?;
            }
        }
    })
}
