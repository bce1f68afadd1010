//! The training loop behind `melo train`.
//!
//! One recipe for the three methods, after MeLo (Zhu et al. 2024, see `docs/results.md`):
//! AdamW (β = 0.9 / 0.999, decoupled weight decay on matrices only), linear warm-up then
//! cosine decay to `min_lr`, cross-entropy with label smoothing, per-class loss weights
//! n / (C · n_c) when classes are skewed, random flips, validation after every epoch, and the
//! epoch with the best validation macro AUC kept (ties: lower validation loss). The kept
//! weights are evaluated once on the test split — through the engine's own inference path for
//! adapters, so the recorded metrics are what `melo predict` reproduces.
//!
//! - `lora`: MeLo — rank-r updates of q and v (or, with `--targets`, of the fused qkv map and
//!   the MLP's two maps) in every block + a head; backbone frozen.
//! - `linear`: a linear probe — backbone frozen, head only. The features of the (flipped)
//!   training images are computed once, by the engine's inference pass, then the head is
//!   trained on them.
//! - `full`: every backbone weight but the position embedding (frozen: it is resized
//!   bicubically to each input grid) and the head. The result is a whole model (not an adapter:
//!   the engine keeps one shared backbone), written with its metrics for comparison.
//!
//! LoRA and full fine-tuning run the backbone through `model::core`'s training pass (forward
//! with a tape, hand-written backward for exactly the trained tensors); the head and the loss
//! stay on candle (tiny), and AdamW is one fused pass per tensor on plain buffers.
//!
//! Checkpoints (`OUT` with extension `.ckpt`) are written atomically after every epoch; with
//! `--resume` a run continues after the last finished epoch and ends exactly as an
//! uninterrupted one (the shuffles and flips of epoch e depend only on the seed and e).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use super::augment::Augment;
use super::augment::Transform;
use super::calibrate;
use super::data::{DataSource, Prepared, Split, SplitFractions};
use super::metrics::{evaluate, Evaluation};
use super::{Error, Result};
use crate::model::calibration::Calibration;
use crate::model::core::{Backbone, Grads, Lora, Named, ShardedTape, Weights};
use crate::model::lora::{DataSetSummary, LoraTarget, TrainingSummary};
use crate::model::ood::{OodSummary, THRESHOLD_QUANTILE};
use crate::model::vit::{LowRank, QkvLora};
use crate::model::{Adapter, AdapterMetadata, Engine, Pooling, VisionTransformer};

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// LoRA on q and v of every block, plus a head (MeLo).
    Lora,
    /// Head only, on the frozen backbone (linear probe).
    Linear,
    /// Every weight (full fine-tuning).
    Full,
}

/// Everything `melo train` needs. Serialised into the report (which is shared with the
/// adapter) without its three paths: sites name folders after patients, and the build
/// machine's folders are nobody's business. They still count for `--resume` (the
/// checkpoint's fingerprint includes them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOptions {
    #[serde(default, skip_serializing)]
    pub data: PathBuf,
    pub method: Method,
    pub rank: usize,
    pub alpha: f64,
    /// Where LoRA acts (q and v unless asked otherwise; not written when q and v, so that
    /// reports and checkpoints of earlier runs read the same).
    #[serde(default, skip_serializing_if = "LoraTarget::is_qv")]
    pub targets: LoraTarget,
    pub epochs: usize,
    pub lr: f64,
    /// Final learning rate of the cosine schedule.
    pub min_lr: f64,
    /// Fraction of all steps spent warming up linearly.
    pub warmup: f64,
    pub batch: usize,
    /// Square input side (pixels); a multiple of the patch size (14) uses every pixel.
    pub size: usize,
    pub seed: u64,
    #[serde(default, skip_serializing)]
    pub out: PathBuf,
    pub task: String,
    pub labels: Option<Vec<String>>,
    pub modality: String,
    pub description: String,
    pub augment: Augment,
    pub label_smoothing: f64,
    pub weight_decay: f64,
    /// Weight the loss by n / (C · n_c) (on by default; off only when classes are balanced).
    pub class_weights: bool,
    pub pooling: Pooling,
    #[serde(default, skip_serializing)]
    pub backbone: PathBuf,
    /// Use at most this many items of each split (quick runs and tests).
    pub limit: Option<usize>,
    pub split: SplitFractions,
    pub resume: bool,
    /// LoRA and full fine-tuning: first train the head alone for this many epochs on the frozen
    /// backbone's features (computed once), keeping its best validation epoch, then train
    /// everything from there ("LP-FT", Kumar et al. 2022). 0 = start from a random head.
    #[serde(default)]
    pub head_epochs: usize,
    /// Share of in-distribution validation images that pass the fitted OOD threshold.
    #[serde(default = "default_ood_pass_rate")]
    pub ood_pass_rate: f64,
    /// Peak learning rate of that head-only phase.
    #[serde(default = "default_head_lr")]
    pub head_lr: f64,
    /// Stop (checkpoint kept, no adapter written) after this many epochs in this invocation;
    /// `--resume` continues. Lets a long run be split over sessions.
    pub stop_after: Option<usize>,
    pub progress: bool,
    /// The adapter's intended use, for its model facts; empty: a research-use default that
    /// names the task, modality and classes.
    #[serde(default)]
    pub intended_use: String,
    /// Known limitations stated by whoever trains (model facts), listed before the ones the
    /// run itself shows (one data set, input size, classes with few test images).
    #[serde(default)]
    pub limitations: Vec<String>,
}

fn default_ood_pass_rate() -> f64 {
    THRESHOLD_QUANTILE
}

fn default_head_lr() -> f64 {
    3e-3
}

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_macro_auc: Option<f64>,
    pub val_accuracy: f64,
    pub val_loss: f64,
    pub seconds: f64,
    pub train_images_per_second: f64,
    pub learning_rate: f64,
    /// Median seconds of one full-batch step (forward, backward, update) in this epoch, the
    /// run's first [`WARM_UP_STEPS`] steps left out: the measure the PyTorch peer reports
    /// (`benches/torch_train.py`), free of first-touch page faults and of validation.
    #[serde(default)]
    pub step_seconds_median: Option<f64>,
}

/// Steps at the start of a run (or of a resumed run) left out of the step timings: the first
/// steps allocate the tape and the optimiser's moments.
pub const WARM_UP_STEPS: usize = 2;

/// The name and licence a run records for its data (never its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSetInfo {
    /// E.g. `PneumoniaMNIST (MedMNIST v2)`; no path separators.
    pub name: String,
    /// E.g. `CC BY 4.0`; empty: not stated.
    pub licence: String,
}

impl DataSetInfo {
    /// The name when none is given: a MedMNIST file's official name when the file name is one
    /// of theirs (`pneumoniamnist.npz`, `bloodmnist_224.npz`), else `unnamed`. Never the
    /// file's or folder's own name, which may be a patient's.
    pub fn default_for(data: &Path) -> Self {
        Self { name: super::data::medmnist_name(data).unwrap_or_else(|| "unnamed".into()), licence: String::new() }
    }

    fn check(&self) -> Result<()> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(Error::Options("--data-name must be 1 to 200 printable characters".into()));
        }
        if crate::model::lora::looks_like_path(name) || crate::model::lora::looks_like_path(&self.licence) {
            return Err(Error::Options(
                "--data-name and --data-licence must not hold / or \\ (the adapter records a name, never a path)"
                    .into(),
            ));
        }
        if self.licence.chars().any(char::is_control) {
            return Err(Error::Options("--data-licence must be printable".into()));
        }
        Ok(())
    }
}

/// What a run produced (also written as `OUT` with extension `.report.json`). Made to be
/// shared with the adapter: the data set by name, licence and counts, the adapter by its file
/// name, no paths.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainReport {
    pub task: String,
    pub method: Method,
    pub classes: Vec<String>,
    /// The data set's name ([`DataSetInfo`]).
    pub data: String,
    #[serde(default)]
    pub data_licence: String,
    pub train_samples: usize,
    pub val_samples: usize,
    pub test_samples: usize,
    /// Images used per split and class (as in the adapter's `data_set.counts`).
    #[serde(default)]
    pub class_counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// Files that could not be read and were left out (all splits); which ones and why is
    /// printed on the terminal, not recorded.
    #[serde(default)]
    pub skipped_files: usize,
    pub trainable_parameters: usize,
    pub backbone_parameters: usize,
    /// Trainable ÷ (backbone + head) parameters, in percent.
    pub trainable_percent: f64,
    /// The adapter's file name (not its folder).
    pub file: PathBuf,
    pub file_bytes: u64,
    /// Wall time of the epochs (feature extraction included for linear probes; data loading
    /// and test evaluation excluded).
    pub train_seconds: f64,
    /// Training images processed per second of `train_seconds` (forward + backward + update).
    pub train_images_per_second: f64,
    /// Batch size ÷ the median full-batch step time over all epochs, warm-up steps left out
    /// (see [`EpochRecord::step_seconds_median`]); `None` for linear probes and for runs
    /// too short to time.
    #[serde(default)]
    pub step_images_per_second: Option<f64>,
    pub best_epoch: usize,
    pub history: Vec<EpochRecord>,
    /// Validation macro AUC of the head-only phase's kept head (`head_epochs` > 0), i.e. of
    /// the linear probe the LoRA / full phase started from.
    #[serde(default)]
    pub head_phase_val_auc: Option<f64>,
    pub val: Evaluation,
    pub test: Evaluation,
    /// Probabilities of the first test items (at most 64), the uncalibrated softmax (before
    /// `calibration`'s temperature): the adapter tests reproduce these from image files.
    pub test_probabilities_head: Vec<Vec<f32>>,
    pub options: TrainOptions,
    /// Temperature fitted on validation, ECE / Brier / reliability bins on test before and
    /// after (issue 15); `None` for multi-label heads, full fine-tuning, or a failed fit.
    #[serde(default)]
    pub calibration: Option<Calibration>,
    /// The adapter's out-of-distribution detector (statistics in the adapter file).
    #[serde(default)]
    pub ood: Option<OodSummary>,
}

/// Items of the test split whose probabilities the report keeps.
pub const REPORT_TEST_HEAD: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointMeta {
    fingerprint: String,
    epochs_done: usize,
    step: usize,
    best_epoch: usize,
    best_val_auc: f64,
    best_val_loss: f64,
    history: Vec<EpochRecord>,
    train_seconds: f64,
}

/// AdamW with its moments exposed (for checkpoints), on plain buffers: one fused pass per
/// tensor (candle's ops took a dozen passes and allocations per tensor, which for full
/// fine-tuning's 22 M parameters cost as much as a forward pass at 56 px). Public so that the
/// tests can compare its steps with `torch.optim.AdamW`'s.
pub struct AdamW {
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    step: usize,
    weight_decay: f64,
}

impl AdamW {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    /// Zero moments for tensors of `sizes` values each.
    pub fn new(sizes: &[usize], weight_decay: f64) -> Self {
        let m: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        Self { v: m.clone(), m, step: 0, weight_decay }
    }

    /// One update of every tensor (`params[i]` with gradient `grads[i]`) at learning rate
    /// `lr`; decoupled weight decay on matrices (2-D shapes) only, not biases, norms, tokens.
    pub fn step(&mut self, params: &mut [Named], grads: &[Named], lr: f64) -> Result<()> {
        use rayon::prelude::*;
        if params.len() != self.m.len() || grads.len() != params.len() {
            return Err(Error::Options("optimiser: parameter and gradient lists do not match".into()));
        }
        self.step += 1;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - Self::BETA1.powi(t), 1.0 - Self::BETA2.powi(t));
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            if p.values.len() != g.values.len() || p.values.len() != self.m[i].len() {
                return Err(Error::Options(format!("optimiser: {} changed size", p.name)));
            }
            let decay = if p.shape.len() == 2 { self.weight_decay as f32 } else { 0.0 };
            let (lr, keep) = (lr as f32, 1.0 - lr as f32 * decay);
            const CHUNK: usize = 1 << 14;
            p.values
                .par_chunks_mut(CHUNK)
                .zip(g.values.par_chunks(CHUNK))
                .zip(self.m[i].par_chunks_mut(CHUNK))
                .zip(self.v[i].par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| {
                    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                        *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
                        *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
                        let update = (*m / bc1) / ((*v / bc2).sqrt() + Self::EPS);
                        *p = *p * keep - update * lr;
                    }
                });
        }
        Ok(())
    }
}

fn check_finite_loss(loss: f64, epoch: usize, lr: f64) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    Err(Error::Options(format!("the loss became {loss} at epoch {} (learning rate {lr:.2e} too high?)", epoch + 1)))
}

/// Learning rate at `step` of `total`: linear warm-up, then cosine to `min_lr`.
pub fn learning_rate(step: usize, total: usize, lr: f64, min_lr: f64, warmup: f64) -> f64 {
    let warm = ((total as f64 * warmup).round() as usize).min(total.saturating_sub(1));
    if step < warm {
        return lr * (step + 1) as f64 / warm as f64;
    }
    let span = (total - warm).max(1) as f64;
    let progress = ((step - warm) as f64 / span).min(1.0);
    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Loss weights n / (C · n_c); classes absent from training get weight 0.
pub fn class_weights(counts: &[usize]) -> Vec<f32> {
    let n: usize = counts.iter().sum();
    let present = counts.iter().filter(|&&c| c > 0).count().max(1);
    counts.iter().map(|&c| if c == 0 { 0.0 } else { n as f32 / (present as f32 * c as f32) }).collect()
}

/// PyTorch's `F.cross_entropy(logits, labels, weight=weights, label_smoothing=smoothing)`
/// ('mean' reduction), the loss of MeLo's and its baselines' PyTorch recipes:
///
///   L = Σᵢ [ (1 − ε) · w_yᵢ · (−log pᵢ,yᵢ) + (ε / C) · Σₖ w_k · (−log pᵢ,ₖ) ] / Σᵢ w_yᵢ
///
/// The smoothing term weights each class's log-probability by that class's weight (not by the
/// sample's), and the whole sum is divided by the summed weights of the batch's labels.
/// Tested against PyTorch's values (`tests/data/train/torch_reference.json`).
pub fn smoothed_cross_entropy(logits: &Tensor, labels: &[usize], weights: &[f32], smoothing: f64) -> Result<Tensor> {
    let (b, c) = logits.dims2()?;
    let mut target = vec![0f32; b * c];
    let mut total = 0f32;
    for (i, &y) in labels.iter().enumerate() {
        total += weights[y];
        for (k, &w_k) in weights.iter().enumerate().take(c) {
            let q = smoothing / c as f64 * f64::from(w_k)
                + if k == y { (1.0 - smoothing) * f64::from(weights[y]) } else { 0.0 };
            target[i * c + k] = q as f32;
        }
    }
    let target = Tensor::from_vec(target, (b, c), logits.device())?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok(((logp * target)?.sum_all()? * (-1.0 / f64::from(total.max(1e-12))))?)
}

fn softmax_rows(logits: &Tensor) -> Result<Vec<f32>> {
    Ok(candle_nn::ops::softmax_last_dim(&logits.contiguous()?)?.flatten_all()?.to_vec1::<f32>()?)
}

/// A batch [B, 3, S, S] from items `idx`, each transformed as `transforms` says (none where
/// `transforms` is shorter).
fn batch_pixels(data: &Prepared, idx: &[usize], transforms: &[Transform]) -> Result<Tensor> {
    let s = data.size;
    let mut out = Vec::with_capacity(idx.len() * 3 * s * s);
    for (k, &i) in idx.iter().enumerate() {
        transforms.get(k).copied().unwrap_or_default().apply(data.item(i), s, &mut out);
    }
    Ok(Tensor::from_vec(out, (idx.len(), 3, s, s), &Device::Cpu)?)
}

/// Samples U(−bound, bound) with a seeded generator.
pub fn uniform(rng: &mut impl Rng, n: usize, bound: f64) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect()
}

/// What a run trains: the head (weight [C, F], bias [C]), the LoRA factors (none for the
/// linear probe and full fine-tuning) and, for full fine-tuning, the backbone's weights. Also
/// the type of their gradients.
#[derive(Clone)]
struct Params {
    head_weight: Vec<f32>,
    head_bias: Vec<f32>,
    classes: usize,
    lora: Lora,
    weights: Option<Weights>,
}

impl Params {
    /// Every tensor with its name and shape, in a fixed order (optimiser, checkpoints).
    fn named(&mut self) -> Vec<Named<'_>> {
        let (c, f) = (self.classes, self.head_weight.len() / self.classes.max(1));
        let mut out = vec![
            Named { name: "head.weight".into(), shape: vec![c, f], values: &mut self.head_weight },
            Named { name: "head.bias".into(), shape: vec![c], values: &mut self.head_bias },
        ];
        out.extend(self.lora.named());
        if let Some(w) = &mut self.weights {
            out.extend(w.named());
        }
        out
    }

    fn head_tensors(&self) -> Result<(Tensor, Tensor)> {
        let f = self.head_weight.len() / self.classes.max(1);
        Ok((
            Tensor::from_slice(&self.head_weight, (self.classes, f), &Device::Cpu)?,
            Tensor::from_slice(&self.head_bias, self.classes, &Device::Cpu)?,
        ))
    }

    fn logits(&self, features: &Tensor) -> Result<Tensor> {
        let (w, b) = self.head_tensors()?;
        Ok(features.matmul(&w.t()?)?.broadcast_add(&b)?)
    }

    /// The loss of a batch, the head's gradients written into `grads`, and the features'
    /// gradient when asked (candle's autograd: the head and the loss are tiny).
    fn loss(
        &self,
        features: &Tensor,
        labels: &[usize],
        weights: &[f32],
        o: &TrainOptions,
        grads: &mut Params,
        d_features: bool,
    ) -> Result<(f64, Option<Vec<f32>>)> {
        let (w, b) = self.head_tensors()?;
        let (w, b, f) = (Var::from_tensor(&w)?, Var::from_tensor(&b)?, Var::from_tensor(features)?);
        let logits = f.as_tensor().matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())?;
        let loss = smoothed_cross_entropy(&logits, labels, weights, o.label_smoothing)?;
        let g = loss.backward()?;
        let get = |v: &Var| -> Result<Vec<f32>> {
            let t = g.get(v.as_tensor()).ok_or_else(|| Error::Options("no gradient reached the head".into()))?;
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        };
        grads.head_weight = get(&w)?;
        grads.head_bias = get(&b)?;
        let df = if d_features { Some(get(&f)?) } else { None };
        Ok((f64::from(loss.to_scalar::<f32>()?), df))
    }
}

/// One training batch: items of the training split, their augmentation and labels.
struct Batch<'a> {
    idx: &'a [usize],
    transforms: &'a [Transform],
    labels: Vec<usize>,
}

/// What differs between the three methods: how one batch's loss and gradients are computed,
/// and how a split is predicted. The loop, schedule, optimiser, checkpoints and evaluation are
/// shared ([`train_prepared_with_progress`]).
trait Learner {
    /// The batch's loss; every trained tensor's gradient is written into `grads`.
    fn step(&mut self, params: &Params, batch: &Batch, loss: &LossSpec, grads: &mut Params) -> Result<f64>;
    /// Probabilities [n × C] on the validation or test split with the current parameters.
    fn predict(&mut self, params: &Params, data: &Prepared, split: Split) -> Result<Vec<f32>>;
}

/// The loss's class weights and options.
struct LossSpec<'a> {
    weights: &'a [f32],
    options: &'a TrainOptions,
}

/// Linear probe: the head on frozen features of train (plain, h-flipped, v-flipped, both), val
/// and test ([N, F] each), computed once by the engine's inference pass.
struct LinearProbe {
    train: [Option<Tensor>; 4],
    val: Tensor,
    test: Tensor,
}

impl Learner for LinearProbe {
    fn step(&mut self, params: &Params, batch: &Batch, loss: &LossSpec, grads: &mut Params) -> Result<f64> {
        // Per-sample flip variant: gather rows from the matching feature table.
        let rows: Vec<Tensor> = (batch.idx.iter().zip(batch.transforms))
            .map(|(&i, t)| {
                let k = usize::from(t.hflip) | (usize::from(t.vflip) << 1);
                let table = self.train[k].as_ref().or(self.train[0].as_ref());
                table.ok_or_else(|| Error::Options("no training features".into()))?.get(i).map_err(Error::from)
            })
            .collect::<Result<_>>()?;
        Ok(params.loss(&Tensor::stack(&rows, 0)?, &batch.labels, loss.weights, loss.options, grads, false)?.0)
    }

    fn predict(&mut self, params: &Params, _data: &Prepared, split: Split) -> Result<Vec<f32>> {
        softmax_rows(&params.logits(if split == Split::Test { &self.test } else { &self.val })?)
    }
}

/// LoRA and full fine-tuning: the backbone through `model::core`'s training pass. `frozen`:
/// the backbone's weights when they are not trained (LoRA; full fine-tuning trains
/// `Params::weights`).
struct Backprop<'a> {
    vit: &'a VisionTransformer,
    options: &'a TrainOptions,
    train_set: &'a Prepared,
    arch: Backbone,
    frozen: Option<Weights>,
    tape: ShardedTape,
    pos: Tensor,
}

impl Backprop<'_> {
    /// Pooled features [B, F] of items `idx` of `data`, the activations kept in the tape.
    fn features(
        &mut self,
        params: &Params,
        data: &Prepared,
        idx: &[usize],
        transforms: &[Transform],
    ) -> Result<Tensor> {
        let pixels = batch_pixels(data, idx, transforms)?;
        let w = self
            .frozen
            .as_ref()
            .or(params.weights.as_ref())
            .ok_or_else(|| Error::Options("no backbone weights".into()))?;
        let features =
            self.arch.forward_sharded(w, &params.lora, (&pixels, &self.pos, self.options.pooling), &mut self.tape)?;
        let f = features.len() / idx.len().max(1);
        Ok(Tensor::from_vec(features, (idx.len(), f), &Device::Cpu)?)
    }
}

impl Learner for Backprop<'_> {
    fn step(&mut self, params: &Params, batch: &Batch, loss: &LossSpec, grads: &mut Params) -> Result<f64> {
        let features = self.features(params, self.train_set, batch.idx, batch.transforms)?;
        let (value, df) = params.loss(&features, &batch.labels, loss.weights, loss.options, grads, true)?;
        let df = df.ok_or_else(|| Error::Options("no gradient reached the pooled features".into()))?;
        let w = self
            .frozen
            .as_ref()
            .or(params.weights.as_ref())
            .ok_or_else(|| Error::Options("no backbone weights".into()))?;
        let g = Grads { weights: grads.weights.as_mut(), lora: &mut grads.lora };
        self.arch.backward_sharded(w, &params.lora, &mut self.tape, &df, g)?;
        Ok(value)
    }

    fn predict(&mut self, params: &Params, data: &Prepared, _split: Split) -> Result<Vec<f32>> {
        let o = self.options;
        let idx: Vec<usize> = (0..data.len()).collect();
        let mut probs = Vec::with_capacity(data.len() * params.classes);
        for chunk in idx.chunks(32) {
            let features = if self.frozen.is_some() {
                // Adapters: the engine's own inference path, so the recorded metrics are what
                // `melo predict` reproduces.
                let (lora, _, _) = current_lora(params, self.vit, o.targets, o.alpha / o.rank.max(1) as f64)?;
                self.vit.forward(&batch_pixels(data, chunk, &[])?, Some(&lora))?.pooled(o.pooling)?
            } else {
                self.features(params, data, chunk, &[])?
            };
            probs.extend(softmax_rows(&params.logits(&features)?)?);
        }
        Ok(probs)
    }
}

fn check_options(o: &TrainOptions) -> Result<()> {
    let bad = |m: String| Err(Error::Options(m));
    if o.epochs == 0 || o.batch == 0 {
        return bad("--epochs and --batch must be at least 1".into());
    }
    if !(o.lr > 0.0 && o.lr.is_finite()) || !(o.min_lr >= 0.0 && o.min_lr <= o.lr) {
        return bad(format!("--lr {} must be positive and at least --min-lr {}", o.lr, o.min_lr));
    }
    if !(0.0..1.0).contains(&o.label_smoothing)
        || !(0.0..1.0).contains(&o.warmup)
        || !(o.weight_decay >= 0.0 && o.weight_decay < 1.0)
    {
        return bad("--label-smoothing, --warmup and --weight-decay must be in [0, 1)".into());
    }
    if o.method == Method::Lora && (o.rank == 0 || !o.alpha.is_finite()) {
        return bad(format!("--rank {} must be at least 1 and --alpha {} finite", o.rank, o.alpha));
    }
    if o.size < 14 || o.size > crate::model::lora::MAX_INPUT_SIZE {
        return bad(format!("--size {} is not in 14..={}", o.size, crate::model::lora::MAX_INPUT_SIZE));
    }
    if o.task.trim().is_empty() {
        return bad("--task must not be empty".into());
    }
    if o.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return bad(format!("--out {} must end in .safetensors", o.out.display()));
    }
    let dir = o.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return bad(format!("the folder of --out ({}) does not exist", dir.display()));
    }
    // The adapter, its checkpoint and its report must not land on or inside what is read.
    let inputs = [o.data.as_path(), o.backbone.as_path()];
    for output in [o.out.clone(), checkpoint_path(&o.out), report_path(&o.out)] {
        crate::atomic::refuse_overwriting_inputs("--out", &output, &inputs)?;
    }
    Ok(())
}

/// Where the checkpoint of a run to `out` lives.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.with_extension("ckpt")
}

/// Where the report of a run to `out` lives.
pub fn report_path(out: &Path) -> PathBuf {
    out.with_extension("report.json")
}

/// What a checkpoint must match to be resumed: every option (the paths too, which the
/// serialisation leaves out) and the backbone.
fn fingerprint(o: &TrainOptions, backbone_sha: &str) -> String {
    let mut o = o.clone();
    o.resume = false;
    o.stop_after = None;
    o.progress = false;
    // What the label says does not change the weights.
    o.intended_use.clear();
    o.limitations.clear();
    format!(
        "{}|{}|{}|{}|{backbone_sha}",
        serde_json::to_string(&o).unwrap_or_default(),
        o.data.display(),
        o.out.display(),
        o.backbone.display()
    )
}

/// Trains, evaluates and saves; returns the report (also written beside `out`). The data set
/// is recorded under its default name ([`DataSetInfo::default_for`]).
pub fn train(o: &TrainOptions) -> Result<TrainReport> {
    train_with(o, &DataSetInfo::default_for(&o.data))
}

/// [`train`], recording the data set as `data_set` (name and licence) in the adapter and the
/// report.
pub fn train_with(o: &TrainOptions, data_set: &DataSetInfo) -> Result<TrainReport> {
    check_options(o)?;
    data_set.check()?;
    let engine = Engine::open(&o.backbone)?;
    let cfg = engine.backbone().config().clone();
    let (mean, std) = (cfg.mean, cfg.std);

    let source = DataSource::open(&o.data, o.labels.as_deref(), o.split)?;
    if let Some(fraction) = source.carved_validation {
        eprintln!(
            "note: no val/ folder: {:.1} % of each class of train/ (seed {}) is the validation split; test/ is untouched",
            fraction * 100.0,
            o.split.seed
        );
    }
    let load = |split: Split| -> Result<Prepared> {
        let p = source.prepare(split, o.size, mean, std, o.limit)?;
        if !p.skipped.is_empty() {
            eprintln!(
                "warning: {} of {} {} images could not be read and were skipped (first: {}: {})",
                p.skipped.len(),
                p.len() + p.skipped.len(),
                split.name(),
                p.skipped[0].0,
                p.skipped[0].1
            );
        }
        if p.is_empty() {
            return Err(Error::data(&o.data, format!("the {} split has no readable images", split.name())));
        }
        Ok(p)
    };
    let t_load = Instant::now();
    let splits = Splits { train: load(Split::Train)?, val: load(Split::Val)?, test: load(Split::Test)? };
    eprintln!(
        "{}: {} classes, train {} / val {} / test {} images at {} px (loaded in {:.1} s)",
        o.data.display(),
        source.classes.len(),
        splits.train.len(),
        splits.val.len(),
        splits.test.len(),
        o.size,
        t_load.elapsed().as_secs_f64(),
    );
    train_prepared(o, data_set, &engine, &source.classes, &splits)
}

/// The three prepared splits a training run reads.
pub struct Splits {
    pub train: Prepared,
    pub val: Prepared,
    pub test: Prepared,
}

/// [`train_with`] on splits already in memory (at `o.size`, normalised with the backbone's
/// mean and std) and a backbone already open: what the membership audit's shadow adapters
/// use, so that each shadow is trained by exactly the target's code path.
pub fn train_prepared(
    o: &TrainOptions,
    data_set: &DataSetInfo,
    engine: &Engine,
    classes: &[String],
    splits: &Splits,
) -> Result<TrainReport> {
    train_prepared_with_progress(o, data_set, engine, classes, splits, &mut print_progress)
}

/// What a run reports while it goes (the terminal prints it; a window can show it).
#[derive(Debug, Clone)]
pub enum Progress {
    /// A note or warning (a class without training images, resuming, no calibration fitted).
    Note(String),
    /// The head-only phase ended, keeping the head of this validation AUC.
    HeadPhase { epochs: usize, val_auc: f64 },
    /// An epoch ended; `best`: its validation AUC is the best so far.
    Epoch { record: EpochRecord, epochs: usize, best: bool },
    /// The run ended with the kept epoch's test evaluation.
    Finished { best_epoch: usize, best_val_auc: f64, test: Evaluation },
}

/// `melo train`'s progress lines on standard error.
pub fn print_progress(p: Progress) {
    let auc = |a: Option<f64>| a.map(|a| format!("{a:.4}")).unwrap_or_else(|| "n/a".into());
    match p {
        Progress::Note(text) => eprintln!("{text}"),
        Progress::HeadPhase { epochs, val_auc } => {
            eprintln!("head phase: {epochs} epochs on frozen features, kept val AUC {val_auc:.4}")
        }
        Progress::Epoch { record: r, epochs, best } => eprintln!(
            "epoch {:>3}/{epochs}  train loss {:.4}  val AUC {}  acc {:.4}  loss {:.4}  {:.1} img/s  {:.0} s{}",
            r.epoch,
            r.train_loss,
            auc(r.val_macro_auc),
            r.val_accuracy,
            r.val_loss,
            r.train_images_per_second,
            r.seconds,
            if best { "  *best" } else { "" }
        ),
        Progress::Finished { best_epoch, best_val_auc, test } => eprintln!(
            "best epoch {best_epoch} (val AUC {best_val_auc:.4}); test: accuracy {:.4}, macro F1 {:.4}, macro AUC {}",
            test.accuracy,
            test.macro_f1,
            auc(test.macro_auc)
        ),
    }
}

/// [`train_prepared`], reporting progress to `progress` instead of standard error.
pub fn train_prepared_with_progress(
    o: &TrainOptions,
    data_set: &DataSetInfo,
    engine: &Engine,
    classes: &[String],
    splits: &Splits,
    progress: &mut dyn FnMut(Progress),
) -> Result<TrainReport> {
    check_options(o)?;
    let vit = engine.backbone();
    let cfg = vit.config().clone();
    let classes = classes.to_vec();
    let c = classes.len();
    let (train_set, val_set, test_set) = (&splits.train, &splits.val, &splits.test);
    for (name, p) in [("train", train_set), ("validation", val_set), ("test", test_set)] {
        if p.is_empty() {
            return Err(Error::data(&o.data, format!("the {name} split has no readable images")));
        }
    }
    let counts = train_set.class_counts(c);
    if counts.iter().filter(|&&n| n > 0).count() < 2 {
        return Err(Error::data(&o.data, "the training split holds a single class; a classifier needs at least 2"));
    }
    for (k, &n) in counts.iter().enumerate() {
        if n == 0 {
            progress(Progress::Note(format!("warning: class '{}' has no training images", classes[k])));
        }
    }
    if o.progress {
        progress(Progress::Note(format!("train counts {counts:?}")));
    }
    let weights = if o.class_weights { class_weights(&counts) } else { vec![1.0; c] };

    let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed);
    let feature_dim = o.pooling.feature_dim(cfg.embed_dim);
    // PyTorch's Linear initialisation: U(±1/√F) for weight and bias.
    let bound = 1.0 / (feature_dim as f64).sqrt();
    let (head_weight, head_bias) = (uniform(&mut rng, c * feature_dim, bound), uniform(&mut rng, c, bound));
    let lora = match o.method {
        // A kaiming-uniform (a = √5, i.e. U(±1/√in), as PyTorch's Linear and PEFT), B zero.
        Method::Lora => Lora::new(
            cfg.depth,
            o.targets.targets(),
            o.rank,
            (o.alpha / o.rank.max(1) as f64) as f32,
            (cfg.embed_dim, cfg.mlp_hidden_dim()),
            |n, inputs| uniform(&mut rng, n, 1.0 / (inputs as f64).sqrt()),
        ),
        _ => Lora::none(cfg.depth),
    };
    let lora_scale = o.alpha / o.rank.max(1) as f64;
    let trained_backbone = if o.method == Method::Full { Some(vit.weights().clone()) } else { None };
    let mut params = Params { head_weight, head_bias, classes: c, lora, weights: trained_backbone };
    let backbone_parameters = count_backbone_parameters(vit)?;

    let t_train = Instant::now();
    let pos = vit.position_embedding(o.size / cfg.patch_size, o.size / cfg.patch_size)?;
    let backprop = |frozen| Backprop {
        vit,
        options: o,
        train_set,
        arch: vit.arch(),
        frozen,
        tape: ShardedTape::default(),
        pos: pos.clone(),
    };
    let mut learner: Box<dyn Learner> = match o.method {
        Method::Linear => {
            let bar = progress_bar(
                o.progress,
                (train_set.len() * o.augment.flip_variants() + val_set.len() + test_set.len()) as u64,
                "features",
            );
            let mut variants: [Option<Tensor>; 4] = Default::default();
            for (k, slot) in variants.iter_mut().enumerate().take(o.augment.flip_variants()) {
                let flip = Transform::flips(k & 1 == 1, k & 2 == 2);
                *slot = Some(frozen_features(vit, train_set, flip, o.pooling, &bar)?);
            }
            let val = frozen_features(vit, val_set, Transform::default(), o.pooling, &bar)?;
            let test = frozen_features(vit, test_set, Transform::default(), o.pooling, &bar)?;
            bar.finish_and_clear();
            Box::new(LinearProbe { train: variants, val, test })
        }
        Method::Lora => Box::new(backprop(Some(vit.weights().clone()))),
        Method::Full => Box::new(backprop(None)),
    };
    let ckpt = checkpoint_path(&o.out);
    let resuming = o.resume && ckpt.is_file();
    let mut head_phase_val_auc = None;
    if o.method != Method::Linear && o.head_epochs > 0 && !resuming {
        head_phase_val_auc = head_phase(&mut params, vit, train_set, val_set, &classes, &weights, o)?;
        if let Some(val_auc) = head_phase_val_auc {
            progress(Progress::HeadPhase { epochs: o.head_epochs, val_auc });
        }
    }
    let feature_seconds = t_train.elapsed().as_secs_f64();

    let sizes: Vec<usize> = params.named().iter().map(|n| n.values.len()).collect();
    let trainable_parameters: usize = sizes.iter().sum();
    let mut opt = AdamW::new(&sizes, o.weight_decay);
    let mut grads = params.clone();
    let loss_spec = LossSpec { weights: &weights, options: o };

    let steps_per_epoch = train_set.len().div_ceil(o.batch);
    let total_steps = steps_per_epoch * o.epochs;

    // Resume.
    let fp = fingerprint(o, vit.sha256());
    let mut meta = CheckpointMeta {
        fingerprint: fp.clone(),
        epochs_done: 0,
        step: 0,
        best_epoch: 0,
        best_val_auc: f64::NEG_INFINITY,
        best_val_loss: f64::INFINITY,
        history: Vec::new(),
        train_seconds: feature_seconds,
    };
    let mut best: HashMap<String, Vec<f32>> = HashMap::new();
    if o.resume {
        if ckpt.is_file() {
            let (m, b) = load_checkpoint(&ckpt, &fp, &mut params, &mut opt)?;
            meta = m;
            meta.train_seconds += feature_seconds;
            best = b;
            let done = meta.epochs_done;
            progress(Progress::Note(format!("resuming {} after epoch {done} of {}", ckpt.display(), o.epochs)));
        } else {
            let note = format!("--resume: no checkpoint at {}; starting from the beginning", ckpt.display());
            progress(Progress::Note(note));
        }
    }

    let first_epoch = meta.epochs_done;
    let steps_before_run = meta.step;
    let mut run_steps: Vec<f64> = Vec::new();
    for epoch in meta.epochs_done..o.epochs {
        if o.stop_after.is_some_and(|n| epoch >= first_epoch + n) {
            return Err(Error::Stopped { epochs_done: epoch, checkpoint: ckpt });
        }
        let t_epoch = Instant::now();
        let mut erng =
            rand::rngs::StdRng::seed_from_u64(o.seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(epoch as u64 + 1)));
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut erng);
        let transforms: Vec<Transform> = order.iter().map(|_| o.augment.sample(&mut erng)).collect();
        let bar = progress_bar(o.progress, steps_per_epoch as u64, &format!("epoch {}/{}", epoch + 1, o.epochs));
        let mut loss_sum = 0.0;
        let mut lr = o.lr;
        let mut epoch_steps = Vec::new();
        for (s, chunk) in order.chunks(o.batch).enumerate() {
            let fl = &transforms[s * o.batch..s * o.batch + chunk.len()];
            let labels: Vec<usize> = chunk.iter().map(|&i| train_set.labels[i]).collect();
            let t_step = Instant::now();
            let loss = learner.step(&params, &Batch { idx: chunk, transforms: fl, labels }, &loss_spec, &mut grads)?;
            lr = learning_rate(meta.step, total_steps, o.lr, o.min_lr, o.warmup);
            opt.step(&mut params.named(), &grads.named(), lr)?;
            if chunk.len() == o.batch && meta.step >= steps_before_run + WARM_UP_STEPS {
                epoch_steps.push(t_step.elapsed().as_secs_f64());
            }
            meta.step += 1;
            check_finite_loss(loss, epoch, lr)?;
            loss_sum += loss * chunk.len() as f64;
            let done = (s * o.batch + chunk.len()) as f64;
            bar.set_message(format!(
                "loss {:.4}  {:.1} img/s",
                loss_sum / done,
                done / t_epoch.elapsed().as_secs_f64()
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_seconds = t_epoch.elapsed().as_secs_f64();
        meta.train_seconds += train_seconds;

        let val_probs = learner.predict(&params, val_set, Split::Val)?;
        let val = evaluate(&val_probs, &val_set.labels, &classes);
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / train_set.len() as f64,
            val_macro_auc: val.macro_auc,
            val_accuracy: val.accuracy,
            val_loss: val.loss,
            seconds: train_seconds,
            train_images_per_second: train_set.len() as f64 / train_seconds,
            learning_rate: lr,
            step_seconds_median: finite_median(&epoch_steps),
        };
        run_steps.extend(epoch_steps);
        let auc = val.macro_auc.unwrap_or(val.accuracy);
        let improved = auc > meta.best_val_auc || (auc == meta.best_val_auc && val.loss < meta.best_val_loss);
        progress(Progress::Epoch { record: record.clone(), epochs: o.epochs, best: improved });
        if improved {
            meta.best_val_auc = auc;
            meta.best_val_loss = val.loss;
            meta.best_epoch = epoch + 1;
            best = params.named().into_iter().map(|n| (n.name, n.values.clone())).collect();
        }
        meta.history.push(record);
        meta.epochs_done = epoch + 1;
        save_checkpoint(&ckpt, &meta, &mut params, &opt, &best)?;
    }

    // Restore the best epoch's weights.
    for n in params.named() {
        if let Some(t) = best.get(&n.name) {
            n.values.clone_from(t);
        }
    }
    let val_probs = learner.predict(&params, val_set, Split::Val)?;
    let val = evaluate(&val_probs, &val_set.labels, &classes);
    let test_probs = learner.predict(&params, test_set, Split::Test)?;
    let test = evaluate(&test_probs, &test_set.labels, &classes);
    let test_probabilities_head: Vec<Vec<f32>> =
        test_probs.chunks(c).take(REPORT_TEST_HEAD).map(<[f32]>::to_vec).collect();
    progress(Progress::Finished { best_epoch: meta.best_epoch, best_val_auc: meta.best_val_auc, test: test.clone() });

    let class_counts = [(Split::Train, &train_set), (Split::Val, &val_set), (Split::Test, &test_set)]
        .iter()
        .map(|(split, p)| {
            let per_class = classes.iter().cloned().zip(p.class_counts(c).into_iter().map(|n| n as u64)).collect();
            (split.name().to_string(), per_class)
        })
        .collect();
    let mut report = TrainReport {
        task: o.task.clone(),
        method: o.method,
        classes: classes.clone(),
        data: data_set.name.trim().to_string(),
        data_licence: data_set.licence.trim().to_string(),
        train_samples: train_set.len(),
        val_samples: val_set.len(),
        test_samples: test_set.len(),
        class_counts,
        skipped_files: [&train_set, &val_set, &test_set].iter().map(|p| p.skipped.len()).sum(),
        trainable_parameters,
        backbone_parameters,
        trainable_percent: 100.0 * trainable_parameters as f64 / (backbone_parameters + c * feature_dim + c) as f64,
        file: o.out.file_name().map(PathBuf::from).unwrap_or_default(),
        file_bytes: 0,
        train_seconds: meta.train_seconds,
        train_images_per_second: (train_set.len() * meta.history.len()) as f64
            / meta.history.iter().map(|h| h.seconds).sum::<f64>().max(1e-9),
        step_images_per_second: finite_median(&run_steps).map(|s| o.batch as f64 / s),
        best_epoch: meta.best_epoch,
        history: meta.history.clone(),
        head_phase_val_auc,
        val,
        test,
        test_probabilities_head,
        options: o.clone(),
        calibration: None,
        ood: None,
    };

    match o.method {
        Method::Lora | Method::Linear => {
            let mut adapter = build_adapter(&params, vit, o, &report, lora_scale)?;
            // Same fit as `melo calibrate`, on the chosen epoch's weights.
            let fit_options = calibrate::FitOptions { pass_rate: o.ood_pass_rate, ..Default::default() };
            match calibrate::fit(vit, &adapter, train_set, val_set, test_set, fit_options) {
                Ok(fitted) => {
                    report.calibration = fitted.calibration.clone();
                    report.ood = Some(fitted.ood.clone());
                    adapter.set_calibration(fitted.calibration, Some((fitted.ood, fitted.stats)))?;
                }
                Err(e) => {
                    let note =
                        format!("warning: no calibration or OOD statistics fitted ({e}); the adapter is uncalibrated");
                    progress(Progress::Note(note))
                }
            }
            adapter.save(&o.out)?;
        }
        Method::Full => save_full(&mut params, o, &report)?,
    }
    report.file_bytes = std::fs::metadata(&o.out).map_err(|e| Error::io(&o.out, e))?.len();
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Options(format!("report: {e}")))?;
    crate::atomic::write_bytes_atomic(&report_path(&o.out), json.as_bytes())?;
    // The run is complete: its checkpoint is no longer needed.
    let _ = std::fs::remove_file(&ckpt);
    Ok(report)
}

/// The head-only phase: the head trained on frozen features (of the training images in every
/// flip the augmentation uses), best validation macro AUC kept. Returns that AUC.
fn head_phase(
    params: &mut Params,
    vit: &VisionTransformer,
    train_set: &Prepared,
    val_set: &Prepared,
    classes: &[String],
    weights: &[f32],
    o: &TrainOptions,
) -> Result<Option<f64>> {
    let variants = o.augment.flip_variants();
    let bar = progress_bar(o.progress, (train_set.len() * variants + val_set.len()) as u64, "head phase: features");
    let train: Vec<Tensor> = (0..variants)
        .map(|k| frozen_features(vit, train_set, Transform::flips(k & 1 == 1, k & 2 == 2), o.pooling, &bar))
        .collect::<Result<_>>()?;
    let val = frozen_features(vit, val_set, Transform::default(), o.pooling, &bar)?;
    bar.finish_and_clear();
    // The head alone: a copy of the parameters without LoRA factors or backbone weights.
    let mut head =
        Params { lora: Lora::none(0), weights: None, head_weight: Vec::new(), head_bias: Vec::new(), ..params.clone() };
    head.head_weight.clone_from(&params.head_weight);
    head.head_bias.clone_from(&params.head_bias);
    let mut grads = head.clone();
    let mut opt = AdamW::new(&[head.head_weight.len(), head.head_bias.len()], o.weight_decay);
    let steps_per_epoch = train_set.len().div_ceil(o.batch);
    let total = steps_per_epoch * o.head_epochs;
    let mut best: Option<(f64, f64, Params)> = None;
    for epoch in 0..o.head_epochs {
        let mut erng = rand::rngs::StdRng::seed_from_u64(
            o.seed ^ 0xA5A5_5A5A ^ (epoch as u64).wrapping_mul(0x2545_F491_4F6C_DD1D),
        );
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut erng);
        for (s, chunk) in order.chunks(o.batch).enumerate() {
            let rows: Vec<Tensor> = chunk
                .iter()
                .map(|&i| train[erng.random_range(0..variants)].get(i))
                .collect::<candle_core::Result<_>>()?;
            let labels: Vec<usize> = chunk.iter().map(|&i| train_set.labels[i]).collect();
            head.loss(&Tensor::stack(&rows, 0)?, &labels, weights, o, &mut grads, false)?;
            let lr = learning_rate(epoch * steps_per_epoch + s, total, o.head_lr, o.min_lr, o.warmup);
            opt.step(&mut head.named(), &grads.named(), lr)?;
        }
        let e = evaluate(&softmax_rows(&head.logits(&val)?)?, &val_set.labels, classes);
        let auc = e.macro_auc.unwrap_or(e.accuracy);
        if best.as_ref().is_none_or(|(a, l, _)| auc > *a || (auc == *a && e.loss < *l)) {
            best = Some((auc, e.loss, head.clone()));
        }
    }
    let Some((auc, _, kept)) = best else { return Ok(None) };
    params.head_weight = kept.head_weight;
    params.head_bias = kept.head_bias;
    Ok(Some(auc))
}

fn progress_bar(show: bool, len: u64, prefix: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix.to_string());
    bar
}

/// Every backbone parameter, the stored position embedding included.
fn count_backbone_parameters(vit: &VisionTransformer) -> Result<usize> {
    let cfg = vit.config();
    let g = cfg.pos_embed_grid.unwrap_or(cfg.image_size / cfg.patch_size);
    let pos = vit.position_embedding(g, g)?.elem_count();
    Ok(pos + count_trained_backbone_parameters(vit))
}

/// The backbone parameters full fine-tuning trains: all but the position embedding, which is
/// kept frozen (it is resized bicubically to each input grid).
fn count_trained_backbone_parameters(vit: &VisionTransformer) -> usize {
    vit.weights().len()
}

/// Pooled frozen features [N, F] of a prepared split, by the engine's inference pass.
fn frozen_features(
    vit: &VisionTransformer,
    data: &Prepared,
    transform: Transform,
    pooling: Pooling,
    bar: &indicatif::ProgressBar,
) -> Result<Tensor> {
    let mut parts = Vec::new();
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(32) {
        let transforms = vec![transform; chunk.len()];
        let out = vit.forward(&batch_pixels(data, chunk, &transforms)?, None)?;
        parts.push(out.pooled(pooling)?);
        bar.inc(chunk.len() as u64);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// The LoRA blocks of the current factors (or zero rank-1 blocks for a linear probe).
fn current_lora(
    params: &Params,
    vit: &VisionTransformer,
    target: LoraTarget,
    scale: f64,
) -> Result<(Vec<QkvLora>, usize, f64)> {
    let d = vit.embed_dim();
    let factor = |v: &[f32], shape: (usize, usize)| Tensor::from_slice(v, shape, &Device::Cpu);
    if params.lora.blocks.iter().all(Vec::is_empty) {
        // A linear probe has no low-rank update; the format wants one per block, so the
        // adapter carries rank-1 zero factors (their delta is exactly 0).
        let zero = |shape: (usize, usize)| Tensor::zeros(shape, DType::F32, &Device::Cpu);
        let blocks = (0..vit.depth())
            .map(|_| {
                Ok(QkvLora::QV {
                    q: LowRank::new(zero((1, d))?, zero((d, 1))?, 1.0)?,
                    v: LowRank::new(zero((1, d))?, zero((d, 1))?, 1.0)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok((blocks, 1, 1.0));
    }
    let rank = params.lora.blocks[0].first().map_or(0, |u| u.rank);
    let blocks = params
        .lora
        .blocks
        .iter()
        .map(|ups| {
            let parts = ups
                .iter()
                .map(|u| {
                    let (inputs, outputs) = (u.a.len() / u.rank, u.b.len() / u.rank);
                    Ok(LowRank::new(factor(&u.a, (u.rank, inputs))?, factor(&u.b, (outputs, u.rank))?, scale)?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(target.block(parts)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((blocks, rank, scale * rank as f64))
}

fn metrics_map(report: &TrainReport) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let t = &report.test;
    m.insert("test_accuracy".into(), t.accuracy);
    m.insert("test_macro_f1".into(), t.macro_f1);
    if let Some(a) = t.macro_auc {
        m.insert("test_macro_auc".into(), a);
    }
    if let Some(a) = report.val.macro_auc {
        m.insert("val_macro_auc".into(), a);
    }
    m.insert("val_accuracy".into(), report.val.accuracy);
    for cm in &t.per_class {
        if let Some(s) = cm.sensitivity {
            m.insert(format!("test_sensitivity.{}", cm.label), s);
        }
        if let Some(s) = cm.specificity {
            m.insert(format!("test_specificity.{}", cm.label), s);
        }
    }
    for (i, row) in t.confusion.iter().enumerate() {
        for (j, &n) in row.iter().enumerate() {
            m.insert(format!("test_confusion.{}.{}", report.classes[i], report.classes[j]), n as f64);
        }
    }
    m.insert("test_samples".into(), report.test_samples as f64);
    m.insert("trainable_parameters".into(), report.trainable_parameters as f64);
    m.insert("train_seconds".into(), report.train_seconds);
    m.insert("train_images_per_second".into(), report.train_images_per_second);
    m.insert("best_epoch".into(), report.best_epoch as f64);
    m
}

fn build_adapter(
    params: &Params,
    vit: &VisionTransformer,
    o: &TrainOptions,
    report: &TrainReport,
    scale: f64,
) -> Result<Adapter> {
    let (blocks, rank, alpha) = current_lora(params, vit, o.targets, scale)?;
    let mut metadata = AdapterMetadata::for_backbone(&o.task, report.classes.clone(), vit);
    metadata.description = o.description.clone();
    metadata.rank = rank;
    metadata.alpha = alpha;
    metadata.target = if o.method == Method::Lora { o.targets } else { LoraTarget::QV };
    metadata.input_size = o.size;
    metadata.modality = o.modality.clone();
    metadata.pooling = o.pooling;
    metadata.training = TrainingSummary {
        dataset: report.data.clone(),
        train_samples: Some(report.train_samples as u64),
        validation_samples: Some(report.val_samples as u64),
        epochs: Some(o.epochs as u32),
        optimizer: format!(
            "AdamW (weight decay {}), cosine {:.0e} -> {:.0e}, warm-up {:.0}%, batch {}, label smoothing {}, augment {:?}, class weights {}",
            o.weight_decay,
            o.lr,
            o.min_lr,
            o.warmup * 100.0,
            o.batch,
            o.label_smoothing,
            o.augment,
            o.class_weights
        ),
        learning_rate: Some(o.lr),
        selection: format!("best validation macro AUC (epoch {} of {})", report.best_epoch, o.epochs),
        notes: format!(
            "method {:?}; trained by `melo train` (seed {}); {} trainable parameters",
            o.method, o.seed, report.trainable_parameters
        ),
    };
    metadata.data_set = DataSetSummary {
        licence: report.data_licence.clone(),
        counts: report.class_counts.clone(),
        skipped_files: report.skipped_files as u64,
    };
    metadata.metrics = metrics_map(report);
    metadata.source = format!("melo train --method {:?}", o.method).to_lowercase();
    let confusion: Vec<Vec<u64>> =
        report.test.confusion.iter().map(|row| row.iter().map(|&n| n as u64).collect()).collect();
    metadata.facts = crate::model::facts::for_training(
        &metadata,
        &o.intended_use,
        &o.limitations,
        &confusion,
        report.test.macro_auc,
    );
    let (weight, bias) = params.head_tensors()?;
    Ok(Adapter::new(metadata, blocks, weight, bias)?)
}

/// A fully fine-tuned model: every trained tensor (matrices as [in, out], LayerScale folded)
/// and the head, with the report as metadata. Not an adapter: kept for comparison.
fn save_full(params: &mut Params, o: &TrainOptions, report: &TrainReport) -> Result<()> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "melo-full-finetune".to_string());
    meta.insert("metrics".to_string(), serde_json::to_string(&metrics_map(report)).unwrap_or_default());
    meta.insert("task".to_string(), o.task.clone());
    write_safetensors(&o.out, tensors(params.named(), "")?, meta)
}

/// Tensors of named buffers, each name prefixed.
fn tensors(named: Vec<Named>, prefix: &str) -> Result<Vec<(String, Tensor)>> {
    named
        .into_iter()
        .map(|n| Ok((format!("{prefix}{}", n.name), Tensor::from_slice(n.values, n.shape.as_slice(), &Device::Cpu)?)))
        .collect()
}

fn write_safetensors(path: &Path, tensors: Vec<(String, Tensor)>, metadata: HashMap<String, String>) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
        .map_err(|e| Error::Options(format!("serialising {}: {e}", path.display())))?;
    crate::atomic::write_bytes_atomic(path, &bytes)?;
    Ok(())
}

fn save_checkpoint(
    path: &Path,
    meta: &CheckpointMeta,
    params: &mut Params,
    opt: &AdamW,
    best: &HashMap<String, Vec<f32>>,
) -> Result<()> {
    let mut out = Vec::new();
    for (i, n) in params.named().into_iter().enumerate() {
        let shape = n.shape.as_slice();
        out.push((format!("var.{}", n.name), Tensor::from_slice(n.values, shape, &Device::Cpu)?));
        out.push((format!("m.{}", n.name), Tensor::from_slice(&opt.m[i], shape, &Device::Cpu)?));
        out.push((format!("v.{}", n.name), Tensor::from_slice(&opt.v[i], shape, &Device::Cpu)?));
        if let Some(b) = best.get(&n.name) {
            out.push((format!("best.{}", n.name), Tensor::from_slice(b, shape, &Device::Cpu)?));
        }
    }
    let json = serde_json::to_string(meta).map_err(|e| Error::Options(format!("checkpoint: {e}")))?;
    write_safetensors(path, out, HashMap::from([("checkpoint".to_string(), json)]))
}

fn load_checkpoint(
    path: &Path,
    fingerprint: &str,
    params: &mut Params,
    opt: &mut AdamW,
) -> Result<(CheckpointMeta, HashMap<String, Vec<f32>>)> {
    let fail = |reason: String| Error::Resume { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| fail(format!("not a checkpoint: {e}")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("checkpoint"))
        .ok_or_else(|| fail("no checkpoint metadata".into()))?;
    let meta: CheckpointMeta = serde_json::from_str(json).map_err(|e| fail(format!("bad checkpoint metadata: {e}")))?;
    if meta.fingerprint != fingerprint {
        return Err(fail(
            "it was written by a run with other options, data or backbone; rerun with the same options or without --resume".into(),
        ));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| fail(e.to_string()))?;
    let mut best = HashMap::new();
    for (i, n) in params.named().into_iter().enumerate() {
        let get = |prefix: &str| -> Result<Vec<f32>> {
            let name = &n.name;
            let t = tensors
                .get(&format!("{prefix}.{name}"))
                .ok_or_else(|| fail(format!("tensor {prefix}.{name} missing")))?;
            if t.dims() != n.shape.as_slice() {
                return Err(fail(format!("tensor {prefix}.{name} has shape {:?}, expected {:?}", t.dims(), n.shape)));
            }
            Ok(t.flatten_all()?.to_vec1::<f32>()?)
        };
        *n.values = get("var")?;
        opt.m[i] = get("m")?;
        opt.v[i] = get("v")?;
        if let Ok(b) = get("best") {
            best.insert(n.name.clone(), b);
        }
    }
    opt.step = meta.step;
    Ok((meta, best))
}

/// The median of step timings, `None` when there are none.
fn finite_median(seconds: &[f64]) -> Option<f64> {
    Some(crate::stats::median(seconds)).filter(|m| m.is_finite())
}
