//! The Studies view: PACS nodes (DIMSE or DICOMweb), study search, retrieve into the local
//! study store, and "Open" into the viewer.
//!
//! Every network call blocks (src/net), so each runs on a worker thread of its own and reports
//! over one channel ([`StudiesEvent`]); the window keeps repainting and stays usable whatever
//! the peer does (refusal, timeout, unreachable URL: one line in the view). Widgets push
//! [`StudiesCommand`]s; [`StudiesPanel::apply`] carries them out after the frame.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use egui::{Color32, RichText};
use serde::{Deserialize, Serialize};

use super::{Command, MessageLevel};
use crate::net::dicomweb::{json_to_map, DicomWebClient};
use crate::net::query::match_to_map;
use crate::net::{self, Level, Model, Peer, QueryKeys, ScpConfig, ScpEvent, ScpHandle, ScuOptions, StoreScp};
use crate::store::{SeriesRecord, StudyRecord, StudyStore};

/// How long one network operation may stay silent before it fails.
const NET_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a node listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeAddress {
    /// A DIMSE node: called AE title, host, port.
    Dimse { aet: String, host: String, port: u16 },
    /// A DICOMweb service root, e.g. `http://pacs:8042/dicom-web`.
    DicomWeb { url: String },
}

/// A configured PACS node (kept in the settings; nothing about a patient).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The name the user gave it; unique among the nodes.
    pub name: String,
    pub address: NodeAddress,
}

impl Node {
    /// `AET@HOST:PORT` or the URL.
    pub fn describe(&self) -> String {
        match &self.address {
            NodeAddress::Dimse { aet, host, port } => format!("{aet}@{host}:{port}"),
            NodeAddress::DicomWeb { url } => url.clone(),
        }
    }

    /// The node as the networking library names it (where results are sent).
    pub fn destination(&self) -> Result<net::cli::Node, String> {
        match &self.address {
            NodeAddress::Dimse { .. } => self.peer().map(net::cli::Node::Dimse),
            NodeAddress::DicomWeb { url } => Ok(net::cli::Node::Web(url.clone())),
        }
    }

    fn peer(&self) -> Result<Peer, String> {
        match &self.address {
            NodeAddress::Dimse { aet, host, port } => {
                Peer::new(aet.trim(), host.trim(), *port).map_err(|e| e.to_string())
            }
            NodeAddress::DicomWeb { .. } => Err("not a DIMSE node".into()),
        }
    }
}

/// The add/edit form: text as typed, checked when submitted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeForm {
    pub name: String,
    pub dicomweb: bool,
    pub aet: String,
    pub host: String,
    pub port: String,
    pub url: String,
    /// The node being edited (its index); `None`: a new node.
    pub editing: Option<usize>,
}

impl NodeForm {
    /// The node the form describes, or why it cannot be one.
    pub fn to_node(&self) -> Result<Node, String> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err("give the node a name".into());
        }
        let address = if self.dicomweb {
            let url = self.url.trim();
            // Checked as the client will check it, so a bad URL is refused here, not later.
            DicomWebClient::new(url, NET_TIMEOUT).map_err(|e| e.to_string())?;
            NodeAddress::DicomWeb { url: url.trim_end_matches('/').to_string() }
        } else {
            let port: u16 = self
                .port
                .trim()
                .parse()
                .map_err(|_| format!("port {:?} is not a number from 1 to 65535", self.port.trim()))?;
            let peer = Peer::new(self.aet.trim(), self.host.trim(), port).map_err(|e| e.to_string())?;
            NodeAddress::Dimse { aet: peer.aet, host: peer.host, port: peer.port }
        };
        Ok(Node { name: name.to_string(), address })
    }

    /// A form filled from `AET@HOST:PORT` or an `http://` URL (scripted starts); what does not
    /// parse is left in the fields for [`NodeForm::to_node`] to refuse.
    pub fn parse(name: &str, address: &str) -> Self {
        let mut form = NodeForm { name: name.to_string(), ..Default::default() };
        if address.contains("://") {
            form.dicomweb = true;
            form.url = address.to_string();
        } else {
            let (aet, rest) = address.rsplit_once('@').unwrap_or(("", address));
            let (host, port) = rest.rsplit_once(':').unwrap_or((rest, ""));
            form.aet = aet.to_string();
            form.host = host.to_string();
            form.port = port.to_string();
        }
        form
    }

    fn from_node(node: &Node, index: usize) -> Self {
        let mut form = NodeForm { name: node.name.clone(), editing: Some(index), ..Default::default() };
        match &node.address {
            NodeAddress::Dimse { aet, host, port } => {
                form.aet = aet.clone();
                form.host = host.clone();
                form.port = port.to_string();
            }
            NodeAddress::DicomWeb { url } => {
                form.dicomweb = true;
                form.url = url.clone();
            }
        }
        form
    }
}

/// The search fields, as typed. Dates are `YYYYMMDD`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchFields {
    pub patient_id: String,
    pub patient_name: String,
    pub birth_date: String,
    pub date_from: String,
    pub date_to: String,
    pub modality: String,
    pub accession: String,
}

impl SearchFields {
    pub fn keys(&self) -> Result<QueryKeys, String> {
        let field = |s: &str| {
            let s = s.trim();
            (!s.is_empty()).then(|| s.to_string())
        };
        let date = |what: &str, s: &str| -> Result<String, String> {
            let s = s.trim();
            if s.is_empty() || (s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit())) {
                Ok(s.to_string())
            } else {
                Err(format!("{what} {s:?} is not a date as YYYYMMDD"))
            }
        };
        let from = date("study date from", &self.date_from)?;
        let to = date("study date to", &self.date_to)?;
        let birth = date("birth date", &self.birth_date)?;
        let study_date = match (from.is_empty(), to.is_empty()) {
            (true, true) => None,
            (false, false) if from == to => Some(from),
            _ => Some(format!("{from}-{to}")),
        };
        Ok(QueryKeys {
            patient_id: field(&self.patient_id),
            patient_name: field(&self.patient_name),
            birth_date: field(&birth),
            study_date,
            modality: field(&self.modality.to_uppercase()),
            accession: field(&self.accession),
            ..Default::default()
        })
    }
}

/// One study found on a node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StudyRow {
    pub study_uid: String,
    pub patient_id: String,
    pub patient_name: String,
    pub birth_date: String,
    pub study_date: String,
    pub modalities: String,
    pub accession: String,
    pub description: String,
    pub instances: String,
}

impl StudyRow {
    fn from_map(m: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        StudyRow {
            study_uid: get("StudyInstanceUID"),
            patient_id: get("PatientID"),
            patient_name: get("PatientName").replace('^', " ").trim().to_string(),
            birth_date: get("PatientBirthDate"),
            study_date: get("StudyDate"),
            modalities: get("ModalitiesInStudy"),
            accession: get("AccessionNumber"),
            description: get("StudyDescription"),
            instances: get("NumberOfStudyRelatedInstances"),
        }
    }
}

/// One series of a found study.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesRow {
    pub series_uid: String,
    pub modality: String,
    pub number: String,
    pub description: String,
    pub instances: String,
}

impl SeriesRow {
    fn from_map(m: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        SeriesRow {
            series_uid: get("SeriesInstanceUID"),
            modality: get("Modality"),
            number: get("SeriesNumber"),
            description: get("SeriesDescription"),
            instances: get("NumberOfSeriesRelatedInstances"),
        }
    }
}

/// What the user sees of an echo.
#[derive(Debug, Clone, PartialEq)]
pub enum EchoState {
    Running,
    Ok(Duration),
    Failed(String),
}

/// A retrieve in progress.
pub struct RetrieveJob {
    pub study_uid: String,
    pub series_uid: Option<String>,
    /// Instances stored so far, and how many are expected when the peer says.
    pub done: usize,
    pub total: Option<usize>,
    cancel: Arc<AtomicBool>,
}

/// What a finished retrieve brought.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrieveOutcome {
    pub study_uid: String,
    /// Instances this retrieve stored; after a cancel, those counted before it (more may have
    /// arrived while the peer answered the C-CANCEL: see `in_store`).
    pub stored: usize,
    /// Instances of the study in the store's index once the retrieve ended.
    pub in_store: usize,
    pub failed: usize,
    pub cancelled: bool,
}

/// Everything the Studies view can be asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum StudiesCommand {
    /// Add (or, when editing, replace) the node in the form.
    SubmitNode,
    EditNode(usize),
    RemoveNode(usize),
    CancelEdit,
    SelectNode(usize),
    Echo(usize),
    Search,
    /// Query the series of a found study (expanding its row).
    ToggleStudy(String),
    /// Retrieve a study (or one series of it) from the selected node into the store.
    Retrieve {
        study_uid: String,
        series_uid: Option<String>,
    },
    CancelRetrieve,
    /// Load a study (every series of it in the store) into the viewer.
    OpenStudy(String),
    /// Load one stored series into the viewer.
    OpenSeries(String),
    /// Use this folder as the study store.
    SetStoreFolder(PathBuf),
    /// Ask for the store folder with the system dialog.
    ChooseStoreFolder,
    /// C-MOVE a study (or one series) from the selected DIMSE node to our running receiver.
    Move {
        study_uid: String,
        series_uid: Option<String>,
    },
    /// Ask for a folder, then export the stored study de-identified into it.
    ExportDeidentified(String),
    /// De-identify every stored instance of the study into `folder` (PS3.15 Annex E basic
    /// profile, with Retain Longitudinal Temporal Information when `retain_dates` is set).
    ExportDeidentifiedTo {
        study_uid: String,
        folder: PathBuf,
    },
    RefreshLocal,
    StartScp,
    StopScp,
}

/// What a command asks of the app besides the view's own state.
#[derive(Debug, Clone, PartialEq)]
pub enum StudiesEffect {
    Message(MessageLevel, String),
    Open(Vec<PathBuf>),
    /// Ask for a folder with the system dialog; the answer becomes `purpose`'s command.
    AskFolder {
        title: String,
        purpose: FolderPurpose,
    },
}

/// What a folder asked for is used for.
#[derive(Debug, Clone, PartialEq)]
pub enum FolderPurpose {
    StoreFolder,
    /// The export folder of this stored study.
    Deidentify(String),
}

impl FolderPurpose {
    pub fn with_folder(self, folder: PathBuf) -> StudiesCommand {
        match self {
            FolderPurpose::StoreFolder => StudiesCommand::SetStoreFolder(folder),
            FolderPurpose::Deidentify(study_uid) => StudiesCommand::ExportDeidentifiedTo { study_uid, folder },
        }
    }
}

/// Reports of the worker threads.
enum StudiesEvent {
    Echo { node: String, result: Result<Duration, String> },
    Found { search: u64, result: Result<Vec<StudyRow>, String> },
    Series { study_uid: String, result: Result<Vec<SeriesRow>, String> },
    Progress { done: usize, total: Option<usize> },
    Retrieved(Result<RetrieveOutcome, String>),
    Exported(Result<(MessageLevel, String), String>),
    Scp(ScpEvent),
}

/// Expanded study: its series once the query answered.
#[derive(Debug, Clone, PartialEq)]
pub enum SeriesState {
    Loading,
    Loaded(Vec<SeriesRow>),
    Failed(String),
}

/// The receiving side (C-STORE SCP), as configured and while running.
pub struct ScpSettings {
    pub aet: String,
    pub port: String,
    /// Calling AE titles allowed, separated by spaces or commas; empty with `allow_any` off
    /// refuses everyone.
    pub allowed: String,
    pub allow_any: bool,
}

impl Default for ScpSettings {
    fn default() -> Self {
        ScpSettings { aet: "MELO".into(), port: "11112".into(), allowed: String::new(), allow_any: false }
    }
}

pub struct StudiesPanel {
    pub nodes: Vec<Node>,
    pub form: NodeForm,
    pub selected_node: Option<usize>,
    pub echo: BTreeMap<String, EchoState>,
    pub search: SearchFields,
    pub searching: bool,
    pub results: Vec<StudyRow>,
    pub expanded: BTreeMap<String, SeriesState>,
    /// Our calling AE title.
    pub calling_aet: String,
    /// The study store folder as configured; `None`: the default under the app's data dir.
    pub store_folder: Option<PathBuf>,
    /// The store folder field as typed.
    pub store_field: String,
    pub retrieve: Option<RetrieveJob>,
    pub last_retrieve: Option<RetrieveOutcome>,
    /// The view's one status line: the last error or outcome.
    pub status: Option<(MessageLevel, String)>,
    /// Studies in the store (the "Local" list), with their series.
    pub local: Vec<(StudyRecord, Vec<SeriesRecord>)>,
    pub scp: ScpSettings,
    /// De-identified export: keep dates (Retain Longitudinal Temporal Information option).
    pub deid_retain_dates: bool,
    /// A de-identified export is running.
    pub exporting: bool,
    scp_handle: Option<ScpHandle>,
    store: Option<Arc<StudyStore>>,
    search_id: u64,
    events: (Sender<StudiesEvent>, Receiver<StudiesEvent>),
}

impl Default for StudiesPanel {
    fn default() -> Self {
        StudiesPanel {
            nodes: Vec::new(),
            form: NodeForm { port: "104".into(), ..Default::default() },
            selected_node: None,
            echo: BTreeMap::new(),
            search: SearchFields::default(),
            searching: false,
            results: Vec::new(),
            expanded: BTreeMap::new(),
            calling_aet: "MELO".into(),
            store_folder: None,
            store_field: default_store_folder().map(|p| p.display().to_string()).unwrap_or_default(),
            retrieve: None,
            last_retrieve: None,
            status: None,
            local: Vec::new(),
            scp: ScpSettings::default(),
            deid_retain_dates: false,
            exporting: false,
            scp_handle: None,
            store: None,
            search_id: 0,
            events: channel(),
        }
    }
}

/// The default study store: `studies` in the app's data folder (beside eframe's settings).
pub fn default_store_folder() -> Option<PathBuf> {
    eframe::storage_dir(super::APP_ID).map(|d| d.join("studies"))
}

/// Spawns a named worker; a failure to spawn is reported rather than panicking.
fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(work)
        .map(|_| ())
        .map_err(|e| format!("cannot start a worker thread: {e}"))
}

impl StudiesPanel {
    /// True while an echo, search, series query or retrieve is under way.
    pub fn is_busy(&self) -> bool {
        self.searching
            || self.exporting
            || self.retrieve.is_some()
            || self.echo.values().any(|e| *e == EchoState::Running)
            || self.expanded.values().any(|s| *s == SeriesState::Loading)
    }

    pub fn is_scp_running(&self) -> bool {
        self.scp_handle.is_some()
    }

    /// The store folder in use (configured, else the default).
    pub fn store_folder(&self) -> Option<PathBuf> {
        self.store_folder.clone().or_else(default_store_folder)
    }

    pub(crate) fn options(&self) -> ScuOptions {
        ScuOptions { calling_aet: self.calling_aet.trim().to_string(), timeout: NET_TIMEOUT, ..Default::default() }
    }

    /// The store, opened on first use.
    pub fn store(&mut self) -> Result<Arc<StudyStore>, String> {
        if let Some(store) = &self.store {
            return Ok(store.clone());
        }
        let folder = self.store_folder().ok_or("no study store folder: choose one in the Studies view")?;
        let store = Arc::new(StudyStore::open(&folder).map_err(|e| format!("cannot open the study store: {e}"))?);
        self.store = Some(store.clone());
        Ok(store)
    }

    fn node(&self, index: Option<usize>) -> Result<Node, String> {
        index.and_then(|i| self.nodes.get(i)).cloned().ok_or_else(|| "select a node first".to_string())
    }

    fn fail(&mut self, text: impl Into<String>) {
        self.status = Some((MessageLevel::Error, text.into()));
    }

    /// Applies worker reports.
    pub fn receive(&mut self) {
        while let Ok(event) = self.events.1.try_recv() {
            match event {
                StudiesEvent::Echo { node, result } => {
                    let state = match result {
                        Ok(d) => EchoState::Ok(d),
                        Err(e) => EchoState::Failed(e),
                    };
                    self.echo.insert(node, state);
                }
                StudiesEvent::Found { search, result } if search == self.search_id => {
                    self.searching = false;
                    match result {
                        Ok(rows) => {
                            self.status = Some((MessageLevel::Info, format!("{} stud(ies) found", rows.len())));
                            self.results = rows;
                            self.expanded.clear();
                        }
                        Err(e) => self.fail(format!("Search failed: {e}")),
                    }
                }
                StudiesEvent::Found { .. } => {}
                StudiesEvent::Series { study_uid, result } => {
                    let state = match result {
                        Ok(rows) => SeriesState::Loaded(rows),
                        Err(e) => SeriesState::Failed(e),
                    };
                    if self.expanded.contains_key(&study_uid) {
                        self.expanded.insert(study_uid, state);
                    }
                }
                StudiesEvent::Progress { done, total } => {
                    if let Some(job) = self.retrieve.as_mut() {
                        job.done = done;
                        job.total = total;
                    }
                }
                StudiesEvent::Retrieved(result) => {
                    self.retrieve = None;
                    match result {
                        Ok(outcome) if outcome.cancelled => {
                            let text = format!(
                                "Retrieve cancelled; {} instance(s) of the study are in the store",
                                outcome.in_store
                            );
                            self.status = Some((MessageLevel::Warning, text));
                            self.last_retrieve = Some(outcome);
                        }
                        Ok(outcome) => {
                            let mut text = format!("Retrieved {} instance(s) into the store", outcome.stored);
                            if outcome.failed > 0 {
                                text.push_str(&format!("; {} failed", outcome.failed));
                            }
                            let level = if outcome.failed > 0 { MessageLevel::Warning } else { MessageLevel::Info };
                            self.status = Some((level, text));
                            self.last_retrieve = Some(outcome);
                        }
                        Err(e) => self.fail(format!("Retrieve failed: {e}")),
                    }
                    self.refresh_local();
                }
                StudiesEvent::Exported(result) => {
                    self.exporting = false;
                    match result {
                        Ok(line) => self.status = Some(line),
                        Err(e) => self.fail(format!("De-identified export failed: {e}")),
                    }
                }
                StudiesEvent::Scp(event) => match event {
                    ScpEvent::Stored { .. } | ScpEvent::Released { .. } => self.refresh_local(),
                    ScpEvent::Refused { address, reason } => {
                        self.status = Some((MessageLevel::Warning, format!("Refused {address}: {reason}")))
                    }
                    ScpEvent::StoreFailed { calling_aet, reason, .. } => {
                        self.fail(format!("Could not store an instance from {calling_aet}: {reason}"))
                    }
                    ScpEvent::Failed { calling_aet, reason } => {
                        self.fail(format!("Reception from {calling_aet} failed: {reason}"))
                    }
                    _ => {}
                },
            }
        }
    }

    /// When the tab comes up: list the store if it exists (an absent one is created only when
    /// something is retrieved or received, not by looking).
    pub fn on_shown(&mut self) {
        if self.local.is_empty() && self.store.is_none() && self.store_folder().is_some_and(|f| f.is_dir()) {
            self.refresh_local();
        }
    }

    /// Uses the store folder remembered by the settings (`None`: the default).
    pub fn set_configured_store(&mut self, folder: Option<PathBuf>) {
        self.store_folder = folder;
        self.store = None;
        self.local.clear();
        self.store_field = self.store_folder().map(|p| p.display().to_string()).unwrap_or_default();
    }

    /// Re-reads the "Local" list from the store's index.
    pub fn refresh_local(&mut self) {
        let store = match self.store() {
            Ok(s) => s,
            Err(e) => return self.fail(e),
        };
        let listed = store.studies().and_then(|studies| {
            studies
                .into_iter()
                .map(|study| {
                    let series = store.series(&study.study_uid)?;
                    Ok((study, series))
                })
                .collect::<Result<Vec<_>, _>>()
        });
        match listed {
            Ok(local) => self.local = local,
            Err(e) => self.fail(format!("Cannot read the study store: {e}")),
        }
    }

    /// Carries out a command; what the app must do (messages, opening files) is returned.
    pub fn apply(&mut self, command: StudiesCommand, ctx: &egui::Context) -> Vec<StudiesEffect> {
        let mut effects = Vec::new();
        match command {
            StudiesCommand::SubmitNode => match self.form.to_node() {
                Ok(node) => {
                    let editing = self.form.editing.filter(|&i| i < self.nodes.len());
                    if self.nodes.iter().enumerate().any(|(i, n)| n.name == node.name && Some(i) != editing) {
                        self.fail(format!("a node named {:?} exists already", node.name));
                    } else {
                        match editing {
                            Some(i) => {
                                self.echo.remove(&self.nodes[i].name);
                                self.nodes[i] = node;
                                self.selected_node = Some(i);
                            }
                            None => {
                                self.nodes.push(node);
                                self.selected_node = Some(self.nodes.len() - 1);
                            }
                        }
                        self.form = NodeForm { port: "104".into(), ..Default::default() };
                        self.status = None;
                    }
                }
                Err(e) => self.fail(format!("Node not saved: {e}")),
            },
            StudiesCommand::EditNode(i) => {
                if let Some(node) = self.nodes.get(i) {
                    self.form = NodeForm::from_node(node, i);
                }
            }
            StudiesCommand::CancelEdit => self.form = NodeForm { port: "104".into(), ..Default::default() },
            StudiesCommand::RemoveNode(i) => {
                if i < self.nodes.len() {
                    let node = self.nodes.remove(i);
                    self.echo.remove(&node.name);
                    self.selected_node = match self.selected_node {
                        Some(s) if s == i => None,
                        Some(s) if s > i => Some(s - 1),
                        other => other,
                    };
                    if self.form.editing == Some(i) {
                        self.form = NodeForm { port: "104".into(), ..Default::default() };
                    }
                }
            }
            StudiesCommand::SelectNode(i) => {
                if i < self.nodes.len() && self.selected_node != Some(i) {
                    self.selected_node = Some(i);
                    self.results.clear();
                    self.expanded.clear();
                }
            }
            StudiesCommand::Echo(i) => self.start_echo(i, ctx),
            StudiesCommand::Search => self.start_search(ctx),
            StudiesCommand::ToggleStudy(uid) => {
                if self.expanded.remove(&uid).is_none() {
                    self.start_series_query(uid, ctx);
                }
            }
            StudiesCommand::Retrieve { study_uid, series_uid } => self.start_retrieve(study_uid, series_uid, ctx),
            StudiesCommand::CancelRetrieve => {
                if let Some(job) = &self.retrieve {
                    job.cancel.store(true, Ordering::SeqCst);
                }
            }
            StudiesCommand::OpenStudy(study_uid) => match self.stored_files(&study_uid, None) {
                Ok(files) => effects.push(StudiesEffect::Open(files)),
                Err(e) => self.fail(e),
            },
            StudiesCommand::OpenSeries(series_uid) => match self.stored_files("", Some(&series_uid)) {
                Ok(files) => effects.push(StudiesEffect::Open(files)),
                Err(e) => self.fail(e),
            },
            StudiesCommand::SetStoreFolder(folder) => {
                if self.retrieve.is_some() || self.scp_handle.is_some() {
                    self.fail("Stop the retrieve and the receiver before changing the store folder");
                } else {
                    self.store_field = folder.display().to_string();
                    self.store_folder = Some(folder);
                    self.store = None;
                    self.local.clear();
                    match self.store() {
                        Ok(_) => self.refresh_local(),
                        Err(e) => self.fail(e),
                    }
                }
            }
            StudiesCommand::ChooseStoreFolder => effects.push(StudiesEffect::AskFolder {
                title: "Study store folder".into(),
                purpose: FolderPurpose::StoreFolder,
            }),
            StudiesCommand::Move { study_uid, series_uid } => self.start_move(study_uid, series_uid, ctx),
            StudiesCommand::ExportDeidentified(study_uid) => effects.push(StudiesEffect::AskFolder {
                title: "Export de-identified copies to".into(),
                purpose: FolderPurpose::Deidentify(study_uid),
            }),
            StudiesCommand::ExportDeidentifiedTo { study_uid, folder } => self.start_export(study_uid, folder, ctx),
            StudiesCommand::RefreshLocal => self.refresh_local(),
            StudiesCommand::StartScp => self.start_scp(ctx),
            StudiesCommand::StopScp => {
                if self.scp_handle.take().is_some() {
                    effects.push(StudiesEffect::Message(MessageLevel::Info, "Receiver stopped".into()));
                }
            }
        }
        effects
    }

    /// Folders of a stored study (every series) or of one stored series.
    fn stored_files(&mut self, study_uid: &str, series_uid: Option<&str>) -> Result<Vec<PathBuf>, String> {
        let store = self.store()?;
        let series: Vec<String> = match series_uid {
            Some(s) => vec![s.to_string()],
            None => store
                .series(study_uid)
                .map_err(|e| format!("Cannot read the study store: {e}"))?
                .into_iter()
                .map(|s| s.series_uid)
                .collect(),
        };
        // The store keeps each series in a folder of its own; the loader groups a folder into
        // series (a list of files would open as one series per file).
        let mut folders: Vec<PathBuf> = Vec::new();
        for uid in series {
            let instances = store.instances(&uid).map_err(|e| format!("Cannot read the study store: {e}"))?;
            for folder in instances.iter().filter_map(|i| i.path.parent()) {
                if !folders.iter().any(|f| f == folder) {
                    folders.push(folder.to_path_buf());
                }
            }
        }
        if folders.is_empty() {
            return Err("Nothing of this study is in the store yet: retrieve it first".into());
        }
        Ok(folders)
    }

    fn start_echo(&mut self, index: usize, ctx: &egui::Context) {
        let Some(node) = self.nodes.get(index).cloned() else { return };
        let options = self.options();
        let sender = self.events.0.clone();
        let ctx = ctx.clone();
        self.echo.insert(node.name.clone(), EchoState::Running);
        let work = move || {
            let result = match &node.address {
                NodeAddress::Dimse { .. } => {
                    node.peer().and_then(|peer| net::echo(&peer, &options).map_err(|e| e.to_string()))
                }
                // DICOMweb has no echo: a QIDO-RS search that matches nothing shows the
                // service answers.
                NodeAddress::DicomWeb { url } => {
                    let start = std::time::Instant::now();
                    DicomWebClient::new(url, NET_TIMEOUT)
                        .and_then(|client| {
                            let probe = QueryKeys { study_uid: Some("1.2.3.4.5.6.7.8.9".into()), ..Default::default() };
                            client.search_studies(&probe)
                        })
                        .map(|_| start.elapsed())
                        .map_err(|e| e.to_string())
                }
            };
            let _ = sender.send(StudiesEvent::Echo { node: node.name, result });
            ctx.request_repaint();
        };
        if let Err(e) = spawn("melo-echo", work) {
            self.fail(e);
        }
    }

    fn start_search(&mut self, ctx: &egui::Context) {
        let node = match self.node(self.selected_node) {
            Ok(n) => n,
            Err(e) => return self.fail(e),
        };
        let keys = match self.search.keys() {
            Ok(k) => k,
            Err(e) => return self.fail(format!("Search not started: {e}")),
        };
        self.search_id += 1;
        let search = self.search_id;
        self.searching = true;
        self.status = None;
        let options = self.options();
        let sender = self.events.0.clone();
        let ctx = ctx.clone();
        let work = move || {
            let result = match &node.address {
                NodeAddress::Dimse { .. } => node.peer().and_then(|peer| {
                    net::find(&peer, &options, Model::StudyRoot, Level::Study, &keys)
                        .map(|matches| matches.iter().map(|m| StudyRow::from_map(&match_to_map(m))).collect())
                        .map_err(|e| e.to_string())
                }),
                NodeAddress::DicomWeb { url } => DicomWebClient::new(url, NET_TIMEOUT)
                    .and_then(|c| c.search_studies(&keys))
                    .map(|found| found.iter().map(|j| StudyRow::from_map(&json_to_map(j))).collect())
                    .map_err(|e| e.to_string()),
            };
            let _ = sender.send(StudiesEvent::Found { search, result });
            ctx.request_repaint();
        };
        if let Err(e) = spawn("melo-find", work) {
            self.searching = false;
            self.fail(e);
        }
    }

    fn start_series_query(&mut self, study_uid: String, ctx: &egui::Context) {
        let node = match self.node(self.selected_node) {
            Ok(n) => n,
            Err(e) => return self.fail(e),
        };
        self.expanded.insert(study_uid.clone(), SeriesState::Loading);
        let options = self.options();
        let sender = self.events.0.clone();
        let ctx = ctx.clone();
        let uid = study_uid.clone();
        let work = move || {
            let result = series_of(&node, &options, &uid);
            let _ = sender.send(StudiesEvent::Series { study_uid: uid, result });
            ctx.request_repaint();
        };
        if let Err(e) = spawn("melo-find-series", work) {
            self.expanded.insert(study_uid, SeriesState::Failed(e));
        }
    }

    fn start_retrieve(&mut self, study_uid: String, series_uid: Option<String>, ctx: &egui::Context) {
        if self.retrieve.is_some() {
            return self.fail("A retrieve is running: wait for it or cancel it");
        }
        let node = match self.node(self.selected_node) {
            Ok(n) => n,
            Err(e) => return self.fail(e),
        };
        let store = match self.store() {
            Ok(s) => s,
            Err(e) => return self.fail(e),
        };
        let cancel = self.begin_retrieve(&study_uid, &series_uid);
        let options = self.options();
        let sender = self.events.0.clone();
        let ctx = ctx.clone();
        let work = move || {
            let report = |done: usize, total: Option<usize>| {
                let _ = sender.send(StudiesEvent::Progress { done, total });
                ctx.request_repaint();
            };
            let result = retrieve(&node, &options, &store, &study_uid, series_uid.as_deref(), &cancel, &report);
            let _ = sender.send(StudiesEvent::Retrieved(result));
            ctx.request_repaint();
        };
        if let Err(e) = spawn("melo-retrieve", work) {
            self.retrieve = None;
            self.fail(e);
        }
    }

    /// Marks a retrieve (C-GET, WADO or C-MOVE) as running; its Cancel flag.
    fn begin_retrieve(&mut self, study_uid: &str, series_uid: &Option<String>) -> Arc<AtomicBool> {
        let cancel = Arc::new(AtomicBool::new(false));
        self.retrieve = Some(RetrieveJob {
            study_uid: study_uid.to_string(),
            series_uid: series_uid.clone(),
            done: 0,
            total: None,
            cancel: cancel.clone(),
        });
        self.status = None;
        cancel
    }

    /// C-MOVE to our own receiver: the node sends the instances on associations of its own to
    /// our AE title (it must know it, at this host and the receiver's port), and they arrive
    /// through the running C-STORE SCP into the store.
    fn start_move(&mut self, study_uid: String, series_uid: Option<String>, ctx: &egui::Context) {
        if self.retrieve.is_some() {
            return self.fail("A retrieve is running: wait for it or cancel it");
        }
        let node = match self.node(self.selected_node) {
            Ok(n) => n,
            Err(e) => return self.fail(e),
        };
        let peer = match node.peer() {
            Ok(p) => p,
            Err(_) => return self.fail("Move needs a DIMSE node (a DICOMweb node is retrieved with Retrieve)"),
        };
        if self.scp_handle.is_none() {
            return self.fail(format!(
                "Move not started: start the receiver (Receiving) first; {} sends the study to our AE title {}, \
                 which it must know at this host and the receiver's port",
                node.name,
                self.scp.aet.trim()
            ));
        }
        let store = match self.store() {
            Ok(s) => s,
            Err(e) => return self.fail(e),
        };
        let destination = self.scp.aet.trim().to_string();
        let cancel = self.begin_retrieve(&study_uid, &series_uid);
        let options = self.options();
        let sender = self.events.0.clone();
        let ctx = ctx.clone();
        let work = move || {
            let keys =
                QueryKeys { study_uid: Some(study_uid.clone()), series_uid: series_uid.clone(), ..Default::default() };
            let level = if series_uid.is_some() { Level::Series } else { Level::Study };
            let mut progress = |p: &net::RetrieveProgress| {
                let s = p.sub_operations;
                let done = (s.completed + s.warning) as usize;
                let total = s.remaining.map(|r| r as usize + done + s.failed as usize);
                let _ = sender.send(StudiesEvent::Progress { done, total });
                ctx.request_repaint();
                !cancel.load(Ordering::SeqCst)
            };
            let result =
                match net::move_to(&peer, &options, Model::StudyRoot, level, &keys, &destination, &mut progress) {
                    Ok(r) => Ok(RetrieveOutcome {
                        study_uid: study_uid.clone(),
                        stored: (r.sub_operations.completed + r.sub_operations.warning) as usize,
                        in_store: in_store(&store, &study_uid),
                        failed: r.sub_operations.failed as usize,
                        cancelled: cancel.load(Ordering::SeqCst),
                    }),
                    Err(net::Error::Cancelled) => Ok(RetrieveOutcome {
                        study_uid: study_uid.clone(),
                        stored: 0,
                        in_store: in_store(&store, &study_uid),
                        failed: 0,
                        cancelled: true,
                    }),
                    Err(e) => Err(e.to_string()),
                };
            let _ = sender.send(StudiesEvent::Retrieved(result));
            ctx.request_repaint();
        };
        if let Err(e) = spawn("melo-move", work) {
            self.retrieve = None;
            self.fail(e);
        }
    }

    /// De-identifies every stored instance of a study into `folder` on a thread (the profile
    /// of `crate::deid`); one line says how many, the options and that pixels are untouched.
    fn start_export(&mut self, study_uid: String, folder: PathBuf, ctx: &egui::Context) {
        if self.exporting {
            return self.fail("An export is running: wait for it");
        }
        let store = match self.store() {
            Ok(s) => s,
            Err(e) => return self.fail(e),
        };
        let files: Result<Vec<PathBuf>, String> = store
            .series(&study_uid)
            .and_then(|series| {
                let mut files = Vec::new();
                for s in series {
                    files.extend(store.instances(&s.series_uid)?.into_iter().map(|i| i.path));
                }
                Ok(files)
            })
            .map_err(|e| format!("Cannot read the study store: {e}"));
        let files = match files {
            Ok(f) if !f.is_empty() => f,
            Ok(_) => return self.fail("Nothing of this study is in the store"),
            Err(e) => return self.fail(e),
        };
        self.exporting = true;
        self.status = Some((MessageLevel::Info, format!("Exporting {} file(s) de-identified…", files.len())));
        let options = crate::deid::Options { retain_dates: self.deid_retain_dates };
        let sender = self.events.0.clone();
        let ctx = ctx.clone();
        let work = move || {
            let root = store.root().to_path_buf();
            let result = crate::deid::export_files(&[root.as_path()], &files, &folder, options, &mut |_| {})
                .map(|report| {
                    let mut line = report.summary();
                    let mut level = MessageLevel::Info;
                    if !report.failed.is_empty() {
                        line.push_str(&format!(" {} file(s) failed: {}", report.failed.len(), report.failed[0].1));
                        level = MessageLevel::Warning;
                    }
                    let burned = report.burned_in().len();
                    if burned > 0 {
                        line.push_str(&format!(
                            " {burned} file(s) are marked Burned In Annotation YES: check their pixels before sharing."
                        ));
                        level = MessageLevel::Warning;
                    }
                    (level, line)
                })
                .map_err(|e| super::loader::one_line(&e.to_string()));
            let _ = sender.send(StudiesEvent::Exported(result));
            ctx.request_repaint();
        };
        if let Err(e) = spawn("melo-deidentify", work) {
            self.exporting = false;
            self.fail(e);
        }
    }

    fn start_scp(&mut self, ctx: &egui::Context) {
        if self.scp_handle.is_some() {
            return;
        }
        let port: u16 = match self.scp.port.trim().parse() {
            Ok(p) if p > 0 => p,
            _ => return self.fail(format!("Receiver port {:?} is not a number from 1 to 65535", self.scp.port.trim())),
        };
        let store = match self.store() {
            Ok(s) => s,
            Err(e) => return self.fail(e),
        };
        let mut config = ScpConfig::new(self.scp.aet.trim());
        config.allowed_callers = if self.scp.allow_any {
            None
        } else {
            Some(
                self.scp
                    .allowed
                    .split([',', ' '])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            )
        };
        // Another node may ask us to send studies (C-MOVE) to any DIMSE node configured here,
        // as PACS and viewers do with their known modalities; any other destination gets 0xA801.
        config.move_destinations = self.nodes.iter().filter_map(|n| n.peer().ok()).collect();
        match StoreScp::bind(&format!("0.0.0.0:{port}"), config, store) {
            Ok(scp) => {
                let sender = self.events.0.clone();
                let ctx = ctx.clone();
                let sink: net::scp::EventSink = Arc::new(move |event| {
                    let _ = sender.send(StudiesEvent::Scp(event));
                    ctx.request_repaint();
                });
                self.scp_handle = Some(scp.spawn(sink));
                self.status =
                    Some((MessageLevel::Info, format!("Receiving as {} on port {port}", self.scp.aet.trim())));
                self.refresh_local();
            }
            Err(e) => self.fail(format!("Receiver not started: {e}")),
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, hide_patient_details: bool, commands: &mut Vec<Command>) {
        egui::Panel::left("studies_nodes").default_size(340.0).show(ui, |ui| {
            egui::ScrollArea::vertical()
                .id_salt("studies_nodes_scroll")
                .auto_shrink([false, false])
                .show(ui, |ui| self.nodes_ui(ui, hide_patient_details, commands));
        });
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical()
                .id_salt("studies_results_scroll")
                .auto_shrink([false, false])
                .show(ui, |ui| self.search_ui(ui, hide_patient_details, commands));
        });
        if self.is_busy() {
            ui.ctx().request_repaint_after(Duration::from_millis(250));
        }
    }

    fn nodes_ui(&mut self, ui: &mut egui::Ui, hide: bool, commands: &mut Vec<Command>) {
        let send = |commands: &mut Vec<Command>, c: StudiesCommand| commands.push(Command::Studies(c));
        ui.heading("Nodes");
        if self.nodes.is_empty() {
            ui.label(RichText::new("No node yet: add your PACS below.").small());
        }
        for (i, node) in self.nodes.iter().enumerate() {
            ui.horizontal(|ui| {
                if ui.radio(self.selected_node == Some(i), node.name.as_str()).clicked() {
                    send(commands, StudiesCommand::SelectNode(i));
                }
                ui.label(RichText::new(node.describe()).small());
            });
            ui.horizontal(|ui| {
                let running = self.echo.get(&node.name) == Some(&EchoState::Running);
                if ui.add_enabled(!running, egui::Button::new("Echo")).clicked() {
                    send(commands, StudiesCommand::Echo(i));
                }
                if ui.button("Edit").clicked() {
                    send(commands, StudiesCommand::EditNode(i));
                }
                if ui.button("Remove").clicked() {
                    send(commands, StudiesCommand::RemoveNode(i));
                }
                match self.echo.get(&node.name) {
                    Some(EchoState::Running) => {
                        ui.spinner();
                    }
                    Some(EchoState::Ok(d)) => {
                        ui.label(RichText::new(format!("Echo OK ({} ms)", d.as_millis())).color(ok_color()));
                    }
                    Some(EchoState::Failed(e)) => {
                        let text = shown(ui.ctx(), hide, &format!("Echo failed: {e}"));
                        ui.add(egui::Label::new(RichText::new(text).color(ui.visuals().error_fg_color)).wrap());
                    }
                    None => {}
                }
            });
            ui.separator();
        }

        let title = if self.form.editing.is_some() { "Edit node" } else { "New node" };
        ui.strong(title);
        labelled_text(ui, "Name", &mut self.form.name);
        ui.horizontal(|ui| {
            ui.radio_value(&mut self.form.dicomweb, false, "DIMSE");
            ui.radio_value(&mut self.form.dicomweb, true, "DICOMweb");
        });
        if self.form.dicomweb {
            labelled_text(ui, "URL", &mut self.form.url);
        } else {
            labelled_text(ui, "AE title", &mut self.form.aet);
            labelled_text(ui, "Host", &mut self.form.host);
            labelled_text(ui, "Port", &mut self.form.port);
        }
        ui.horizontal(|ui| {
            let label = if self.form.editing.is_some() { "Save node" } else { "Add node" };
            if ui.button(label).clicked() {
                send(commands, StudiesCommand::SubmitNode);
            }
            if self.form.editing.is_some() && ui.button("Cancel").clicked() {
                send(commands, StudiesCommand::CancelEdit);
            }
        });
        ui.separator();
        ui.strong("This workstation");
        labelled_text(ui, "Calling AE title", &mut self.calling_aet);
        ui.horizontal(|ui| {
            let label = ui.label("Store folder");
            ui.add(egui::TextEdit::singleline(&mut self.store_field).desired_width(180.0)).labelled_by(label.id);
            if ui.button("Use").clicked() && !self.store_field.trim().is_empty() {
                send(commands, StudiesCommand::SetStoreFolder(PathBuf::from(self.store_field.trim())));
            }
            if ui.button("Choose…").clicked() {
                send(commands, StudiesCommand::ChooseStoreFolder);
            }
        });
        ui.separator();
        ui.strong("Receive (C-STORE SCP)");
        let running = self.scp_handle.is_some();
        ui.add_enabled_ui(!running, |ui| {
            labelled_text(ui, "Receiver AE title", &mut self.scp.aet);
            labelled_text(ui, "Receiver port", &mut self.scp.port);
            labelled_text(ui, "Allowed callers", &mut self.scp.allowed);
            ui.checkbox(&mut self.scp.allow_any, "Allow any caller");
        });
        let mut on = running;
        if ui.checkbox(&mut on, "Receiving").on_hover_text("Listen for studies sent to this workstation").changed() {
            send(commands, if on { StudiesCommand::StartScp } else { StudiesCommand::StopScp });
        }
    }

    fn search_ui(&mut self, ui: &mut egui::Ui, hide: bool, commands: &mut Vec<Command>) {
        let send = |commands: &mut Vec<Command>, c: StudiesCommand| commands.push(Command::Studies(c));
        ui.heading("Find studies");
        egui::Grid::new("studies_search_fields").num_columns(4).show(ui, |ui| {
            grid_text(ui, "Patient ID", &mut self.search.patient_id);
            grid_text(ui, "Patient name", &mut self.search.patient_name);
            ui.end_row();
            grid_text(ui, "Birth date", &mut self.search.birth_date);
            grid_text(ui, "Accession", &mut self.search.accession);
            ui.end_row();
            grid_text(ui, "Study date from", &mut self.search.date_from);
            grid_text(ui, "Study date to", &mut self.search.date_to);
            ui.end_row();
            grid_text(ui, "Modality", &mut self.search.modality);
            ui.end_row();
        });
        ui.horizontal(|ui| {
            let can = self.selected_node.is_some() && !self.searching;
            if ui.add_enabled(can, egui::Button::new("Search")).clicked() {
                send(commands, StudiesCommand::Search);
            }
            if self.searching {
                ui.spinner();
            }
            if self.selected_node.is_none() {
                ui.label(RichText::new("Select a node to search").small());
            }
        });
        if let Some(job) = &self.retrieve {
            ui.horizontal(|ui| {
                ui.spinner();
                let text = match job.total {
                    Some(total) if total > 0 => {
                        ui.add(
                            egui::ProgressBar::new(job.done as f32 / total as f32)
                                .desired_width(200.0)
                                .text(format!("{}/{total}", job.done)),
                        );
                        format!("Retrieving {}/{total}", job.done)
                    }
                    _ => format!("Retrieving {}", job.done),
                };
                ui.label(text);
                if ui.button("Cancel").clicked() {
                    send(commands, StudiesCommand::CancelRetrieve);
                }
            });
        }
        if let Some((level, text)) = &self.status {
            let color = match level {
                MessageLevel::Error => ui.visuals().error_fg_color,
                MessageLevel::Warning => ui.visuals().warn_fg_color,
                MessageLevel::Info => ok_color(),
            };
            ui.add(egui::Label::new(RichText::new(shown(ui.ctx(), hide, text)).color(color)).wrap());
        }
        ui.separator();
        self.results_ui(ui, hide, commands);
        ui.separator();
        ui.horizontal(|ui| {
            ui.heading("Local");
            if ui.button("Refresh").clicked() {
                send(commands, StudiesCommand::RefreshLocal);
            }
            ui.separator();
            ui.checkbox(&mut self.deid_retain_dates, "Retain dates")
                .on_hover_text("De-identified export: Retain Longitudinal Temporal Information (Full Dates) option");
            if self.exporting {
                ui.spinner();
            }
        });
        self.local_ui(ui, hide, commands);
    }

    fn results_ui(&self, ui: &mut egui::Ui, hide: bool, commands: &mut Vec<Command>) {
        let send = |commands: &mut Vec<Command>, c: StudiesCommand| commands.push(Command::Studies(c));
        if self.results.is_empty() {
            ui.label(RichText::new("No results").small());
            return;
        }
        let busy = self.retrieve.is_some();
        let dimse = self
            .selected_node
            .and_then(|i| self.nodes.get(i))
            .is_some_and(|n| matches!(n.address, NodeAddress::Dimse { .. }));
        let retrieved = |uid: &str| self.local.iter().any(|(s, _)| s.study_uid == uid);
        egui::Grid::new("studies_results").striped(true).num_columns(9).show(ui, |ui| {
            for h in [
                "",
                "Patient name",
                "Patient ID",
                "Birth date",
                "Study date",
                "Modalities",
                "Accession",
                "Description",
                "",
            ] {
                ui.strong(h);
            }
            ui.end_row();
            for row in &self.results {
                let open = self.expanded.contains_key(&row.study_uid);
                if ui.small_button(if open { "-" } else { "+" }).on_hover_text("Series").clicked() {
                    send(commands, StudiesCommand::ToggleStudy(row.study_uid.clone()));
                }
                ui.label(blank_if(hide, &row.patient_name));
                ui.label(blank_if(hide, &row.patient_id));
                ui.label(blank_if(hide, &row.birth_date));
                ui.label(&row.study_date);
                ui.label(&row.modalities);
                ui.label(&row.accession);
                ui.label(&row.description);
                ui.horizontal(|ui| {
                    if ui.add_enabled(!busy, egui::Button::new("Retrieve")).clicked() {
                        send(commands, StudiesCommand::Retrieve { study_uid: row.study_uid.clone(), series_uid: None });
                    }
                    if dimse
                        && ui
                            .add_enabled(!busy, egui::Button::new("Move"))
                            .on_hover_text("C-MOVE to this workstation's receiver (Receiving must be on)")
                            .clicked()
                    {
                        send(commands, StudiesCommand::Move { study_uid: row.study_uid.clone(), series_uid: None });
                    }
                    if ui.add_enabled(retrieved(&row.study_uid), egui::Button::new("Open")).clicked() {
                        send(commands, StudiesCommand::OpenStudy(row.study_uid.clone()));
                    }
                });
                ui.end_row();
                match self.expanded.get(&row.study_uid) {
                    Some(SeriesState::Loading) => {
                        ui.label("");
                        ui.spinner();
                        ui.end_row();
                    }
                    Some(SeriesState::Failed(e)) => {
                        ui.label("");
                        ui.label(RichText::new(shown(ui.ctx(), hide, e)).color(ui.visuals().error_fg_color));
                        ui.end_row();
                    }
                    Some(SeriesState::Loaded(series)) => {
                        for s in series {
                            ui.label("");
                            ui.label(RichText::new(format!("Series {}", s.number)).small());
                            ui.label(RichText::new(&s.modality).small());
                            ui.label(RichText::new(format!("{} image(s)", s.instances)).small());
                            ui.label(RichText::new(&s.description).small());
                            for _ in 0..3 {
                                ui.label("");
                            }
                            if ui.add_enabled(!busy, egui::Button::new("Retrieve series")).clicked() {
                                send(
                                    commands,
                                    StudiesCommand::Retrieve {
                                        study_uid: row.study_uid.clone(),
                                        series_uid: Some(s.series_uid.clone()),
                                    },
                                );
                            }
                            ui.end_row();
                        }
                    }
                    None => {}
                }
            }
        });
    }

    fn local_ui(&self, ui: &mut egui::Ui, hide: bool, commands: &mut Vec<Command>) {
        let exporting = self.exporting;
        if self.local.is_empty() {
            ui.label(RichText::new("The study store is empty").small());
            return;
        }
        egui::Grid::new("studies_local").striped(true).num_columns(6).show(ui, |ui| {
            for (study, series) in &self.local {
                ui.label(blank_if(hide, &study.patient_name.replace('^', " ")));
                ui.label(blank_if(hide, &study.patient_id));
                ui.label(&study.study_date);
                ui.label(&study.description);
                ui.label(format!("{} series, {} image(s)", study.series, study.instances));
                if ui
                    .add_enabled(!exporting, egui::Button::new("Export de-identified…"))
                    .on_hover_text(
                        "PS3.15 Annex E Basic Application Level Confidentiality Profile: new UIDs, \
                         identifying attributes removed; pixel data untouched",
                    )
                    .clicked()
                {
                    commands.push(Command::Studies(StudiesCommand::ExportDeidentified(study.study_uid.clone())));
                }
                ui.end_row();
                for s in series {
                    ui.label("");
                    ui.label(
                        RichText::new(format!(
                            "{} {}",
                            s.modality,
                            s.number.map(|n| n.to_string()).unwrap_or_default()
                        ))
                        .small(),
                    );
                    ui.label(RichText::new(&s.description).small());
                    ui.label(RichText::new(format!("{} image(s)", s.instances)).small());
                    ui.label("");
                    if ui.button("Open series").clicked() {
                        commands.push(Command::Studies(StudiesCommand::OpenSeries(s.series_uid.clone())));
                    }
                    ui.end_row();
                }
            }
        });
    }
}

/// Series of a study on `node`.
fn series_of(node: &Node, options: &ScuOptions, study_uid: &str) -> Result<Vec<SeriesRow>, String> {
    match &node.address {
        NodeAddress::Dimse { .. } => {
            let peer = node.peer()?;
            let keys = QueryKeys { study_uid: Some(study_uid.to_string()), ..Default::default() };
            net::find(&peer, options, Model::StudyRoot, Level::Series, &keys)
                .map(|matches| matches.iter().map(|m| SeriesRow::from_map(&match_to_map(m))).collect())
                .map_err(|e| e.to_string())
        }
        NodeAddress::DicomWeb { url } => DicomWebClient::new(url, NET_TIMEOUT)
            .and_then(|c| c.search_series(study_uid))
            .map(|found| found.iter().map(|j| SeriesRow::from_map(&json_to_map(j))).collect())
            .map_err(|e| e.to_string()),
    }
}

/// Retrieves a study or one series into `store`: C-GET for DIMSE nodes (progress after each
/// instance, cancel sends a C-CANCEL), WADO-RS series by series for DICOMweb (cancel between
/// series: one series is one HTTP answer).
fn retrieve(
    node: &Node,
    options: &ScuOptions,
    store: &StudyStore,
    study_uid: &str,
    series_uid: Option<&str>,
    cancel: &AtomicBool,
    report: &dyn Fn(usize, Option<usize>),
) -> Result<RetrieveOutcome, String> {
    match &node.address {
        NodeAddress::Dimse { .. } => {
            let peer = node.peer()?;
            let keys = QueryKeys {
                study_uid: Some(study_uid.to_string()),
                series_uid: series_uid.map(str::to_string),
                ..Default::default()
            };
            let level = if series_uid.is_some() { Level::Series } else { Level::Study };
            // A cancelled C-GET ends in an error that carries no counts: keep the last ones.
            let mut last_stored = 0;
            let mut progress = |p: &net::RetrieveProgress| {
                last_stored = p.stored;
                let total = p.sub_operations.remaining.map(|r| {
                    r as usize
                        + p.sub_operations.completed as usize
                        + p.sub_operations.failed as usize
                        + p.sub_operations.warning as usize
                });
                report(p.stored, total);
                !cancel.load(Ordering::SeqCst)
            };
            match net::get(&peer, options, Model::StudyRoot, level, &keys, store, &mut progress) {
                Ok(r) => Ok(RetrieveOutcome {
                    study_uid: study_uid.to_string(),
                    stored: r.stored.len(),
                    in_store: in_store(store, study_uid),
                    failed: r.refused.len() + r.sub_operations.failed as usize,
                    cancelled: cancel.load(Ordering::SeqCst),
                }),
                Err(net::Error::Cancelled) => Ok(RetrieveOutcome {
                    study_uid: study_uid.to_string(),
                    stored: last_stored,
                    in_store: in_store(store, study_uid),
                    failed: 0,
                    cancelled: true,
                }),
                Err(e) => Err(e.to_string()),
            }
        }
        NodeAddress::DicomWeb { url } => {
            let client = DicomWebClient::new(url, NET_TIMEOUT).map_err(|e| e.to_string())?;
            let series: Vec<(String, Option<usize>)> = match series_uid {
                Some(s) => vec![(s.to_string(), None)],
                None => client
                    .search_series(study_uid)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|j| {
                        let row = SeriesRow::from_map(&json_to_map(j));
                        (row.series_uid, row.instances.trim().parse().ok())
                    })
                    .collect(),
            };
            let total = series.iter().map(|(_, n)| *n).sum::<Option<usize>>();
            let mut stored = 0;
            report(0, total);
            for (uid, _) in &series {
                if cancel.load(Ordering::SeqCst) {
                    return Ok(RetrieveOutcome {
                        study_uid: study_uid.to_string(),
                        stored,
                        in_store: in_store(store, study_uid),
                        failed: 0,
                        cancelled: true,
                    });
                }
                stored += client.retrieve_series(study_uid, uid, store).map_err(|e| e.to_string())?.len();
                report(stored, total);
            }
            let in_store = in_store(store, study_uid);
            Ok(RetrieveOutcome { study_uid: study_uid.to_string(), stored, in_store, failed: 0, cancelled: false })
        }
    }
}

/// Instances of a study in the store's index (0 when the index cannot be read: the Local list
/// reports that error itself).
fn in_store(store: &StudyStore, study_uid: &str) -> usize {
    store.series(study_uid).map(|series| series.iter().map(|s| s.instances).sum()).unwrap_or(0)
}

fn ok_color() -> Color32 {
    Color32::from_rgb(140, 200, 140)
}

/// Patient details in lists: blank while hidden.
fn blank_if(hide: bool, text: &str) -> String {
    if hide {
        String::new()
    } else {
        text.to_string()
    }
}

/// A status or error line as shown: folders cut out while patient details are hidden.
fn shown(ctx: &egui::Context, hide: bool, text: &str) -> String {
    let text = if hide { crate::error::hide_folders(text) } else { text.to_string() };
    super::drawable(ctx, &text)
}

/// A labelled one-line field (the label names it for screen readers and tests).
fn labelled_text(ui: &mut egui::Ui, label: &str, value: &mut String) {
    ui.horizontal(|ui| {
        let label = ui.label(label);
        ui.add(egui::TextEdit::singleline(value).desired_width(180.0)).labelled_by(label.id);
    });
}

fn grid_text(ui: &mut egui::Ui, label: &str, value: &mut String) {
    let label = ui.label(label);
    // Sized explicitly: in a grid a text field otherwise takes the column's width from the
    // previous frame, which starts narrow.
    ui.add_sized([150.0, 20.0], egui::TextEdit::singleline(value)).labelled_by(label.id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_fields_become_query_keys() {
        let fields = SearchFields {
            patient_id: " 1234 ".into(),
            date_from: "20010101".into(),
            modality: "mr".into(),
            ..Default::default()
        };
        let keys = fields.keys().unwrap();
        assert_eq!(keys.patient_id.as_deref(), Some("1234"));
        assert_eq!(keys.study_date.as_deref(), Some("20010101-"));
        assert_eq!(keys.modality.as_deref(), Some("MR"));
        assert_eq!(keys.patient_name, None);
        let bad = SearchFields { date_to: "2001-01-01".into(), ..Default::default() };
        assert!(bad.keys().unwrap_err().contains("YYYYMMDD"));
    }

    #[test]
    fn node_form_checks_what_it_saves() {
        let mut form = NodeForm {
            name: "PACS".into(),
            aet: "ORTHANC".into(),
            host: "h".into(),
            port: "x".into(),
            ..Default::default()
        };
        assert!(form.to_node().unwrap_err().contains("port"));
        form.port = "4242".into();
        assert_eq!(form.to_node().unwrap().describe(), "ORTHANC@h:4242");
        form.aet = "A_VERY_LONG_AE_TITLE".into();
        assert!(form.to_node().is_err());
        let web = NodeForm { name: "W".into(), dicomweb: true, url: "ftp://x".into(), ..Default::default() };
        assert!(web.to_node().is_err());
        let parsed = NodeForm::parse("P", "ORTHANC@127.0.0.1:4242").to_node().unwrap();
        assert_eq!(parsed.address, NodeAddress::Dimse { aet: "ORTHANC".into(), host: "127.0.0.1".into(), port: 4242 });
        let parsed = NodeForm::parse("P", "http://pacs:8042/dicom-web/").to_node().unwrap();
        assert_eq!(parsed.address, NodeAddress::DicomWeb { url: "http://pacs:8042/dicom-web".into() });
    }
}
