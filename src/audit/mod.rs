//! Privacy audit: membership-inference attacks on a diffusion model. An auditor gives a target
//! model (diffusers folder), known training members and non-members; the audit says, per attack,
//! how well members can be told apart — ROC, AUC with a bootstrap CI, TPR at 1 % / 0.1 % FPR.
//!
//! # Library API (used by `melo audit` and the GUI's privacy tab)
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//! use melo::audit::{self, AuditConfig, Preset};
//!
//! let config = AuditConfig::demo(Preset::Quick);          // or AuditConfig::new(target, members, nonmembers, preset)
//! let cancel = AtomicBool::new(false);                      // set from another thread: stops within a batch
//! let report = audit::run(&config, &mut |p| eprintln!("{} {}/{}", p.message, p.done, p.total), &cancel)?;
//! for a in &report.attacks {
//!     println!("{}: AUC {:.3} {:?}", a.name, a.metrics.auc, a.metrics.auc_ci95);
//! }
//! let exposed = report.exposed("loss", 8);                  // most exposed members (highest scores)
//! let (members, _nonmembers) = config.load_samples()?;      // their pixels, for display
//! let model = melo::diffusion::DiffusionModel::load(&config.target)?;
//! let i = exposed[0].index;
//! let steps = audit::reconstruction(&model, members.image(i), (members.channels, members.height, members.width), 100, 4, 0)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`AuditConfig`]: target, sample sources (`.npz` or image folder), attacks and their
//!   parameters, seed; [`Preset::Quick`] (200 + 200 samples, few queries, for interactive use) and
//!   [`Preset::Full`];
//! - [`run`]: the whole audit with a progress callback and a cancel flag, returning a [`Report`];
//! - [`Report`]: serde; per attack: metrics, ROC points, per-sample scores; parameters; timings;
//!   [`Report::exposed`]; [`reconstruction`] gives the model's reconstructions of one image;
//! - [`attacks`]: loss, PIA, SecMI, and the Cilloni trajectory attack, behind one trait;
//! - [`metrics`]: AUC (ties count ½), stratified bootstrap CI, TPR@FPR, balanced accuracy.
//!
//! Runs are deterministic for a seed. Nothing here depends on egui.

pub mod attacks;
pub mod classifier;
pub mod cli;
pub mod data;
mod error;
pub mod features;
pub mod metrics;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use attacks::loss::LossParams;
pub use attacks::pia::PiaParams;
pub use attacks::secmi::SecmiParams;
pub use attacks::trajectory::{reconstruction, TrajectoryParams};
pub use attacks::{Attack, AttackInput, AttackOutput, QueryRunner};
pub use data::{Image2d, SampleSet};
pub use error::{Error, Result};
pub use metrics::{BootstrapOptions, Metrics, RocPoint};
pub use report::{AttackReport, Report, SampleScore};

use crate::diffusion::DiffusionModel;

/// The attacks an audit can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttackKind {
    Loss,
    Pia,
    Secmi,
    Trajectory,
}

impl AttackKind {
    pub const ALL: [AttackKind; 4] = [AttackKind::Loss, AttackKind::Pia, AttackKind::Secmi, AttackKind::Trajectory];

    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Loss => "loss",
            AttackKind::Pia => "pia",
            AttackKind::Secmi => "secmi",
            AttackKind::Trajectory => "trajectory",
        }
    }
}

impl std::str::FromStr for AttackKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        AttackKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown attack '{s}' (known: loss, pia, secmi, trajectory, all)"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// 200 + 200 samples and fewer noise draws / timesteps / trajectory steps: an interactive audit.
    Quick,
    /// All samples and the reference parameters of `assets/demo_ddpm/leakage_pytorch.json`.
    Full,
}

/// Everything an audit needs. Serialised into the report as its parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditConfig {
    /// Diffusers folder: config.json, diffusion_pytorch_model.safetensors, scheduler_config.json.
    pub target: PathBuf,
    /// Known training members: `.npz` (key `images`, uint8) or a folder of PNG/JPEG images.
    pub members: PathBuf,
    /// Known non-members, same formats (ideally from the same distribution).
    pub nonmembers: PathBuf,
    /// Use only the first n of each set (`None`: all).
    pub max_per_set: Option<usize>,
    pub attacks: Vec<AttackKind>,
    pub loss: LossParams,
    pub pia: PiaParams,
    pub secmi: SecmiParams,
    pub trajectory: TrajectoryParams,
    /// Seeds the noise draws, the classifier split and the bootstrap.
    pub seed: u64,
    /// Images per model call.
    pub batch_size: usize,
    pub bootstrap_resamples: usize,
    /// Written reports name each sample by its file name (or `.npz` index) instead of a
    /// pseudonym (`member-0001`): off by default, since a file name next to a membership score
    /// can identify a patient in the training set.
    #[serde(default)]
    pub report_file_names: bool,
}

impl AuditConfig {
    pub fn new(
        target: impl Into<PathBuf>,
        members: impl Into<PathBuf>,
        nonmembers: impl Into<PathBuf>,
        preset: Preset,
    ) -> Self {
        let mut c = Self {
            target: target.into(),
            members: members.into(),
            nonmembers: nonmembers.into(),
            max_per_set: None,
            attacks: AttackKind::ALL.to_vec(),
            loss: LossParams::default(),
            pia: PiaParams::default(),
            secmi: SecmiParams::default(),
            trajectory: TrajectoryParams::default(),
            seed: 0,
            batch_size: 100,
            bootstrap_resamples: 2000,
            report_file_names: false,
        };
        if preset == Preset::Quick {
            c.max_per_set = Some(200);
            c.loss = LossParams { timesteps: vec![100], draws: 2 };
            // SecMI keeps its reference schedule (t = 100 in steps of 10): coarser inversions
            // measured at chance or inverted on the demo (interval 20: AUC 0.45; t = 50: 0.31).
            c.trajectory.strengths = vec![100];
            c.trajectory.steps = 4;
            c.trajectory.draws = 1;
            c.bootstrap_resamples = 1000;
        }
        c
    }

    /// The shipped demo target (`assets/demo_ddpm`, see [`demo_dir`]) with its member and
    /// non-member sets.
    pub fn demo(preset: Preset) -> Self {
        let dir = demo_dir();
        Self::new(dir.clone(), dir.join("members.npz"), dir.join("nonmembers.npz"), preset)
    }

    pub fn load_samples(&self) -> Result<(SampleSet, SampleSet)> {
        let members = SampleSet::load(&self.members, self.max_per_set)?;
        let nonmembers = SampleSet::load(&self.nonmembers, self.max_per_set)?;
        Ok((members, nonmembers))
    }

    /// The attacks as trait objects, with this config's parameters.
    pub fn build_attacks(&self) -> Vec<Box<dyn Attack>> {
        self.attacks
            .iter()
            .map(|k| -> Box<dyn Attack> {
                match k {
                    AttackKind::Loss => Box::new(attacks::loss::LossAttack { params: self.loss.clone() }),
                    AttackKind::Pia => Box::new(attacks::pia::PiaAttack { params: self.pia.clone() }),
                    AttackKind::Secmi => Box::new(attacks::secmi::SecmiAttack { params: self.secmi.clone() }),
                    AttackKind::Trajectory => {
                        Box::new(attacks::trajectory::TrajectoryAttack { params: self.trajectory.clone() })
                    }
                }
            })
            .collect()
    }
}

/// `$MELO_DEMO_DDPM`, else `assets/demo_ddpm` under the working directory, else under the
/// source tree.
pub fn demo_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MELO_DEMO_DDPM") {
        return PathBuf::from(d);
    }
    let local = PathBuf::from("assets/demo_ddpm");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo_ddpm")
}

/// Progress of a running audit: what is being done, and per-sample model calls done / planned.
#[derive(Debug, Clone)]
pub struct Progress {
    pub message: String,
    pub done: usize,
    pub total: usize,
}

/// The name a written report gives sample `index` of the member (or non-member) set unless
/// file names were asked for: `member-0001`, `nonmember-0001` (1-based, in load order).
pub fn pseudonym(member: bool, index: usize) -> String {
    format!("{}-{:04}", if member { "member" } else { "nonmember" }, index + 1)
}

/// Checks the two sets against each other and the model; returns warnings (overlap, samples
/// named by [`pseudonym`], since warnings go into written reports).
fn check_samples(model: &DiffusionModel, members: &SampleSet, nonmembers: &SampleSet) -> Result<Vec<String>> {
    for (set, what) in [(members, "members"), (nonmembers, "non-members")] {
        if set.len() < 2 {
            return Err(Error::Data(format!(
                "{}: {} {what}; an audit needs at least 2 members and 2 non-members",
                set.source.display(),
                set.len()
            )));
        }
    }
    let cfg = model.unet.config();
    for set in [members, nonmembers] {
        if set.channels != cfg.in_channels {
            return Err(Error::Data(format!(
                "{}: images have {} channel(s), the model takes {}",
                set.source.display(),
                set.channels,
                cfg.in_channels
            )));
        }
        if let Some(s) = cfg.sample_size {
            if set.height != s || set.width != s {
                return Err(Error::Data(format!(
                    "{}: images are {}×{}, the model takes {s}×{s} (sample_size in config.json); \
                     resize or pad them the way the training images were",
                    set.source.display(),
                    set.width,
                    set.height
                )));
            }
        }
    }
    if (members.height, members.width) != (nonmembers.height, nonmembers.width) {
        return Err(Error::Data(format!(
            "members are {}×{}, non-members {}×{}",
            members.width, members.height, nonmembers.width, nonmembers.height
        )));
    }
    let mut warnings = Vec::new();
    let overlap = members.exact_overlap(nonmembers);
    if !overlap.is_empty() {
        let examples: Vec<String> =
            overlap.iter().take(3).map(|&(i, j)| format!("{} = {}", pseudonym(true, i), pseudonym(false, j))).collect();
        warnings.push(format!(
            "{} image(s) appear in both sets ({}{}): the sets overlap, so no attack can tell those apart and the \
             AUC is biased toward 0.5",
            overlap.len(),
            examples.join(", "),
            if overlap.len() > 3 { ", …" } else { "" }
        ));
    }
    Ok(warnings)
}

/// Runs the audit. `progress` is called after every batch of model calls; setting `cancel`
/// stops the audit before the next batch (within a second on the demo) with [`Error::Cancelled`].
pub fn run(config: &AuditConfig, progress: &mut dyn FnMut(Progress), cancel: &AtomicBool) -> Result<Report> {
    let started = Instant::now();
    if config.attacks.is_empty() {
        return Err(Error::Params("no attack selected".into()));
    }
    if config.batch_size == 0 {
        return Err(Error::Params("batch size must be positive".into()));
    }
    progress(Progress { message: "loading the target model".into(), done: 0, total: 0 });
    let model = DiffusionModel::load(&config.target)?;
    let (members, nonmembers) = config.load_samples()?;
    let warnings = check_samples(&model, &members, &nonmembers)?;
    let load_seconds = started.elapsed().as_secs_f64();

    let device = Device::Cpu;
    let images = Tensor::cat(&[members.to_tensor(&device)?, nonmembers.to_tensor(&device)?], 0)?;
    let is_member: Vec<bool> = (0..members.len()).map(|_| true).chain((0..nonmembers.len()).map(|_| false)).collect();
    let n = is_member.len();
    let attacks = config.build_attacks();
    let total: usize = attacks.iter().map(|a| a.queries_per_sample() * n).sum();
    let mut runner = QueryRunner::new(&model, config.batch_size, cancel, progress, total);
    let input = AttackInput { images: &images, is_member: &is_member, seed: config.seed };
    let bootstrap = BootstrapOptions { resamples: config.bootstrap_resamples, seed: config.seed };

    let mut reports = Vec::with_capacity(attacks.len());
    for attack in &attacks {
        runner.check_cancel()?;
        let t0 = Instant::now();
        let out = attack.run(&input, &mut runner)?;
        let seconds = t0.elapsed().as_secs_f64();
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        let mut scores = Vec::with_capacity(out.evaluated.len());
        for (&i, &s) in out.evaluated.iter().zip(&out.scores) {
            let member = is_member[i];
            if member {
                pos.push(s)
            } else {
                neg.push(s)
            }
            let (index, id) = if member {
                (i, members.ids[i].clone())
            } else {
                (i - members.len(), nonmembers.ids[i - members.len()].clone())
            };
            scores.push(SampleScore { index, id, member, score: s });
        }
        let (metrics, roc) = metrics::evaluate(&pos, &neg, &bootstrap)?;
        let evaluated_on = if out.evaluated.len() == n {
            "all samples".to_string()
        } else {
            format!("evaluation split ({} of {n} samples)", out.evaluated.len())
        };
        reports.push(AttackReport {
            name: attack.name().to_string(),
            description: attack.description(),
            queries_per_sample: attack.queries_per_sample(),
            seconds,
            evaluated_on,
            notes: out.notes,
            metrics,
            roc,
            scores,
        });
    }
    let cfg = model.unet.config();
    Ok(Report {
        melo_version: env!("CARGO_PKG_VERSION").to_string(),
        score_convention: "higher = more likely a member".into(),
        params: config.clone(),
        target: TargetInfo {
            dir: config.target.display().to_string(),
            parameters: model.unet.num_params(),
            sample_size: cfg.sample_size,
            num_train_timesteps: model.schedule.num_train_timesteps(),
        },
        members: config.members.display().to_string(),
        nonmembers: config.nonmembers.display().to_string(),
        n_members: members.len(),
        n_nonmembers: nonmembers.len(),
        warnings,
        attacks: reports,
        timings: report::Timings {
            load_seconds,
            total_seconds: started.elapsed().as_secs_f64(),
            threads: candle_core::utils::get_num_threads(),
        },
    })
}

use report::TargetInfo;
