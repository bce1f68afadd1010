//! The privacy tab: set up a membership-inference audit of a diffusion model (target folder,
//! members, non-members, attacks and their parameters), run it on a worker ([`AuditRun`]) with
//! progress, ETA and Cancel, and read the results — ROC curves of every attack on one plot
//! (linear or log-log, with the chance diagonal), a table of AUC ± CI and TPR at low FPR, a
//! gallery of the most exposed members beside their reconstructions — and export them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use egui::{Color32, ColorImage, RichText, TextureHandle, TextureOptions, Vec2};
use egui_plot::{Legend, Line, LineStyle, Plot, PlotPoints};

use super::audit_worker::{AuditEvent, AuditRun, ExposedImage};
use super::{Command, MessageLevel};
use crate::audit::{demo_dir, AttackKind, AuditConfig, Image2d, Preset, Report};

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
    ApplyPreset(Preset),
    /// Pick a path with the system dialog for one of the fields.
    Browse(PathField),
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

/// Both ends of a channel that file dialogs (running on their own threads) answer on.
type Channel<T> = (Sender<T>, Receiver<T>);

/// The privacy view.
pub struct PrivacyPanel {
    pub config: AuditConfig,
    pub preset: Preset,
    /// Text fields for the list parameters (parsed when the run starts).
    pub loss_timesteps: String,
    pub trajectory_strengths: String,
    pub state: RunState,
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
    picked: Channel<(PathField, PathBuf)>,
    export_picked: Channel<PathBuf>,
    /// Result of a PNG export, from the screenshot callback.
    png_written: Channel<Result<PathBuf, String>>,
}

impl Default for PrivacyPanel {
    fn default() -> Self {
        let mut config = AuditConfig::demo(Preset::Quick);
        config.batch_size = INTERACTIVE_BATCH;
        Self {
            loss_timesteps: join(&config.loss.timesteps),
            trajectory_strengths: join(&config.trajectory.strengths),
            config,
            preset: Preset::Quick,
            state: RunState::Idle,
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
            picked: channel(),
            export_picked: channel(),
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

    /// The config as the run will use it (list fields parsed).
    pub fn run_config(&self) -> Result<AuditConfig, String> {
        let mut config = self.config.clone();
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
        while let Ok((field, path)) = self.picked.1.try_recv() {
            match field {
                PathField::Target => self.config.target = path,
                PathField::MembersFile | PathField::MembersFolder => self.config.members = path,
                PathField::NonmembersFile | PathField::NonmembersFolder => self.config.nonmembers = path,
            }
        }
        if let Ok(folder) = self.export_picked.1.try_recv() {
            messages.extend(self.export_to(&folder, ctx));
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
            PrivacyCommand::SetTarget(p) => self.config.target = p,
            PrivacyCommand::SetMembers(p) => self.config.members = p,
            PrivacyCommand::SetNonmembers(p) => self.config.nonmembers = p,
            PrivacyCommand::UseDemo => {
                let demo = AuditConfig::demo(self.preset);
                self.config.target = demo.target;
                self.config.members = demo.members;
                self.config.nonmembers = demo.nonmembers;
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
            PrivacyCommand::Browse(field) => self.browse(field, ctx),
            PrivacyCommand::Run => {
                if self.is_running() {
                    return vec![(MessageLevel::Warning, "An audit is already running".into())];
                }
                let config = match self.run_config() {
                    Ok(c) => c,
                    Err(e) => return vec![(MessageLevel::Error, e)],
                };
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
            }
            PrivacyCommand::Cancel => {
                if let Some(run) = self.run.as_mut().filter(|r| !r.is_finished()) {
                    run.cancel();
                    self.state = RunState::Cancelling;
                }
            }
            PrivacyCommand::SetLogScale(on) => self.log_scale = on,
            PrivacyCommand::SetGalleryAttack(name) => self.gallery_attack = Some(name),
            PrivacyCommand::PickExportFolder => {
                let start = self.export_folder.clone();
                let sender = self.export_picked.0.clone();
                let ctx = ctx.clone();
                spawn_dialog(move || {
                    let mut dialog = rfd::FileDialog::new().set_title("Export the audit report to");
                    if let Some(dir) = start.filter(|d| d.is_dir()) {
                        dialog = dialog.set_directory(dir);
                    }
                    if let Some(folder) = dialog.pick_folder() {
                        let _ = sender.send(folder);
                    }
                    ctx.request_repaint();
                });
            }
            PrivacyCommand::ExportTo(folder) => return self.export_to(&folder, ctx),
        }
        Vec::new()
    }

    fn browse(&mut self, field: PathField, ctx: &egui::Context) {
        let start = match field {
            PathField::Target => self.config.target.clone(),
            PathField::MembersFile | PathField::MembersFolder => self.config.members.clone(),
            PathField::NonmembersFile | PathField::NonmembersFolder => self.config.nonmembers.clone(),
        };
        let sender = self.picked.0.clone();
        let ctx = ctx.clone();
        spawn_dialog(move || {
            let mut dialog = rfd::FileDialog::new();
            let dir = if start.is_dir() { Some(start) } else { start.parent().map(Path::to_path_buf) };
            if let Some(dir) = dir.filter(|d| d.is_dir()) {
                dialog = dialog.set_directory(dir);
            }
            let picked = match field {
                PathField::MembersFile | PathField::NonmembersFile => dialog.add_filter("npz", &["npz"]).pick_file(),
                _ => dialog.pick_folder(),
            };
            if let Some(path) = picked {
                let _ = sender.send((field, path));
            }
            ctx.request_repaint();
        });
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
        ui.add_enabled_ui(!running, |ui| {
            ui.separator();
            path_row(ui, "Target model folder", &self.config.target, commands, &[("Browse…", PathField::Target)]);
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
            if ui.button("Use the demo model and sets").on_hover_text(demo_dir().display().to_string()).clicked() {
                send(commands, PrivacyCommand::UseDemo);
            }
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
                for kind in AttackKind::ALL {
                    let mut on = self.config.attacks.contains(&kind);
                    if ui.checkbox(&mut on, kind.name()).changed() {
                        if on {
                            self.config.attacks.push(kind);
                            self.config.attacks.sort_by_key(|k| AttackKind::ALL.iter().position(|a| a == k));
                        } else {
                            self.config.attacks.retain(|k| *k != kind);
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
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label("Cancelling…");
                });
            }
            RunState::Running { message, done, total } => {
                let fraction = if *total > 0 { *done as f32 / *total as f32 } else { 0.0 };
                let eta = self.eta.map_or_else(String::new, |d| format!(" · ETA {}", format_duration(d)));
                let elapsed = self.run.as_ref().map_or(Duration::ZERO, AuditRun::elapsed);
                ui.add(egui::ProgressBar::new(fraction).show_percentage().animate(true));
                let message = super::drawable(ui.ctx(), message);
                ui.label(format!("{message} ({done}/{total}) · {} elapsed{eta}", format_duration(elapsed)));
            }
        }
        if let Some(latency) = self.last_cancel_latency {
            ui.label(RichText::new(format!("Last cancel took {:.2} s", latency.as_secs_f64())).small().weak());
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
    } else {
        format!("{}:{:02} min", (s / 60.0) as u64, (s % 60.0) as u64)
    }
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

fn spawn_dialog(pick: impl FnOnce() + Send + 'static) {
    // macOS wants dialogs on the main thread; elsewhere they must not block the UI.
    if cfg!(target_os = "macos") {
        pick();
    } else {
        let _ = std::thread::Builder::new().name("melo-dialog".into()).spawn(move || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(pick));
        });
    }
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
    fn log_axis_labels_only_at_decades() {
        assert_eq!(axis_text(-2.0, true), "0.01");
        assert_eq!(axis_text(0.0, true), "1");
        assert_eq!(axis_text(-1.5, true), "");
        assert_eq!(axis_text(0.3, false), "0.3");
    }
}
