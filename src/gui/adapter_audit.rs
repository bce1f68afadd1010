//! The privacy tab's second target kind (issue 19): a diagnosis adapter, audited for
//! membership leakage with the loss baseline and LiRA on shadow adapters
//! (`crate::audit::adapter`). The audit runs on a worker thread that reports progress and the
//! report over a channel; Cancel stops it between shadows (the shadows already trained stay
//! in the cache, so running again resumes).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Instant;

use egui::{Color32, RichText};
use egui_plot::{Legend, Line, Plot, PlotPoints};

use crate::audit::adapter::{self, AdapterAttack, AdapterAuditConfig, AdapterAuditReport, Progress, SetSpec};
use crate::audit::metrics::BootstrapOptions;

enum Event {
    Progress(Progress),
    Done(Box<Result<AdapterAuditReport, String>>),
}

struct Running {
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    started: Instant,
    last: Option<Progress>,
}

/// Fields, run state and the last report of the adapter audit.
pub struct AdapterAuditPanel {
    pub adapter: String,
    pub members: String,
    pub nonmembers: String,
    pub population: String,
    pub shadow_dir: String,
    pub shadows: usize,
    /// At most this many images of each set (0 = all).
    pub limit: usize,
    pub log_scale: bool,
    pub report: Option<AdapterAuditReport>,
    pub error: Option<String>,
    running: Option<Running>,
    /// Textures of the report's most exposed training images, made on first display.
    exposed_textures: Vec<egui::TextureHandle>,
}

impl Default for AdapterAuditPanel {
    fn default() -> Self {
        let shadow_dir = super::privacy::cache_dir().join("adapter-audit-shadows");
        Self {
            adapter: String::new(),
            members: String::new(),
            nonmembers: String::new(),
            population: String::new(),
            shadow_dir: shadow_dir.display().to_string(),
            shadows: 16,
            limit: 0,
            log_scale: false,
            report: None,
            error: None,
            running: None,
            exposed_textures: Vec::new(),
        }
    }
}

impl AdapterAuditPanel {
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Fills the fields with the shipped BreastMNIST adapter and its own splits
    /// (members = its training split, non-members = its test split).
    pub fn use_shipped_breast(&mut self) {
        let data = PathBuf::from("../shared/data/medmnist/breastmnist.npz");
        self.adapter = "adapters/breast_malignancy.safetensors".into();
        self.members = format!("{}:train", data.display());
        self.nonmembers = format!("{}:test", data.display());
    }

    fn config(&self) -> Result<AdapterAuditConfig, String> {
        let need = |v: &str, what: &str| {
            if v.trim().is_empty() {
                Err(format!("{what} is empty"))
            } else {
                Ok(v.trim().to_string())
            }
        };
        let backbone = crate::model::engine::default_backbone_dir()
            .ok_or("no backbone folder found (assets/backbone or MELO_BACKBONE)")?;
        Ok(AdapterAuditConfig {
            adapter: PathBuf::from(need(&self.adapter, "Adapter")?),
            recipe: None,
            members: SetSpec::parse(&need(&self.members, "Members")?),
            nonmembers: SetSpec::parse(&need(&self.nonmembers, "Non-members")?),
            population: (!self.population.trim().is_empty()).then(|| SetSpec::parse(self.population.trim())),
            attacks: AdapterAttack::ALL.to_vec(),
            shadows: self.shadows,
            shadow_dir: PathBuf::from(need(&self.shadow_dir, "Shadow cache folder")?),
            limit: (self.limit > 0).then_some(self.limit),
            seed: 0,
            bootstrap: BootstrapOptions::default(),
            backbone,
        })
    }

    /// Starts the audit on a worker thread; a bad field is shown as the error instead.
    pub fn start(&mut self, ctx: &egui::Context) {
        let config = match self.config() {
            Ok(c) => c,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        let (send, events) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        let spawned = super::worker::spawn_reporting(
            "adapter-audit",
            ctx,
            send,
            |message, send| send(Event::Done(Box::new(Err(format!("internal error: {message}"))))),
            move |send| {
                let mut on_progress = |p: Progress| send(Event::Progress(p));
                let result = adapter::run(&config, &mut on_progress, &flag).map_err(|e| e.to_string());
                send(Event::Done(Box::new(result)));
            },
        );
        match spawned {
            Ok(_) => {
                self.error = None;
                self.running = Some(Running { events, cancel, started: Instant::now(), last: None });
            }
            Err(e) => self.error = Some(format!("could not start the audit thread: {e}")),
        }
    }

    pub fn cancel(&self) {
        if let Some(r) = &self.running {
            r.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Takes the worker's events; true when a run ended this frame.
    pub fn poll(&mut self) -> bool {
        let Some(run) = &mut self.running else { return false };
        let mut finished = None;
        while let Ok(event) = run.events.try_recv() {
            match event {
                Event::Progress(p) => run.last = Some(p),
                Event::Done(result) => finished = Some(result),
            }
        }
        match finished.map(|b| *b) {
            Some(Ok(report)) => {
                self.report = Some(report);
                self.exposed_textures.clear();
                self.running = None;
                true
            }
            Some(Err(e)) => {
                self.error = Some(format!("Adapter audit failed: {e}"));
                self.running = None;
                true
            }
            None => false,
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui) {
        self.poll();
        ui.label(
            RichText::new(
                "Membership inference on a diagnosis adapter: loss baseline and LiRA (Carlini et al. 2022) with \
                 shadow adapters trained by the target's own recipe (its .report.json). Sets: .npz or ImageFolder, \
                 optionally PATH:train|val|test.",
            )
            .small(),
        );
        let running = self.is_running();
        ui.add_enabled_ui(!running, |ui| {
            egui::Grid::new("adapter_audit_fields").num_columns(2).show(ui, |ui| {
                for (label, value) in [
                    ("Adapter", &mut self.adapter),
                    ("Members", &mut self.members),
                    ("Non-members", &mut self.nonmembers),
                    ("Population (optional)", &mut self.population),
                    ("Shadow cache folder", &mut self.shadow_dir),
                ] {
                    ui.label(label);
                    ui.add(egui::TextEdit::singleline(value).desired_width(420.0));
                    ui.end_row();
                }
                ui.label("Shadow adapters");
                ui.add(egui::DragValue::new(&mut self.shadows).range(2..=256));
                ui.end_row();
                ui.label("Images per set (0 = all)");
                ui.add(egui::DragValue::new(&mut self.limit).range(0..=100_000));
                ui.end_row();
            });
            ui.horizontal(|ui| {
                if ui.button("Use the shipped breast adapter").clicked() {
                    self.use_shipped_breast();
                }
                if ui.button("Run adapter audit").clicked() {
                    self.start(ui.ctx());
                }
            });
        });
        if let Some(run) = &self.running {
            ui.horizontal(|ui| {
                let text = run.last.as_ref().map_or("starting".to_string(), |p| p.message.clone());
                ui.label(format!("{text} — {:.0} s", run.started.elapsed().as_secs_f64()));
                if ui.button("Cancel").clicked() {
                    self.cancel();
                }
            });
            if let Some(p) = &run.last {
                if p.total > 0 {
                    ui.add(egui::ProgressBar::new(p.done as f32 / p.total as f32).desired_width(360.0));
                }
            }
        }
        if let Some(e) = &self.error {
            ui.label(RichText::new(e).color(ui.visuals().error_fg_color));
        }
        if let Some(report) = &self.report {
            if self.exposed_textures.len() != report.most_exposed.len() {
                self.exposed_textures = report
                    .most_exposed
                    .iter()
                    .map(|e| {
                        let image = egui::ColorImage::from_rgb([e.side, e.side], &e.rgb);
                        ui.ctx().load_texture(format!("exposed-{}", e.id), image, egui::TextureOptions::LINEAR)
                    })
                    .collect();
            }
            results_ui(ui, report, &mut self.log_scale);
            exposed_ui(ui, report, &self.exposed_textures);
        }
    }
}

fn results_ui(ui: &mut egui::Ui, report: &AdapterAuditReport, log_scale: &mut bool) {
    ui.separator();
    ui.label(RichText::new(format!(
        "Adapter '{}': {} members ({}) vs {} non-members ({}), {:.0} s",
        report.target_task, report.n_members, report.members, report.n_nonmembers, report.nonmembers, report.seconds
    )));
    if let Some(s) = &report.shadows {
        ui.label(
            RichText::new(format!(
                "{} shadow adapters ({} trained now, {} from the cache), each on {} of {} pool images",
                s.count, s.trained_now, s.reused_from_cache, s.train_size, s.pool_size
            ))
            .small(),
        );
    }
    egui::Grid::new("adapter_audit_metrics").striped(true).num_columns(5).show(ui, |ui| {
        for h in ["attack", "AUC [95 % CI]", "TPR@1 % FPR", "TPR@0.1 % FPR", "balanced acc."] {
            ui.label(RichText::new(h).strong());
        }
        ui.end_row();
        for a in &report.attacks {
            let m = &a.metrics;
            ui.label(&a.name);
            ui.label(format!("{:.3} [{:.3}, {:.3}]", m.auc, m.auc_ci95[0], m.auc_ci95[1]));
            ui.label(format!("{:.3}", m.tpr_at_1pct_fpr));
            ui.label(format!("{:.3}", m.tpr_at_0_1pct_fpr));
            ui.label(format!("{:.3}", m.balanced_accuracy));
            ui.end_row();
        }
    });
    ui.checkbox(log_scale, "log-log ROC");
    let log = *log_scale;
    let transform = |v: f64| if log { v.max(1e-4).log10() } else { v };
    Plot::new("adapter_audit_roc").height(260.0).legend(Legend::default()).data_aspect(1.0).show(ui, |plot| {
        let diagonal: Vec<[f64; 2]> =
            (0..=50).map(|i| i as f64 / 50.0).map(|v| [transform(v.max(1e-4)), transform(v.max(1e-4))]).collect();
        plot.line(Line::new("chance", PlotPoints::from(diagonal)).color(Color32::GRAY));
        for a in &report.attacks {
            let points: Vec<[f64; 2]> = a.roc.iter().map(|p| [transform(p.fpr), transform(p.tpr)]).collect();
            plot.line(Line::new(a.name.clone(), PlotPoints::from(points)));
        }
    });
    if !report.per_class.is_empty() {
        ui.label(RichText::new("Leakage per class (AUC within the class)").strong());
        egui::Grid::new("adapter_audit_per_class").striped(true).show(ui, |ui| {
            for c in &report.per_class {
                ui.label(&c.class);
                ui.label(&c.attack);
                ui.label(format!("{:.3}", c.metrics.auc));
                ui.end_row();
            }
        });
    }
    for w in &report.warnings {
        ui.label(RichText::new(w).small().color(Color32::from_rgb(230, 170, 60)));
    }
}

/// The training images the strongest attack finds most exposed, with pseudonym, class and
/// score (the pixels stay in memory; the JSON report has no images).
fn exposed_ui(ui: &mut egui::Ui, report: &AdapterAuditReport, textures: &[egui::TextureHandle]) {
    let Some(first) = report.most_exposed.first() else { return };
    ui.label(RichText::new(format!("Most exposed training images ({})", first.attack)).strong());
    ui.horizontal_wrapped(|ui| {
        for (e, texture) in report.most_exposed.iter().zip(textures) {
            ui.vertical(|ui| {
                ui.add(egui::Image::new(texture).fit_to_exact_size(egui::vec2(96.0, 96.0)));
                ui.label(RichText::new(format!("{}  {}", e.id, e.label)).small());
                ui.label(RichText::new(format!("score {:.3}", e.score)).small());
            });
        }
    });
}
