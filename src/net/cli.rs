//! `melo net echo|find|get|move|store|listen` (the `Net` variant of `crate::cli::Command`
//! forwards here).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::bench::{median, retrieve_into_viewer, RetrieveTimings, Via};
use super::dicomweb::{json_to_map, DicomWebClient};
use super::error::{Error, Result};
use super::peer::Peer;
use super::qr_scp::QrOutcome;
use super::query::{match_to_map, Level, Model, QueryKeys};
use super::scp::{ScpConfig, ScpEvent, StoreScp, DEFAULT_MAX_ASSOCIATIONS};
use super::scu::{self, RetrieveReport, ScuOptions};
use crate::store::StudyStore;

/// A node as given on the command line: a DIMSE peer `AET@HOST:PORT` or a DICOMweb service
/// root `http://HOST:PORT/dicom-web`.
#[derive(Debug, Clone)]
pub enum Node {
    Dimse(Peer),
    Web(String),
}

impl std::str::FromStr for Node {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.starts_with("http://") || s.starts_with("https://") {
            Ok(Node::Web(s.to_string()))
        } else {
            s.parse().map(Node::Dimse)
        }
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Dimse(p) => p.fmt(f),
            Node::Web(u) => f.write_str(u),
        }
    }
}

/// `melo net …`: talk to a PACS. Nodes are written `AET@HOST:PORT` (DIMSE) or, for echo, find,
/// get and store, as a DICOMweb URL (`http://HOST:PORT/dicom-web`).
#[derive(Debug, Args)]
pub struct NetArgs {
    #[command(subcommand)]
    pub action: NetAction,
    /// Our AE title: the calling AE of requests, the called AE `listen` answers to.
    #[arg(long, global = true, default_value = "MELO")]
    pub aet: String,
    /// Seconds to wait for a peer (connection, each answer) before giving up.
    #[arg(long, global = true, default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum NetAction {
    /// C-ECHO: check that a node answers and accepts our AE title.
    Echo { peer: Node },
    /// C-FIND: search a node for patients, studies, series or images.
    Find(FindArgs),
    /// C-GET: retrieve into the local store over the same association.
    Get(GetArgs),
    /// C-MOVE: have a node send to an AE title; with --store and --port, receive here.
    Move(MoveArgs),
    /// C-STORE: send DICOM files (folders are searched recursively) to a node.
    Store {
        peer: Node,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the SCP until interrupted: receive C-STOREs into the local store, answer C-FIND and
    /// C-MOVE from it.
    Listen(ListenArgs),
    /// Time a series from a node into the viewer: retrieve into a fresh store, then decode
    /// and render as the window does (docs/benchmarks.md).
    BenchRetrieve(BenchRetrieveArgs),
}

#[derive(Debug, Args)]
pub struct BenchRetrieveArgs {
    pub peer: Peer,
    #[arg(long)]
    pub study_uid: String,
    #[arg(long)]
    pub series_uid: String,
    /// get (C-GET, as the Studies view) or move (C-MOVE to our SCP on --port).
    #[arg(long, default_value = "get", value_parser = ["get", "move"])]
    pub via: String,
    /// Port of our SCP for --via move; the node must know our AE title at this port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Runs, each into a new empty store; medians are printed.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Print every run and the medians as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Query keys shared by find, get and move.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Information model: study (Study Root) or patient (Patient Root).
    #[arg(long, default_value = "study", value_parser = parse_model)]
    pub model: Model,
    /// patient, study, series or image (default: find: study; get/move: the deepest UID given).
    #[arg(long, value_parser = parse_level)]
    pub level: Option<Level>,
    #[arg(long)]
    pub patient_id: Option<String>,
    /// Patient name, `*` and `?` wildcards (e.g. "DOE^J*").
    #[arg(long)]
    pub name: Option<String>,
    /// YYYYMMDD
    #[arg(long)]
    pub birth_date: Option<String>,
    /// YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be open).
    #[arg(long)]
    pub study_date: Option<String>,
    #[arg(long)]
    pub modality: Option<String>,
    #[arg(long)]
    pub accession: Option<String>,
    #[arg(long)]
    pub study_uid: Option<String>,
    #[arg(long)]
    pub series_uid: Option<String>,
    #[arg(long)]
    pub sop_uid: Option<String>,
}

impl QueryArgs {
    fn keys(&self) -> QueryKeys {
        QueryKeys {
            patient_id: self.patient_id.clone(),
            patient_name: self.name.clone(),
            birth_date: self.birth_date.clone(),
            study_date: self.study_date.clone(),
            modality: self.modality.clone(),
            accession: self.accession.clone(),
            study_uid: self.study_uid.clone(),
            series_uid: self.series_uid.clone(),
            sop_instance_uid: self.sop_uid.clone(),
        }
    }

    /// The level of a retrieve: given, else the deepest unique key present.
    fn retrieve_level(&self) -> Level {
        self.level.unwrap_or(if self.sop_uid.is_some() {
            Level::Image
        } else if self.series_uid.is_some() {
            Level::Series
        } else if self.study_uid.is_some() {
            Level::Study
        } else {
            Level::Patient
        })
    }
}

#[derive(Debug, Args)]
pub struct FindArgs {
    pub peer: Node,
    #[command(flatten)]
    pub query: QueryArgs,
    /// Print the matches as a JSON array of {keyword: value} objects.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub peer: Node,
    #[command(flatten)]
    pub query: QueryArgs,
    /// Local study store folder (created when missing).
    #[arg(long)]
    pub store: PathBuf,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    pub peer: Peer,
    #[command(flatten)]
    pub query: QueryArgs,
    /// Destination AE title the peer sends to (default: our --aet).
    #[arg(long)]
    pub dest: Option<String>,
    /// Receive here: run our SCP into this store while the move runs (needs --port).
    #[arg(long, requires = "port")]
    pub store: Option<PathBuf>,
    /// Port our SCP listens on; the peer must know our AE title at this port.
    #[arg(long, requires = "store")]
    pub port: Option<u16>,
}

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Local study store folder (created when missing).
    #[arg(long)]
    pub store: PathBuf,
    #[arg(long, default_value_t = 11112)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: String,
    /// Calling AE title allowed to send (repeatable).
    #[arg(long = "allow", value_name = "AET")]
    pub allow: Vec<String>,
    /// Accept associations from any calling AE title.
    #[arg(long, conflicts_with = "allow")]
    pub allow_any: bool,
    /// Associations served at once; more are rejected (transient, local limit exceeded).
    #[arg(long, default_value_t = DEFAULT_MAX_ASSOCIATIONS as u16, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_associations: u16,
    /// A node C-MOVE requests may send our studies to, `AET@HOST:PORT` (repeatable); a move
    /// to any other AE title is refused (0xA801, move destination unknown).
    #[arg(long = "destination", value_name = "AET@HOST:PORT")]
    pub destinations: Vec<Peer>,
}

fn parse_model(s: &str) -> std::result::Result<Model, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

fn parse_level(s: &str) -> std::result::Result<Level, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

pub fn run(args: &NetArgs) -> Result<()> {
    let options = ScuOptions {
        calling_aet: args.aet.clone(),
        timeout: Duration::from_secs(args.timeout.max(1)),
        ..Default::default()
    };
    match &args.action {
        NetAction::Echo { peer: Node::Dimse(peer) } => {
            let took = scu::echo(peer, &options)?;
            println!("{peer}: C-ECHO OK ({} ms)", took.as_millis());
            Ok(())
        }
        NetAction::Echo { peer: Node::Web(url) } => {
            // QIDO-RS answering a search is what "the service is there" means over HTTP.
            let started = std::time::Instant::now();
            DicomWebClient::new(url, options.timeout)?.search_studies(&QueryKeys::default())?;
            println!("{url}: QIDO-RS OK ({} ms)", started.elapsed().as_millis());
            Ok(())
        }
        NetAction::Find(a) => find(a, &options),
        NetAction::Get(a) => match &a.peer {
            Node::Dimse(peer) => {
                let store = StudyStore::open(&a.store)?;
                let level = a.query.retrieve_level();
                let report = scu::get(peer, &options, a.query.model, level, &a.query.keys(), &store, &mut |p| {
                    eprint!("\rreceived {} instance(s)", p.stored);
                    true
                })?;
                eprintln!();
                print_report(&report, "C-GET", Some(&a.store))
            }
            Node::Web(url) => web_get(url, a, options.timeout),
        },
        NetAction::Move(a) => move_(a, &args.aet, &options),
        NetAction::Store { peer: Node::Dimse(peer), files } => {
            let files = collect_files(files)?;
            let results = scu::store(peer, &options, &files, &mut |r| match &r.error {
                None => println!("sent {}", r.file.display()),
                Some(e) => eprintln!("failed {}: {e}", r.file.display()),
            })?;
            let failed = results.iter().filter(|r| !r.ok()).count();
            println!("{} of {} file(s) stored on {peer}", results.len() - failed, results.len());
            if failed > 0 {
                return Err(Error::Invalid(format!("{failed} file(s) were not stored on {peer}")));
            }
            Ok(())
        }
        NetAction::Store { peer: Node::Web(url), files } => {
            let files = collect_files(files)?;
            let answer = DicomWebClient::new(url, options.timeout)?.store_files(&files)?;
            let (stored, failed) = crate::net::dicomweb::stow_counts(&answer);
            println!("{stored} of {} file(s) stored on {url} (STOW-RS)", files.len());
            if failed > 0 || stored < files.len() {
                return Err(Error::Invalid(format!("{} file(s) were not stored on {url}", files.len() - stored)));
            }
            Ok(())
        }
        NetAction::Listen(a) => listen(a, &args.aet, options.timeout),
        NetAction::BenchRetrieve(a) => bench_retrieve(a, &options),
    }
}

fn bench_retrieve(a: &BenchRetrieveArgs, options: &ScuOptions) -> Result<()> {
    let via = match (a.via.as_str(), a.port) {
        ("move", Some(port)) => Via::Move { port },
        ("move", None) => return Err(Error::Invalid("--via move needs --port (where our SCP listens)".into())),
        _ => Via::Get,
    };
    if a.runs == 0 {
        return Err(Error::Invalid("--runs must be at least 1".into()));
    }
    let mut runs = Vec::new();
    for _ in 0..a.runs {
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid(format!("cannot make a temporary store: {e}")))?;
        runs.push(retrieve_into_viewer(&a.peer, options, &a.study_uid, &a.series_uid, via, dir.path())?);
    }
    let med = |f: fn(&RetrieveTimings) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let (retrieved, first, all) = (med(|r| r.retrieved_s), med(|r| r.first_slice_s), med(|r| r.all_slices_s));
    if a.json {
        let out = serde_json::json!({
            "via": a.via, "runs": runs,
            "median": { "retrieved_s": retrieved, "first_slice_s": first, "all_slices_s": all },
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "{} instance(s) via C-{}, median of {} run(s): stored {retrieved:.3} s, first slice shown {first:.3} s, all slices decoded {all:.3} s",
            runs[0].instances,
            a.via.to_uppercase(),
            runs.len()
        );
    }
    Ok(())
}

fn find(a: &FindArgs, options: &ScuOptions) -> Result<()> {
    let level =
        a.query.level.unwrap_or(if a.query.model == Model::PatientRoot { Level::Patient } else { Level::Study });
    let keys = a.query.keys();
    let maps: Vec<_> = match &a.peer {
        Node::Dimse(peer) => scu::find(peer, options, a.query.model, level, &keys)?.iter().map(match_to_map).collect(),
        Node::Web(url) => {
            let web = DicomWebClient::new(url, options.timeout)?;
            let found = match level {
                Level::Study => web.search_studies(&keys)?,
                Level::Series => web.search_series(
                    keys.study_uid
                        .as_deref()
                        .ok_or_else(|| Error::Invalid("a series search needs --study-uid".into()))?,
                )?,
                Level::Image => web.search_instances(
                    keys.study_uid
                        .as_deref()
                        .ok_or_else(|| Error::Invalid("an image search needs --study-uid".into()))?,
                    keys.series_uid
                        .as_deref()
                        .ok_or_else(|| Error::Invalid("an image search needs --series-uid".into()))?,
                )?,
                Level::Patient => {
                    return Err(Error::Invalid(
                        "DICOMweb (QIDO-RS) has no patient-level search; use --level study".into(),
                    ))
                }
            };
            found.iter().map(json_to_map).collect()
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&maps).unwrap_or_default());
        return Ok(());
    }
    let columns: &[&str] = match level {
        Level::Patient => &["PatientID", "PatientName", "PatientBirthDate", "NumberOfPatientRelatedStudies"],
        Level::Study => &[
            "PatientID",
            "PatientName",
            "StudyDate",
            "ModalitiesInStudy",
            "AccessionNumber",
            "StudyDescription",
            "StudyInstanceUID",
        ],
        Level::Series => {
            &["Modality", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances", "SeriesInstanceUID"]
        }
        Level::Image => &["InstanceNumber", "SOPClassUID", "SOPInstanceUID"],
    };
    println!("{}", columns.join("\t"));
    for m in &maps {
        let row: Vec<&str> = columns.iter().map(|c| m.get(*c).map(String::as_str).unwrap_or("")).collect();
        println!("{}", row.join("\t"));
    }
    eprintln!("{} match(es)", maps.len());
    Ok(())
}

/// WADO-RS retrieve: a series, or every series of a study.
fn web_get(url: &str, a: &GetArgs, timeout: Duration) -> Result<()> {
    let web = DicomWebClient::new(url, timeout)?;
    let store = StudyStore::open(&a.store)?;
    let study =
        a.query.study_uid.as_deref().ok_or_else(|| Error::Invalid("a DICOMweb retrieve needs --study-uid".into()))?;
    let series: Vec<String> = match &a.query.series_uid {
        Some(s) => vec![s.clone()],
        None => {
            web.search_series(study)?.iter().filter_map(|s| json_to_map(s).get("SeriesInstanceUID").cloned()).collect()
        }
    };
    let mut total = 0;
    for s in &series {
        total += web.retrieve_series(study, s, &store)?.len();
    }
    println!("WADO-RS: {total} instance(s) of {} series stored in {}", series.len(), a.store.display());
    Ok(())
}

fn move_(a: &MoveArgs, our_aet: &str, options: &ScuOptions) -> Result<()> {
    let dest = a.dest.clone().unwrap_or_else(|| our_aet.to_string());
    // Receive while the move runs: only the node we asked may send to us.
    let _scp = match (&a.store, a.port) {
        (Some(dir), Some(port)) => {
            let store = Arc::new(StudyStore::open(dir)?);
            let config = ScpConfig {
                allowed_callers: Some(vec![a.peer.aet.clone()]),
                timeout: options.timeout,
                ..ScpConfig::new(&dest)
            };
            let scp = StoreScp::bind(&format!("0.0.0.0:{port}"), config, store)?;
            Some(scp.spawn(Arc::new(print_event)))
        }
        _ => None,
    };
    let level = a.query.retrieve_level();
    let report = scu::move_to(&a.peer, options, a.query.model, level, &a.query.keys(), &dest, &mut |p| {
        eprint!("\rcompleted {} sub-operation(s)", p.sub_operations.completed);
        true
    })?;
    eprintln!();
    print_report(&report, "C-MOVE", a.store.as_deref())
}

fn listen(a: &ListenArgs, our_aet: &str, timeout: Duration) -> Result<()> {
    let store = Arc::new(StudyStore::open(&a.store)?);
    report_recovery(&store);
    let allowed = if a.allow_any {
        None
    } else if a.allow.is_empty() {
        return Err(Error::Invalid("say who may send: --allow AET (repeatable) or --allow-any".into()));
    } else {
        Some(a.allow.clone())
    };
    let config = ScpConfig {
        allowed_callers: allowed,
        timeout,
        max_associations: a.max_associations as usize,
        move_destinations: a.destinations.clone(),
        ..ScpConfig::new(our_aet)
    };
    let address = format!("{}:{}", a.bind, a.port);
    let scp = StoreScp::bind(&address, config, store)?;
    println!("{our_aet} listening on {} into {}", scp.local_addr(), a.store.display());
    let never = std::sync::atomic::AtomicBool::new(false);
    scp.serve(Arc::new(print_event), &never);
    Ok(())
}

/// What opening the store repaired after a crash, when anything.
fn report_recovery(store: &StudyStore) {
    let r = store.recovery();
    if !r.indexed.is_empty() || r.removed_partials > 0 || !r.removed_duplicates.is_empty() {
        println!(
            "store recovered: {} file(s) indexed, {} temporary file(s) and {} stale duplicate(s) removed",
            r.indexed.len(),
            r.removed_partials,
            r.removed_duplicates.len()
        );
    }
    for (path, why) in &r.unreadable {
        eprintln!("not indexed, left in place: {}: {why}", path.display());
    }
}

fn print_event(event: ScpEvent) {
    match event {
        ScpEvent::Accepted { calling_aet, address } => println!("association from {calling_aet} ({address})"),
        ScpEvent::Refused { address, reason } => println!("refused {address}: {reason}"),
        ScpEvent::Echo { calling_aet } => println!("C-ECHO from {calling_aet}"),
        ScpEvent::Stored { calling_aet, instance } => {
            println!("stored {} from {calling_aet} -> {}", instance.sop_instance_uid, instance.path.display())
        }
        ScpEvent::StoreFailed { calling_aet, sop_instance_uid, status, reason } => {
            println!("refused {sop_instance_uid} from {calling_aet}: {status}: {reason}")
        }
        ScpEvent::Released { calling_aet } => println!("released by {calling_aet}"),
        ScpEvent::Query { calling_aet, outcome } => match outcome {
            QrOutcome::Found { matches } => println!("C-FIND from {calling_aet}: {matches} match(es)"),
            QrOutcome::Moved { destination, completed, failed } => {
                println!("C-MOVE from {calling_aet} to {destination}: {completed} sent, {failed} failed")
            }
            QrOutcome::Refused { status, reason } => println!("refused a request of {calling_aet}: {status}: {reason}"),
        },
        ScpEvent::Failed { calling_aet, reason } => println!("association with {calling_aet} failed: {reason}"),
    }
}

fn print_report(report: &RetrieveReport, operation: &str, store: Option<&Path>) -> Result<()> {
    let s = &report.sub_operations;
    println!(
        "{operation}: {} completed, {} failed, {} warning(s), {} ({:.2} s)",
        s.completed,
        s.failed,
        s.warning,
        report.status,
        report.elapsed.as_secs_f64()
    );
    if let Some(dir) = store {
        if !report.stored.is_empty() {
            println!("{} instance(s) stored in {}", report.stored.len(), dir.display());
        }
    }
    for (uid, reason) in &report.refused {
        eprintln!("refused {uid}: {reason}");
    }
    if s.failed > 0 || !report.refused.is_empty() {
        return Err(Error::Invalid(format!(
            "{operation}: {} instance(s) were not retrieved",
            s.failed.max(report.refused.len() as u16)
        )));
    }
    Ok(())
}

/// Files to send: each file given, and every file under each folder given (hidden files and
/// folders skipped), in a stable order.
fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}
