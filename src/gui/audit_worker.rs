//! The privacy audit on a worker thread: one thread per run, progress and results over a
//! channel, a shared flag to cancel. The audit library checks the flag before every batch of
//! model calls, so a cancel takes effect within a batch (well under a second on the demo).
//!
//! After the report, the same thread computes the gallery: the most exposed members of each
//! attack with the model's reconstruction of each (a few model calls per image; img2img through
//! the VAE for a Stable Diffusion pipeline), and removes the run's checkpoint, whose work the
//! report now holds.
//!
//! [`EstimateRun`] measures an audit's cost on its own thread the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit::gallery::{estimate, CostEstimate, MemberGallery};
use crate::audit::{self, AuditConfig, Image2d, Report};

/// Exposed members shown per attack.
pub const GALLERY_SIZE: usize = 6;

/// One member image the attack was most sure about, beside what the model makes of it.
#[derive(Debug, Clone)]
pub struct ExposedImage {
    pub id: String,
    pub index: usize,
    pub score: f64,
    /// The member's caption (a captioned set of a pipeline audit), shown under the images.
    pub caption: Option<String>,
    pub original: Image2d,
    pub reconstruction: Image2d,
}

#[derive(Debug)]
pub enum AuditEvent {
    Progress {
        message: String,
        done: usize,
        total: usize,
    },
    Finished(Box<Report>),
    /// Per attack name, its most exposed members.
    Gallery(Vec<(String, Vec<ExposedImage>)>),
    /// The gallery could not be made (the report stands).
    GalleryFailed(String),
    Cancelled,
    Failed(String),
}

/// A running (or finished) audit, seen from the UI.
pub struct AuditRun {
    events: Receiver<AuditEvent>,
    cancel: Arc<AtomicBool>,
    pub started: Instant,
    /// When cancel was pressed (to report how long stopping took).
    pub cancel_requested: Option<Instant>,
    finished: bool,
}

impl AuditRun {
    pub fn start(config: AuditConfig, ctx: &egui::Context) -> std::io::Result<Self> {
        let (sender, events) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        super::worker::spawn_reporting(
            "melo-audit",
            ctx,
            sender,
            |message, send| send(AuditEvent::Failed(format!("internal error in the audit worker: {message}"))),
            move |send| work(&config, &flag, send),
        )?;
        Ok(Self { events, cancel, started: Instant::now(), cancel_requested: None, finished: false })
    }

    pub fn cancel(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.cancel_requested.get_or_insert_with(Instant::now);
    }

    /// Events since the last call. A thread that ended without a final event is reported as
    /// failed, so the UI never waits on a dead run.
    pub fn poll(&mut self) -> Vec<AuditEvent> {
        let mut out = Vec::new();
        loop {
            match self.events.try_recv() {
                Ok(event) => {
                    if matches!(
                        event,
                        AuditEvent::Cancelled
                            | AuditEvent::Failed(_)
                            | AuditEvent::Gallery(_)
                            | AuditEvent::GalleryFailed(_)
                    ) {
                        self.finished = true;
                    }
                    out.push(event);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if !self.finished {
                        self.finished = true;
                        out.push(AuditEvent::Failed("the audit worker stopped unexpectedly".into()));
                    }
                    break;
                }
            }
        }
        out
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The fastest progress reports reach the window: each one wakes it for a frame (two, as egui
/// settles the layout), and the audit reports every batch (8 frames a second measured in the
/// window, where the shown numbers change far less often). Once a second, the pace at which the
/// tab's elapsed time moves anyway: at 0.5 s the window painted 4 frames a second, and with
/// software OpenGL those paints took CPU from the audit (issue 17, window vs command line).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

fn work(config: &AuditConfig, cancel: &AtomicBool, send: &dyn Fn(AuditEvent)) {
    // A new phase (message) or the end of one is always sent; counts within a phase at most
    // every PROGRESS_INTERVAL.
    let mut last: Option<(Instant, String)> = None;
    let mut progress = |p: audit::Progress| {
        let due = match &last {
            Some((at, message)) => *message != p.message || p.done >= p.total || at.elapsed() >= PROGRESS_INTERVAL,
            None => true,
        };
        if due {
            last = Some((Instant::now(), p.message.clone()));
            send(AuditEvent::Progress { message: p.message, done: p.done, total: p.total });
        }
    };
    let report = match audit::run(config, &mut progress, cancel) {
        Ok(report) => report,
        Err(audit::Error::Cancelled) => return send(AuditEvent::Cancelled),
        Err(e) => return send(AuditEvent::Failed(e.to_string())),
    };
    send(AuditEvent::Finished(Box::new(report.clone())));
    if let Some(checkpoint) = &config.checkpoint {
        // finished: nothing left to resume, and the file names members next to their scores
        let _ = std::fs::remove_file(&checkpoint.path);
    }
    match gallery(config, &report, cancel) {
        Ok(items) => send(AuditEvent::Gallery(items)),
        Err(message) => send(AuditEvent::GalleryFailed(message)),
    }
}

/// The most exposed members of every attack, each with its reconstruction from the first
/// trajectory strength (the one the attack itself used).
fn gallery(
    config: &AuditConfig,
    report: &Report,
    cancel: &AtomicBool,
) -> Result<Vec<(String, Vec<ExposedImage>)>, String> {
    let members = MemberGallery::load(config).map_err(|e| e.to_string())?;
    let t_start = config.trajectory.strengths.first().copied().unwrap_or(100);
    let steps = config.trajectory.steps.clamp(1, t_start.max(1));
    let mut out = Vec::new();
    for attack in &report.attacks {
        let mut items = Vec::new();
        for score in report.exposed(&attack.name, GALLERY_SIZE) {
            if cancel.load(Ordering::SeqCst) {
                return Err("cancelled".into());
            }
            if score.index >= members.len() {
                continue;
            }
            let reconstruction =
                members.reconstruction(score.index, t_start, steps, config.seed).map_err(|e| e.to_string())?;
            items.push(ExposedImage {
                id: score.id.clone(),
                index: score.index,
                score: score.score,
                caption: score.caption.clone().filter(|c| !c.is_empty()),
                original: members.original(score.index).map_err(|e| e.to_string())?,
                reconstruction,
            });
        }
        out.push((attack.name.clone(), items));
    }
    Ok(out)
}

/// A cost estimate measured on a worker thread (it loads the model and runs a batch of calls).
pub struct EstimateRun {
    result: Receiver<Result<CostEstimate, String>>,
    cancel: Arc<AtomicBool>,
    /// The parameters it measures (to tell when the form has changed since).
    pub config: serde_json::Value,
}

impl EstimateRun {
    pub fn start(config: AuditConfig, ctx: &egui::Context) -> std::io::Result<Self> {
        let (sender, result) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let key = estimate_key(&config);
        super::worker::spawn_reporting(
            "melo-estimate",
            ctx,
            sender,
            |message, send| send(Err(format!("internal error: {message}"))),
            move |send| send(estimate(&config, &flag).map_err(|e| e.to_string())),
        )?;
        Ok(Self { result, cancel, config: key })
    }

    /// The result once it is there (`Some` once; a thread gone without one is an error).
    pub fn poll(&self) -> Option<Result<CostEstimate, String>> {
        match self.result.try_recv() {
            Ok(r) => Some(r),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err("the estimate stopped unexpectedly".into())),
        }
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

impl Drop for EstimateRun {
    /// A superseded estimate stops at its next step instead of loading and timing for nothing.
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The parameters an estimate depends on, comparable between frames.
pub fn estimate_key(config: &AuditConfig) -> serde_json::Value {
    serde_json::to_value(config).unwrap_or_default()
}
