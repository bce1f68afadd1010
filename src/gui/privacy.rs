//! The privacy tab: set up a membership-inference audit of a diffusion model (target folder,
//! members, non-members, attacks and their parameters), run it on a worker ([`AuditRun`]) with
//! progress, ETA and Cancel, and read the results — ROC curves of every attack on one plot
//! (linear or log-log, with the chance diagonal), a table of AUC ± CI and TPR at low FPR, a
//! gallery of the most exposed members beside their reconstructions (and captions, for a
//! Stable Diffusion pipeline) — and export them.
//!
//! Before a run the tab says what the target folder is (pixel-space DDPM, Stable Diffusion
//! pipeline, or why it is refused: read from its JSON files once per path), measures what the
//! audit will cost ([`EstimateRun`]), and keeps a checkpoint of every run in a per-user cache
//! folder, one file per set of parameters ([`checkpoint_path`]), so that a cancelled or crashed
//! audit can be resumed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use egui::{Color32, ColorImage, RichText, TextureHandle, TextureOptions, Vec2};
use egui_plot::{Legend, Line, LineStyle, Plot, PlotPoints};

use sha2::{Digest, Sha256};

use super::audit_worker::{estimate_key, AuditEvent, AuditRun, EstimateRun, ExposedImage};
use super::{Command, MessageLevel};
use crate::audit::gallery::CostEstimate;
use crate::audit::{demo_dir, demo_sd_dir, AttackKind, AuditConfig, Checkpoint, Image2d, Preset, Report};
use crate::diffusion::sd::pipeline::{detect, PipelineKind};

/// Lowest FPR / TPR drawn on log axes (0 has no logarithm).
const LOG_FLOOR: f64 = 1e-3;
/// Images per model call in the window. The library checks Cancel between batches, so a
/// batch bounds how long Cancel takes: 20 demo images are ~0.1 s (release), against ~0.5 s for
/// the command line's 100, for a throughput cost within noise on CPU.
pub const INTERACTIVE_BATCH: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub enum PrivacyCommand {
    SetTarget(PathBuf),
    SetMembers(PathBuf),
    SetNonmembers(PathBuf),
    UseDemo,
    /// The shipped latent demo: a small Stable Diffusion pipeline with captioned sets.
    UseDemoSd,
    ApplyPreset(Preset),
    /// Measure what the audit with the current parameters will cost (on a worker).
    Estimate,
    /// Pick a path with the system dialog for one of the fields.
    Browse(PathField),
    /// The dialog's answer for a field.
    Picked(PathField, PathBuf),
    Run,
    Cancel,
    SetLogScale(bool),
    SetGalleryAttack(String),
    /// Ask for a folder, then write the report there.
    PickExportFolder,
    /// Write report.json, scores.csv and the ROC plot's PNG into this folder.
    ExportTo(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathField {
    Target,
    MembersFile,
    MembersFolder,
    NonmembersFile,
    NonmembersFolder,
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Idle,
    Running { message: String, done: usize, total: usize },
    Cancelling,
}

/// The two kinds of model the privacy tab audits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditTarget {
    Diffusion,
    Adapter,
}

/// What the target folder is, as the line under it says.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetKind {
    pub path: PathBuf,
    pub text: String,
    /// The folder cannot be audited; `text` says why.
    pub refused: bool,
    /// A caption-conditioned pipeline (CLiD applies).
    pub text_conditional: bool,
}

impl TargetKind {
    /// Reads the folder's JSON files (no weights).
    pub fn detect(path: &Path) -> Self {
        let (text, refused, text_conditional) = match detect(path) {
            PipelineKind::PixelDdpm => ("pixel-space DDPM".to_string(), false, false),
            PipelineKind::StableDiffusion(index) => (
                format!(
                    "Stable Diffusion pipeline: {}, {}, {} px",
                    index.class.class_name(),
                    index.prediction.name(),
                    index.resolution
                ),
                false,
                true,
            ),
            PipelineKind::Unsupported(reason) => (reason, true, false),
        };
        Self { path: path.to_path_buf(), text, refused, text_conditional }
    }
}

/// Both ends of a channel that file dialogs (running on their own threads) answer on.
type Channel<T> = (Sender<T>, Receiver<T>);

/// The privacy view.
pub struct PrivacyPanel {
    /// What is audited: a diffusion model (the panel below) or a diagnosis adapter.
    pub target_mode: AuditTarget,
    pub adapter_audit: super::adapter_audit::AdapterAuditPanel,
    pub config: AuditConfig,
    pub preset: Preset,
    /// Text fields for the list parameters (parsed when the run starts).
    pub loss_timesteps: String,
    pub trajectory_strengths: String,
    pub state: RunState,
    /// Continue from the checkpoint of an earlier run with the same parameters.
    pub resume: bool,
    /// Where runs keep their checkpoints (a per-user cache folder by default).
    pub checkpoint_dir: PathBuf,
    /// The last cost estimate (or why there is none) and the parameters it was measured for.
    pub cost: Option<(Result<CostEstimate, String>, serde_json::Value)>,
    estimate_run: Option<EstimateRun>,
    /// The target folder's kind, read once per path.
    target_kind: Option<TargetKind>,
    pub report: Option<Report>,
    pub gallery: Vec<(String, Vec<ExposedImage>)>,
    pub gallery_attack: Option<String>,
    pub log_scale: bool,
    pub export_folder: Option<PathBuf>,
    /// Seconds from pressing Cancel to the worker stopping, for the last cancelled run.
    pub last_cancel_latency: Option<Duration>,
    /// Set when a run has just been cancelled (taken by the frame log).
    pub fresh_cancel_latency: Option<Duration>,
    /// Where the ROC plot was drawn last frame (for the PNG export).
    pub plot_rect: Option<egui::Rect>,
    /// The PNG to cut from the window once the layout has settled after the export's
    /// messages appeared (see `results_ui`).
    pending_png: Option<PathBuf>,
    run: Option<AuditRun>,
    eta: Option<Duration>,
    textures: BTreeMap<(String, usize), (TextureHandle, TextureHandle)>,
    /// Result of a PNG export, from the screenshot callback.
    png_written: Channel<Result<PathBuf, String>>,
}

impl Default for PrivacyPanel {
    fn default() -> Self {
        let mut config = AuditConfig::demo(Preset::Quick);
        config.batch_size = INTERACTIVE_BATCH;
        Self {
            target_mode: AuditTarget::Diffusion,
            adapter_audit: Default::default(),
            loss_timesteps: join(&config.loss.timesteps),
            trajectory_strengths: join(&config.trajectory.strengths),
            config,
            preset: Preset::Quick,
            state: RunState::Idle,
            resume: false,
            checkpoint_dir: default_checkpoint_dir(),
            cost: None,
            estimate_run: None,
            target_kind: None,
            report: None,
            gallery: Vec::new(),
            gallery_attack: None,
            log_scale: false,
            export_folder: None,
            last_cancel_latency: None,
            fresh_cancel_latency: None,
            plot_rect: None,
            pending_png: None,
            run: None,
            eta: None,
            textures: BTreeMap::new(),
            png_written: channel(),
        }
    }
}

fn join(values: &[usize]) -> String {
    values.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
}

fn parse_list(text: &str, what: &str) -> Result<Vec<usize>, String> {
    let values: Result<Vec<usize>, _> =
        text.split([',', ' ']).filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse::<usize>()).collect();
    match values {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("{what}: expected whole numbers separated by commas, got {text:?}")),
    }
}

impl PrivacyPanel {
    pub fn is_running(&self) -> bool {
        self.run.as_ref().is_some_and(|r| !r.is_finished())
    }

    pub fn is_estimating(&self) -> bool {
        self.estimate_run.is_some()
    }

    /// What the target folder is, read again only when the path changes. CLiD, which needs a
    /// caption-conditioned pipeline, is dropped from the selection for any other target.
    pub fn target_kind(&mut self) -> &TargetKind {
        if self.target_kind.as_ref().is_none_or(|k| k.path != self.config.target) {
            self.target_kind = Some(TargetKind::detect(&self.config.target));
        }
        let kind = self.target_kind.as_ref().expect("just set");
        if !kind.text_conditional {
            self.config.attacks.retain(|k| !k.needs_captions());
        }
        kind
    }

    /// The config as the run will use it (list fields parsed). The window's runs leave file
    /// names out of the report's parameters: the export applies the checkbox as it is then, and
    /// a checkpoint does not depend on it.
    pub fn run_config(&self) -> Result<AuditConfig, String> {
        let mut config = self.config.clone();
        config.report_file_names = false;
        config.loss.timesteps = parse_list(&self.loss_timesteps, "loss timesteps")?;
        config.trajectory.strengths = parse_list(&self.trajectory_strengths, "trajectory strengths")?;
        if config.attacks.is_empty() {
            return Err("select at least one attack".into());
        }
        Ok(config)
    }

    /// Applies worker events; returns messages for the app.
    pub fn receive(&mut self, ctx: &egui::Context) -> Vec<(MessageLevel, String)> {
        let mut messages = Vec::new();
        if let Some(result) = self.estimate_run.as_ref().and_then(EstimateRun::poll) {
            let run = self.estimate_run.take().expect("polled");
            self.cost = Some((result, run.config.clone()));
        }
        while let Ok(written) = self.png_written.1.try_recv() {
            messages.push(match written {
                Ok(path) => (MessageLevel::Info, format!("Wrote the ROC plot to {}", path.display())),
                Err(e) => (MessageLevel::Error, format!("Cannot write the ROC plot: {e}")),
            });
        }
        let Some(run) = self.run.as_mut() else { return messages };
        for event in run.poll() {
            match event {
                AuditEvent::Progress { message, done, total } => {
                    let elapsed = run.elapsed();
                    self.eta =
                        (done > 0 && total >= done).then(|| elapsed.mul_f64((total - done) as f64 / done as f64));
                    if self.state != RunState::Cancelling {
                        self.state = RunState::Running { message, done, total };
                    }
                }
                AuditEvent::Finished(report) => {
                    for warning in &report.warnings {
                        messages.push((MessageLevel::Warning, warning.clone()));
                    }
                    self.gallery_attack = report
                        .attacks
                        .iter()
                        .max_by(|a, b| a.metrics.auc.total_cmp(&b.metrics.auc))
                        .map(|a| a.name.clone());
                    self.report = Some(*report);
                    self.state = RunState::Running {
                        message: "reconstructing the most exposed members".into(),
                        done: 0,
                        total: 0,
                    };
                    self.eta = None;
                }
                AuditEvent::Gallery(items) => {
                    self.textures.clear();
                    for (attack, images) in &items {
                        for (i, item) in images.iter().enumerate() {
                            let original = ctx.load_texture(
                                format!("melo-exposed-{attack}-{i}"),
                                grey_image(&item.original),
                                TextureOptions::NEAREST,
                            );
                            let reconstruction = ctx.load_texture(
                                format!("melo-reconstruction-{attack}-{i}"),
                                grey_image(&item.reconstruction),
                                TextureOptions::NEAREST,
                            );
                            self.textures.insert((attack.clone(), i), (original, reconstruction));
                        }
                    }
                    self.gallery = items;
                    self.state = RunState::Idle;
                }
                AuditEvent::GalleryFailed(message) => {
                    self.state = RunState::Idle;
                    messages.push((MessageLevel::Warning, format!("No gallery of exposed members: {message}")));
                }
                AuditEvent::Cancelled => {
                    self.last_cancel_latency = run.cancel_requested.map(|t| t.elapsed());
                    self.fresh_cancel_latency = self.last_cancel_latency;
                    self.state = RunState::Idle;
                    messages.push((MessageLevel::Info, "Audit cancelled".into()));
                }
                AuditEvent::Failed(message) => {
                    self.state = RunState::Idle;
                    messages.push((MessageLevel::Error, format!("Audit failed: {message}")));
                }
            }
        }
        if run.is_finished() {
            self.state = RunState::Idle;
        }
        messages
    }

    pub fn apply(&mut self, command: PrivacyCommand, ctx: &egui::Context) -> Vec<(MessageLevel, String)> {
        match command {
            PrivacyCommand::SetTarget(p) => {
                self.config.target = p;
                self.target_kind = None;
            }
            PrivacyCommand::SetMembers(p) => self.config.members = p,
            PrivacyCommand::SetNonmembers(p) => self.config.nonmembers = p,
            PrivacyCommand::UseDemo => {
                let demo = AuditConfig::demo(self.preset);
                self.config.target = demo.target;
                self.config.members = demo.members;
                self.config.nonmembers = demo.nonmembers;
                self.target_kind = None;
            }
            PrivacyCommand::UseDemoSd => {
                let demo = AuditConfig::demo_sd(self.preset);
                self.config.target = demo.target;
                self.config.members = demo.members;
                self.config.nonmembers = demo.nonmembers;
                self.target_kind = None;
                // the strongest attack on a fine-tuned pipeline, left out for pixel targets
                if !self.config.attacks.contains(&AttackKind::Clid) {
                    self.config.attacks.push(AttackKind::Clid);
                    self.config.attacks.sort_by_key(|k| AttackKind::ALL.iter().position(|a| a == k));
                }
                if !demo_sd_dir().is_dir() {
                    return vec![(
                        MessageLevel::Warning,
                        format!(
                            "The latent demo is not installed: {} does not exist (tools/sd/train_demo_sd.py makes it)",
                            demo_sd_dir().display()
                        ),
                    )];
                }
            }
            PrivacyCommand::Estimate => {
                if self.is_running() {
                    return vec![(MessageLevel::Warning, "An audit is running: estimate once it is done".into())];
                }
                self.target_kind();
                let config = match self.run_config() {
                    Ok(c) => c,
                    Err(e) => return vec![(MessageLevel::Error, e)],
                };
                match EstimateRun::start(config, ctx) {
                    Ok(run) => self.estimate_run = Some(run),
                    Err(e) => return vec![(MessageLevel::Error, format!("cannot start the estimate: {e}"))],
                }
            }
            PrivacyCommand::ApplyPreset(preset) => {
                let fresh = AuditConfig::new(
                    self.config.target.clone(),
                    self.config.members.clone(),
                    self.config.nonmembers.clone(),
                    preset,
                );
                self.config = AuditConfig {
                    attacks: self.config.attacks.clone(),
                    batch_size: INTERACTIVE_BATCH,
                    report_file_names: self.config.report_file_names,
                    ..fresh
                };
                self.loss_timesteps = join(&self.config.loss.timesteps);
                self.trajectory_strengths = join(&self.config.trajectory.strengths);
                self.preset = preset;
            }
            PrivacyCommand::Picked(field, path) => match field {
                PathField::Target => {
                    self.config.target = path;
                    self.target_kind = None;
                }
                PathField::MembersFile | PathField::MembersFolder => self.config.members = path,
                PathField::NonmembersFile | PathField::NonmembersFolder => self.config.nonmembers = path,
            },
            // The app runs the dialogs (`gui::dialog`); their answers come back as `Picked`
            // and `ExportTo`.
            PrivacyCommand::Browse(_) | PrivacyCommand::PickExportFolder => {}
            PrivacyCommand::Run => {
                if self.is_running() {
                    return vec![(MessageLevel::Warning, "An audit is already running".into())];
                }
                self.target_kind();
                let mut config = match self.run_config() {
                    Ok(c) => c,
                    Err(e) => return vec![(MessageLevel::Error, e)],
                };
                let mut messages = Vec::new();
                match std::fs::create_dir_all(&self.checkpoint_dir) {
                    Ok(()) => {
                        let path = checkpoint_path(&self.checkpoint_dir, &config);
                        config.checkpoint = Some(Checkpoint { path, resume: self.resume });
                    }
                    Err(e) => messages.push((
                        MessageLevel::Warning,
                        format!(
                            "No checkpoint for this run (it cannot be resumed): cannot create {}: {e}",
                            self.checkpoint_dir.display()
                        ),
                    )),
                }
                // a timing taken while the audit runs would be wrong: stop it
                self.estimate_run = None;
                match AuditRun::start(config, ctx) {
                    Ok(run) => {
                        self.run = Some(run);
                        self.state = RunState::Running { message: "starting".into(), done: 0, total: 0 };
                        self.eta = None;
                        self.report = None;
                        self.gallery.clear();
                        self.textures.clear();
                    }
                    Err(e) => return vec![(MessageLevel::Error, format!("cannot start the audit worker: {e}"))],
                }
                return messages;
            }
            PrivacyCommand::Cancel => {
                if let Some(run) = self.run.as_mut().filter(|r| !r.is_finished()) {
                    run.cancel();
                    self.state = RunState::Cancelling;
                }
            }
            PrivacyCommand::SetLogScale(on) => self.log_scale = on,
            PrivacyCommand::SetGalleryAttack(name) => self.gallery_attack = Some(name),
            PrivacyCommand::ExportTo(folder) => return self.export_to(&folder, ctx),
        }
        Vec::new()
    }

    /// Where the dialog for `field` starts: the field's folder, or the folder of its file.
    pub fn browse_start(&self, field: PathField) -> Option<PathBuf> {
        let current = match field {
            PathField::Target => &self.config.target,
            PathField::MembersFile | PathField::MembersFolder => &self.config.members,
            PathField::NonmembersFile | PathField::NonmembersFolder => &self.config.nonmembers,
        };
        if current.is_dir() {
            Some(current.clone())
        } else {
            current.parent().map(Path::to_path_buf)
        }
    }

    /// Writes the JSON report and the CSV of scores (atomically), and asks the window for a
    /// screenshot from which the ROC plot's PNG is cut (written when it arrives).
    fn export_to(&mut self, folder: &Path, ctx: &egui::Context) -> Vec<(MessageLevel, String)> {
        self.export_folder = Some(folder.to_path_buf());
        let Some(report) = &self.report else {
            return vec![(MessageLevel::Warning, "Run an audit first: there is nothing to export".into())];
        };
        let json = folder.join("melo_audit_report.json");
        let csv = folder.join("melo_audit_scores.csv");
        // The inputs of the audit shown, not of the form (which may have been edited since).
        let p = &report.params;
        let inputs = [p.target.as_path(), p.members.as_path(), p.nonmembers.as_path()];
        if let Err(e) = crate::atomic::refuse_overwriting_inputs("The export folder", &json, &inputs) {
            return vec![(MessageLevel::Error, format!("Cannot export the report: {e}"))];
        }
        // The checkbox as it is now: it may have been changed after the run.
        let mut report = report.clone();
        report.params.report_file_names = self.config.report_file_names;
        if let Err(e) = report.write_json(&json).and_then(|()| report.write_csv(&csv)) {
            return vec![(MessageLevel::Error, format!("Cannot export the report: {e}"))];
        }
        let mut messages = vec![(MessageLevel::Info, format!("Wrote {} and {}", json.display(), csv.display()))];
        match self.plot_rect {
            Some(_) => {
                // Not now: these messages will move the plot down on the next frame.
                self.pending_png = Some(folder.join("melo_audit_roc.png"));
                ctx.request_repaint();
            }
            None => messages.push((
                MessageLevel::Warning,
                "The ROC plot is not on screen: open the results to export its PNG".into(),
            )),
        }
        messages
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, commands: &mut Vec<Command>) {
        ui.horizontal(|ui| {
            ui.label("Audit target:");
            let busy = self.is_running() || self.adapter_audit.is_running();
            ui.add_enabled_ui(!busy, |ui| {
                ui.selectable_value(&mut self.target_mode, AuditTarget::Diffusion, "Diffusion model");
                ui.selectable_value(&mut self.target_mode, AuditTarget::Adapter, "Diagnosis adapter");
            });
        });
        if self.target_mode == AuditTarget::Adapter {
            egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| self.adapter_audit.ui(ui));
            return;
        }
        egui::Panel::left("privacy_setup").default_size(360.0).show(ui, |ui| {
            egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| self.setup_ui(ui, commands));
        });
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| self.results_ui(ui, commands));
        });
    }

    fn setup_ui(&mut self, ui: &mut egui::Ui, commands: &mut Vec<Command>) {
        let send = |commands: &mut Vec<Command>, c: PrivacyCommand| commands.push(Command::Privacy(c));
        ui.heading("Privacy audit");
        ui.label(
            RichText::new("Membership inference on a diffusion model: can its training images be told apart?").small(),
        );
        let running = self.is_running();
        let kind = self.target_kind().clone();
        ui.add_enabled_ui(!running, |ui| {
            ui.separator();
            path_row(ui, "Target model folder", &self.config.target, commands, &[("Browse…", PathField::Target)]);
            let kind_text = RichText::new(super::drawable(ui.ctx(), &kind.text)).small();
            let kind_text = if kind.refused { kind_text.color(ui.visuals().error_fg_color) } else { kind_text };
            ui.add(egui::Label::new(kind_text).wrap());
            path_row(
                ui,
                "Members",
                &self.config.members,
                commands,
                &[("npz…", PathField::MembersFile), ("Folder…", PathField::MembersFolder)],
            );
            path_row(
                ui,
                "Non-members",
                &self.config.nonmembers,
                commands,
                &[("npz…", PathField::NonmembersFile), ("Folder…", PathField::NonmembersFolder)],
            );
            ui.horizontal_wrapped(|ui| {
                if ui.button("Use the demo model and sets").on_hover_text(demo_dir().display().to_string()).clicked() {
                    send(commands, PrivacyCommand::UseDemo);
                }
                if ui
                    .button("Use the latent demo (Stable Diffusion)")
                    .on_hover_text(demo_sd_dir().display().to_string())
                    .clicked()
                {
                    send(commands, PrivacyCommand::UseDemoSd);
                }
            });
            ui.separator();
            ui.horizontal(|ui| {
                ui.label("Preset");
                for (preset, name) in [(Preset::Quick, "Quick"), (Preset::Full, "Full")] {
                    if ui.selectable_label(self.preset == preset, name).clicked() {
                        send(commands, PrivacyCommand::ApplyPreset(preset));
                    }
                }
            });
            ui.label("Attacks");
            ui.horizontal_wrapped(|ui| {
                for attack in AttackKind::ALL {
                    if attack.needs_captions() && !kind.text_conditional {
                        ui.add_enabled(false, egui::Checkbox::new(&mut false, attack.name())).on_disabled_hover_text(
                            "CLiD compares caption-conditioned and unconditional denoising: it needs a Stable \
                             Diffusion pipeline as the target (captioned member and non-member folders)",
                        );
                        continue;
                    }
                    let mut on = self.config.attacks.contains(&attack);
                    if ui.checkbox(&mut on, attack.name()).changed() {
                        if on {
                            self.config.attacks.push(attack);
                            self.config.attacks.sort_by_key(|k| AttackKind::ALL.iter().position(|a| a == k));
                        } else {
                            self.config.attacks.retain(|k| *k != attack);
                        }
                    }
                }
            });
            egui::CollapsingHeader::new("Parameters").show(ui, |ui| self.parameters_ui(ui));
        });
        ui.checkbox(&mut self.config.report_file_names, "Exported reports name samples by file name").on_hover_text(
            "Off: samples are member-0001, nonmember-0001, … in the exported JSON and CSV, so a shared report does \
             not say which patient's image was in the training set",
        );
        ui.separator();
        self.cost_ui(ui, commands, running);
        // while a run is going, the checkpoint on disk is its own, not an interrupted one (and
        // the config is neither cloned, hashed nor looked up on disk every frame)
        let found = !running && self.run_config().is_ok_and(|c| checkpoint_path(&self.checkpoint_dir, &c).is_file());
        ui.add_enabled_ui(!running, |ui| {
            ui.checkbox(&mut self.resume, "Resume").on_hover_text(format!(
                "Take the attacks that an interrupted run of these same parameters finished from its checkpoint \
                     instead of running them again. Checkpoints are kept in {} until their audit finishes.",
                self.checkpoint_dir.display()
            ));
            if found {
                ui.label(RichText::new("An interrupted run of these parameters left a checkpoint").small().weak());
            }
        });
        ui.horizontal(|ui| {
            if ui.add_enabled(!running, egui::Button::new("Run")).on_hover_text("Ctrl+Enter").clicked() {
                send(commands, PrivacyCommand::Run);
            }
            if ui
                .add_enabled(running && self.state != RunState::Cancelling, egui::Button::new("Cancel"))
                .on_hover_text("Esc")
                .clicked()
            {
                send(commands, PrivacyCommand::Cancel);
            }
        });
        match &self.state {
            RunState::Idle => {}
            RunState::Cancelling => {
                ui.label("Cancelling…");
            }
            RunState::Running { message, done, total } => {
                let fraction = if *total > 0 { *done as f32 / *total as f32 } else { 0.0 };
                let eta = self.eta.map_or_else(String::new, |d| format!(" · ETA {}", format_duration(d)));
                let elapsed = self.run.as_ref().map_or(Duration::ZERO, AuditRun::elapsed);
                // Not animated: an animated bar (like a spinner) repaints the window every frame,
                // which took CPU from the audit itself (issue 17: the window ran 1.37× the CLI).
                ui.add(egui::ProgressBar::new(fraction).show_percentage());
                let message = super::drawable(ui.ctx(), message);
                ui.label(format!("{message} ({done}/{total}) · {} elapsed{eta}", format_duration(elapsed)));
            }
        }
        if let Some(latency) = self.last_cancel_latency {
            ui.label(RichText::new(format!("Last cancel took {:.2} s", latency.as_secs_f64())).small().weak());
        }
    }

    /// The "Cost" line: an Estimate button and what the last estimate measured.
    fn cost_ui(&mut self, ui: &mut egui::Ui, commands: &mut Vec<Command>, running: bool) {
        ui.horizontal(|ui| {
            ui.label("Cost");
            let estimating = self.is_estimating();
            if ui
                .add_enabled(!running && !estimating, egui::Button::new("Estimate"))
                .on_hover_text(
                    "Load the target and the sets, count the model calls of the selected attacks and time one batch \
                     of them on this machine",
                )
                .clicked()
            {
                commands.push(Command::Privacy(PrivacyCommand::Estimate));
            }
            if estimating {
                ui.spinner();
                ui.label(RichText::new("measuring…").small());
            }
        });
        let Some((result, measured_for)) = &self.cost else { return };
        match result {
            Ok(estimate) => {
                ui.add(egui::Label::new(RichText::new(cost_text(estimate)).small()).wrap());
                let current = self.run_config().map(|c| estimate_key(&c)).ok();
                if current.as_ref() != Some(measured_for) {
                    ui.label(RichText::new("(for other parameters: estimate again)").small().weak());
                }
            }
            Err(e) => {
                let text = RichText::new(super::drawable(ui.ctx(), &format!("Cannot estimate: {e}")))
                    .small()
                    .color(ui.visuals().error_fg_color);
                ui.add(egui::Label::new(text).wrap());
            }
        }
    }

    fn parameters_ui(&mut self, ui: &mut egui::Ui) {
        let c = &mut self.config;
        egui::Grid::new("audit_params").num_columns(2).show(ui, |ui| {
            ui.label("Samples per set (0 = all)");
            let mut max = c.max_per_set.unwrap_or(0);
            if ui.add(egui::DragValue::new(&mut max).range(0..=100_000)).changed() {
                c.max_per_set = (max > 0).then_some(max);
            }
            ui.end_row();
            ui.label("Loss: timesteps");
            ui.text_edit_singleline(&mut self.loss_timesteps);
            ui.end_row();
            ui.label("Loss: noise draws");
            ui.add(egui::DragValue::new(&mut c.loss.draws).range(1..=64));
            ui.end_row();
            ui.label("PIA: timestep");
            ui.add(egui::DragValue::new(&mut c.pia.timestep).range(1..=999));
            ui.end_row();
            ui.label("PIA: norm p");
            ui.add(egui::DragValue::new(&mut c.pia.p).range(1.0..=8.0).speed(0.1));
            ui.end_row();
            ui.label("SecMI: timestep");
            ui.add(egui::DragValue::new(&mut c.secmi.timestep).range(1..=999));
            ui.end_row();
            ui.label("SecMI: interval");
            ui.add(egui::DragValue::new(&mut c.secmi.interval).range(1..=500));
            ui.end_row();
            ui.label("Trajectory: strengths");
            ui.text_edit_singleline(&mut self.trajectory_strengths);
            ui.end_row();
            ui.label("Trajectory: steps");
            ui.add(egui::DragValue::new(&mut c.trajectory.steps).range(1..=100));
            ui.end_row();
            ui.label("Trajectory: draws");
            ui.add(egui::DragValue::new(&mut c.trajectory.draws).range(1..=64));
            ui.end_row();
            ui.label("Seed");
            ui.add(egui::DragValue::new(&mut c.seed));
            ui.end_row();
            ui.label("Batch size");
            ui.add(egui::DragValue::new(&mut c.batch_size).range(1..=1024));
            ui.end_row();
            ui.label("Bootstrap resamples");
            ui.add(egui::DragValue::new(&mut c.bootstrap_resamples).range(0..=100_000));
            ui.end_row();
        });
    }

    fn results_ui(&mut self, ui: &mut egui::Ui, commands: &mut Vec<Command>) {
        let send = |commands: &mut Vec<Command>, c: PrivacyCommand| commands.push(Command::Privacy(c));
        self.plot_rect = None;
        let Some(report) = &self.report else {
            ui.label(
                RichText::new("Run an audit to see its ROC curves, metrics and most exposed members.")
                    .color(Color32::GRAY),
            );
            return;
        };
        ui.horizontal(|ui| {
            ui.heading("ROC curves");
            ui.separator();
            if ui.selectable_label(!self.log_scale, "Linear").clicked() {
                send(commands, PrivacyCommand::SetLogScale(false));
            }
            if ui.selectable_label(self.log_scale, "Log-log").clicked() {
                send(commands, PrivacyCommand::SetLogScale(true));
            }
            ui.separator();
            if ui.button("Export report…").on_hover_text("JSON, CSV of scores, PNG of the plot (Ctrl+E)").clicked() {
                send(commands, PrivacyCommand::PickExportFolder);
            }
        });
        ui.label(
            RichText::new(format!(
                "{} members, {} non-members · target {} ({} parameters) · {:.1} s",
                report.n_members,
                report.n_nonmembers,
                report.target.dir,
                report.target.parameters,
                report.timings.total_seconds
            ))
            .small(),
        );
        let log = self.log_scale;
        let to_axis = move |v: f64| if log { v.max(LOG_FLOOR).log10() } else { v };
        let (lo, hi) = (to_axis(0.0), to_axis(1.0));
        // One id per scale: switching must not keep the other scale's bounds.
        let plot = Plot::new(if log { "audit_roc_log" } else { "audit_roc_linear" })
            .width(ui.available_width().min(520.0))
            .height(420.0)
            .legend(Legend::default())
            .x_axis_label(if log { "false positive rate (log)" } else { "false positive rate" })
            .y_axis_label(if log { "true positive rate (log)" } else { "true positive rate" })
            .x_axis_formatter(move |mark, _| axis_text(mark.value, log))
            .y_axis_formatter(move |mark, _| axis_text(mark.value, log))
            .allow_scroll(false)
            .allow_zoom(false)
            .allow_drag(false)
            .allow_boxed_zoom(false)
            .allow_double_click_reset(false);
        let response = plot.show(ui, |plot| {
            // Always the whole unit square (or its log): curves are compared, not explored.
            let margin = (hi - lo) * 0.02;
            plot.set_plot_bounds(egui_plot::PlotBounds::from_min_max(
                [lo - margin, lo - margin],
                [hi + margin, hi + margin],
            ));
            plot.line(
                Line::new("chance", PlotPoints::from(vec![[lo, lo], [hi, hi]]))
                    .style(LineStyle::dashed_loose())
                    .color(Color32::GRAY),
            );
            for attack in &report.attacks {
                let points: Vec<[f64; 2]> = attack
                    .roc
                    .iter()
                    .filter(|p| !log || p.fpr > 0.0)
                    .map(|p| [to_axis(p.fpr), to_axis(p.tpr)])
                    .collect();
                plot.line(Line::new(
                    format!("{} (AUC {:.3})", attack.name, attack.metrics.auc),
                    PlotPoints::from(points),
                ));
            }
        });
        // The plot frame plus its axes and their labels, which egui_plot draws outside it.
        let frame = response.response.rect;
        let rect = egui::Rect::from_min_max(frame.min - Vec2::new(64.0, 6.0), frame.max + Vec2::new(6.0, 44.0))
            .intersect(ui.ctx().content_rect());
        self.plot_rect = Some(frame);
        if let Some(png) = self.pending_png.take() {
            // The window is captured after this frame is painted: the plot is where it is now.
            let sender = self.png_written.0.clone();
            let repaint = ui.ctx().clone();
            let ppp = ui.ctx().pixels_per_point();
            ui.ctx().request_screenshot(move |image| {
                let _ = sender.send(write_png(&image.region(&rect, Some(ppp)), &png).map(|()| png));
                repaint.request_repaint();
            });
        }

        ui.separator();
        egui::Grid::new("audit_table").striped(true).num_columns(6).show(ui, |ui| {
            for header in ["Attack", "AUC [95 % CI]", "TPR @ 1 % FPR", "TPR @ 0.1 % FPR", "Balanced acc.", "Time"] {
                ui.strong(header);
            }
            ui.end_row();
            for attack in &report.attacks {
                let m = &attack.metrics;
                ui.label(&attack.name).on_hover_text(super::drawable(ui.ctx(), &attack.description));
                ui.label(format!("{:.3} [{:.3}, {:.3}]", m.auc, m.auc_ci95[0], m.auc_ci95[1]));
                ui.label(format!("{:.3}", m.tpr_at_1pct_fpr));
                ui.label(format!("{:.3}", m.tpr_at_0_1pct_fpr));
                ui.label(format!("{:.3}", m.balanced_accuracy));
                ui.label(format!("{:.1} s", attack.seconds));
                ui.end_row();
            }
        });
        let notes: Vec<String> = report
            .attacks
            .iter()
            .filter(|a| a.evaluated_on != "all samples")
            .map(|a| format!("{}: evaluated on the {}", a.name, a.evaluated_on))
            .collect();
        for note in notes {
            ui.label(RichText::new(super::drawable(ui.ctx(), &note)).small().weak());
        }

        ui.separator();
        ui.horizontal(|ui| {
            ui.heading("Most exposed members");
            let current = self.gallery_attack.clone().unwrap_or_default();
            egui::ComboBox::from_id_salt("gallery_attack").selected_text(&current).show_ui(ui, |ui| {
                for attack in &report.attacks {
                    if ui.selectable_label(attack.name == current, &attack.name).clicked() {
                        send(commands, PrivacyCommand::SetGalleryAttack(attack.name.clone()));
                    }
                }
            });
        });
        let Some((attack, items)) = self.gallery.iter().find(|(name, _)| Some(name) == self.gallery_attack.as_ref())
        else {
            if self.is_running() {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label("Reconstructing…");
                });
            }
            return;
        };
        ui.label(
            RichText::new("Highest member scores; left the training image, right the model's reconstruction from it")
                .small(),
        );
        // Groups do not wrap in a wrapping layout: a grid as wide as the panel allows.
        let columns = ((ui.available_width() / 180.0).floor() as usize).max(1);
        egui::Grid::new("exposed_gallery").num_columns(columns).show(ui, |ui| {
            for (i, item) in items.iter().enumerate() {
                let Some((original, reconstruction)) = self.textures.get(&(attack.clone(), i)) else {
                    continue;
                };
                if i > 0 && i % columns == 0 {
                    ui.end_row();
                }
                ui.group(|ui| {
                    ui.vertical(|ui| {
                        ui.horizontal(|ui| {
                            let size = Vec2::splat(72.0);
                            ui.add(
                                egui::Image::from_texture(egui::load::SizedTexture::from_handle(original))
                                    .fit_to_exact_size(size),
                            );
                            ui.add(
                                egui::Image::from_texture(egui::load::SizedTexture::from_handle(reconstruction))
                                    .fit_to_exact_size(size),
                            );
                        });
                        ui.label(RichText::new(format!("#{} · score {:.3}", item.id, item.score)).small());
                        if let Some(caption) = &item.caption {
                            ui.set_max_width(2.0 * 72.0 + ui.spacing().item_spacing.x);
                            ui.add(egui::Label::new(RichText::new(super::drawable(ui.ctx(), caption)).small()).wrap());
                        }
                    });
                });
            }
        });
    }
}

fn path_row(ui: &mut egui::Ui, label: &str, path: &Path, commands: &mut Vec<Command>, buttons: &[(&str, PathField)]) {
    ui.label(label);
    ui.horizontal(|ui| {
        let name = path.display().to_string();
        ui.add(egui::Label::new(RichText::new(&name).monospace().small()).truncate()).on_hover_text(&name);
    });
    ui.horizontal(|ui| {
        for (text, field) in buttons {
            if ui.small_button(*text).clicked() {
                commands.push(Command::Privacy(PrivacyCommand::Browse(*field)));
            }
        }
    });
}

fn axis_text(value: f64, log: bool) -> String {
    if log {
        let rounded = value.round();
        if (value - rounded).abs() < 1e-9 && rounded <= 0.0 {
            format!("{}", 10f64.powf(rounded))
        } else {
            String::new()
        }
    } else {
        format!("{value:.1}")
    }
}

fn format_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.0} s")
    } else if s < 3600.0 {
        format!("{}:{:02} min", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{} h {:02} min", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    }
}

/// Seconds with three significant digits (a model call takes from microseconds to minutes).
fn format_seconds(s: f64) -> String {
    if s >= 100.0 {
        format!("{s:.0}")
    } else if s >= 1.0 {
        format!("{s:.2}")
    } else {
        let decimals = (2.0 - s.max(1e-9).log10().floor()) as usize;
        format!("{s:.decimals$}")
    }
}

/// The cost line: "N samples × k calls = M model calls × S s/call (+ VAE) ≈ T".
pub fn cost_text(e: &CostEstimate) -> String {
    let mut text = format!(
        "{} samples × {} calls = {} model calls × {} s/call",
        e.samples,
        e.calls_per_sample,
        e.model_calls,
        format_seconds(e.seconds_per_call)
    );
    if e.vae_encodes > 0 {
        text += &format!(" + {} VAE encodes × {} s", e.vae_encodes, format_seconds(e.seconds_per_encode));
    }
    if e.vae_decodes > 0 {
        text += &format!(" + {} VAE decodes × {} s", e.vae_decodes, format_seconds(e.seconds_per_decode));
    }
    text + &format!(" ≈ {}", format_duration(Duration::from_secs_f64(e.projected_seconds.max(0.0))))
}

/// The checkpoint file of an audit: named by a hash of the parameters that decide its results
/// (the ones [`crate::audit::run`] compares before resuming; the batch size is not one).
pub fn checkpoint_path(dir: &Path, config: &AuditConfig) -> PathBuf {
    let mut params = serde_json::to_value(config).unwrap_or_default();
    if let Some(m) = params.as_object_mut() {
        m.remove("batch_size");
    }
    let digest = Sha256::digest(params.to_string().as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    dir.join(format!("audit-{hex}.json"))
}

/// The per-user cache folder for audit checkpoints: `$XDG_CACHE_HOME` or `~/.cache` (Linux),
/// `~/Library/Caches` (macOS), `%LOCALAPPDATA%` (Windows), each with `melo/audit-checkpoints`;
/// the temporary folder when none is set.
fn default_checkpoint_dir() -> PathBuf {
    cache_dir().join("audit-checkpoints")
}

/// The per-user cache folder of the privacy tab (`…/melo`): interrupted runs' checkpoints and
/// the adapter audit's shadow adapters.
pub(super) fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = if cfg!(target_os = "windows") {
        var("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| h.join("Library/Caches"))
    } else {
        var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")))
    };
    base.unwrap_or_else(std::env::temp_dir).join("melo")
}

/// A [−1, 1] grey image for display.
fn grey_image(image: &Image2d) -> ColorImage {
    let pixels = image
        .data
        .iter()
        .map(|&v| {
            let g = if v.is_finite() { ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8 } else { 0 };
            Color32::from_gray(g)
        })
        .collect();
    ColorImage::new([image.width, image.height], pixels)
}

fn write_png(image: &ColorImage, path: &Path) -> Result<(), String> {
    let [w, h] = image.size;
    let rgba: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_srgba_unmultiplied()).collect();
    let buffer = image::RgbaImage::from_raw(w as u32, h as u32, rgba).ok_or("screenshot size mismatch")?;
    crate::atomic::write_atomic(path, |w| {
        let mut bytes = Vec::new();
        buffer
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(std::io::Error::other)?;
        w.write_all(&bytes)
    })
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parameters_parse_or_explain() {
        assert_eq!(parse_list("100, 250", "x").unwrap(), vec![100, 250]);
        assert_eq!(parse_list("100 250", "x").unwrap(), vec![100, 250]);
        assert!(parse_list("", "loss timesteps").unwrap_err().contains("loss timesteps"));
        assert!(parse_list("1, a", "x").is_err());
    }

    #[test]
    fn seconds_keep_three_significant_digits() {
        assert_eq!(format_seconds(0.012345), "0.0123");
        assert_eq!(format_seconds(0.5), "0.500");
        assert_eq!(format_seconds(2.5), "2.50");
        assert_eq!(format_seconds(250.0), "250");
        assert_eq!(format_duration(Duration::from_secs(2 * 3600 + 5 * 60)), "2 h 05 min");
    }

    #[test]
    fn cost_text_names_every_part_of_the_sum() {
        let e = CostEstimate {
            samples: 8,
            calls_per_sample: 6,
            model_calls: 48,
            vae_encodes: 8,
            vae_decodes: 0,
            seconds_per_call: 0.25,
            seconds_per_encode: 0.5,
            seconds_per_decode: 0.0,
            projected_seconds: 16.0,
        };
        assert_eq!(
            cost_text(&e),
            "8 samples × 6 calls = 48 model calls × 0.250 s/call + 8 VAE encodes × 0.500 s ≈ 16 s"
        );
    }

    #[test]
    fn a_checkpoint_is_named_by_the_parameters_but_not_the_batch_size() {
        let dir = Path::new("/cache");
        let a = AuditConfig::demo(Preset::Quick);
        let mut b = a.clone();
        b.batch_size += 1;
        assert_eq!(checkpoint_path(dir, &a), checkpoint_path(dir, &b));
        b.pia.timestep += 1;
        assert_ne!(checkpoint_path(dir, &a), checkpoint_path(dir, &b));
        assert!(checkpoint_path(dir, &a).starts_with(dir));
    }

    #[test]
    fn log_axis_labels_only_at_decades() {
        assert_eq!(axis_text(-2.0, true), "0.01");
        assert_eq!(axis_text(0.0, true), "1");
        assert_eq!(axis_text(-1.5, true), "");
        assert_eq!(axis_text(0.3, false), "0.3");
    }
}
