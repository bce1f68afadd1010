//! The workstation window: a thin eframe shell ([`MeloApp`]) over one view per tab.
//!
//! * The app owns all state; each view is a struct with a `ui` method.
//! * Widgets never change app state directly: they push [`Command`]s, handled in one place
//!   ([`MeloApp::handle_command`]) after the frame's UI ran.
//! * Files and folders load on worker threads ([`loader`]) that report over a channel, so the
//!   window keeps repainting; failures become dismissable messages, never a panic.
//! * Patient details are hidden by default: the safe state for a screen others can see.
//!
//! * The diagnosis panel sits beside the viewer; its engine lives on a worker thread
//!   ([`diagnosis_worker`]) that takes requests and sends results over channels.
//! * Keyboard shortcuts come from one table ([`shortcuts`]) that also fills the help overlay.

mod adapter_audit;
mod audit_worker;
mod diagnosis;
mod diagnosis_worker;
mod dialog;
mod document;
mod frame_log;
mod loader;
mod mpr;
mod overlay;
mod privacy;
mod shortcuts;
mod stack;
mod studies;
mod tags;
mod viewer;
mod worker;

use egui::{Color32, RichText, TextureHandle, TextureOptions, Vec2};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::display::WindowPreset;
use crate::series::Series;
use loader::{short_name, Loader, LoaderEvent, THUMBNAIL_SIDE};

pub use crate::report::ResultKind;
pub use audit_worker::{ExposedImage, GALLERY_SIZE};
pub use diagnosis::{
    calibration_text, DiagnosisCommand, DiagnosisPanel, EngineState, ResultsState, ShownPrediction, GREYED_CAPTION,
    RESEARCH_USE_ONLY,
};
pub use diagnosis_worker::{
    attach_histories, AdapterLayout, CalibrationView, EpochPoint, ImageKey, ImportFields, OodView, ReliabilityBin,
    TaskInfo, TaskRow,
};
pub use mpr::Mpr;
pub use privacy::{
    checkpoint_path, cost_text, AuditTarget, PathField, PrivacyCommand, PrivacyPanel, RunState, TargetKind,
};
pub use shortcuts::{SHORTCUTS, VIEWER_KEYS};
pub use stack::{is_displayable, render_color_image, SliceRef, SliceStack};
pub use studies::{
    default_store_folder, EchoState, FolderPurpose, Node, NodeAddress, NodeForm, RetrieveOutcome, SearchFields,
    SeriesRow, SeriesState, StudiesCommand, StudiesEffect, StudiesPanel, StudyRow,
};
pub use tags::{tag_matches, TagBrowser};
pub use viewer::{CineState, Tool, Viewer, ViewerCommand, ViewerState};

/// The window title (also the name eframe stores settings under).
pub const APP_NAME: &str = "MeLo Workstation";

/// The app id: the window class, and the name of the data folder eframe keeps settings in
/// (`~/.local/share/melo-workstation` on Linux), beside which the study store lives.
pub const APP_ID: &str = "melo-workstation";

/// Opens the window on `paths`; with none, on the shipped samples folder.
pub fn run_native(paths: Vec<PathBuf>) -> Result<(), String> {
    let paths = if paths.is_empty() { samples_dir().into_iter().collect() } else { paths };
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title(APP_NAME)
            .with_app_id(APP_ID)
            .with_inner_size([1400.0, 900.0])
            .with_min_inner_size([640.0, 400.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    eframe::run_native(APP_NAME, options, Box::new(move |cc| Ok(Box::new(MeloApp::new(cc, AppOptions::new(paths))))))
        .map_err(|e| e.to_string())
}

/// The shipped samples: next to the sources (a development checkout), then next to the
/// executable (an installed copy), then under the current directory.
pub fn samples_dir() -> Option<PathBuf> {
    let relative = Path::new("assets").join("samples");
    let mut candidates = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join(&relative)];
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        candidates.push(exe_dir.join(&relative));
        candidates.push(exe_dir.join("samples"));
    }
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd.join(&relative));
    }
    candidates.into_iter().find(|dir| dir.is_dir())
}

/// The tabs of the window: the viewer (with the diagnosis panel beside it), the privacy
/// audit, and the studies on PACS nodes and in the local store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tab {
    Viewer,
    Privacy,
    Studies,
}

impl Tab {
    pub const ALL: [Tab; 3] = [Tab::Viewer, Tab::Studies, Tab::Privacy];

    pub fn label(self) -> &'static str {
        match self {
            Tab::Viewer => "Viewer",
            Tab::Privacy => "Privacy audit",
            Tab::Studies => "Studies",
        }
    }
}

/// Where the app finds its inputs. [`AppOptions::new`] uses the shipped folders.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// Files or folders opened on the first frame.
    pub paths: Vec<PathBuf>,
    /// The diagnosis backbone (`config.json` + weights); `None`: no diagnosis.
    pub backbone_dir: Option<PathBuf>,
    /// The folder whose adapters are registered.
    pub adapters_dir: Option<PathBuf>,
}

impl AppOptions {
    pub fn new(paths: Vec<PathBuf>) -> Self {
        Self {
            paths,
            backbone_dir: crate::model::engine::default_backbone_dir(),
            adapters_dir: crate::model::engine::default_adapters_dir(),
        }
    }
}

/// Everything the UI can ask the app to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Open files and/or folders (replaces the series list).
    OpenPaths(Vec<PathBuf>),
    /// Ask for a file (or files) with the system dialog.
    PickFiles,
    PickFolder,
    /// Load and show the series at this index of the series list.
    SelectSeries(usize),
    DismissMessage(u64),
    SetHidePatientDetails(bool),
    SetTab(Tab),
    Viewer(ViewerCommand),
    Diagnosis(DiagnosisCommand),
    Privacy(PrivacyCommand),
    Studies(StudiesCommand),
    ToggleHelp,
    /// Ctrl+Enter: run the audit (privacy tab).
    RunAudit,
    /// Esc: cancel a running audit (privacy tab).
    CancelAudit,
    /// Ctrl+E: export the audit report.
    ExportAudit,
    /// Esc: closes the help overlay (and whatever else is open on top).
    CloseOverlays,
    ToggleHeatmap,
    ToggleAllTasks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageLevel {
    Error,
    Warning,
    Info,
}

/// A message shown at the top of the window until dismissed.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: u64,
    pub level: MessageLevel,
    pub text: String,
    /// Further lines (e.g. every file that was skipped), shown on request.
    pub details: Vec<String>,
}

/// At most this many messages are kept; older ones are dropped.
const MAX_MESSAGES: usize = 6;
/// At most this many detail lines are kept per message.
const MAX_DETAILS: usize = 200;

/// One entry of the series strip.
pub struct SeriesEntry {
    pub series: Series,
    /// The middle slice, small; `None` until rendered (or if it cannot be).
    pub thumbnail: Option<TextureHandle>,
}

/// What is kept between runs: folders, choices and presets — nothing about a patient (no
/// image, file name, tag value or result).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub last_folder: Option<PathBuf>,
    pub preset: Option<WindowPreset>,
    /// The diagnosis task last selected.
    pub task: Option<String>,
    /// Where "Load adapter…" last found a file.
    pub adapter_folder: Option<PathBuf>,
    pub heatmap_opacity: Option<f32>,
    pub diagnosis_panel: Option<bool>,
    /// Privacy audit inputs: folders and files of models and sample sets (not images).
    pub audit_target: Option<PathBuf>,
    pub audit_members: Option<PathBuf>,
    pub audit_nonmembers: Option<PathBuf>,
    pub audit_export_folder: Option<PathBuf>,
    /// PACS nodes of the Studies view (addresses only), our calling AE title, the study store
    /// folder and the receiver's set-up.
    pub studies_nodes: Vec<Node>,
    pub studies_calling_aet: Option<String>,
    pub studies_store: Option<PathBuf>,
    pub studies_scp_aet: Option<String>,
    pub studies_scp_port: Option<String>,
    pub studies_scp_allowed: Option<String>,
}

const SETTINGS_KEY: &str = "melo_settings";

/// The application: state of every view plus the machinery that feeds them.
pub struct MeloApp {
    pub tab: Tab,
    /// Removes patient name, ID, birth date and every PHI tag row from all overlays and panels.
    pub hide_patient_details: bool,
    pub series: Vec<SeriesEntry>,
    /// The series the user picked (it may still be loading).
    pub selected_series: Option<usize>,
    /// The series whose slices the viewer holds.
    pub shown_series: Option<usize>,
    /// The structured reports of the shown series, when it has no image but SRs: the viewer
    /// shows their content instead of pixels.
    pub documents: Option<Vec<crate::report::content::SrDocument>>,
    pub viewer: Viewer,
    pub diagnosis: DiagnosisPanel,
    pub privacy: PrivacyPanel,
    pub studies: StudiesPanel,
    pub show_help: bool,
    pub messages: Vec<Message>,
    /// The last folder opened (or holding the last file), where file dialogs start.
    pub last_folder: Option<PathBuf>,
    /// Progress of the series being decoded: (files done, files in total).
    pub progress: Option<(usize, usize)>,
    /// Commands waiting for the end of the frame (or the first frame, for the initial paths).
    commands: Vec<Command>,
    loader: Loader,
    /// File and folder dialogs (one at a time); their answers come back as commands.
    dialogs: dialog::Dialogs,
    next_message_id: u64,
    frame_log: Option<frame_log::FrameLog>,
    /// Scripted runs (`MELO_GUI_EXPORT`): export the audit here once it and its gallery are done.
    auto_export: Option<PathBuf>,
    /// With a frame log: the slice the last frame drew, and one drawn for the first time whose
    /// time on screen the next frame notes (`tools/series_time.sh` reads them).
    last_drawn: Option<(u64, usize)>,
    drawn_logged: Option<(u64, usize)>,
    /// With a frame log: (an audit report is shown, an audit is running) as last noted.
    logged_audit_state: (bool, bool),
}

impl MeloApp {
    /// The app as eframe starts it: settings restored from storage, `paths` opened.
    pub fn new(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        let mut app = Self::with_options(options);
        if let Some(storage) = cc.storage {
            app.restore(storage);
        }
        app.frame_log = frame_log::FrameLog::from_env();
        // Scripted starts for screenshots and frame-time measurements (tools/*.sh).
        // A comma-separated list, e.g. `heatmap,all-tasks`.
        let start = std::env::var("MELO_GUI_START").unwrap_or_default();
        for step in start.split(',').map(str::trim) {
            match step {
                "privacy-demo" => {
                    app.auto_export = std::env::var_os("MELO_GUI_EXPORT").map(PathBuf::from);
                    app.tab = Tab::Privacy;
                    app.commands.push(Command::Privacy(PrivacyCommand::UseDemo));
                    app.commands.push(Command::Privacy(PrivacyCommand::Run));
                }
                "privacy-demo-sd" => {
                    app.tab = Tab::Privacy;
                    app.commands.push(Command::Privacy(PrivacyCommand::UseDemoSd));
                    app.commands.push(Command::Privacy(PrivacyCommand::Run));
                }
                "privacy" => app.tab = Tab::Privacy,
                // `MELO_GUI_STUDIES_NODE` (AET@HOST:PORT or a DICOMweb URL): that node added,
                // echoed and searched for every study.
                "studies" => {
                    app.tab = Tab::Studies;
                    if let Ok(node) = std::env::var("MELO_GUI_STUDIES_NODE") {
                        app.studies.form = studies::NodeForm::parse("PACS", &node);
                        for command in [StudiesCommand::SubmitNode, StudiesCommand::Echo(0), StudiesCommand::Search] {
                            app.commands.push(Command::Studies(command));
                        }
                    }
                }
                "heatmap" => app.commands.push(Command::Diagnosis(DiagnosisCommand::SetHeatmap(true))),
                "all-tasks" => app.commands.push(Command::Diagnosis(DiagnosisCommand::SetShowAllTasks(true))),
                _ => {}
            }
        }
        app
    }

    /// Applies the settings saved by a previous run (missing or unreadable ones: defaults).
    pub fn restore(&mut self, storage: &dyn eframe::Storage) {
        let settings: Settings = eframe::get_value(storage, SETTINGS_KEY).unwrap_or_default();
        self.apply_settings(settings);
    }

    pub fn apply_settings(&mut self, settings: Settings) {
        self.last_folder = settings.last_folder;
        if let Some(preset) = settings.preset {
            self.viewer.preferred_preset = preset;
        }
        if settings.task.is_some() {
            self.diagnosis.selected = settings.task;
            self.diagnosis.task_chosen = true;
        }
        self.diagnosis.adapter_folder = settings.adapter_folder;
        if let Some(opacity) = settings.heatmap_opacity.filter(|o| o.is_finite()) {
            self.diagnosis.heatmap_opacity = opacity.clamp(0.0, 1.0);
        }
        if let Some(visible) = settings.diagnosis_panel {
            self.diagnosis.visible = visible;
        }
        // A remembered path that has gone away would only fail the next run: keep the demo.
        let existing = |p: Option<PathBuf>| p.filter(|p| p.exists());
        if let Some(p) = existing(settings.audit_target) {
            self.privacy.config.target = p;
        }
        if let Some(p) = existing(settings.audit_members) {
            self.privacy.config.members = p;
        }
        if let Some(p) = existing(settings.audit_nonmembers) {
            self.privacy.config.nonmembers = p;
        }
        self.privacy.export_folder = settings.audit_export_folder;
        self.studies.nodes = settings.studies_nodes;
        if let Some(aet) = settings.studies_calling_aet {
            self.studies.calling_aet = aet;
        }
        self.studies.set_configured_store(settings.studies_store);
        if let Some(aet) = settings.studies_scp_aet {
            self.studies.scp.aet = aet;
        }
        if let Some(port) = settings.studies_scp_port {
            self.studies.scp.port = port;
        }
        if let Some(allowed) = settings.studies_scp_allowed {
            self.studies.scp.allowed = allowed;
        }
    }

    /// What [`eframe::App::save`] stores.
    pub fn settings(&self) -> Settings {
        // Sites name folders after patients (and audit sets after studies): with patient
        // details hidden (the default) every folder is remembered for this run only, never
        // written to disk.
        let kept = |path: Option<&PathBuf>| if self.hide_patient_details { None } else { path.cloned() };
        Settings {
            last_folder: kept(self.last_folder.as_ref()),
            preset: Some(self.viewer.preferred_preset),
            task: self.diagnosis.selected.clone(),
            adapter_folder: kept(self.diagnosis.adapter_folder.as_ref()),
            heatmap_opacity: Some(self.diagnosis.heatmap_opacity),
            diagnosis_panel: Some(self.diagnosis.visible),
            audit_target: kept(Some(&self.privacy.config.target)),
            audit_members: kept(Some(&self.privacy.config.members)),
            audit_nonmembers: kept(Some(&self.privacy.config.nonmembers)),
            audit_export_folder: kept(self.privacy.export_folder.as_ref()),
            // A store folder is chosen once for the site, not named after a patient: kept.
            studies_nodes: self.studies.nodes.clone(),
            studies_calling_aet: Some(self.studies.calling_aet.clone()),
            studies_store: self.studies.store_folder.clone(),
            studies_scp_aet: Some(self.studies.scp.aet.clone()),
            studies_scp_port: Some(self.studies.scp.port.clone()),
            studies_scp_allowed: Some(self.studies.scp.allowed.clone()),
        }
    }

    /// The viewer without eframe (tests, other hosts): default settings, `paths` opened on
    /// the first frame, no diagnosis model (see [`MeloApp::with_options`] for one). Drive it by
    /// calling [`MeloApp::show`] each frame.
    pub fn with_paths(paths: Vec<PathBuf>) -> Self {
        Self::with_options(AppOptions { paths, ..AppOptions::default() })
    }

    /// The app without eframe, with the given folders.
    pub fn with_options(options: AppOptions) -> Self {
        let AppOptions { paths, backbone_dir, adapters_dir } = options;
        let mut app = Self {
            tab: Tab::Viewer,
            hide_patient_details: true,
            series: Vec::new(),
            selected_series: None,
            shown_series: None,
            documents: None,
            viewer: Viewer::default(),
            diagnosis: DiagnosisPanel::new(backbone_dir, adapters_dir),
            privacy: PrivacyPanel::default(),
            studies: StudiesPanel::default(),
            show_help: false,
            messages: Vec::new(),
            last_folder: None,
            progress: None,
            commands: Vec::new(),
            loader: Loader::default(),
            dialogs: dialog::Dialogs::default(),
            next_message_id: 1,
            frame_log: None,
            auto_export: None,
            last_drawn: None,
            drawn_logged: None,
            logged_audit_state: (false, false),
        };
        if !paths.is_empty() {
            app.commands.push(Command::OpenPaths(paths));
        }
        app
    }

    /// Queues a command, as a widget would (handled at the end of the next frame).
    pub fn send(&mut self, command: Command) {
        self.commands.push(command);
    }

    /// True while files are being scanned or decoded (or a command is waiting to run).
    pub fn is_busy(&self) -> bool {
        !self.commands.is_empty() || self.loader.is_busy()
    }

    pub fn push_message(&mut self, level: MessageLevel, text: impl Into<String>, details: Vec<String>) {
        let id = self.next_message_id;
        self.next_message_id += 1;
        let mut details = details;
        details.truncate(MAX_DETAILS);
        self.messages.push(Message { id, level, text: text.into(), details });
        if self.messages.len() > MAX_MESSAGES {
            self.messages.remove(0);
        }
    }

    /// True while the diagnosis worker has something queued or running.
    pub fn is_diagnosis_busy(&self) -> bool {
        self.diagnosis.is_busy()
    }

    /// True while an audit (or its gallery) is running.
    pub fn is_audit_running(&self) -> bool {
        self.privacy.is_running()
    }

    /// One frame of the whole window.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.receive_loader_events(&ctx);
        self.receive_dropped_files(&ctx);
        // The model loads once the first slice is on screen (or nothing is loading): on two
        // cores its loading would otherwise compete with the decoding the user waits for.
        let first_slice_waited_for = self.viewer.stack.is_none() && self.is_busy();
        if !first_slice_waited_for {
            if let Some(message) = self.diagnosis.start(&ctx) {
                self.push_message(MessageLevel::Error, message, Vec::new());
            }
        }
        let answered = self.dialogs.answers();
        self.commands.extend(answered);
        for (level, text, details) in self.diagnosis.receive(&ctx) {
            self.push_message(level, text, details);
        }
        for (level, text) in self.privacy.receive(&ctx) {
            self.push_message(level, text, Vec::new());
        }
        self.studies.receive();
        if let Some(log) = self.frame_log.as_mut() {
            // When the report arrives (what `melo audit` ends with), and when the gallery after it.
            let state = (self.privacy.report.is_some(), self.privacy.is_running());
            if state != self.logged_audit_state {
                log.note(&format!("audit_state unix={:.6} report={} running={}", unix_now(), state.0, state.1));
                self.logged_audit_state = state;
            }
        }
        if let Some(latency) = self.privacy.fresh_cancel_latency.take() {
            if let Some(log) = self.frame_log.as_mut() {
                log.note(&format!("cancel_latency_s={:.3}", latency.as_secs_f64()));
            }
        }
        // Once the results have been on screen for a frame (the PNG is cut from the window).
        if self.privacy.report.is_some() && !self.privacy.is_running() && self.privacy.plot_rect.is_some() {
            if let Some(folder) = self.auto_export.take() {
                self.commands.push(Command::Privacy(PrivacyCommand::ExportTo(folder)));
            }
        }

        let mut commands = std::mem::take(&mut self.commands);
        commands.extend(shortcuts::pressed(&ctx));
        if ctx.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::Escape)) {
            if self.show_help || self.diagnosis.import.open {
                commands.push(Command::CloseOverlays);
            } else {
                commands.push(Command::CancelAudit);
            }
        }
        egui::Panel::top("app_top_bar").show(ui, |ui| self.top_bar_ui(ui, &mut commands));
        if !self.messages.is_empty() {
            egui::Panel::top("app_messages").show(ui, |ui| self.messages_ui(ui, &mut commands));
        }
        if !self.series.is_empty() && self.tab == Tab::Viewer {
            egui::Panel::left("app_series_strip")
                .default_size(230.0)
                .show(ui, |ui| self.series_strip_ui(ui, &mut commands));
        }
        if self.tab == Tab::Viewer && self.diagnosis.visible {
            egui::Panel::right("app_diagnosis").default_size(340.0).show(ui, |ui| {
                egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| {
                    let hide = self.hide_patient_details;
                    self.diagnosis.showing_documents = self.documents.is_some();
                    self.diagnosis.ui(ui, &self.viewer, &self.studies.nodes, hide, &mut commands)
                });
            });
        }
        self.viewer.overlay = self.diagnosis.overlay_for(&ctx, &self.viewer);
        egui::CentralPanel::no_frame().show(ui, |ui| match self.tab {
            Tab::Viewer => match &self.documents {
                Some(documents) => document::ui(ui, documents, self.hide_patient_details),
                None => self.viewer.ui(ui, self.hide_patient_details, &mut commands),
            },
            Tab::Privacy => self.privacy.ui(ui, &mut commands),
            Tab::Studies => self.studies.ui(ui, self.hide_patient_details, &mut commands),
        });
        if self.privacy.is_running() || self.privacy.adapter_audit.is_running() {
            // Progress arrives from the worker (which wakes the UI); between reports only the
            // elapsed time moves, shown in whole seconds. Nothing on the tab animates: a
            // spinner or an animated bar would repaint every frame and take a core from the
            // audit.
            ctx.request_repaint_after(std::time::Duration::from_secs(1));
        }
        self.diagnosis.import_ui(&ctx, &mut commands);
        if self.show_help {
            shortcuts::help_ui(&ctx, &mut self.show_help, &[]);
        }
        files_hovered_ui(&ctx);

        if !commands.is_empty() {
            for command in commands {
                self.handle_command(command, &ctx);
            }
            // Show the effect of the commands without waiting for the next input event.
            ctx.request_repaint();
        }
        // After the commands: a new slice, task or switch is asked for in this same frame.
        self.diagnosis.request_for(&self.viewer);
    }

    /// The one place commands are carried out.
    pub fn handle_command(&mut self, command: Command, ctx: &egui::Context) {
        match command {
            Command::OpenPaths(paths) => {
                if let Some(log) = self.frame_log.as_mut() {
                    log.note(&format!("open unix={:.6}", unix_now()));
                }
                if !paths.is_empty() {
                    self.loader.open(paths, ctx);
                }
            }
            Command::PickFiles => self.pick_with_dialog(false, ctx),
            Command::PickFolder => self.pick_with_dialog(true, ctx),
            Command::SelectSeries(index) => {
                // Clicking the series on screen again would only decode it again; unless its
                // load stopped before the end (another series was picked, and failed).
                let whole_or_coming = self.viewer.stack.as_ref().is_none_or(|stack| {
                    stack.complete || (self.loader.is_current_series(stack.id) && self.loader.is_running(stack.id))
                });
                if self.shown_series == Some(index) && self.selected_series == Some(index) && whole_or_coming {
                    return;
                }
                if let Some(entry) = self.series.get(index) {
                    self.selected_series = Some(index);
                    self.progress = Some((0, entry.series.files.len()));
                    self.loader.load_series(index, entry.series.clone(), ctx);
                }
            }
            Command::DismissMessage(id) => self.messages.retain(|m| m.id != id),
            Command::SetHidePatientDetails(hide) => self.hide_patient_details = hide,
            Command::SetTab(tab) => {
                self.tab = tab;
                if tab == Tab::Studies {
                    self.studies.on_shown();
                }
            }
            Command::Viewer(command) => self.viewer.apply(command),
            Command::Diagnosis(DiagnosisCommand::BrowseAdapter) => {
                let start = self.diagnosis.adapter_folder.clone().or_else(|| self.diagnosis.adapters_dir.clone());
                let dialog = if self.diagnosis.import.layout == diagnosis_worker::AdapterLayout::Peft {
                    dialog::PathDialog::Folder { title: "Load adapter".into() }
                } else {
                    dialog::PathDialog::OpenFile {
                        title: "Load adapter".into(),
                        filter: "safetensors".into(),
                        extension: "safetensors".into(),
                    }
                };
                let then = |paths: Vec<PathBuf>| {
                    Some(Command::Diagnosis(DiagnosisCommand::AdapterPicked(paths.into_iter().next()?)))
                };
                self.ask_path(ctx, dialog, start, then);
            }
            Command::Privacy(PrivacyCommand::Browse(field)) => {
                let dialog = match field {
                    PathField::MembersFile | PathField::NonmembersFile => dialog::PathDialog::OpenFile {
                        title: "Sample set".into(),
                        filter: "npz".into(),
                        extension: "npz".into(),
                    },
                    PathField::Target => dialog::PathDialog::Folder { title: "Model to audit".into() },
                    PathField::MembersFolder | PathField::NonmembersFolder => {
                        dialog::PathDialog::Folder { title: "Sample set".into() }
                    }
                };
                let then = move |paths: Vec<PathBuf>| {
                    Some(Command::Privacy(PrivacyCommand::Picked(field, paths.into_iter().next()?)))
                };
                self.ask_path(ctx, dialog, self.privacy.browse_start(field), then);
            }
            Command::Privacy(PrivacyCommand::PickExportFolder) => {
                let dialog = dialog::PathDialog::Folder { title: "Export the audit report to".into() };
                let then =
                    |paths: Vec<PathBuf>| Some(Command::Privacy(PrivacyCommand::ExportTo(paths.into_iter().next()?)));
                self.ask_path(ctx, dialog, self.privacy.export_folder.clone(), then);
            }
            Command::Diagnosis(DiagnosisCommand::SaveResult(kind)) => {
                let task = self.diagnosis.selected.clone().unwrap_or_default();
                let dialog = dialog::PathDialog::Save {
                    title: format!("Save {}", kind.label()),
                    file_name: kind.file_name(&task),
                    filter: "DICOM".into(),
                    extension: "dcm".into(),
                };
                let then = move |paths: Vec<PathBuf>| {
                    let path = paths.into_iter().next()?;
                    Some(Command::Diagnosis(DiagnosisCommand::SaveResultTo { kind, path }))
                };
                self.ask_path(ctx, dialog, self.last_folder.clone(), then);
            }
            Command::Diagnosis(DiagnosisCommand::SaveResultTo { kind, path }) => {
                self.diagnosis.save_result(&self.viewer, kind, path);
            }
            Command::Diagnosis(DiagnosisCommand::SendResults { node }) => match self.studies.nodes.get(node).cloned() {
                Some(node) => self.diagnosis.send_results(&self.viewer, &node, self.studies.options()),
                None => self.push_message(MessageLevel::Error, "No such node: add it in the Studies tab", Vec::new()),
            },
            Command::Diagnosis(command) => {
                if let Some((level, text)) = self.diagnosis.apply(command, ctx) {
                    self.push_message(level, text, Vec::new());
                }
            }
            Command::Privacy(command) => {
                if command == PrivacyCommand::Run {
                    if let Some(log) = self.frame_log.as_mut() {
                        log.note(&format!("audit_run unix={:.6}", unix_now()));
                    }
                }
                for (level, text) in self.privacy.apply(command, ctx) {
                    self.push_message(level, text, Vec::new());
                }
            }
            Command::Studies(command) => {
                for effect in self.studies.apply(command, ctx) {
                    match effect {
                        StudiesEffect::Message(level, text) => self.push_message(level, text, Vec::new()),
                        StudiesEffect::AskFolder { title, purpose } => {
                            let dialog = dialog::PathDialog::Folder { title };
                            let start = self.studies.store_folder();
                            let then = move |paths: Vec<PathBuf>| {
                                let folder = paths.into_iter().next()?;
                                Some(Command::Studies(purpose.with_folder(folder)))
                            };
                            self.ask_path(ctx, dialog, start, then);
                        }
                        StudiesEffect::Open(paths) => {
                            // The retrieved series goes into the viewer, as an opened folder would.
                            self.tab = Tab::Viewer;
                            self.loader.open(paths, ctx);
                        }
                    }
                }
            }
            Command::RunAudit => {
                if self.tab == Tab::Privacy {
                    self.handle_command(Command::Privacy(PrivacyCommand::Run), ctx);
                }
            }
            Command::CancelAudit => {
                if self.privacy.is_running() {
                    self.handle_command(Command::Privacy(PrivacyCommand::Cancel), ctx);
                }
            }
            Command::ExportAudit => {
                if self.tab == Tab::Privacy && self.privacy.report.is_some() {
                    self.handle_command(Command::Privacy(PrivacyCommand::PickExportFolder), ctx);
                }
            }
            Command::ToggleHelp => self.show_help = !self.show_help,
            Command::CloseOverlays => {
                self.show_help = false;
                self.diagnosis.import.open = false;
            }
            Command::ToggleHeatmap => {
                let on = !self.diagnosis.heatmap_enabled;
                self.diagnosis.apply(DiagnosisCommand::SetHeatmap(on), ctx);
            }
            Command::ToggleAllTasks => {
                let on = !self.diagnosis.show_all_tasks;
                self.diagnosis.apply(DiagnosisCommand::SetShowAllTasks(on), ctx);
            }
        }
    }

    fn receive_loader_events(&mut self, ctx: &egui::Context) {
        for event in self.loader.poll() {
            match event {
                LoaderEvent::Scanned { job, series, folder, problems } if self.loader.is_current(job) => {
                    self.on_scanned(series, folder, problems);
                }
                LoaderEvent::Thumbnail { job, series_index, image } if self.loader.is_current(job) => {
                    if let Some(entry) = self.series.get_mut(series_index) {
                        let name = format!("melo-thumbnail-{job}-{series_index}");
                        entry.thumbnail = Some(ctx.load_texture(name, image, TextureOptions::LINEAR));
                    }
                }
                LoaderEvent::Slices { job, series_index, description, images, done, total }
                    if self.loader.is_current_series(job) =>
                {
                    self.progress = Some((done, total));
                    if images.is_empty() {
                        continue;
                    }
                    if self.viewer.stack.as_ref().is_some_and(|s| s.id == job) {
                        self.viewer.extend_stack(job, images);
                        continue;
                    }
                    // The first decoded slice: shown now, while the rest of the series decodes.
                    let stack = SliceStack::loading(job, description, images);
                    self.shown_series = Some(series_index);
                    if let Some(entry) = self.series.get_mut(series_index) {
                        // Single files are listed before they are read; now their modality is known.
                        if entry.series.modality.is_empty() {
                            if let Some((image, _)) = stack.slice(0) {
                                entry.series.modality = image.meta.modality.clone();
                            }
                        }
                    }
                    self.documents = None;
                    self.viewer.set_stack(stack);
                    if let Some(log) = self.frame_log.as_mut() {
                        log.note(&format!("first_slices_received unix={:.6} job={job}", unix_now()));
                    }
                }
                LoaderEvent::Loaded { job, problems } if self.loader.is_current_series(job) => {
                    self.progress = None;
                    self.viewer.finish_stack(job);
                    if let Some(log) = self.frame_log.as_mut() {
                        log.note(&format!("series_complete unix={:.6} job={job}", unix_now()));
                    }
                    if !problems.is_empty() {
                        let text = format!("{} file(s) of this series could not be read", problems.len());
                        self.push_message(MessageLevel::Warning, text, problems);
                    }
                }
                LoaderEvent::Documents { job, series_index, documents, problems }
                    if self.loader.is_current_series(job) =>
                {
                    self.progress = None;
                    self.shown_series = Some(series_index);
                    self.viewer.clear();
                    self.documents = Some(documents);
                    if !problems.is_empty() {
                        let text = format!("{} file(s) of this series could not be read", problems.len());
                        self.push_message(MessageLevel::Warning, text, problems);
                    }
                }
                LoaderEvent::Failed { job, message } if self.loader.is_current(job) => {
                    self.progress = None;
                    // The strip highlights what the viewer still shows, not the failed pick.
                    self.selected_series = self.shown_series;
                    self.push_message(MessageLevel::Error, message, Vec::new());
                }
                // Finished is bookkeeping done by the loader; the rest are from superseded jobs.
                _ => {}
            }
        }
    }

    fn on_scanned(&mut self, series: Vec<Series>, folder: Option<PathBuf>, problems: Vec<String>) {
        self.viewer.clear();
        self.documents = None;
        self.selected_series = None;
        self.shown_series = None;
        self.progress = None;
        if folder.is_some() {
            self.last_folder = folder;
        }
        if !problems.is_empty() {
            let text = if series.is_empty() {
                "Nothing could be opened".to_string()
            } else {
                format!("{} path(s) or file(s) could not be read and were skipped", problems.len())
            };
            let level = if series.is_empty() { MessageLevel::Error } else { MessageLevel::Warning };
            self.push_message(level, text, problems);
        } else if series.is_empty() {
            self.push_message(MessageLevel::Warning, "No images found", Vec::new());
        }
        self.series = series.into_iter().map(|series| SeriesEntry { series, thumbnail: None }).collect();
        // The open job decodes the first series itself (see `Loader::open`).
        if let Some(first) = self.series.first() {
            self.selected_series = Some(0);
            self.progress = Some((0, first.series.files.len()));
        }
    }

    fn receive_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| i.raw.dropped_files.iter().map(|f| f.path().to_path_buf()).collect());
        if !dropped.is_empty() {
            self.commands.push(Command::OpenPaths(dropped));
        }
    }

    /// "Open file…" / "Open folder…": the system dialog (see [`dialog`]); the answer opens.
    fn pick_with_dialog(&mut self, folder: bool, ctx: &egui::Context) {
        let dialog = if folder {
            dialog::PathDialog::Folder { title: "Open folder".into() }
        } else {
            dialog::PathDialog::OpenFiles { title: "Open file".into() }
        };
        self.ask_path(ctx, dialog, self.last_folder.clone(), |paths| Some(Command::OpenPaths(paths)));
    }

    /// Every file and folder dialog of the window goes through here ([`dialog`]): `then`
    /// turns the answer into the command that uses it.
    fn ask_path(
        &mut self,
        ctx: &egui::Context,
        dialog: dialog::PathDialog,
        start: Option<PathBuf>,
        then: impl FnOnce(Vec<PathBuf>) -> Option<Command> + Send + 'static,
    ) {
        if let Err(e) = self.dialogs.ask(ctx, dialog, start, then) {
            self.push_message(MessageLevel::Error, e, Vec::new());
        }
    }

    fn top_bar_ui(&self, ui: &mut egui::Ui, commands: &mut Vec<Command>) {
        ui.horizontal_wrapped(|ui| {
            ui.strong(APP_NAME);
            ui.separator();
            for tab in Tab::ALL {
                if ui.selectable_label(self.tab == tab, tab.label()).clicked() {
                    commands.push(Command::SetTab(tab));
                }
            }
            ui.separator();
            let dialog_free = !self.dialogs.is_open();
            ui.add_enabled_ui(dialog_free, |ui| {
                if ui.button("Open file…").clicked() {
                    commands.push(Command::PickFiles);
                }
                if ui.button("Open folder…").clicked() {
                    commands.push(Command::PickFolder);
                }
            });
            if ui
                .selectable_label(self.diagnosis.visible, "Diagnosis")
                .on_hover_text("Show the diagnosis panel (D)")
                .clicked()
            {
                commands.push(Command::Diagnosis(DiagnosisCommand::TogglePanel));
            }
            if ui.button("Help").on_hover_text("Keyboard shortcuts (F1)").clicked() {
                commands.push(Command::ToggleHelp);
            }
            ui.separator();
            let mut hide = self.hide_patient_details;
            if ui
                .checkbox(&mut hide, "Hide patient details")
                .on_hover_text("Hide patient name, ID, birth date and all identifying tags")
                .changed()
            {
                commands.push(Command::SetHidePatientDetails(hide));
            }
            if self.loader.is_busy() {
                ui.separator();
                // No spinner: it would repaint every frame, taking CPU from the decoding; each
                // decoded batch wakes the window and moves the count.
                match self.progress {
                    Some((done, total)) if total > 1 => ui.label(format!("Loading {done}/{total}…")),
                    _ => ui.label("Loading…"),
                };
            }
        });
    }

    /// A message as the window shows it: folders cut from its paths while patient details are
    /// hidden (sites name folders after patients; the messages keep the whole text).
    fn shown_message_text(&self, text: &str) -> String {
        if self.hide_patient_details {
            crate::error::hide_folders(text)
        } else {
            text.to_string()
        }
    }

    fn messages_ui(&self, ui: &mut egui::Ui, commands: &mut Vec<Command>) {
        for message in &self.messages {
            ui.horizontal(|ui| {
                let (prefix, color) = match message.level {
                    MessageLevel::Error => ("Error", Color32::from_rgb(235, 90, 80)),
                    MessageLevel::Warning => ("Warning", Color32::from_rgb(230, 180, 60)),
                    MessageLevel::Info => ("Note", Color32::from_rgb(140, 200, 140)),
                };
                if ui.button("Dismiss").clicked() {
                    commands.push(Command::DismissMessage(message.id));
                }
                let text = drawable(ui.ctx(), &self.shown_message_text(&message.text));
                ui.label(RichText::new(format!("{prefix}: {text}")).color(color));
            });
            if !message.details.is_empty() {
                egui::CollapsingHeader::new(format!("Details ({})", message.details.len()))
                    .id_salt(("message_details", message.id))
                    .show(ui, |ui| {
                        egui::ScrollArea::vertical().max_height(120.0).id_salt(("message_scroll", message.id)).show(
                            ui,
                            |ui| {
                                for line in &message.details {
                                    ui.label(drawable(ui.ctx(), &self.shown_message_text(line)));
                                }
                            },
                        );
                    });
            }
        }
    }

    fn series_strip_ui(&self, ui: &mut egui::Ui, commands: &mut Vec<Command>) {
        ui.heading("Series");
        egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| {
            let side = THUMBNAIL_SIDE as f32 * 0.75;
            for (index, entry) in self.series.iter().enumerate() {
                let series = &entry.series;
                let text = series.strip_label(index, self.hide_patient_details);
                let selected = self.selected_series == Some(index);
                let button = match &entry.thumbnail {
                    Some(texture) => {
                        let image = egui::Image::from_texture(egui::load::SizedTexture::from_handle(texture))
                            .fit_to_exact_size(Vec2::splat(side));
                        egui::Button::selectable(selected, (image, text))
                    }
                    None => {
                        let placeholder = egui::Atom::paint(Vec2::splat(side), |ui, args| {
                            ui.painter().rect_filled(args.rect, 4.0, Color32::from_gray(40));
                        });
                        egui::Button::selectable(selected, (placeholder, text))
                    }
                };
                let mut response = ui.add(button);
                // The first file's name, unless patient details are hidden: names can be a
                // patient's name or a SOP Instance UID.
                if !self.hide_patient_details {
                    response =
                        response.on_hover_text(short_name(series.files.first().map_or(Path::new(""), |p| p.as_path())));
                }
                if response.clicked() {
                    commands.push(Command::SelectSeries(index));
                }
            }
        });
    }
}

/// `text` with the characters the proportional font cannot draw (arrows, maths signs in
/// messages from the libraries) spelled in ASCII, so no box ("tofu") appears in their place.
pub fn drawable(ctx: &egui::Context, text: &str) -> String {
    if text.is_ascii() {
        return text.to_string();
    }
    let font = egui::FontId::proportional(14.0);
    ctx.fonts_mut(|fonts| {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if c.is_ascii() || fonts.has_glyph(&font, c) {
                out.push(c);
                continue;
            }
            out.push_str(match c {
                '→' | '⇒' => "->",
                '←' => "<-",
                '↑' => "^",
                '↓' => "v",
                '≥' => ">=",
                '≤' => "<=",
                '≈' => "~",
                '−' | '–' | '—' => "-",
                _ => "?",
            });
        }
        out
    })
}

/// Wall-clock seconds, for frame-log notes that scripts line up with the input they sent.
fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// While files are dragged over the window, say that dropping opens them.
fn files_hovered_ui(ctx: &egui::Context) {
    if ctx.input(|i| i.raw.hovered_files.is_empty()) {
        return;
    }
    let screen = ctx.content_rect();
    let painter = ctx.layer_painter(egui::LayerId::new(egui::Order::Foreground, egui::Id::unique("melo_drop_target")));
    painter.rect_filled(screen, 0.0, Color32::from_black_alpha(180));
    painter.text(
        screen.center(),
        egui::Align2::CENTER_CENTER,
        "Drop to open",
        egui::FontId::proportional(28.0),
        Color32::WHITE,
    );
}

impl eframe::App for MeloApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let start = std::time::Instant::now();
        let start_unix = unix_now();
        if let Some(log) = self.frame_log.as_mut() {
            if let Some((stack, slice)) = self.drawn_logged.take() {
                // The frame that drew the slice has been painted and swapped: this one could
                // only start after. Its UI + tessellation + paint time, from eframe.
                let cpu_ms = frame.info().cpu_usage.map_or(f32::NAN, |s| s * 1e3);
                log.note(&format!(
                    "slice_on_screen unix={start_unix:.6} stack={stack} slice={slice} cpu_ms={cpu_ms:.3}"
                ));
            }
        }
        self.show(ui);
        if let Some(log) = self.frame_log.as_mut() {
            log.record(start, self.privacy.is_running(), self.diagnosis.is_busy());
            let drawn = self.viewer.drawn_slice();
            if let Some((stack, slice)) = drawn.filter(|_| drawn != self.last_drawn) {
                log.note(&format!(
                    "slice_drawn unix={:.6} frame_start_unix={start_unix:.6} stack={stack} slice={slice} count={}",
                    unix_now(),
                    self.viewer.slice_count()
                ));
                self.drawn_logged = drawn;
                // One more frame at once, so the next line says when this one was on screen.
                ui.ctx().request_repaint();
            }
            self.last_drawn = drawn;
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SETTINGS_KEY, &self.settings());
    }

    /// egui's memory can hold text typed into widgets (the tag filter may be a patient's
    /// name), so it is not persisted.
    fn persist_egui_memory(&self) -> bool {
        false
    }
}
