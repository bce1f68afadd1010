//! The diagnosis panel beside the viewer: task dropdown, class probabilities of the current
//! image (bar chart), the adapter's recorded metrics and intended modality, an "all tasks"
//! table, the attention heatmap overlay, and "Load adapter…".
//!
//! The engine lives on [`DiagnosisWorker`]'s thread; this view only keeps what it was sent
//! back. Each frame the app calls [`DiagnosisPanel::request_for`] with the viewer, which asks
//! for a prediction when the image, the task or the heatmap switch changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use egui::{Color32, ColorImage, RichText, TextureHandle, TextureOptions};
use egui_plot::{Bar, BarChart, Legend, Line, LineStyle, Plot, PlotPoints, VLine};

use super::diagnosis_worker::{
    AdapterLayout, CalibrationView, DiagnosisEvent, DiagnosisRequest, DiagnosisWorker, EpochPoint, ImageKey,
    ImportFields, OodView, ResultPurpose, TaskInfo, TaskRow,
};
use super::studies::{Node, NodeAddress};
use super::viewer::Viewer;
use super::{Command, MessageLevel};
use crate::image::MedicalImage;
use crate::model::engine::{Heatmap, OodCheck, Prediction};
use crate::report::ResultKind;

/// Largest side of the heatmap texture (the map is smooth; more pixels show nothing new).
const HEATMAP_MAX_SIDE: usize = 512;

/// Everything the panel's widgets (and shortcuts) can ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum DiagnosisCommand {
    SelectTask(String),
    /// Previous (-1) or next (+1) task in the list, wrapping around.
    StepTask(i32),
    SetHeatmap(bool),
    SetHeatmapOpacity(f32),
    SetShowAllTasks(bool),
    TogglePanel,
    OpenImportDialog,
    CloseImportDialog,
    /// Ask for the adapter file (or PEFT folder) with the system dialog (run by the app).
    BrowseAdapter,
    /// The dialog's answer: fills the "Load adapter" form.
    AdapterPicked(PathBuf),
    LoadAdapter {
        path: PathBuf,
        layout: AdapterLayout,
        fields: ImportFields,
    },
    /// Ask where to save the result object (the app runs the save dialog).
    SaveResult(ResultKind),
    /// Write the result object of the task shown on the current image to `path`.
    SaveResultTo {
        kind: ResultKind,
        path: PathBuf,
    },
    /// Send the result objects chosen (SR, SC) to the Studies view's node at this index.
    SendResults {
        node: usize,
    },
    SetSendKind {
        kind: ResultKind,
        on: bool,
    },
    /// Start a fresh worker and load the model again (after a failure).
    Restart,
    /// Makes the worker panic (tests of the error path).
    #[doc(hidden)]
    CrashWorker,
}

/// Where the model stands.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineState {
    /// No backbone folder was found; nothing to load.
    NoBackbone,
    Loading,
    Ready {
        backbone: String,
        load_ms: f64,
    },
    Failed(String),
}

/// The prediction shown for the current image.
#[derive(Debug, Clone)]
pub struct ShownPrediction {
    pub key: ImageKey,
    pub prediction: Prediction,
    pub latency_ms: f64,
}

/// The "Load adapter…" dialog's fields.
#[derive(Debug, Clone, Default)]
pub struct ImportDialog {
    pub open: bool,
    pub path: String,
    pub layout: AdapterLayout,
    pub fields: ImportFields,
    /// What the user typed for alpha (parsed when loading).
    pub alpha_text: String,
}

/// Result objects (SR, SC) of the shown prediction: saving and sending them.
#[derive(Debug, Clone)]
pub struct ResultsState {
    /// Which objects "Send SR / SC to" sends.
    pub send_sr: bool,
    pub send_sc: bool,
    /// Writing (on the diagnosis worker) or sending (on a thread of its own) is under way.
    pub busy: bool,
    /// The one line of the last save or send: what happened, or why it did not.
    pub status: Option<(MessageLevel, String)>,
}

impl Default for ResultsState {
    fn default() -> Self {
        ResultsState { send_sr: true, send_sc: true, busy: false, status: None }
    }
}

/// A send thread's line: what was stored, or why not.
type SendOutcome = Result<String, String>;

/// The diagnosis view.
pub struct DiagnosisPanel {
    pub visible: bool,
    /// The viewer shows structured reports (no pixels), not an image: said instead of "open
    /// an image".
    pub showing_documents: bool,
    pub backbone_dir: Option<PathBuf>,
    pub adapters_dir: Option<PathBuf>,
    pub state: EngineState,
    /// Registered tasks, in the engine's order.
    pub tasks: Vec<TaskInfo>,
    pub selected: Option<String>,
    /// Set once the user picked a task (or one was remembered): until then the panel follows
    /// the image, picking the first adapter meant for its modality.
    pub task_chosen: bool,
    /// The last measured latency of each task on this machine (ms).
    pub latency_ms: BTreeMap<String, f64>,
    pub shown: Option<ShownPrediction>,
    /// Why the current image could not be classified, if it could not.
    pub failure: Option<(ImageKey, String)>,
    pub show_all_tasks: bool,
    pub all_tasks: Option<(ImageKey, Vec<TaskRow>)>,
    pub heatmap_enabled: bool,
    pub heatmap_opacity: f32,
    pub heatmap: Option<(ImageKey, String, Heatmap)>,
    /// Adapter files skipped when the folder was registered.
    pub rejected: Vec<String>,
    pub import: ImportDialog,
    /// Where the adapter file dialog starts.
    pub adapter_folder: Option<PathBuf>,
    worker: Option<DiagnosisWorker>,
    /// The last prediction asked for: (image, task, with heatmap).
    requested: Option<(ImageKey, String, bool)>,
    requested_all: Option<ImageKey>,
    /// The current file, shared with the worker (cloned once per file, not per request).
    image: Option<((u64, usize), Arc<MedicalImage>)>,
    heatmap_texture: Option<((ImageKey, String), TextureHandle)>,
    pub results: ResultsState,
    /// Outcomes of send threads: the line to show.
    sent: (Sender<SendOutcome>, Receiver<SendOutcome>),
}

impl DiagnosisPanel {
    pub fn new(backbone_dir: Option<PathBuf>, adapters_dir: Option<PathBuf>) -> Self {
        Self {
            visible: true,
            showing_documents: false,
            state: if backbone_dir.is_some() { EngineState::Loading } else { EngineState::NoBackbone },
            backbone_dir,
            adapters_dir,
            tasks: Vec::new(),
            selected: None,
            task_chosen: false,
            latency_ms: BTreeMap::new(),
            shown: None,
            failure: None,
            show_all_tasks: false,
            all_tasks: None,
            heatmap_enabled: false,
            heatmap_opacity: 0.5,
            heatmap: None,
            rejected: Vec::new(),
            import: ImportDialog::default(),
            adapter_folder: None,
            worker: None,
            requested: None,
            requested_all: None,
            image: None,
            heatmap_texture: None,
            results: ResultsState::default(),
            sent: channel(),
        }
    }

    /// True while the worker has a request queued or running (or the model is loading).
    pub fn is_busy(&self) -> bool {
        self.worker.as_ref().is_some_and(DiagnosisWorker::is_busy)
    }

    pub fn task(&self, name: &str) -> Option<&TaskInfo> {
        self.tasks.iter().find(|t| t.task == name)
    }

    /// Starts the worker and the model load, once (and again after [`DiagnosisCommand::Restart`]).
    pub fn start(&mut self, ctx: &egui::Context) -> Option<String> {
        if self.worker.is_some() || self.state != EngineState::Loading {
            return None;
        }
        let backbone = self.backbone_dir.clone()?;
        match DiagnosisWorker::spawn(ctx) {
            Ok(mut worker) => {
                worker.send(DiagnosisRequest::Open { backbone, adapters: self.adapters_dir.clone() });
                self.worker = Some(worker);
                self.state = EngineState::Loading;
                None
            }
            Err(e) => {
                let message = format!("cannot start the diagnosis worker: {e}");
                self.state = EngineState::Failed(message.clone());
                Some(message)
            }
        }
    }

    /// Applies what the worker sent; returns messages for the app's message bar.
    pub fn receive(&mut self, ctx: &egui::Context) -> Vec<(MessageLevel, String, Vec<String>)> {
        let mut messages = Vec::new();
        while let Ok(outcome) = self.sent.1.try_recv() {
            self.results.busy = false;
            self.results.status = Some(match outcome {
                Ok(line) => (MessageLevel::Info, line),
                Err(line) => (MessageLevel::Error, line),
            });
        }
        let Some(worker) = self.worker.as_mut() else {
            return messages;
        };
        let events = worker.poll();
        let died = !worker.is_alive();
        for event in events {
            match event {
                DiagnosisEvent::Opened { backbone, load_ms, adapters_dir, tasks, rejected } => {
                    self.state = EngineState::Ready { backbone, load_ms };
                    self.adapters_dir = adapters_dir;
                    self.tasks = tasks;
                    if !rejected.is_empty() {
                        messages.push((
                            MessageLevel::Warning,
                            format!("{} adapter file(s) were skipped", rejected.len()),
                            rejected.clone(),
                        ));
                    }
                    self.rejected = rejected;
                    // Keep the remembered task if it is still there.
                    let keep = self.selected.as_deref().is_some_and(|t| self.tasks.iter().any(|i| i.task == t));
                    if !keep {
                        self.selected = self.tasks.first().map(|t| t.task.clone());
                    }
                    self.requested = None;
                    self.requested_all = None;
                }
                DiagnosisEvent::OpenFailed { message } => {
                    self.state = EngineState::Failed(message.clone());
                    messages.push((MessageLevel::Error, message, Vec::new()));
                }
                DiagnosisEvent::Predicted { key, prediction, heatmap, latency_ms } => {
                    self.latency_ms.insert(prediction.task.clone(), latency_ms);
                    if let Some(heatmap) = heatmap {
                        self.heatmap = Some((key, prediction.task.clone(), heatmap));
                    }
                    self.failure = None;
                    self.shown = Some(ShownPrediction { key, prediction, latency_ms });
                }
                DiagnosisEvent::PredictedAll { key, rows } => {
                    for row in &rows {
                        self.latency_ms.insert(row.prediction.task.clone(), row.latency_ms);
                    }
                    self.all_tasks = Some((key, rows));
                }
                DiagnosisEvent::AdapterLoaded { info, path } => {
                    let text = format!(
                        "Loaded adapter '{}' from {} for this session",
                        info.task,
                        super::loader::short_name(&path)
                    );
                    self.selected = Some(info.task.clone());
                    self.task_chosen = true;
                    self.tasks.push(*info);
                    self.import.open = false;
                    self.requested_all = None;
                    messages.push((MessageLevel::Info, text, Vec::new()));
                }
                DiagnosisEvent::ResultsWritten { outputs, purpose } => self.on_results_written(outputs, purpose, ctx),
                DiagnosisEvent::ResultsFailed { message } => {
                    self.results.busy = false;
                    self.results.status = Some((MessageLevel::Error, format!("Results not written: {message}")));
                }
                DiagnosisEvent::Failed { what, message, key } => {
                    if what == "Writing the results" {
                        self.results.busy = false;
                        self.results.status = Some((MessageLevel::Error, format!("Results not written: {message}")));
                    }
                    if let Some(key) = key {
                        self.failure = Some((key, message.clone()));
                    }
                    messages.push((MessageLevel::Error, format!("{what} failed: {message}"), Vec::new()));
                }
            }
        }
        if died {
            self.results.busy = false;
            self.worker = None;
            self.requested = None;
            self.requested_all = None;
            let message = "The diagnosis worker stopped; use Restart in the diagnosis panel".to_string();
            self.state = EngineState::Failed(message.clone());
            messages.push((MessageLevel::Error, message, Vec::new()));
        }
        messages
    }

    /// Asks the worker for what the current view needs and has not been asked for yet.
    pub fn request_for(&mut self, viewer: &Viewer) {
        if !self.visible || !matches!(self.state, EngineState::Ready { .. }) {
            return;
        }
        let Some((key, image, frame)) = self.current_image(viewer) else {
            return;
        };
        if !self.task_chosen {
            let modality = image.meta.modality.trim();
            let fits = |t: &TaskInfo| !modality.is_empty() && t.modality.trim().eq_ignore_ascii_case(modality);
            let selected_fits = self.selected.as_deref().and_then(|s| self.task(s)).is_some_and(fits);
            if !selected_fits {
                if let Some(first) = self.tasks.iter().find(|t| fits(t)) {
                    self.selected = Some(first.task.clone());
                }
            }
        }
        let Some(worker) = self.worker.as_mut() else { return };
        if let Some(task) = self.selected.clone() {
            let wanted = (key, task.clone(), self.heatmap_enabled);
            // A heatmap request also answers the plain one.
            let answered = self
                .requested
                .as_ref()
                .is_some_and(|(k, t, h)| *k == key && *t == task && (*h || !self.heatmap_enabled));
            if !answered {
                worker.send(DiagnosisRequest::Predict {
                    key,
                    image: image.clone(),
                    frame,
                    task,
                    heatmap: self.heatmap_enabled,
                });
                self.requested = Some(wanted);
            }
        }
        if self.show_all_tasks && !self.tasks.is_empty() && self.requested_all != Some(key) {
            worker.send(DiagnosisRequest::PredictAll { key, image, frame });
            self.requested_all = Some(key);
        }
    }

    /// The viewer's current slice as the worker takes it.
    fn current_image(&mut self, viewer: &Viewer) -> Option<(ImageKey, Arc<MedicalImage>, usize)> {
        let stack = viewer.stack.as_ref()?;
        let slice = viewer.state.slice;
        let slice_ref = stack.slices.get(slice)?;
        let file = (stack.id, slice_ref.image);
        let cached = self.image.as_ref().filter(|(k, _)| *k == file).map(|(_, i)| i.clone());
        let image = match cached {
            Some(image) => image,
            None => {
                let image = Arc::new(stack.images.get(slice_ref.image)?.clone());
                self.image = Some((file, image.clone()));
                image
            }
        };
        Some((ImageKey { stack_id: stack.id, slice }, image, slice_ref.frame))
    }

    /// The heatmap of the current slice and task, as a texture for the viewer, if enabled.
    pub fn overlay_for(&mut self, ctx: &egui::Context, viewer: &Viewer) -> Option<(egui::TextureId, f32)> {
        if !self.visible || !self.heatmap_enabled {
            return None;
        }
        let stack = viewer.stack.as_ref()?;
        let key = ImageKey { stack_id: stack.id, slice: viewer.state.slice };
        let task = self.selected.clone()?;
        let (hkey, htask, heatmap) = self.heatmap.as_ref()?;
        if *hkey != key || *htask != task {
            return None;
        }
        let id = (key, task);
        if self.heatmap_texture.as_ref().is_none_or(|(k, _)| *k != id) {
            let texture = ctx.load_texture("melo-heatmap", heatmap_image(heatmap), TextureOptions::LINEAR);
            self.heatmap_texture = Some((id, texture));
        }
        self.heatmap_texture.as_ref().map(|(_, texture)| (texture.id(), self.heatmap_opacity))
    }

    /// Carries out a panel command; returns a message for the app if there is one.
    pub fn apply(&mut self, command: DiagnosisCommand, ctx: &egui::Context) -> Option<(MessageLevel, String)> {
        match command {
            DiagnosisCommand::SelectTask(task) => {
                if self.tasks.iter().any(|t| t.task == task) {
                    self.selected = Some(task);
                    self.task_chosen = true;
                }
            }
            DiagnosisCommand::StepTask(step) => {
                if !self.tasks.is_empty() {
                    self.task_chosen = true;
                    let n = self.tasks.len() as i64;
                    let at =
                        self.selected.as_deref().and_then(|s| self.tasks.iter().position(|t| t.task == s)).unwrap_or(0)
                            as i64;
                    let next = (at + i64::from(step)).rem_euclid(n) as usize;
                    self.selected = Some(self.tasks[next].task.clone());
                }
            }
            DiagnosisCommand::SetHeatmap(on) => self.heatmap_enabled = on,
            DiagnosisCommand::SetHeatmapOpacity(opacity) => {
                if opacity.is_finite() {
                    self.heatmap_opacity = opacity.clamp(0.0, 1.0);
                }
            }
            DiagnosisCommand::SetShowAllTasks(on) => self.show_all_tasks = on,
            DiagnosisCommand::TogglePanel => self.visible = !self.visible,
            DiagnosisCommand::OpenImportDialog => self.import.open = true,
            DiagnosisCommand::CloseImportDialog => self.import.open = false,
            DiagnosisCommand::AdapterPicked(path) => {
                self.import.layout = guess_layout(&path);
                self.adapter_folder = path.parent().map(Path::to_path_buf);
                self.import.path = path.display().to_string();
            }
            DiagnosisCommand::LoadAdapter { path, layout, fields } => match self.worker.as_mut() {
                Some(worker) if matches!(self.state, EngineState::Ready { .. }) => {
                    worker.send(DiagnosisRequest::LoadAdapter { path, layout, fields });
                }
                _ => return Some((MessageLevel::Error, "The model is not loaded: cannot add an adapter".into())),
            },
            DiagnosisCommand::Restart => {
                self.worker = None;
                if self.backbone_dir.is_some() {
                    self.state = EngineState::Loading;
                }
                self.requested = None;
                self.requested_all = None;
                self.shown = None;
                self.all_tasks = None;
                self.heatmap = None;
                if let Some(message) = self.start(ctx) {
                    return Some((MessageLevel::Error, message));
                }
            }
            DiagnosisCommand::SetSendKind { kind: ResultKind::Sr, on } => self.results.send_sr = on,
            DiagnosisCommand::SetSendKind { kind: ResultKind::Sc, on } => self.results.send_sc = on,
            // Carried out by the app, which holds the viewer, the nodes and the file dialogs
            // (`save_result`, `send_results`).
            DiagnosisCommand::BrowseAdapter
            | DiagnosisCommand::SaveResult(_)
            | DiagnosisCommand::SaveResultTo { .. }
            | DiagnosisCommand::SendResults { .. } => {}
            DiagnosisCommand::CrashWorker => {
                if let Some(worker) = self.worker.as_mut() {
                    worker.send(DiagnosisRequest::Panic);
                }
            }
        }
        None
    }

    /// Asks the worker to write result objects of the prediction shown for the current image
    /// (the same task, frame and model: what the user sees is what is written).
    fn write_results(
        &mut self,
        viewer: &Viewer,
        outputs: Vec<(ResultKind, PathBuf)>,
        purpose: ResultPurpose,
    ) -> Result<(), String> {
        if self.results.busy {
            return Err("a save or send is under way: wait for it".into());
        }
        if !matches!(self.state, EngineState::Ready { .. }) || self.worker.is_none() {
            return Err("the model is not loaded".into());
        }
        let (key, image, frame) = self.current_image(viewer).ok_or("open an image first")?;
        let task = self.selected.clone().ok_or("choose a task first")?;
        if !self.shown.as_ref().is_some_and(|s| s.key == key && s.prediction.task == task) {
            return Err("wait for the prediction of this image".into());
        }
        let Some(worker) = self.worker.as_mut() else { return Err("the model is not loaded".into()) };
        let labels = kinds_text(outputs.iter().map(|(k, _)| *k));
        worker.send(DiagnosisRequest::WriteResults { image, frame, task, outputs, purpose });
        self.results.busy = true;
        self.results.status = Some((MessageLevel::Info, format!("Writing the {labels}…")));
        Ok(())
    }

    /// Saves one result object of the shown prediction to `path` (atomically).
    pub fn save_result(&mut self, viewer: &Viewer, kind: ResultKind, path: PathBuf) {
        if let Err(e) = self.write_results(viewer, vec![(kind, path)], ResultPurpose::Save) {
            self.results.status = Some((MessageLevel::Error, format!("{} not saved: {e}", kind.label())));
        }
    }

    /// Sends the chosen result objects of the shown prediction to `node`: written into a
    /// temporary folder by the worker, then sent on a thread of their own (C-STORE or STOW-RS).
    pub fn send_results(&mut self, viewer: &Viewer, node: &Node, options: crate::net::ScuOptions) {
        let fail = |e: String| Some((MessageLevel::Error, format!("Not sent to {}: {e}", node.name)));
        let kinds: Vec<ResultKind> = [(ResultKind::Sr, self.results.send_sr), (ResultKind::Sc, self.results.send_sc)]
            .into_iter()
            .filter_map(|(k, on)| on.then_some(k))
            .collect();
        if kinds.is_empty() {
            self.results.status = fail("choose SR and/or SC to send".into());
            return;
        }
        let destination = match node.destination() {
            Ok(d) => d,
            Err(e) => return self.results.status = fail(e),
        };
        let folder = match tempfile::Builder::new().prefix("melo-send-").tempdir() {
            Ok(f) => Arc::new(f),
            Err(e) => return self.results.status = fail(format!("cannot make a temporary folder: {e}")),
        };
        let task = self.selected.clone().unwrap_or_default();
        let outputs = kinds.iter().map(|k| (*k, folder.path().join(k.file_name(&task)))).collect();
        let purpose = ResultPurpose::Send { node: destination, options, folder };
        if let Err(e) = self.write_results(viewer, outputs, purpose) {
            self.results.status = fail(e);
        }
    }

    fn on_results_written(&mut self, outputs: Vec<(ResultKind, PathBuf)>, purpose: ResultPurpose, ctx: &egui::Context) {
        let labels = kinds_text(outputs.iter().map(|(k, _)| *k));
        match purpose {
            ResultPurpose::Save => {
                self.results.busy = false;
                let paths: Vec<String> = outputs.iter().map(|(_, p)| p.display().to_string()).collect();
                self.results.status = Some((MessageLevel::Info, format!("{labels} saved to {}", paths.join(", "))));
            }
            ResultPurpose::Send { node, options, folder } => {
                self.results.status = Some((MessageLevel::Info, format!("Sending the {labels} to {node}…")));
                let work = move |send: &dyn Fn(Result<String, String>)| {
                    let files: Vec<PathBuf> = outputs.into_iter().map(|(_, p)| p).collect();
                    let outcome = crate::report::send::send(&node, &options, &files)
                        .map(|sent| format!("Sent the {labels}: {sent}"))
                        .map_err(|e| format!("Send failed: {}", super::loader::one_line(&e.to_string())));
                    // The temporary copies go once the node has them (or refused them).
                    drop(folder);
                    send(outcome);
                };
                let on_panic = |message: String, send: &dyn Fn(Result<String, String>)| {
                    send(Err(format!("Send failed: internal error: {message}")))
                };
                if let Err(e) =
                    super::worker::spawn_reporting("melo-send-results", ctx, self.sent.0.clone(), on_panic, work)
                {
                    self.results.busy = false;
                    self.results.status =
                        Some((MessageLevel::Error, format!("Send failed: cannot start a thread: {e}")));
                }
            }
        }
    }

    /// Save and send buttons for the prediction on screen, and the line of the last outcome.
    fn results_ui(&self, ui: &mut egui::Ui, nodes: &[Node], hide: bool, commands: &mut Vec<Command>) {
        let send = |commands: &mut Vec<Command>, c: DiagnosisCommand| commands.push(Command::Diagnosis(c));
        ui.strong("Results to the PACS");
        ui.add_enabled_ui(!self.results.busy, |ui| {
            ui.horizontal_wrapped(|ui| {
                if ui.button("Save SR…").on_hover_text("TID 1500 Comprehensive SR of this prediction").clicked() {
                    send(commands, DiagnosisCommand::SaveResult(ResultKind::Sr));
                }
                if ui
                    .button("Save Secondary Capture…")
                    .on_hover_text("The image with the heatmap and the result burned in")
                    .clicked()
                {
                    send(commands, DiagnosisCommand::SaveResult(ResultKind::Sc));
                }
            });
            ui.horizontal_wrapped(|ui| {
                for (kind, on, text) in
                    [(ResultKind::Sr, self.results.send_sr, "SR"), (ResultKind::Sc, self.results.send_sc, "SC")]
                {
                    let mut checked = on;
                    if ui.checkbox(&mut checked, text).changed() {
                        send(commands, DiagnosisCommand::SetSendKind { kind, on: checked });
                    }
                }
                ui.menu_button("Send SR / SC to", |ui| {
                    if nodes.is_empty() {
                        ui.label("No node: add your PACS in the Studies tab");
                    }
                    for (i, node) in nodes.iter().enumerate() {
                        let service = match node.address {
                            NodeAddress::Dimse { .. } => "C-STORE",
                            NodeAddress::DicomWeb { .. } => "STOW-RS",
                        };
                        if ui.button(format!("{} ({service})", node.name)).clicked() {
                            send(commands, DiagnosisCommand::SendResults { node: i });
                            ui.close();
                        }
                    }
                });
                if self.results.busy {
                    ui.spinner();
                }
            });
        });
        if let Some((level, text)) = &self.results.status {
            let color = match level {
                MessageLevel::Error => Color32::from_rgb(235, 90, 80),
                MessageLevel::Warning => Color32::from_rgb(230, 180, 60),
                MessageLevel::Info => Color32::from_rgb(140, 200, 140),
            };
            let text = if hide { crate::error::hide_folders(text) } else { text.clone() };
            ui.add(egui::Label::new(RichText::new(super::drawable(ui.ctx(), &text)).color(color)).wrap());
        }
        ui.label(RichText::new(crate::report::RESEARCH_USE_ONLY).small().weak());
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, viewer: &Viewer, nodes: &[Node], hide: bool, commands: &mut Vec<Command>) {
        let send = |commands: &mut Vec<Command>, c: DiagnosisCommand| commands.push(Command::Diagnosis(c));
        ui.heading("Diagnosis");
        match &self.state {
            EngineState::NoBackbone => {
                ui.label(
                    RichText::new("No backbone found: put DINOv2 ViT-S/14 in assets/backbone or set MELO_BACKBONE.")
                        .color(Color32::from_rgb(230, 180, 60)),
                );
                return;
            }
            EngineState::Loading => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label("Loading the backbone…");
                });
                return;
            }
            EngineState::Failed(message) => {
                ui.label(RichText::new(message).color(Color32::from_rgb(235, 90, 80)));
                if ui.button("Restart").clicked() {
                    send(commands, DiagnosisCommand::Restart);
                }
                return;
            }
            EngineState::Ready { backbone, load_ms } => {
                ui.label(RichText::new(format!("Backbone {backbone} (loaded in {load_ms:.0} ms)")).small());
            }
        }

        ui.horizontal(|ui| {
            if ui.button("Load adapter…").on_hover_text("Ctrl+L").clicked() {
                send(commands, DiagnosisCommand::OpenImportDialog);
            }
            if self.is_busy() {
                ui.spinner();
            }
        });
        if self.tasks.is_empty() {
            let folder =
                self.adapters_dir.as_ref().map_or_else(|| "adapters/".to_string(), |d| d.display().to_string());
            ui.label(
                RichText::new(format!(
                    "No adapters in {folder}. Train one (melo train …), import one \
                     (melo adapters import-melo FILE --task NAME --alpha 4, or import-peft FOLDER --task NAME), \
                     or use Load adapter… for this session."
                ))
                .color(Color32::from_rgb(230, 180, 60)),
            );
            return;
        }

        let selected = self.selected.clone().unwrap_or_default();
        egui::ComboBox::from_label("Task").selected_text(&selected).width(200.0).show_ui(ui, |ui| {
            for info in &self.tasks {
                let text = format!("{} · {} · {}", info.task, modality_or_any(&info.modality), info.labels.join("/"));
                if ui.selectable_label(info.task == selected, text).clicked() {
                    send(commands, DiagnosisCommand::SelectTask(info.task.clone()));
                }
            }
        });
        let Some(info) = self.task(&selected).cloned() else { return };
        if !info.description.is_empty() {
            ui.label(RichText::new(&info.description).small());
        }
        match self.latency_ms.get(&info.task) {
            Some(ms) => ui.label(format!("Latency {ms:.0} ms (last prediction, this machine)")),
            None => ui.label("Latency: measuring…"),
        };
        ui.label(format!("Intended modality: {}", modality_or_any(&info.modality)));
        // The headline test figures (per-class entries have a dot in their name); everything
        // the trainer recorded is one click away.
        let headline: Vec<String> = info
            .metrics
            .iter()
            .filter(|(k, _)| k.starts_with("test_") && !k.contains('.'))
            .map(|(k, v)| format!("{} {}", k.trim_start_matches("test_").replace('_', " "), metric_text(*v)))
            .collect();
        if !headline.is_empty() {
            ui.label(format!("Recorded test metrics: {}", headline.join(", ")));
        } else if info.metrics.is_empty() {
            ui.label(RichText::new("No test metrics recorded in this adapter").weak());
        }
        if !info.metrics.is_empty() {
            egui::CollapsingHeader::new(format!("All recorded metrics ({})", info.metrics.len()))
                .id_salt(("adapter_metrics", &info.task))
                .show(ui, |ui| {
                    egui::Grid::new(("adapter_metrics_grid", &info.task)).striped(true).show(ui, |ui| {
                        for (k, v) in &info.metrics {
                            ui.label(RichText::new(k).small());
                            ui.label(RichText::new(metric_text(*v)).small());
                            ui.end_row();
                        }
                    });
                });
        }
        if let Some(text) = trained_on_text(&info.training_dataset) {
            ui.label(RichText::new(text).small());
        }

        let current = viewer.current().map(|(image, _)| image.meta.modality.clone());
        let key = viewer.stack.as_ref().map(|s| ImageKey { stack_id: s.id, slice: viewer.state.slice });
        if let Some(warning) = current.as_deref().and_then(|m| modality_warning(m, &info.modality)) {
            ui.label(RichText::new(warning).color(Color32::from_rgb(230, 180, 60)));
        }
        ui.separator();

        match key {
            None if self.showing_documents => {
                ui.label("A structured report has no pixels to classify: open an image.");
            }
            None => {
                ui.label("Open an image to classify it.");
            }
            Some(key) => {
                let failed = self.failure.as_ref().filter(|(k, _)| *k == key);
                let shown = self.shown.as_ref().filter(|s| s.key == key && s.prediction.task == info.task);
                match (shown, failed) {
                    (Some(shown), _) => {
                        prediction_ui(ui, &shown.prediction, &info);
                        ui.separator();
                        self.results_ui(ui, nodes, hide, commands);
                    }
                    (None, Some((_, message))) => {
                        ui.label(
                            RichText::new(format!("Cannot classify this image: {message}"))
                                .color(Color32::from_rgb(235, 90, 80)),
                        );
                    }
                    (None, None) => {
                        ui.horizontal(|ui| {
                            ui.spinner();
                            ui.label("Classifying…");
                        });
                    }
                }
            }
        }

        ui.separator();
        let mut heatmap = self.heatmap_enabled;
        if ui
            .checkbox(&mut heatmap, "Heatmap overlay")
            .on_hover_text("Attention rollout of the selected task on the image (H)")
            .changed()
        {
            send(commands, DiagnosisCommand::SetHeatmap(heatmap));
        }
        ui.add_enabled_ui(self.heatmap_enabled, |ui| {
            let mut opacity = self.heatmap_opacity;
            if ui.add(egui::Slider::new(&mut opacity, 0.0..=1.0).text("Opacity")).changed() {
                send(commands, DiagnosisCommand::SetHeatmapOpacity(opacity));
            }
        });

        ui.separator();
        let mut all = self.show_all_tasks;
        if ui.checkbox(&mut all, "All tasks").on_hover_text("Run every adapter on this image (A)").changed() {
            send(commands, DiagnosisCommand::SetShowAllTasks(all));
        }
        if self.show_all_tasks {
            match (&self.all_tasks, key) {
                (Some((k, rows)), Some(key)) if *k == key => all_tasks_ui(ui, rows, &self.tasks),
                (_, Some(_)) => {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label("Running every task…");
                    });
                }
                _ => {}
            }
        }

        // The facts label and its plots come last: the everyday controls (heatmap, all tasks)
        // stay at the top of the panel, where the hand and the shortcuts' users expect them.
        ui.separator();
        let ood_now = key
            .and_then(|key| self.shown.as_ref().filter(|s| s.key == key && s.prediction.task == info.task))
            .and_then(|s| s.prediction.ood.clone());
        facts_ui(ui, &info, ood_now.as_ref());
    }

    /// The "Load adapter…" window.
    pub fn import_ui(&mut self, ctx: &egui::Context, commands: &mut Vec<Command>) {
        if !self.import.open {
            return;
        }
        let mut open = true;
        egui::Window::new("Load adapter").open(&mut open).collapsible(false).resizable(false).show(ctx, |ui| {
            egui::Grid::new("import_grid").num_columns(2).show(ui, |ui| {
                ui.label("Layout");
                egui::ComboBox::from_id_salt("import_layout").selected_text(self.import.layout.label()).show_ui(
                    ui,
                    |ui| {
                        for layout in AdapterLayout::ALL {
                            ui.selectable_value(&mut self.import.layout, layout, layout.label());
                        }
                    },
                );
                ui.end_row();
                ui.label("File");
                ui.horizontal(|ui| {
                    ui.add(egui::TextEdit::singleline(&mut self.import.path).desired_width(280.0));
                    if ui.button("Browse…").clicked() {
                        commands.push(Command::Diagnosis(DiagnosisCommand::BrowseAdapter));
                    }
                });
                ui.end_row();
                if self.import.layout != AdapterLayout::Workstation {
                    ui.label("Task name");
                    ui.text_edit_singleline(&mut self.import.fields.task);
                    ui.end_row();
                    ui.label("Labels (comma-separated)");
                    ui.text_edit_singleline(&mut self.import.fields.labels);
                    ui.end_row();
                    ui.label("Modality");
                    ui.text_edit_singleline(&mut self.import.fields.modality);
                    ui.end_row();
                    ui.label("LoRA alpha");
                    ui.text_edit_singleline(&mut self.import.alpha_text);
                    ui.end_row();
                }
            });
            ui.horizontal(|ui| {
                let path = self.import.path.trim();
                if ui.add_enabled(!path.is_empty(), egui::Button::new("Load")).clicked() {
                    let mut fields = self.import.fields.clone();
                    fields.alpha = self.import.alpha_text.trim().parse::<f64>().ok();
                    commands.push(Command::Diagnosis(DiagnosisCommand::LoadAdapter {
                        path: PathBuf::from(path),
                        layout: self.import.layout,
                        fields,
                    }));
                }
                if ui.button("Cancel").clicked() {
                    commands.push(Command::Diagnosis(DiagnosisCommand::CloseImportDialog));
                }
            });
            ui.label(
                RichText::new("Loaded for this session; `melo adapters import-…` adds it to the folder for good.")
                    .small()
                    .weak(),
            );
        });
        if !open {
            self.import.open = false;
        }
    }
}

/// "SR", "Secondary Capture" or "SR and Secondary Capture".
fn kinds_text(kinds: impl Iterator<Item = ResultKind>) -> String {
    kinds.map(ResultKind::label).collect::<Vec<_>>().join(" and ")
}

/// MeLo files have `w_a_*` tensors and no metadata; PEFT comes as a folder with its config.
fn guess_layout(path: &Path) -> AdapterLayout {
    if path.is_dir() || path.with_file_name("adapter_config.json").is_file() {
        AdapterLayout::Peft
    } else {
        AdapterLayout::Workstation
    }
}

/// Counts as integers, rates with three decimals.
fn metric_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn modality_or_any(modality: &str) -> &str {
    if modality.is_empty() {
        "any modality"
    } else {
        modality
    }
}

/// A warning when the image's modality is not the one the adapter was trained for.
pub fn modality_warning(image_modality: &str, adapter_modality: &str) -> Option<String> {
    let wanted = adapter_modality.trim();
    if wanted.is_empty() {
        return None;
    }
    let have = image_modality.trim();
    if have.is_empty() {
        return Some(format!("This image does not say its modality; the adapter is meant for {wanted}"));
    }
    (!have.eq_ignore_ascii_case(wanted))
        .then(|| format!("Modality mismatch: this image is {have}, the adapter is meant for {wanted}"))
}

/// The out-of-distribution banner, or the quiet in-distribution line, then the probabilities
/// (greyed when the image is out of distribution) marked *uncalibrated* when they are the raw
/// softmax.
fn prediction_ui(ui: &mut egui::Ui, prediction: &Prediction, info: &TaskInfo) {
    let outside = prediction.ood.as_ref().filter(|o| !o.in_distribution);
    if let Some(ood) = outside {
        egui::Frame::new().fill(Color32::from_rgb(110, 60, 20)).inner_margin(6.0).corner_radius(4.0).show(ui, |ui| {
            ui.label(RichText::new(ood_banner_text(ood, &info.training_dataset)).color(Color32::WHITE).strong());
        });
    } else if let Some(ood) = prediction.ood.as_ref().filter(|o| o.is_unusual()) {
        ui.label(RichText::new(unusual_text(ood)).color(Color32::from_rgb(230, 170, 60)));
    } else if let Some(ood) = &prediction.ood {
        ui.label(
            RichText::new(format!(
                "Looks like the training images ({} score {:.2} <= threshold {:.2})",
                ood.ood_detector, ood.ood_score, ood.ood_threshold
            ))
            .small()
            .weak(),
        );
    }
    probabilities_ui(ui, prediction, outside.is_some());
}

/// The caution shown above the probabilities of an in-distribution image that is less typical
/// than 95 % of the validation images.
pub fn unusual_text(ood: &OodCheck) -> String {
    format!(
        "Unusual image for this model: its {} score {:.2} is higher than {:.1} % of the validation images \
         (threshold {:.2}). Read the probabilities with care.",
        ood.ood_detector,
        ood.ood_score,
        100.0 * ood.ood_validation_rank.unwrap_or(1.0),
        ood.ood_threshold
    )
}

/// The banner shown above the probabilities of an out-of-distribution image.
pub fn ood_banner_text(ood: &OodCheck, dataset: &str) -> String {
    let trained_on = trained_on_text(dataset).map(|t| format!(" ({})", t.to_lowercase())).unwrap_or_default();
    let rank = match ood.ood_validation_rank {
        // At or beyond the top of the grid: the image is further out than every validation image.
        Some(r) if r >= 1.0 => ", further out than every validation image".to_string(),
        Some(r) => format!(", higher than {:.1} % of the validation images", 100.0 * r),
        None => String::new(),
    };
    format!(
        "This image does not look like the images this model was trained on{trained_on}: {} score {:.2} > \
         threshold {:.2}{rank}. The probabilities below are not reliable for it.",
        ood.ood_detector, ood.ood_score, ood.ood_threshold
    )
}

/// The caption under greyed probabilities.
pub const GREYED_CAPTION: &str = "Probabilities greyed: the image is out of distribution";

/// The bar chart and, under it, the same numbers as text (readable, and findable by tests);
/// grey when `greyed`.
fn probabilities_ui(ui: &mut egui::Ui, prediction: &Prediction, greyed: bool) {
    let (top, p) = prediction.top();
    let grey = Color32::from_gray(130);
    ui.horizontal(|ui| {
        let headline = RichText::new(format!("{top}: {:.1} %", p * 100.0)).strong().size(16.0);
        ui.label(if greyed { headline.color(grey) } else { headline });
        if !prediction.calibrated {
            ui.label(RichText::new("uncalibrated").italics().weak()).on_hover_text(
                "The raw softmax of the adapter: no temperature was fitted on validation data, so \
                 a probability of 90 % need not be right 90 % of the time.",
            );
        }
    });
    let bars: Vec<Bar> = prediction
        .probabilities
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            Bar::new(i as f64, f64::from(p)).name(prediction.labels.get(i).cloned().unwrap_or_default()).width(0.7)
        })
        .collect();
    let labels = prediction.labels.clone();
    Plot::new("diagnosis_probabilities")
        .height(150.0)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .allow_boxed_zoom(false)
        .allow_double_click_reset(false)
        .show_grid([false, true])
        .include_y(0.0)
        .include_y(1.0)
        .x_axis_formatter(move |mark, _| {
            let i = mark.value.round();
            if (mark.value - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .show(ui, |plot| {
            let colour = if greyed { grey } else { Color32::from_rgb(90, 160, 230) };
            plot.bar_chart(BarChart::new("probability", bars).color(colour));
        });
    egui::Grid::new("diagnosis_probability_rows").num_columns(2).show(ui, |ui| {
        for (label, p) in prediction.labels.iter().zip(&prediction.probabilities) {
            let text = |t: String| if greyed { RichText::new(t).color(grey) } else { RichText::new(t) };
            ui.label(text(label.clone()));
            ui.label(text(format!("{:.1} %", p * 100.0)));
            ui.end_row();
        }
    });
    if greyed {
        ui.label(RichText::new(GREYED_CAPTION).small().color(grey));
    }
    if prediction.multi_label {
        ui.label(RichText::new("Multi-label task: each probability is independent").small().weak());
    }
}

/// The line every facts panel starts with.
pub const RESEARCH_USE_ONLY: &str = "Research use only: not a medical device; not for diagnosis or treatment decisions";

/// The "Model facts" label of the selected adapter (Sendak et al. 2020), then its plots:
/// reliability diagram, OOD score histogram with the current image's score, training curves.
fn facts_ui(ui: &mut egui::Ui, info: &TaskInfo, ood_now: Option<&OodCheck>) {
    egui::CollapsingHeader::new("Model facts").id_salt(("model_facts", &info.task)).default_open(true).show(ui, |ui| {
        let facts = &info.facts;
        if facts.research_use_only {
            ui.label(RichText::new(RESEARCH_USE_ONLY).strong().color(Color32::from_rgb(230, 180, 60)));
        }
        egui::Grid::new(("model_facts_grid", &info.task)).num_columns(2).striped(true).show(ui, |ui| {
            let mut row = |heading: &str, text: String| {
                ui.label(RichText::new(heading).small().strong());
                ui.add(egui::Label::new(RichText::new(text).small()).wrap());
                ui.end_row();
            };
            let intended = facts.intended_use.trim();
            row("Intended use", if intended.is_empty() { "not stated".into() } else { intended.into() });
            row("Modality", modality_or_any(&info.modality).into());
            row("Input", info.input_text.clone());
            let dataset = info.training_dataset.trim();
            let dataset = if dataset.is_empty() || crate::model::lora::looks_like_path(dataset) {
                "not recorded"
            } else {
                dataset
            };
            let licence = if info.data_licence.is_empty() { "licence not stated" } else { &info.data_licence };
            let sizes: Vec<String> = info.split_sizes.iter().map(|(s, n)| format!("{s} {n}")).collect();
            let sizes = if sizes.is_empty() { String::new() } else { format!("; {}", sizes.join(", ")) };
            row("Training data", format!("{dataset} ({licence}){sizes}"));
            if facts.test_intervals.is_empty() {
                row("Test metrics", "no confusion matrix recorded".into());
            }
            for (k, i) in facts.test_intervals.iter().enumerate() {
                row(
                    if k == 0 { "Test (95 % CI)" } else { "" },
                    format!("{} {}, n = {}, {}", i.metric, crate::model::facts::interval_text(i), i.n, i.method),
                );
            }
            row("Calibration", calibration_text(info.calibration.as_ref()));
            if facts.limitations.is_empty() {
                row("Limitations", "none stated".into());
            }
            for (k, l) in facts.limitations.iter().enumerate() {
                row(if k == 0 { "Limitations" } else { "" }, format!("• {l}"));
            }
        });
    });
    if let Some(calibration) = &info.calibration {
        egui::CollapsingHeader::new("Reliability diagram")
            .id_salt(("reliability", &info.task))
            .show(ui, |ui| reliability_plot(ui, &info.task, calibration));
    }
    if let Some(ood) = &info.ood {
        egui::CollapsingHeader::new("Out-of-distribution score")
            .id_salt(("ood_histogram", &info.task))
            .show(ui, |ui| ood_histogram_plot(ui, &info.task, ood, ood_now));
    }
    if !info.history.is_empty() {
        egui::CollapsingHeader::new("Training curves")
            .id_salt(("training_curves", &info.task))
            .show(ui, |ui| training_curves_plot(ui, &info.task, &info.history));
    }
}

/// "uncalibrated" or the fitted temperature with ECE before and after.
pub fn calibration_text(calibration: Option<&CalibrationView>) -> String {
    match calibration {
        None => "uncalibrated: the probabilities are the raw softmax".into(),
        Some(c) => {
            let brier = match (c.brier_before, c.brier_after) {
                (Some(b), Some(a)) => format!(", Brier {b:.3} -> {a:.3}"),
                _ => String::new(),
            };
            let temperature = match c.rejected_temperature {
                Some(t) => {
                    format!("temperature 1 kept: the fitted {t:.2} is not significantly better on the validation split")
                }
                None => format!("temperature {:.2} fitted on validation", c.temperature),
            };
            format!(
                "{temperature}; test ECE {:.3} -> {:.3}{}{brier}",
                c.ece_before,
                c.ece_after,
                c.ece_change_ci.map(|[a, b]| format!(" (change 95 % CI {a:+.3} to {b:+.3})")).unwrap_or_default()
            )
        }
    }
}

fn small_plot(id: impl std::hash::Hash + std::fmt::Debug) -> Plot<'static> {
    Plot::new(id)
        .height(130.0)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .allow_boxed_zoom(false)
        .allow_double_click_reset(false)
        .legend(Legend::default())
}

/// Accuracy per confidence bin against the diagonal of perfect calibration.
fn reliability_plot(ui: &mut egui::Ui, task: &str, c: &CalibrationView) {
    let n = c.bins.len().max(1) as f64;
    let width = 1.0 / n;
    let bars: Vec<Bar> = c
        .bins
        .iter()
        .enumerate()
        .filter(|(_, b)| b.count > 0)
        .map(|(i, b)| {
            Bar::new((i as f64 + 0.5) * width, b.accuracy)
                .width(width * 0.9)
                .name(format!("{} images, confidence {:.2}", b.count, b.mean_confidence))
        })
        .collect();
    small_plot(("reliability_plot", task)).include_x(0.0).include_x(1.0).include_y(0.0).include_y(1.0).show(
        ui,
        |plot| {
            plot.line(
                Line::new("perfect calibration", PlotPoints::from(vec![[0.0, 0.0], [1.0, 1.0]]))
                    .style(LineStyle::dashed_loose())
                    .color(Color32::GRAY),
            );
            plot.bar_chart(BarChart::new("test accuracy per confidence bin", bars));
        },
    );
    ui.label(RichText::new(calibration_text(Some(c))).small());
}

/// In-distribution validation scores as a histogram, the threshold, and this image's score.
fn ood_histogram_plot(ui: &mut egui::Ui, task: &str, ood: &OodView, now: Option<&OodCheck>) {
    let bars: Vec<Bar> = ood
        .validation_histogram
        .iter()
        .map(|&(lo, hi, count)| Bar::new((lo + hi) / 2.0, count as f64).width((hi - lo) * 0.95))
        .collect();
    small_plot(("ood_plot", task)).include_y(0.0).show(ui, |plot| {
        plot.bar_chart(
            BarChart::new("validation images (in distribution)", bars).color(Color32::from_rgb(90, 160, 230)),
        );
        plot.vline(VLine::new("threshold", ood.threshold).style(LineStyle::dashed_loose()).color(Color32::GRAY));
        if let Some(now) = now {
            let colour =
                if now.in_distribution { Color32::from_rgb(80, 200, 120) } else { Color32::from_rgb(235, 90, 80) };
            plot.vline(VLine::new("this image", f64::from(now.ood_score)).color(colour).width(2.0));
        }
    });
    let text = match now {
        Some(now) => format!(
            "{}: this image {:.2}{}, threshold {:.2} ({})",
            ood.detector,
            now.ood_score,
            now.ood_validation_rank
                .map(|r| format!(" (above {:.1} % of validation images)", 100.0 * r))
                .unwrap_or_default(),
            ood.threshold,
            if now.in_distribution { "in distribution" } else { "out of distribution" }
        ),
        None => format!("{}: threshold {:.2}", ood.detector, ood.threshold),
    };
    ui.label(RichText::new(text).small());
}

/// Training loss, validation loss and validation macro AUC per epoch.
fn training_curves_plot(ui: &mut egui::Ui, task: &str, history: &[EpochPoint]) {
    let series = |f: &dyn Fn(&EpochPoint) -> Option<f64>| -> Vec<[f64; 2]> {
        history.iter().filter_map(|e| f(e).map(|v| [e.epoch as f64, v])).collect()
    };
    let train_loss = series(&|e| Some(e.train_loss));
    let val_loss = series(&|e| e.val_loss);
    let val_auc = series(&|e| e.val_auc);
    small_plot(("training_curves_plot", task)).include_y(0.0).include_y(1.0).show(ui, |plot| {
        plot.line(Line::new("train loss", PlotPoints::from(train_loss)));
        if !val_loss.is_empty() {
            plot.line(Line::new("validation loss", PlotPoints::from(val_loss)));
        }
        if !val_auc.is_empty() {
            plot.line(Line::new("validation macro AUC", PlotPoints::from(val_auc)));
        }
    });
    ui.label(RichText::new(format!("{} epochs, from the training report", history.len())).small());
}

fn all_tasks_ui(ui: &mut egui::Ui, rows: &[TaskRow], tasks: &[TaskInfo]) {
    egui::Grid::new("diagnosis_all_tasks").striped(true).num_columns(5).show(ui, |ui| {
        for header in ["Task", "Modality", "Top class", "p", "ms"] {
            ui.strong(header);
        }
        ui.end_row();
        for row in rows {
            let (top, p) = row.prediction.top();
            let modality = tasks.iter().find(|t| t.task == row.prediction.task).map_or("", |t| t.modality.as_str());
            ui.label(&row.prediction.task);
            ui.label(modality_or_any(modality));
            match row.prediction.ood.as_ref().filter(|o| !o.in_distribution) {
                // Out of distribution for this adapter: greyed and said, as in the main view.
                Some(ood) => {
                    let grey = Color32::from_gray(130);
                    ui.label(RichText::new(top).color(grey));
                    ui.label(RichText::new(format!("{:.1} % (out of distribution)", p * 100.0)).color(grey))
                        .on_hover_text(format!(
                            "{} score {:.2} > threshold {:.2}",
                            ood.ood_detector, ood.ood_score, ood.ood_threshold
                        ));
                }
                None => match row.prediction.ood.as_ref().filter(|o| o.is_unusual()) {
                    Some(ood) => {
                        ui.label(top);
                        ui.label(
                            RichText::new(format!("{:.1} % (unusual)", p * 100.0))
                                .color(Color32::from_rgb(230, 170, 60)),
                        )
                        .on_hover_text(unusual_text(ood));
                    }
                    None => {
                        ui.label(top);
                        ui.label(format!("{:.1} %", p * 100.0));
                    }
                },
            }
            ui.label(format!("{:.0}", row.latency_ms));
            ui.end_row();
        }
    });
}

/// The heatmap as a translucent colour image: cold and transparent where the model did not
/// look, warm and opaque where it did.
fn heatmap_image(heatmap: &Heatmap) -> ColorImage {
    let step = heatmap.rows.max(heatmap.cols).div_ceil(HEATMAP_MAX_SIDE).max(1);
    let rows = heatmap.rows.div_ceil(step);
    let cols = heatmap.cols.div_ceil(step);
    let mut pixels = Vec::with_capacity(rows * cols);
    for y in 0..rows {
        for x in 0..cols {
            let v = heatmap.values.get((y * step) * heatmap.cols + x * step).copied().unwrap_or(0.0);
            pixels.push(heat_colour(v));
        }
    }
    ColorImage::new([cols, rows], pixels)
}

/// Blue → cyan → yellow → red, with alpha rising with the value.
fn heat_colour(v: f32) -> Color32 {
    let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
    let [r, g, b] = heat_rgb(v);
    let to_u8 = |c: f32| (c * 255.0).round() as u8;
    // Cold is see-through: only where the model looked is the image tinted.
    Color32::from_rgba_unmultiplied(to_u8(r), to_u8(g), to_u8(b), to_u8(0.9 * v))
}

/// The hue of a value in 0..1, as RGB in 0..1.
fn heat_rgb(v: f32) -> [f32; 3] {
    let ramp = |a: f32, b: f32, t: f32| a + (b - a) * t;
    let (r, g, b) = if v < 1.0 / 3.0 {
        let t = v * 3.0;
        (0.0, ramp(0.0, 1.0, t), 1.0)
    } else if v < 2.0 / 3.0 {
        let t = v * 3.0 - 1.0;
        (ramp(0.0, 1.0, t), 1.0, ramp(1.0, 0.0, t))
    } else {
        let t = v * 3.0 - 2.0;
        (1.0, ramp(1.0, 0.0, t), 0.0)
    };
    [r, g, b]
}

/// "Trained on NAME" for the adapter panel, or nothing when the adapter names no data set or
/// its name is a path (adapters load with such values cleared; this keeps the panel free of
/// paths whatever the source, whether or not patient details are hidden).
fn trained_on_text(dataset: &str) -> Option<String> {
    let name = dataset.trim();
    (!name.is_empty() && !crate::model::lora::looks_like_path(name)).then(|| format!("Trained on {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modality_warning_only_on_a_real_mismatch() {
        assert_eq!(modality_warning("CR", "cr"), None);
        assert_eq!(modality_warning("MR", ""), None);
        assert!(modality_warning("MR", "CR").unwrap().contains("this image is MR"));
        assert!(modality_warning("", "CR").is_some());
    }

    #[test]
    fn heat_colours_run_from_cold_to_warm() {
        assert_eq!(heat_rgb(0.0), [0.0, 0.0, 1.0]);
        assert_eq!(heat_rgb(0.5), [0.5, 1.0, 0.5]);
        assert_eq!(heat_rgb(1.0), [1.0, 0.0, 0.0]);
        assert_eq!(heat_colour(0.0), Color32::TRANSPARENT, "cold is see-through");
        let hot = heat_colour(1.0).to_srgba_unmultiplied();
        assert_eq!(hot, [255, 0, 0, 230]);
        assert_eq!(heat_colour(f32::NAN), heat_colour(0.0));
    }

    #[test]
    fn the_panel_names_the_data_set_never_a_path() {
        assert_eq!(trained_on_text("PneumoniaMNIST (MedMNIST v2)").unwrap(), "Trained on PneumoniaMNIST (MedMNIST v2)");
        assert_eq!(trained_on_text("/data/DOE^JANE/train"), None);
        assert_eq!(trained_on_text(r"C:\Scans\DOE^JANE"), None);
        assert_eq!(trained_on_text("  "), None);
    }
}
