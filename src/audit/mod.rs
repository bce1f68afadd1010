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

pub mod adapter;
pub mod attacks;
pub mod classifier;
pub mod cli;
pub mod data;
mod error;
pub mod features;
pub mod gallery;
pub mod metrics;
pub mod report;
pub mod target;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use attacks::clid::ClidParams;
pub use attacks::loss::LossParams;
pub use attacks::pia::PiaParams;
pub use attacks::secmi::SecmiParams;
pub use attacks::trajectory::{reconstruction, TrajectoryParams};
pub use attacks::{Attack, AttackInput, AttackOutput, QueryRunner};
pub use data::{Image2d, SampleSet};
pub use error::{Error, Result};
pub use metrics::{BootstrapOptions, Metrics, RocPoint};
pub use report::{AttackReport, Report, SampleScore};
pub use target::{AuditTarget, Conditioning, LatentTarget};

use crate::diffusion::sd::pipeline::{detect, PipelineKind};
use crate::diffusion::sd::stable_diffusion::StableDiffusion;
use crate::diffusion::DiffusionModel;

/// The attacks an audit can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttackKind {
    Loss,
    Pia,
    Secmi,
    Trajectory,
    Clid,
}

impl AttackKind {
    pub const ALL: [AttackKind; 5] =
        [AttackKind::Loss, AttackKind::Pia, AttackKind::Secmi, AttackKind::Trajectory, AttackKind::Clid];

    /// The attacks that apply to the model in `target`: all of them for a Stable Diffusion
    /// pipeline, all but CLiD (which needs captions) otherwise.
    pub fn for_target(target: &Path) -> Vec<AttackKind> {
        let conditional = matches!(detect(target), PipelineKind::StableDiffusion(_));
        Self::ALL.into_iter().filter(|k| conditional || !k.needs_captions()).collect()
    }

    /// Whether the attack needs a caption-conditioned model.
    pub fn needs_captions(self) -> bool {
        self == AttackKind::Clid
    }

    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Loss => "loss",
            AttackKind::Pia => "pia",
            AttackKind::Secmi => "secmi",
            AttackKind::Trajectory => "trajectory",
            AttackKind::Clid => "clid",
        }
    }
}

impl std::str::FromStr for AttackKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        AttackKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown attack '{s}' (known: loss, pia, secmi, trajectory, clid, all)"))
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
    /// Diffusers folder: a pixel-space model (config.json, diffusion_pytorch_model.safetensors,
    /// scheduler_config.json) or a Stable Diffusion pipeline (model_index.json and its parts).
    pub target: PathBuf,
    /// Known training members: `.npz` (key `images`, uint8), a folder of PNG/JPEG images, or
    /// (for a pipeline) a captioned folder with `metadata.jsonl`.
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
    #[serde(default)]
    pub clid: ClidParams,
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
    /// Where finished attacks are saved while the audit runs, and whether to pick them up.
    /// Not part of the parameters (a resumed audit is the same audit).
    #[serde(skip)]
    pub checkpoint: Option<Checkpoint>,
}

/// An audit's checkpoint: after each attack the finished attacks' reports are written here
/// (atomically), so that a crashed or cancelled audit continues with the next attack. It holds
/// sample names and captions, like the report in memory: it stays with the auditor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub path: PathBuf,
    /// Reuse the attacks the file holds (when it was made with the same parameters).
    pub resume: bool,
}

#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    params: serde_json::Value,
    attacks: Vec<AttackReport>,
}

impl Checkpoint {
    /// The finished attacks of an earlier run with the same parameters (none without `resume`
    /// or without a file); a file made with other parameters is an error, not silently reused.
    fn load(&self, config: &AuditConfig) -> Result<Vec<AttackReport>> {
        if !self.resume || !self.path.exists() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let file: CheckpointFile = serde_json::from_str(&text)
            .map_err(|e| Error::Data(format!("{}: not an audit checkpoint ({e})", self.path.display())))?;
        if file.params != params_value(config)? {
            return Err(Error::Params(format!(
                "{}: the checkpoint was made with other parameters (target, sets, attacks or their settings); \
                 run without --resume to start over",
                self.path.display()
            )));
        }
        Ok(file.attacks)
    }

    fn save(&self, config: &AuditConfig, attacks: &[AttackReport]) -> Result<()> {
        let file = CheckpointFile { params: params_value(config)?, attacks: attacks.to_vec() };
        crate::atomic::write_atomic(&self.path, |w| {
            serde_json::to_writer(&mut *w, &file).map_err(std::io::Error::other)
        })?;
        Ok(())
    }
}

/// The parameters that decide an audit's results, as compared between a checkpoint and a run.
fn params_value(config: &AuditConfig) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(config).map_err(|e| Error::Params(e.to_string()))?;
    // how many images go into one model call does not change a score
    if let Some(m) = v.as_object_mut() {
        m.remove("batch_size");
    }
    Ok(v)
}

impl AuditConfig {
    pub fn new(
        target: impl Into<PathBuf>,
        members: impl Into<PathBuf>,
        nonmembers: impl Into<PathBuf>,
        preset: Preset,
    ) -> Self {
        let target = target.into();
        let mut c = Self {
            attacks: AttackKind::for_target(&target),
            target,
            members: members.into(),
            nonmembers: nonmembers.into(),
            max_per_set: None,
            loss: LossParams::default(),
            pia: PiaParams::default(),
            secmi: SecmiParams::default(),
            trajectory: TrajectoryParams::default(),
            clid: ClidParams::default(),
            seed: 0,
            batch_size: 100,
            bootstrap_resamples: 2000,
            report_file_names: false,
            checkpoint: None,
        };
        if preset == Preset::Quick {
            c.max_per_set = Some(200);
            c.loss = LossParams { timesteps: vec![100], draws: 2 };
            // SecMI keeps its reference schedule (t = 100 in steps of 10): coarser inversions
            // measured at chance or inverted on the demo (interval 20: AUC 0.45; t = 50: 0.31).
            c.trajectory.strengths = vec![100];
            c.trajectory.steps = 4;
            c.trajectory.draws = 1;
            c.clid = ClidParams { timesteps: vec![100, 200], draws: 1 };
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

    /// The shipped latent demo (`assets/demo_sd`, see [`demo_sd_dir`]): a small Stable
    /// Diffusion pipeline with its captioned `members/` and `nonmembers/`.
    pub fn demo_sd(preset: Preset) -> Self {
        let dir = demo_sd_dir();
        Self::new(dir.clone(), dir.join("members"), dir.join("nonmembers"), preset)
    }

    /// The member and non-member sets as a pixel-space model takes them (no resizing).
    pub fn load_samples(&self) -> Result<(SampleSet, SampleSet)> {
        let members = SampleSet::load(&self.members, self.max_per_set)?;
        let nonmembers = SampleSet::load(&self.nonmembers, self.max_per_set)?;
        Ok((members, nonmembers))
    }

    /// The sets as a pipeline generating `resolution`² images takes them: captioned folders
    /// are resized and centre-cropped the way diffusers' training script does; other sources
    /// must already be RGB at that size, and are conditioned on the empty caption.
    pub fn load_captioned_samples(&self, resolution: usize) -> Result<(SampleSet, SampleSet)> {
        let load = |path: &Path| -> Result<SampleSet> {
            if data::is_captioned_folder(path) {
                SampleSet::load_captioned(path, resolution, self.max_per_set)
            } else {
                SampleSet::load(path, self.max_per_set)
            }
        };
        Ok((load(&self.members)?, load(&self.nonmembers)?))
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
                    AttackKind::Clid => Box::new(attacks::clid::ClidAttack { params: self.clid.clone() }),
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

/// `$MELO_DEMO_SD`, else `assets/demo_sd` under the working directory, else under the source
/// tree.
pub fn demo_sd_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MELO_DEMO_SD") {
        return PathBuf::from(d);
    }
    let local = PathBuf::from("assets/demo_sd");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo_sd")
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
    check_set_sizes(members, nonmembers)?;
    let cfg = model.unet.config();
    let expected = (cfg.in_channels, cfg.sample_size, "sample_size in config.json");
    check_image_shapes(members, nonmembers, expected)?;
    Ok(overlap_warnings(members, nonmembers))
}

/// [`check_samples`] for a Stable Diffusion pipeline: RGB at its resolution, captions for both
/// sets or neither.
fn check_latent_samples(sd: &StableDiffusion, members: &SampleSet, nonmembers: &SampleSet) -> Result<Vec<String>> {
    check_set_sizes(members, nonmembers)?;
    let r = sd.resolution();
    check_image_shapes(members, nonmembers, (3, Some(r), "the pipeline's resolution: UNet sample_size × VAE scale"))?;
    let mut warnings = overlap_warnings(members, nonmembers);
    match (&members.captions, &nonmembers.captions) {
        (Some(_), Some(_)) => {}
        (None, None) => warnings.push(
            "no captions (no metadata.jsonl): every image is queried with the empty caption, which under-states a \
             model fine-tuned on captions"
                .into(),
        ),
        _ => {
            return Err(Error::Data(
                "one set has captions (metadata.jsonl) and the other not: give both as captioned folders".into(),
            ))
        }
    }
    Ok(warnings)
}

fn check_set_sizes(members: &SampleSet, nonmembers: &SampleSet) -> Result<()> {
    for (set, what) in [(members, "members"), (nonmembers, "non-members")] {
        if set.len() < 2 {
            return Err(Error::Data(format!(
                "{}: {} {what}; an audit needs at least 2 members and 2 non-members",
                set.source.display(),
                set.len()
            )));
        }
    }
    Ok(())
}

/// Channels and size every image must have: (channels, side, where the side comes from).
fn check_image_shapes(
    members: &SampleSet,
    nonmembers: &SampleSet,
    (channels, side, source): (usize, Option<usize>, &str),
) -> Result<()> {
    for set in [members, nonmembers] {
        if set.channels != channels {
            return Err(Error::Data(format!(
                "{}: images have {} channel(s), the model takes {channels}",
                set.source.display(),
                set.channels,
            )));
        }
        if let Some(s) = side {
            if set.height != s || set.width != s {
                return Err(Error::Data(format!(
                    "{}: images are {}×{}, the model takes {s}×{s} ({source}); \
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
    Ok(())
}

fn overlap_warnings(members: &SampleSet, nonmembers: &SampleSet) -> Vec<String> {
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
    warnings
}

/// Runs the audit. `progress` is called after every batch of model calls; setting `cancel`
/// stops the audit before the next batch (within a second on the demo) with [`Error::Cancelled`].
/// The target folder decides the model kind: a pixel-space DDPM, or a Stable Diffusion pipeline
/// attacked in its latent space with each image's caption.
pub fn run(config: &AuditConfig, progress: &mut dyn FnMut(Progress), cancel: &AtomicBool) -> Result<Report> {
    let started = Instant::now();
    if config.attacks.is_empty() {
        return Err(Error::Params("no attack selected".into()));
    }
    if config.batch_size == 0 {
        return Err(Error::Params("batch size must be positive".into()));
    }
    progress(Progress { message: "loading the target model".into(), done: 0, total: 0 });
    let device = Device::Cpu;
    if !config.target.is_dir() {
        return Err(Error::Model(crate::diffusion::Error::Input(format!(
            "{}: not a model folder (no such folder)",
            config.target.display()
        ))));
    }
    match detect(&config.target) {
        PipelineKind::Unsupported(reason) => Err(Error::Model(crate::diffusion::Error::Unsupported(reason))),
        PipelineKind::PixelDdpm => {
            let model = DiffusionModel::load(&config.target)?;
            let (members, nonmembers) = config.load_samples()?;
            let warnings = check_samples(&model, &members, &nonmembers)?;
            let load_seconds = started.elapsed().as_secs_f64();
            let images = Tensor::cat(&[members.to_tensor(&device)?, nonmembers.to_tensor(&device)?], 0)?;
            let cfg = model.unet.config();
            let target = TargetInfo {
                dir: config.target.display().to_string(),
                kind: "pixel-space DDPM (UNet2DModel)".into(),
                parameters: model.unet.num_params(),
                sample_size: cfg.sample_size,
                num_train_timesteps: model.schedule.num_train_timesteps(),
            };
            let sets = Sets { members: &members, nonmembers: &nonmembers, images: &images, pixels: None };
            let attacks = run_attacks(config, &model, &sets, progress, cancel)?;
            Ok(finish(config, target, &sets, warnings, attacks, load_seconds, started))
        }
        PipelineKind::StableDiffusion(_) => {
            let sd = StableDiffusion::load(&config.target)?;
            let (members, nonmembers) = config.load_captioned_samples(sd.resolution())?;
            let warnings = check_latent_samples(&sd, &members, &nonmembers)?;
            if members.captions.is_none() && config.attacks.iter().any(|k| k.needs_captions()) {
                return Err(Error::Params(
                    "CLiD needs the images' captions: give members and non-members as folders with metadata.jsonl"
                        .into(),
                ));
            }
            let pixels = Tensor::cat(&[members.to_tensor(&device)?, nonmembers.to_tensor(&device)?], 0)?;
            let captions: Vec<String> = match (&members.captions, &nonmembers.captions) {
                (Some(a), Some(b)) => a.iter().chain(b).cloned().collect(),
                _ => vec![String::new(); members.len() + nonmembers.len()],
            };
            let latents = encode_candidates(&sd, &pixels, config.batch_size, progress, cancel)?;
            let conditioned = LatentTarget::new(&sd, &captions)?;
            let load_seconds = started.elapsed().as_secs_f64();
            let target = TargetInfo {
                dir: config.target.display().to_string(),
                kind: format!(
                    "Stable Diffusion pipeline ({}, {} prediction, {} px, latents {}×{}×{})",
                    sd.index.class.class_name(),
                    sd.index.prediction.name(),
                    sd.resolution(),
                    sd.index.latent_channels,
                    sd.index.latent_size,
                    sd.index.latent_size
                ),
                parameters: sd.unet.num_params(),
                sample_size: Some(sd.resolution()),
                num_train_timesteps: sd.schedule.num_train_timesteps(),
            };
            let sets = Sets { members: &members, nonmembers: &nonmembers, images: &latents, pixels: Some(&pixels) };
            let attacks = run_attacks(config, &conditioned, &sets, progress, cancel)?;
            Ok(finish(config, target, &sets, warnings, attacks, load_seconds, started))
        }
    }
}

/// The candidates of one audit in the model's space, members first.
struct Sets<'a> {
    members: &'a SampleSet,
    nonmembers: &'a SampleSet,
    images: &'a Tensor,
    pixels: Option<&'a Tensor>,
}

/// VAE latents of the candidates, in batches (cancellable).
fn encode_candidates(
    sd: &StableDiffusion,
    pixels: &Tensor,
    batch: usize,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<Tensor> {
    let n = pixels.dim(0)?;
    let mut parts = Vec::with_capacity(n.div_ceil(batch));
    let mut start = 0;
    while start < n {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        progress(Progress { message: format!("encoding the images with the VAE ({start}/{n})"), done: 0, total: 0 });
        let len = batch.min(n - start);
        parts.push(sd.encode_images(&pixels.narrow(0, start, len)?)?);
        start += len;
    }
    Ok(Tensor::cat(&parts, 0)?)
}

fn run_attacks(
    config: &AuditConfig,
    model: &dyn AuditTarget,
    sets: &Sets,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<Vec<AttackReport>> {
    let (members, nonmembers) = (sets.members, sets.nonmembers);
    let is_member: Vec<bool> = (0..members.len()).map(|_| true).chain((0..nonmembers.len()).map(|_| false)).collect();
    let n = is_member.len();
    let attacks = config.build_attacks();
    let total: usize = attacks.iter().map(|a| a.queries_per_sample() * n).sum();
    let mut runner = QueryRunner::new(model, config.batch_size, cancel, progress, total);
    let input = AttackInput { images: sets.images, pixels: sets.pixels, is_member: &is_member, seed: config.seed };
    let bootstrap = BootstrapOptions { resamples: config.bootstrap_resamples, seed: config.seed };
    let caption = |member: bool, index: usize| -> Option<String> {
        let set = if member { members } else { nonmembers };
        set.captions.as_ref().and_then(|c| c.get(index).cloned())
    };

    let earlier = match &config.checkpoint {
        Some(c) => c.load(config)?,
        None => Vec::new(),
    };
    let mut reports = Vec::with_capacity(attacks.len());
    for attack in &attacks {
        runner.check_cancel()?;
        if let Some(r) = earlier.iter().find(|r| r.name == attack.name()) {
            runner.done += attack.queries_per_sample() * n;
            runner.label = format!("{}: taken from the checkpoint", attack.name());
            reports.push(r.clone());
            continue;
        }
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
            scores.push(SampleScore { index, id, member, score: s, caption: caption(member, index) });
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
        if let Some(c) = &config.checkpoint {
            c.save(config, &reports)?;
        }
    }
    Ok(reports)
}

fn finish(
    config: &AuditConfig,
    target: TargetInfo,
    sets: &Sets,
    warnings: Vec<String>,
    attacks: Vec<AttackReport>,
    load_seconds: f64,
    started: Instant,
) -> Report {
    Report {
        melo_version: env!("CARGO_PKG_VERSION").to_string(),
        score_convention: "higher = more likely a member".into(),
        params: config.clone(),
        target,
        members: config.members.display().to_string(),
        nonmembers: config.nonmembers.display().to_string(),
        n_members: sets.members.len(),
        n_nonmembers: sets.nonmembers.len(),
        warnings,
        attacks,
        timings: report::Timings {
            load_seconds,
            total_seconds: started.elapsed().as_secs_f64(),
            threads: candle_core::utils::get_num_threads(),
        },
    }
}

use report::TargetInfo;
