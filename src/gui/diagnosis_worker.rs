//! The diagnosis worker: one thread owns the [`Engine`] (backbone + adapters) for the life of
//! the window. The UI sends [`DiagnosisRequest`]s and receives [`DiagnosisEvent`]s over
//! channels; every event wakes the UI (`request_repaint`), so nothing ever waits on a forward.
//!
//! * Predictions are coalesced: when several are queued (the user scrolls through slices
//!   faster than the model runs), only the newest of each kind runs — the others would be
//!   stale by the time they finished.
//! * A panic while serving one request becomes a [`DiagnosisEvent::Failed`] and the worker
//!   carries on with the same engine (prediction only reads it). If the thread dies anyway,
//!   the UI sees the channel close and offers a restart.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use crate::image::MedicalImage;
use crate::model::engine::{Heatmap, Prediction};
use crate::model::lora::{Adapter, AdapterMetadata, ImportOptions, ModelFacts};
use crate::model::Engine;
use crate::report::ResultKind;

/// Which slice of which loaded series an image is: results are matched to the view by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageKey {
    pub stack_id: u64,
    pub slice: usize,
}

/// What the panel shows about an adapter (copied out of the engine, which stays on the worker).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    pub task: String,
    pub labels: Vec<String>,
    pub modality: String,
    pub description: String,
    /// Recorded test metrics, e.g. `test_accuracy`.
    pub metrics: Vec<(String, f64)>,
    pub training_dataset: String,
    pub source: String,
    pub rank: usize,
    pub input_size: usize,
    pub parameter_count: usize,
    pub multi_label: bool,
    /// Intended use, limitations, research use, test intervals (computed from the recorded
    /// confusion matrix for adapters that predate the facts).
    pub facts: ModelFacts,
    pub data_licence: String,
    /// Images per split: `("train", 4690)`, ….
    pub split_sizes: Vec<(String, u64)>,
    /// `56 × 56 px, mean …, std …, CLS + mean of patch tokens`.
    pub input_text: String,
    pub calibration: Option<CalibrationView>,
    pub ood: Option<OodView>,
    /// Per-epoch training curves, from the training report beside the adapter file.
    pub history: Vec<EpochPoint>,
}

/// The adapter's temperature scaling as the panel draws it.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationView {
    pub temperature: f64,
    /// The NLL-optimal temperature when the likelihood-ratio test kept T = 1 instead
    /// (`None` when the fitted one is used, or the adapter predates the test).
    pub rejected_temperature: Option<f64>,
    pub ece_before: f64,
    pub ece_after: f64,
    /// Bootstrap 95 % interval of the test ECE's change, when the adapter records it.
    pub ece_change_ci: Option<[f64; 2]>,
    pub brier_before: Option<f64>,
    pub brier_after: Option<f64>,
    /// Equal-width confidence bins over 0..1 on the test split, after scaling.
    pub bins: Vec<ReliabilityBin>,
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReliabilityBin {
    pub count: u64,
    pub mean_confidence: f64,
    pub accuracy: f64,
}

/// The adapter's out-of-distribution detector: its threshold and the scores of the
/// in-distribution validation images, as a histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct OodView {
    pub detector: String,
    pub threshold: f64,
    /// (lower edge, upper edge, validation images) per bin.
    pub validation_histogram: Vec<(f64, f64, u64)>,
}

/// One epoch of a training run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochPoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub val_auc: Option<f64>,
}

impl TaskInfo {
    /// What the panel shows of `adapter` (training curves are attached from the report separately).
    pub fn of(adapter: &Adapter) -> Self {
        let m = adapter.metadata();
        let mut facts = m.facts.clone();
        facts.test_intervals = crate::model::facts::intervals_of(m);
        Self {
            task: m.task.clone(),
            labels: m.labels.clone(),
            modality: m.modality.clone(),
            description: m.description.clone(),
            metrics: m.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            training_dataset: m.training.dataset.clone(),
            source: m.source.clone(),
            rank: m.rank,
            input_size: m.input_size,
            parameter_count: adapter.parameter_count(),
            multi_label: m.multi_label,
            facts,
            data_licence: m.data_set.licence.clone(),
            split_sizes: ["train", "val", "test"]
                .iter()
                .filter_map(|s| m.data_set.counts.get(*s).map(|c| (s.to_string(), c.values().sum())))
                .collect(),
            input_text: format!(
                "{0} × {0} px, mean {1:?}, std {2:?}, {3}",
                m.input_size,
                m.mean,
                m.std,
                match m.pooling {
                    crate::model::Pooling::Cls => "CLS token",
                    crate::model::Pooling::MeanPatch => "mean of patch tokens",
                    crate::model::Pooling::ClsMeanPatch => "CLS + mean of patch tokens",
                }
            ),
            calibration: calibration_view(m),
            ood: ood_view(m),
            history: Vec::new(),
        }
    }
}

/// The calibration the adapter records, for the panel: the temperature, test ECE / Brier
/// before and after, and the reliability bins after scaling; `None`: shown as uncalibrated.
fn calibration_view(m: &AdapterMetadata) -> Option<CalibrationView> {
    m.calibration.as_ref().map(|c| CalibrationView {
        temperature: c.temperature,
        rejected_temperature: c.fitted_temperature.filter(|&t| t != c.temperature),
        ece_before: c.ece_before,
        ece_after: c.ece_after,
        ece_change_ci: c.ece_change_ci,
        brier_before: Some(c.brier_before),
        brier_after: Some(c.brier_after),
        bins: c
            .reliability_after
            .iter()
            .map(|b| ReliabilityBin { count: b.count, mean_confidence: b.confidence, accuracy: b.accuracy })
            .collect(),
    })
}

/// Bins of the validation-score histogram drawn in the panel.
const HISTOGRAM_BINS: usize = 24;

/// The OOD statistics the adapter records, for the panel: detector, threshold and a histogram
/// of the validation scores rebuilt from the stored quantile grid (equal-width bins; the count
/// of a bin is the rank difference of its edges times the number of validation images).
/// Adapters fitted before the grid existed get no histogram: the plot shows the threshold and
/// the current image's score only.
fn ood_view(m: &AdapterMetadata) -> Option<OodView> {
    m.ood.as_ref().map(|o| {
        let q = &o.validation_quantiles;
        let mut histogram = Vec::new();
        if let (Some(&lo), Some(&hi)) = (q.first(), q.last()) {
            if hi > lo {
                let width = (hi - lo) / HISTOGRAM_BINS as f64;
                let rank = |x: f64| o.validation_rank(x).unwrap_or(0.0);
                for b in 0..HISTOGRAM_BINS {
                    let (a, z) = (lo + b as f64 * width, lo + (b + 1) as f64 * width);
                    // The first edge is the minimum itself: count it in the first bin.
                    let below = if b == 0 { 0.0 } else { rank(a) };
                    let count = ((rank(z) - below) * o.threshold_samples as f64).round().max(0.0) as u64;
                    histogram.push((a, z, count));
                }
            }
        }
        OodView {
            detector: o.detector.name().to_string(),
            threshold: o.threshold(o.detector),
            validation_histogram: histogram,
        }
    })
}

/// The per-epoch history of a `melo train` report (`TASK.report.json`), if `text` is one
/// for `task`.
pub fn report_history(text: &str, task: &str) -> Option<Vec<EpochPoint>> {
    let report: serde_json::Value = serde_json::from_str(text).ok()?;
    if report.get("task")?.as_str()? != task {
        return None;
    }
    let history = report.get("history")?.as_array()?;
    history
        .iter()
        .map(|e| {
            Some(EpochPoint {
                epoch: usize::try_from(e.get("epoch")?.as_u64()?).ok()?,
                train_loss: e.get("train_loss")?.as_f64()?,
                val_loss: e.get("val_loss").and_then(serde_json::Value::as_f64),
                val_auc: e.get("val_macro_auc").and_then(serde_json::Value::as_f64),
            })
        })
        .collect()
}

/// Fills each task's training curves from the reports in `dir` (`*.report.json`, matched by
/// their `task`). Reports are at most a few hundred KB; larger files are not read.
pub fn attach_histories(tasks: &mut [TaskInfo], dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let is_report = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".report.json"));
        if !is_report || std::fs::metadata(&path).map_or(true, |m| m.len() > 4 << 20) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for info in tasks.iter_mut().filter(|t| t.history.is_empty()) {
            if let Some(history) = report_history(&text, &info.task) {
                info.history = history;
            }
        }
    }
}

/// How an adapter file from elsewhere is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterLayout {
    /// This program's own `.safetensors` format (metadata inside).
    #[default]
    Workstation,
    /// MeLo's published layout (`w_a_*`, `w_b_*`, `fc_*`): needs a task name and alpha.
    Melo,
    /// A Hugging Face PEFT folder (`adapter_config.json` + `adapter_model.safetensors`).
    Peft,
}

impl AdapterLayout {
    pub const ALL: [AdapterLayout; 3] = [AdapterLayout::Workstation, AdapterLayout::Melo, AdapterLayout::Peft];

    pub fn label(self) -> &'static str {
        match self {
            AdapterLayout::Workstation => "MeLo Workstation (.safetensors)",
            AdapterLayout::Melo => "MeLo (w_a / w_b / fc)",
            AdapterLayout::Peft => "PEFT folder",
        }
    }
}

/// What an import needs beyond the file (MeLo and PEFT files do not name their task).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImportFields {
    pub task: String,
    /// Comma-separated class names; empty for `class_0`, `class_1`, ….
    pub labels: String,
    /// LoRA alpha for MeLo files (they do not store it).
    pub alpha: Option<f64>,
    pub modality: String,
}

/// What the UI asks of the worker.
#[derive(Debug, Clone)]
pub enum DiagnosisRequest {
    /// Load the backbone and register every adapter of a folder (replaces any engine).
    Open { backbone: PathBuf, adapters: Option<PathBuf> },
    /// One task on one frame; with a heatmap if asked (one forward either way).
    Predict { key: ImageKey, image: Arc<MedicalImage>, frame: usize, task: String, heatmap: bool },
    /// Every task on one frame, each timed.
    PredictAll { key: ImageKey, image: Arc<MedicalImage>, frame: usize },
    /// Register an adapter file from elsewhere for this session.
    LoadAdapter { path: PathBuf, layout: AdapterLayout, fields: ImportFields },
    /// Write the result objects of `task` on one frame (`crate::report::write_results`), for
    /// `purpose`.
    WriteResults {
        image: Arc<MedicalImage>,
        frame: usize,
        task: String,
        outputs: Vec<(ResultKind, PathBuf)>,
        purpose: ResultPurpose,
    },
    /// Panics inside the worker: lets tests check that a crash becomes a message.
    #[doc(hidden)]
    Panic,
}

/// Why result objects are written: saved where the user chose, or sent to a node (from a
/// temporary folder removed once the send is over).
#[derive(Debug, Clone)]
pub enum ResultPurpose {
    Save,
    Send { node: crate::net::cli::Node, options: crate::net::ScuOptions, folder: Arc<tempfile::TempDir> },
}

/// One row of the "all tasks" table.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub prediction: Prediction,
    pub latency_ms: f64,
}

/// What the worker reports.
#[derive(Debug, Clone)]
pub enum DiagnosisEvent {
    Opened {
        backbone: String,
        load_ms: f64,
        adapters_dir: Option<PathBuf>,
        tasks: Vec<TaskInfo>,
        /// Adapter files that were skipped, with the reason.
        rejected: Vec<String>,
    },
    OpenFailed {
        message: String,
    },
    Predicted {
        key: ImageKey,
        prediction: Prediction,
        heatmap: Option<Heatmap>,
        /// Wall time of preprocessing + forward + head on the worker.
        latency_ms: f64,
    },
    PredictedAll {
        key: ImageKey,
        rows: Vec<TaskRow>,
    },
    AdapterLoaded {
        /// Boxed: the facts make it far larger than the other events.
        info: Box<TaskInfo>,
        path: PathBuf,
    },
    ResultsWritten {
        outputs: Vec<(ResultKind, PathBuf)>,
        purpose: ResultPurpose,
    },
    /// Result objects could not be made or written (not a DICOM source, a bad output path …).
    ResultsFailed {
        message: String,
    },
    /// A request failed (bad image, bad adapter, a panic); the worker keeps serving.
    Failed {
        /// What was being done, e.g. "Prediction".
        what: &'static str,
        message: String,
        /// The image it was about, for predictions.
        key: Option<ImageKey>,
    },
}

/// The UI side of the worker thread.
pub struct DiagnosisWorker {
    requests: Sender<DiagnosisRequest>,
    events: Receiver<DiagnosisEvent>,
    /// Requests sent and not yet answered (coalesced ones count as answered).
    pending: Arc<AtomicUsize>,
    alive: bool,
}

impl DiagnosisWorker {
    /// Starts the thread. It does nothing until the first request.
    pub fn spawn(ctx: &egui::Context) -> std::io::Result<Self> {
        let (requests, inbox) = channel();
        let (outbox, events) = channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let worker_pending = pending.clone();
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("melo-diagnosis".into())
            .spawn(move || serve(inbox, outbox, worker_pending, ctx))?;
        Ok(Self { requests, events, pending, alive: true })
    }

    pub fn send(&mut self, request: DiagnosisRequest) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.requests.send(request).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.alive = false;
        }
    }

    /// True while a request is queued or running.
    pub fn is_busy(&self) -> bool {
        self.alive && self.pending.load(Ordering::SeqCst) > 0
    }

    /// False once the thread has gone (the channel closed).
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Events received since the last call.
    pub fn poll(&mut self) -> Vec<DiagnosisEvent> {
        let mut out = Vec::new();
        loop {
            match self.events.try_recv() {
                Ok(event) => out.push(event),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.alive = false;
                    break;
                }
            }
        }
        out
    }
}

fn serve(
    inbox: Receiver<DiagnosisRequest>,
    outbox: Sender<DiagnosisEvent>,
    pending: Arc<AtomicUsize>,
    ctx: egui::Context,
) {
    let send = |event: DiagnosisEvent| {
        let _ = outbox.send(event);
        ctx.request_repaint();
    };
    let mut engine: Option<Engine> = None;
    // `recv` fails only when the UI side is dropped: the window closed.
    while let Ok(first) = inbox.recv() {
        let mut batch = vec![first];
        batch.extend(inbox.try_iter());
        let received = batch.len();
        let batch = coalesce(batch);
        pending.fetch_sub(received - batch.len(), Ordering::SeqCst);
        for request in batch {
            let what = request_name(&request);
            let key = match &request {
                DiagnosisRequest::Predict { key, .. } | DiagnosisRequest::PredictAll { key, .. } => Some(*key),
                _ => None,
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| handle(request, &mut engine)));
            let event = match outcome {
                Ok(event) => event,
                Err(payload) => DiagnosisEvent::Failed {
                    what,
                    message: format!(
                        "internal error in the diagnosis worker: {}",
                        super::worker::panic_text(&*payload)
                    ),
                    key,
                },
            };
            // Answered before the event is sent, so a UI that sees the event never sees
            // this request as still pending.
            pending.fetch_sub(1, Ordering::SeqCst);
            send(event);
        }
    }
}

/// Keeps only the newest `Predict` and the newest `PredictAll`; everything else runs in order.
fn coalesce(batch: Vec<DiagnosisRequest>) -> Vec<DiagnosisRequest> {
    let last_predict = batch.iter().rposition(|r| matches!(r, DiagnosisRequest::Predict { .. }));
    let last_all = batch.iter().rposition(|r| matches!(r, DiagnosisRequest::PredictAll { .. }));
    batch
        .into_iter()
        .enumerate()
        .filter(|(i, r)| match r {
            DiagnosisRequest::Predict { .. } => Some(*i) == last_predict,
            DiagnosisRequest::PredictAll { .. } => Some(*i) == last_all,
            _ => true,
        })
        .map(|(_, r)| r)
        .collect()
}

fn request_name(request: &DiagnosisRequest) -> &'static str {
    match request {
        DiagnosisRequest::Open { .. } => "Loading the model",
        DiagnosisRequest::Predict { .. } => "Prediction",
        DiagnosisRequest::PredictAll { .. } => "All-tasks prediction",
        DiagnosisRequest::LoadAdapter { .. } => "Loading the adapter",
        DiagnosisRequest::WriteResults { .. } => "Writing the results",
        DiagnosisRequest::Panic => "Test request",
    }
}

fn handle(request: DiagnosisRequest, engine: &mut Option<Engine>) -> DiagnosisEvent {
    let no_engine = |what| DiagnosisEvent::Failed { what, message: "the model is not loaded".into(), key: None };
    match request {
        DiagnosisRequest::Open { backbone, adapters } => {
            let start = Instant::now();
            match open_engine(&backbone, adapters.as_deref()) {
                Ok((opened, rejected)) => {
                    let load_ms = start.elapsed().as_secs_f64() * 1e3;
                    let mut tasks: Vec<TaskInfo> = opened.adapters().iter().map(TaskInfo::of).collect();
                    if let Some(dir) = adapters.as_deref() {
                        attach_histories(&mut tasks, dir);
                    }
                    let cfg = opened.backbone().config();
                    let backbone = format!(
                        "ViT dim {}, {} blocks, patch {} ({})",
                        cfg.embed_dim,
                        cfg.depth,
                        cfg.patch_size,
                        backbone_name(&backbone)
                    );
                    *engine = Some(opened);
                    DiagnosisEvent::Opened { backbone, load_ms, adapters_dir: adapters, tasks, rejected }
                }
                Err(message) => {
                    *engine = None;
                    DiagnosisEvent::OpenFailed { message }
                }
            }
        }
        DiagnosisRequest::Predict { key, image, frame, task, heatmap } => {
            let Some(engine) = engine.as_mut() else {
                return no_engine("Prediction");
            };
            let start = Instant::now();
            let outcome = if heatmap {
                engine
                    .switch(&task)
                    .and_then(|()| engine.explain(&image, frame))
                    .map(|e| (e.prediction, Some(e.heatmap)))
            } else {
                engine.predict_task(&task, &image, frame).map(|p| (p, None))
            };
            match outcome {
                Ok((prediction, heatmap)) => DiagnosisEvent::Predicted {
                    key,
                    prediction,
                    heatmap,
                    latency_ms: start.elapsed().as_secs_f64() * 1e3,
                },
                Err(e) => DiagnosisEvent::Failed { what: "Prediction", message: e.to_string(), key: Some(key) },
            }
        }
        DiagnosisRequest::PredictAll { key, image, frame } => {
            let Some(engine) = engine.as_ref() else {
                return no_engine("All-tasks prediction");
            };
            let tasks: Vec<String> = engine.tasks().map(str::to_string).collect();
            let mut rows = Vec::with_capacity(tasks.len());
            for task in tasks {
                let start = Instant::now();
                match engine.predict_task(&task, &image, frame) {
                    Ok(prediction) => {
                        rows.push(TaskRow { prediction, latency_ms: start.elapsed().as_secs_f64() * 1e3 })
                    }
                    Err(e) => {
                        return DiagnosisEvent::Failed {
                            what: "All-tasks prediction",
                            message: format!("{task}: {e}"),
                            key: Some(key),
                        }
                    }
                }
            }
            DiagnosisEvent::PredictedAll { key, rows }
        }
        DiagnosisRequest::LoadAdapter { path, layout, fields } => {
            let Some(engine) = engine.as_mut() else {
                return no_engine("Loading the adapter");
            };
            match load_adapter(engine, &path, layout, &fields) {
                Ok(info) => DiagnosisEvent::AdapterLoaded { info: Box::new(info), path },
                Err(message) => DiagnosisEvent::Failed { what: "Loading the adapter", message, key: None },
            }
        }
        DiagnosisRequest::WriteResults { image, frame, task, outputs, purpose } => {
            let Some(engine) = engine.as_mut() else {
                return DiagnosisEvent::ResultsFailed { message: "the model is not loaded".into() };
            };
            match crate::report::write_results(engine, &image, frame, &task, &outputs) {
                Ok(_) => DiagnosisEvent::ResultsWritten { outputs, purpose },
                Err(e) => DiagnosisEvent::ResultsFailed { message: e.to_string() },
            }
        }
        DiagnosisRequest::Panic => panic!("requested by a test"),
    }
}

fn open_engine(backbone: &Path, adapters: Option<&Path>) -> Result<(Engine, Vec<String>), String> {
    let mut engine = Engine::open(backbone).map_err(|e| format!("cannot load the backbone: {e}"))?;
    let mut rejected = Vec::new();
    if let Some(dir) = adapters {
        match engine.register_dir(dir) {
            Ok(skipped) => rejected.extend(skipped.into_iter().map(|r| {
                format!(
                    "{}: {}",
                    r.path
                        .file_name()
                        .map_or_else(|| r.path.display().to_string(), |n| n.to_string_lossy().into_owned()),
                    r.reason
                )
            })),
            Err(e) => rejected.push(format!("cannot read the adapters folder: {e}")),
        }
    }
    Ok((engine, rejected))
}

fn load_adapter(
    engine: &mut Engine,
    path: &Path,
    layout: AdapterLayout,
    fields: &ImportFields,
) -> Result<TaskInfo, String> {
    let adapter = match layout {
        AdapterLayout::Workstation => Adapter::load(path).map_err(|e| e.to_string())?,
        AdapterLayout::Melo | AdapterLayout::Peft => {
            let task = fields.task.trim();
            if task.is_empty() {
                return Err("give the task a name (MeLo and PEFT files do not store one)".into());
            }
            let mut options = ImportOptions::for_backbone(task, engine.backbone());
            let labels: Vec<String> =
                fields.labels.split(',').map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
            if !labels.is_empty() {
                options.labels = Some(labels);
            }
            options.alpha = fields.alpha;
            options.modality = fields.modality.trim().to_string();
            if layout == AdapterLayout::Melo {
                Adapter::import_melo(path, &options)
            } else {
                Adapter::import_peft(path, &options)
            }
            .map_err(|e| e.to_string())?
        }
    };
    let mut info = TaskInfo::of(&adapter);
    if let Some(dir) = path.parent().filter(|_| layout == AdapterLayout::Workstation) {
        attach_histories(std::slice::from_mut(&mut info), dir);
    }
    engine.register(adapter).map_err(|e| e.to_string())?;
    Ok(info)
}

/// The backbone folder's name.
fn backbone_name(dir: &Path) -> String {
    dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn predict(slice: usize) -> DiagnosisRequest {
        DiagnosisRequest::Predict {
            key: ImageKey { stack_id: 1, slice },
            image: Arc::new(MedicalImage {
                meta: Default::default(),
                frames: 1,
                rows: 1,
                cols: 1,
                channels: 1,
                values: vec![0.0],
            }),
            frame: 0,
            task: "t".into(),
            heatmap: false,
        }
    }

    #[test]
    fn report_history_reads_the_epochs_of_its_own_task_only() {
        let text = r#"{"task": "chest", "history": [
            {"epoch": 1, "train_loss": 0.5, "val_macro_auc": 0.9, "val_loss": 0.4},
            {"epoch": 2, "train_loss": 0.3, "val_macro_auc": null, "val_loss": 0.35}]}"#;
        let history = report_history(text, "chest").unwrap();
        assert_eq!(
            history,
            [
                EpochPoint { epoch: 1, train_loss: 0.5, val_loss: Some(0.4), val_auc: Some(0.9) },
                EpochPoint { epoch: 2, train_loss: 0.3, val_loss: Some(0.35), val_auc: None },
            ]
        );
        assert_eq!(report_history(text, "other"), None);
        assert_eq!(report_history("not json", "chest"), None);
        assert_eq!(report_history(r#"{"task": "chest", "history": [{"epoch": 1}]}"#, "chest"), None);
    }

    #[test]
    fn coalescing_keeps_the_newest_prediction_and_every_other_request() {
        let batch =
            vec![predict(0), DiagnosisRequest::Open { backbone: "b".into(), adapters: None }, predict(1), predict(2)];
        let kept = coalesce(batch);
        assert_eq!(kept.len(), 2);
        assert!(matches!(kept[0], DiagnosisRequest::Open { .. }));
        assert!(matches!(kept[1], DiagnosisRequest::Predict { key, .. } if key.slice == 2));
    }
}
