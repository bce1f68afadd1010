//! Task adapters: rank-r LoRA updates on the attention of every block plus a classification
//! head, with the metadata a clinician and the engine need (labels, preprocessing, which
//! backbone it belongs to, how it was trained and tested).
//!
//! File format (`*.safetensors`, f32):
//!
//! | tensor | shape | |
//! |---|---|---|
//! | `blocks.{i}.attn.q.lora_A`, `blocks.{i}.attn.v.lora_A` | [r, dim] | target `q_v` (MeLo) |
//! | `blocks.{i}.attn.q.lora_B`, `blocks.{i}.attn.v.lora_B` | [dim, r] | |
//! | `blocks.{i}.attn.qkv.lora_A` / `lora_B` | [r, dim] / [3·dim, r] | target `qkv` (PEFT) |
//! | the qkv pair and `blocks.{i}.mlp.fc1.lora_A` / `_B`, `blocks.{i}.mlp.fc2.lora_A` / `_B` | [r, dim] / [mlp, r], [r, mlp] / [dim, r] | target `qkv_mlp` |
//! | `head.weight`, `head.bias` | [C, F], [C] | F = dim, or 2·dim for `cls_mean_patch` |
//! | `ood.class_means`, `ood.components`, `ood.eigenvalues` | [C, F], [k, F], [k] | optional: OOD statistics ([`super::ood`]) |
//!
//! `__metadata__`: `format` = `melo-adapter`, `format_version` = `1`, `adapter` = the
//! [`AdapterMetadata`] as JSON. The update is `scale · (x Aᵀ) Bᵀ`, scale = alpha / r as a
//! float (MeLo's public code computes `alpha // r`, which is 0 for alpha < r; not copied).
//!
//! Importers read MeLo's published layout and HF PEFT adapters; see [`Adapter::import_melo`]
//! and [`Adapter::import_peft`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::calibration::Calibration;
use super::core::Target;
use super::error::{Error, Result};
use super::ood::{Mahalanobis, OodSummary};
use super::safetensors_io::{serialize_f32, TensorFile};
use super::vit::{LowRank, Pooling, QkvLora, VisionTransformer, VitOutput};

/// `__metadata__` value of `format` in our adapter files.
pub const FORMAT: &str = "melo-adapter";
pub const FORMAT_VERSION: &str = "1";
/// Adapters are a few MB at most (ViT-B, r = 64: 14 MB); anything far larger is not one, and
/// is refused before it is read into memory.
pub const MAX_ADAPTER_BYTES: u64 = 256 << 20;
/// Tensors of the OOD statistics (see [`super::ood`]): class means [C, F], leading
/// eigenvectors of the shared covariance [k, F] and their eigenvalues [k].
pub const OOD_MEANS: &str = "ood.class_means";
pub const OOD_COMPONENTS: &str = "ood.components";
pub const OOD_EIGENVALUES: &str = "ood.eigenvalues";
/// Largest input side an adapter may ask for (pixels).
pub const MAX_INPUT_SIZE: usize = 1024;

/// Which projections the low-rank updates touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// Separate updates of q and v in every block (MeLo).
    #[default]
    QV,
    /// One update of the fused qkv projection (HF PEFT with `target_modules=["qkv"]`).
    Qkv,
    /// The fused qkv update and one on each of the MLP's two maps (`--targets qkv,mlp`).
    QkvMlp,
}

impl LoraTarget {
    /// The maps each block's updates act on, in the order of [`QkvLora::parts`].
    pub fn targets(self) -> &'static [Target] {
        match self {
            LoraTarget::QV => &[Target::Q, Target::V],
            LoraTarget::Qkv => &[Target::Qkv],
            LoraTarget::QkvMlp => &[Target::Qkv, Target::Fc1, Target::Fc2],
        }
    }

    /// A block's updates from `parts` in the order of [`targets`](Self::targets).
    pub fn block(self, mut parts: Vec<LowRank>) -> Result<QkvLora> {
        if parts.len() != self.targets().len() {
            return Err(Error::weights("LoRA", format!("{} updates for target {self:?}", parts.len())));
        }
        let mut next = || parts.remove(0);
        Ok(match self {
            LoraTarget::QV => QkvLora::QV { q: next(), v: next() },
            LoraTarget::Qkv => QkvLora::Fused(next()),
            LoraTarget::QkvMlp => QkvLora::FusedMlp { qkv: next(), fc1: next(), fc2: next() },
        })
    }

    /// `qv`, `qkv` or `qkv,mlp` (the `--targets` spellings).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text {
            "qv" => Ok(LoraTarget::QV),
            "qkv" => Ok(LoraTarget::Qkv),
            "qkv,mlp" => Ok(LoraTarget::QkvMlp),
            other => Err(format!("unknown LoRA targets '{other}' (expected qv, qkv or qkv,mlp)")),
        }
    }

    pub fn is_qv(&self) -> bool {
        *self == LoraTarget::QV
    }

    /// The target a block's updates belong to.
    pub fn of(block: &QkvLora) -> Self {
        match block {
            QkvLora::QV { .. } => LoraTarget::QV,
            QkvLora::Fused(_) => LoraTarget::Qkv,
            QkvLora::FusedMlp { .. } => LoraTarget::QkvMlp,
        }
    }
}

/// How the model was trained (free text where the trainer has more to say).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct TrainingSummary {
    /// The data set's name (e.g. `PneumoniaMNIST (MedMNIST v2)`), never a path: adapters are
    /// shared, and sites name folders after patients. Versions before issue 20 stored the
    /// `--data` path here; [`Adapter::load`] drops such a value.
    pub dataset: String,
    pub train_samples: Option<u64>,
    pub validation_samples: Option<u64>,
    pub epochs: Option<u32>,
    pub optimizer: String,
    pub learning_rate: Option<f64>,
    /// How the kept checkpoint was chosen (e.g. "best validation AUC").
    pub selection: String,
    pub notes: String,
}

/// What an adapter was trained on, beyond its name ([`TrainingSummary::dataset`]): the
/// licence and how many images of each class each split held. No paths, no file names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct DataSetSummary {
    /// The data set's licence as given (`--data-licence`), e.g. `CC BY 4.0`; empty: not stated.
    pub licence: String,
    /// Images used per split and class: `{"train": {"normal": 1214, …}, "val": …, "test": …}`.
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// Files of the data set that could not be read and were left out (all splits).
    pub skipped_files: u64,
}

/// Whether `text` holds a path separator: such a value in a field meant for a name came from
/// a path and is not kept.
pub fn looks_like_path(text: &str) -> bool {
    text.contains(['/', '\\'])
}

/// Everything an adapter file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMetadata {
    /// Short unique name, used to select it (`melo predict --task NAME`).
    pub task: String,
    /// Class names, in the order of the head's outputs.
    pub labels: Vec<String>,
    #[serde(default)]
    pub description: String,
    pub rank: usize,
    pub alpha: f64,
    /// rsLoRA scaling alpha / √r instead of alpha / r (PEFT `use_rslora`).
    #[serde(default)]
    pub rslora: bool,
    pub target: LoraTarget,
    /// Side of the square input (pixels).
    pub input_size: usize,
    /// Per-channel normalisation applied to RGB values in 0..1.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The modality it is meant for (DICOM code such as "CR", or e.g. "microscopy").
    #[serde(default)]
    pub modality: String,
    /// sha256 of the backbone weights file it was trained on.
    pub backbone_sha256: String,
    /// Which tokens the head reads.
    #[serde(default)]
    pub pooling: Pooling,
    /// Independent sigmoid per label instead of a softmax over labels.
    #[serde(default)]
    pub multi_label: bool,
    #[serde(default)]
    pub training: TrainingSummary,
    /// Licence and per-split, per-class image counts of the training data.
    #[serde(default)]
    pub data_set: DataSetSummary,
    /// Test-set metrics, e.g. {"test_accuracy": 0.93, "test_macro_auc": 0.99}.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Temperature scaling fitted on validation logits, with its effect on test (issue 15);
    /// `None`: the adapter's probabilities are the raw softmax (*uncalibrated*).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Out-of-distribution detector and thresholds; its statistics are the `ood.*` tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ood: Option<OodSummary>,
    /// Where the adapter came from (trained here, imported from which file).
    #[serde(default)]
    pub source: String,
    /// The "Model facts" label: intended use, limitations, test metrics with 95 % intervals.
    /// Adapters written before issue 15 load with the default (no intended use stated,
    /// research use only).
    #[serde(default)]
    pub facts: ModelFacts,
}

/// What a clinician reads before trusting an adapter (Sendak et al. 2020, "Presenting machine
/// learning model information to clinical end users with model facts labels"; FDA, Health
/// Canada and MHRA, "Transparency for machine learning-enabled medical devices: guiding
/// principles", 2024). The data set's name, licence and counts are in
/// [`AdapterMetadata::training`] and [`AdapterMetadata::data_set`], calibration beside them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelFacts {
    /// Who and what the model is for, in a sentence or two; empty: not stated.
    pub intended_use: String,
    /// Known limitations, one per entry (population, resolution, sites, classes with few
    /// test images…).
    pub limitations: Vec<String>,
    /// Not a medical device: every adapter made by this program is for research only, and an
    /// imported one claims nothing else.
    pub research_use_only: bool,
    /// Test-set metrics with 95 % confidence intervals.
    pub test_intervals: Vec<MetricInterval>,
}

impl Default for ModelFacts {
    fn default() -> Self {
        Self {
            intended_use: String::new(),
            limitations: Vec::new(),
            research_use_only: true,
            test_intervals: Vec::new(),
        }
    }
}

/// A test metric with its 95 % confidence interval and how the interval was obtained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct MetricInterval {
    /// e.g. `accuracy`, `macro_auc`, `sensitivity.pneumonia`.
    pub metric: String,
    pub value: f64,
    pub low: f64,
    pub high: f64,
    /// Images the metric was computed on.
    pub n: u64,
    /// e.g. `Wilson score` or `Hanley-McNeil`.
    pub method: String,
}

impl AdapterMetadata {
    /// Metadata for a new adapter on `vit`: its input size and normalisation, rank 4,
    /// alpha 4 (MeLo's defaults), q/v target, CLS pooling.
    pub fn for_backbone(task: &str, labels: Vec<String>, vit: &VisionTransformer) -> Self {
        let cfg = vit.config();
        Self::blank(task, labels, vit.sha256().to_string(), (cfg.image_size, cfg.mean, cfg.std))
    }

    /// MeLo's defaults (rank 4, alpha 4, q/v target, CLS pooling) and nothing recorded, for a
    /// backbone and its input (size, mean, std).
    fn blank(task: &str, labels: Vec<String>, backbone_sha256: String, input: (usize, [f32; 3], [f32; 3])) -> Self {
        Self {
            task: task.to_string(),
            labels,
            description: String::new(),
            rank: 4,
            alpha: 4.0,
            rslora: false,
            target: LoraTarget::QV,
            input_size: input.0,
            mean: input.1,
            std: input.2,
            modality: String::new(),
            backbone_sha256,
            pooling: Pooling::Cls,
            multi_label: false,
            training: TrainingSummary::default(),
            data_set: DataSetSummary::default(),
            metrics: BTreeMap::new(),
            calibration: None,
            ood: None,
            source: String::new(),
            facts: ModelFacts::default(),
        }
    }

    /// The factor applied to every low-rank update.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Drops what adapters written before issue 20 recorded about the machine they were made
    /// on: a data-set "name" that is a path (the `--data` argument as typed) is cleared, and
    /// the folders of any path in `source` (an import's location) are cut to `...`.
    pub fn forget_paths(&mut self) {
        if looks_like_path(&self.training.dataset) {
            self.training.dataset.clear();
        }
        self.source = crate::error::hide_folders(&self.source);
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.task.trim().is_empty() || self.task.chars().any(char::is_control) {
            return Err(format!("task name {:?} is empty or has control characters", self.task));
        }
        if self.labels.is_empty() {
            return Err("no class labels".into());
        }
        if self.rank == 0 {
            return Err("rank is 0".into());
        }
        if !self.alpha.is_finite() {
            return Err(format!("alpha {} is not finite", self.alpha));
        }
        // Attention memory grows with the fourth power of the side; 1024 px on a /14 ViT is
        // already 5 329 tokens (680 MB of scores per image).
        if self.input_size == 0 || self.input_size > MAX_INPUT_SIZE {
            return Err(format!("input size {} is not in 1..={MAX_INPUT_SIZE}", self.input_size));
        }
        if self.std.iter().any(|s| !(*s > 0.0 && s.is_finite())) || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(format!("normalisation mean {:?} / std {:?} is invalid", self.mean, self.std));
        }
        if self.backbone_sha256.len() != 64 || !self.backbone_sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("backbone sha256 {:?} is not 64 hex digits", self.backbone_sha256));
        }
        Ok(())
    }
}

/// What importers need besides the file: names and the backbone it belongs to.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub task: String,
    /// Class names; default `class_0`, `class_1`, ….
    pub labels: Option<Vec<String>>,
    /// LoRA alpha. MeLo files do not store it (MeLo's default is 4); PEFT's config does.
    pub alpha: Option<f64>,
    pub backbone_sha256: String,
    pub input_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub modality: String,
    /// Which tokens the head reads: both MeLo and timm+PEFT heads read the CLS token.
    pub pooling: Pooling,
}

impl ImportOptions {
    /// Options for importing onto `vit` (its hash, input size and normalisation).
    pub fn for_backbone(task: &str, vit: &VisionTransformer) -> Self {
        let cfg = vit.config();
        Self {
            task: task.to_string(),
            labels: None,
            alpha: None,
            backbone_sha256: vit.sha256().to_string(),
            input_size: cfg.image_size,
            mean: cfg.mean,
            std: cfg.std,
            modality: String::new(),
            pooling: Pooling::Cls,
        }
    }

    fn metadata(
        &self,
        labels_count: usize,
        rank: usize,
        alpha: f64,
        target: LoraTarget,
        source: String,
    ) -> Result<AdapterMetadata> {
        let labels = match &self.labels {
            Some(l) if l.len() != labels_count => {
                return Err(Error::Config(format!("{} labels given, the head has {labels_count} outputs", l.len())))
            }
            Some(l) => l.clone(),
            None => (0..labels_count).map(|i| format!("class_{i}")).collect(),
        };
        let input = (self.input_size, self.mean, self.std);
        Ok(AdapterMetadata {
            rank,
            alpha,
            target,
            modality: self.modality.clone(),
            pooling: self.pooling,
            source,
            facts: ModelFacts {
                limitations: vec![
                    "Imported: its training data, intended use and test performance were not recorded by this program"
                        .into(),
                ],
                ..ModelFacts::default()
            },
            ..AdapterMetadata::blank(&self.task, labels, self.backbone_sha256.clone(), input)
        })
    }
}

/// One task: LoRA updates for every block, a head, and metadata.
#[derive(Debug, Clone)]
pub struct Adapter {
    metadata: AdapterMetadata,
    blocks: Vec<QkvLora>,
    /// [C, F].
    head_weight: Tensor,
    /// [C].
    head_bias: Tensor,
    /// Training-feature statistics of the Mahalanobis OOD score (with `metadata.ood`).
    ood_stats: Option<Mahalanobis>,
}

impl Adapter {
    /// Assembles an adapter, checking that tensors and metadata agree (rank, target, scale,
    /// number of labels). Whether it fits a backbone is checked when it is registered.
    pub fn new(
        metadata: AdapterMetadata,
        blocks: Vec<QkvLora>,
        head_weight: Tensor,
        head_bias: Tensor,
    ) -> Result<Self> {
        let fail = |reason: String| Error::Adapter { path: PathBuf::from(&metadata.task), reason };
        metadata.validate().map_err(fail)?;
        if blocks.is_empty() {
            return Err(fail("no LoRA blocks".into()));
        }
        let scale = metadata.scale();
        for (i, block) in blocks.iter().enumerate() {
            let target = LoraTarget::of(block);
            if target != metadata.target {
                return Err(fail(format!("block {i} is a {target:?} update, metadata says {:?}", metadata.target)));
            }
            for (_, part) in block.parts() {
                if part.rank() != metadata.rank {
                    return Err(fail(format!("block {i} has rank {}, metadata says {}", part.rank(), metadata.rank)));
                }
                if (part.scale() - scale).abs() > 1e-12 * scale.abs().max(1.0) {
                    return Err(fail(format!("block {i} has scale {}, metadata alpha/r gives {scale}", part.scale())));
                }
            }
        }
        let (classes, features) = head_weight.dims2().map_err(|_| {
            fail(format!("head weight has shape {:?}, expected [classes, features]", head_weight.dims()))
        })?;
        if head_bias.dims() != [classes] {
            return Err(fail(format!("head bias has shape {:?}, expected [{classes}]", head_bias.dims())));
        }
        if classes != metadata.labels.len() {
            return Err(fail(format!("head has {classes} outputs but {} labels", metadata.labels.len())));
        }
        let dim = blocks[0].parts()[0].1.in_dim();
        if features != metadata.pooling.feature_dim(dim) {
            return Err(fail(format!(
                "head reads {features} features; {:?} pooling on a {dim}-wide backbone gives {}",
                metadata.pooling,
                metadata.pooling.feature_dim(dim)
            )));
        }
        Ok(Self {
            metadata,
            blocks,
            head_weight: head_weight.to_dtype(DType::F32)?.contiguous()?,
            head_bias: head_bias.to_dtype(DType::F32)?.contiguous()?,
            ood_stats: None,
        })
    }

    /// Attaches a fitted temperature and OOD statistics (replacing any earlier ones); the
    /// LoRA factors and the head are not touched.
    pub fn set_calibration(
        &mut self,
        calibration: Option<Calibration>,
        ood: Option<(OodSummary, Mahalanobis)>,
    ) -> Result<()> {
        let fail = |reason: String| Error::Adapter { path: PathBuf::from(&self.metadata.task), reason };
        if let Some(c) = &calibration {
            if !(c.temperature.is_finite() && c.temperature > 0.0) {
                return Err(fail(format!("temperature {} is not positive", c.temperature)));
            }
        }
        if let Some((summary, stats)) = &ood {
            let (classes, features) = self.head_weight.dims2()?;
            if stats.classes() != classes || stats.feature_dim() != features || summary.components != stats.components()
            {
                return Err(fail(format!(
                    "OOD statistics for {} classes × {} features ({} components) do not fit a head of {classes} × {features} ({} components in the metadata)",
                    stats.classes(),
                    stats.feature_dim(),
                    stats.components(),
                    summary.components
                )));
            }
        }
        self.metadata.calibration = calibration;
        match ood {
            Some((summary, stats)) => {
                self.metadata.ood = Some(summary);
                self.ood_stats = Some(stats);
            }
            None => {
                self.metadata.ood = None;
                self.ood_stats = None;
            }
        }
        Ok(())
    }

    /// The Mahalanobis statistics, when the adapter carries them.
    pub fn ood_stats(&self) -> Option<&Mahalanobis> {
        self.ood_stats.as_ref()
    }

    /// The temperature the logits are divided by (1 without calibration).
    pub fn temperature(&self) -> f64 {
        self.metadata.calibration.as_ref().map_or(1.0, |c| c.temperature)
    }

    pub fn metadata(&self) -> &AdapterMetadata {
        &self.metadata
    }
    pub fn task(&self) -> &str {
        &self.metadata.task
    }
    pub fn labels(&self) -> &[String] {
        &self.metadata.labels
    }
    pub fn lora(&self) -> &[QkvLora] {
        &self.blocks
    }
    pub fn head_weight(&self) -> &Tensor {
        &self.head_weight
    }
    pub fn head_bias(&self) -> &Tensor {
        &self.head_bias
    }

    /// Number of trainable parameters (LoRA factors and head).
    pub fn parameter_count(&self) -> usize {
        let lora: usize =
            self.blocks.iter().flat_map(QkvLora::parts).map(|(_, p)| p.a().elem_count() + p.b().elem_count()).sum();
        lora + self.head_weight.elem_count() + self.head_bias.elem_count()
    }

    /// The head on a forward pass's tokens: logits [B, C].
    pub fn head_logits(&self, output: &VitOutput) -> Result<Tensor> {
        self.head_on(&self.features(output)?)
    }

    /// The pooled features [B, F] the head reads from a forward pass.
    pub fn features(&self, output: &VitOutput) -> Result<Tensor> {
        output.pooled(self.metadata.pooling)
    }

    /// The head on pooled features [B, F]: logits [B, C].
    pub fn head_on(&self, features: &Tensor) -> Result<Tensor> {
        super::kernels::add_repeated_(features.matmul(&self.head_weight.t()?)?, &self.head_bias)
    }

    /// Logits [B, C] for normalised pixels [B, 3, S, S] through `vit` with this adapter.
    pub fn logits(&self, vit: &VisionTransformer, pixels: &Tensor) -> Result<Tensor> {
        let output = vit.forward(pixels, Some(&self.blocks))?;
        self.head_logits(&output)
    }

    /// Probabilities from logits [B, C]: softmax, or a sigmoid per label for multi-label heads.
    pub fn probabilities(&self, logits: &Tensor) -> Result<Tensor> {
        Ok(if self.metadata.multi_label {
            candle_nn::ops::sigmoid(logits)?
        } else {
            candle_nn::ops::softmax_last_dim(logits)?
        })
    }

    /// A random adapter for `vit` (A, B and head drawn from a seeded normal at scale 0.02).
    /// Its predictions mean nothing: it exists for tests and benchmarks, which need adapters
    /// of real size before any has been trained.
    pub fn synthetic(metadata: AdapterMetadata, vit: &VisionTransformer, seed: u64) -> Result<Self> {
        let d = vit.embed_dim();
        let r = metadata.rank;
        let scale = metadata.scale();
        let mut rng = SplitMix64(seed);
        let mut normal = |shape: (usize, usize)| -> Result<Tensor> {
            let values: Vec<f32> = (0..shape.0 * shape.1).map(|_| 0.02 * rng.normal()).collect();
            Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
        };
        let h = vit.config().mlp_hidden_dim();
        let mut blocks = Vec::with_capacity(vit.depth());
        for _ in 0..vit.depth() {
            let parts = (metadata.target.targets().iter())
                .map(|t| {
                    let (inputs, outputs) = t.widths(d, h);
                    LowRank::new(normal((r, inputs))?, normal((outputs, r))?, scale)
                })
                .collect::<Result<Vec<_>>>()?;
            blocks.push(metadata.target.block(parts)?);
        }
        let c = metadata.labels.len();
        let head_weight = normal((c, metadata.pooling.feature_dim(d)))?;
        let head_bias = normal((1, c))?.flatten_all()?;
        Self::new(metadata, blocks, head_weight, head_bias)
    }

    // ---- our file format -------------------------------------------------------------

    /// Reads an adapter file written by [`save`](Self::save).
    pub fn load(path: &Path) -> Result<Self> {
        let file = read_bounded(path)?;
        let fail = |reason: String| Error::Adapter { path: path.to_path_buf(), reason };
        match file.metadata.get("format").map(String::as_str) {
            Some(FORMAT) => {}
            _ => {
                return Err(fail(
                    "not a MeLo Workstation adapter (no `format: melo-adapter` metadata); import MeLo or PEFT \
                     files with `melo adapters import-melo` / `import-peft`"
                        .into(),
                ))
            }
        }
        match file.metadata.get("format_version").map(String::as_str) {
            Some(FORMAT_VERSION) => {}
            other => {
                return Err(fail(format!("format version {other:?} is not supported (expected {FORMAT_VERSION})")))
            }
        }
        let json = file.metadata.get("adapter").ok_or_else(|| fail("no `adapter` metadata".into()))?;
        let mut metadata: AdapterMetadata = serde_json::from_str(json).map_err(|e| fail(format!("metadata: {e}")))?;
        metadata.validate().map_err(&fail)?;
        metadata.forget_paths();
        let scale = metadata.scale();

        let mut used = Vec::new();
        let mut pair = |prefix: &str| -> Result<LowRank> {
            let a_name = format!("{prefix}.lora_A");
            let b_name = format!("{prefix}.lora_B");
            let a = file.f32_any(&a_name)?;
            let b = file.f32_any(&b_name)?;
            used.push(a_name);
            used.push(b_name);
            LowRank::new(a, b, scale).map_err(|e| fail(format!("{prefix}: {e}")))
        };
        let mut blocks = Vec::new();
        let targets = metadata.target.targets();
        for i in 0.. {
            if !file.contains(&format!("blocks.{i}.{}.lora_A", targets[0].name())) {
                break;
            }
            let parts = targets.iter().map(|t| pair(&format!("blocks.{i}.{}", t.name()))).collect::<Result<_>>()?;
            blocks.push(metadata.target.block(parts)?);
        }
        // A gap in the numbering would silently drop the blocks after it.
        let last_block =
            file.names().filter_map(|n| n.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok()).max();
        if let Some(last) = last_block {
            if last >= blocks.len() {
                return Err(fail(format!(
                    "the LoRA tensors of block {} are missing or incomplete (the file has tensors up to block {last})",
                    blocks.len()
                )));
            }
        }
        let head_weight = file.f32_any("head.weight")?;
        let head_bias = file.f32_any("head.bias")?;
        used.extend(["head.weight".to_string(), "head.bias".to_string()]);
        let ood = match &metadata.ood {
            Some(summary) => {
                let values =
                    |name: &str| -> Result<Vec<f32>> { Ok(file.f32_any(name)?.flatten_all()?.to_vec1::<f32>()?) };
                let features = head_weight.dims().get(1).copied().unwrap_or(0);
                let stats = Mahalanobis::new(
                    features,
                    values(OOD_MEANS)?,
                    values(OOD_COMPONENTS)?,
                    values(OOD_EIGENVALUES)?,
                    summary.residual_variance,
                )
                .map_err(|e| fail(e.to_string()))?;
                used.extend([OOD_MEANS, OOD_COMPONENTS, OOD_EIGENVALUES].map(String::from));
                Some((summary.clone(), stats))
            }
            None => None,
        };
        if let Some(extra) = file.names().find(|n| !used.iter().any(|u| u == n)) {
            return Err(fail(format!("unexpected tensor '{extra}' (blocks must be numbered from 0 without gaps)")));
        }
        let calibration = metadata.calibration.clone();
        let mut adapter = Self::new(metadata, blocks, head_weight, head_bias).map_err(|e| match e {
            Error::Adapter { reason, .. } => fail(reason),
            other => other,
        })?;
        adapter.set_calibration(calibration, ood).map_err(|e| match e {
            Error::Adapter { reason, .. } => fail(reason),
            other => other,
        })?;
        Ok(adapter)
    }

    /// Writes the adapter atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = BTreeMap::new();
        for (i, block) in self.blocks.iter().enumerate() {
            for (t, lr) in block.parts() {
                tensors.insert(format!("blocks.{i}.{}.lora_A", t.name()), lr.a().clone());
                tensors.insert(format!("blocks.{i}.{}.lora_B", t.name()), lr.b().clone());
            }
        }
        tensors.insert("head.weight".into(), self.head_weight.clone());
        tensors.insert("head.bias".into(), self.head_bias.clone());
        if let Some(stats) = &self.ood_stats {
            let (c, f, k) = (stats.classes(), stats.feature_dim(), stats.components());
            let cpu = &Device::Cpu;
            tensors.insert(OOD_MEANS.into(), Tensor::from_slice(stats.class_means(), (c, f), cpu)?);
            tensors.insert(OOD_COMPONENTS.into(), Tensor::from_slice(stats.component_vectors(), (k, f), cpu)?);
            tensors.insert(OOD_EIGENVALUES.into(), Tensor::from_slice(stats.eigenvalues(), k, cpu)?);
        }
        let json = serde_json::to_string(&self.metadata).map_err(|e| Error::Unsupported(format!("metadata: {e}")))?;
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("adapter".to_string(), json),
        ]);
        let bytes = serialize_f32(&tensors, metadata)?;
        crate::atomic::write_bytes_atomic(path, &bytes)?;
        Ok(())
    }

    // ---- importers -------------------------------------------------------------------

    /// Imports MeLo's published layout (`save_lora_parameters` in JamesQFreeman/LoRA-ViT):
    /// `w_a_{k:03}` [r, dim], `w_b_{k:03}` [dim, r] with k = 2i for q and 2i + 1 for v of
    /// block i, and `fc_{dim}in_{C}out` [C, dim] on the CLS token.
    ///
    /// Differences from that code, on purpose: the scale is alpha / r as a float (its
    /// `alpha // r` is 0 for alpha < r), and since MeLo does not save the head bias, the bias
    /// is zero — logits then differ from the trained model's by that bias, which the import
    /// records in `source`. alpha comes from `options.alpha`, else from an `alpha` entry in
    /// the file's metadata (not part of MeLo's format), else the import is refused.
    pub fn import_melo(path: &Path, options: &ImportOptions) -> Result<Self> {
        let file = read_bounded(path)?;
        let fail = |reason: String| Error::Adapter { path: path.to_path_buf(), reason };
        let alpha = match options.alpha {
            Some(a) => a,
            None => match file.metadata.get("alpha").map(|s| s.parse::<f64>()) {
                Some(Ok(a)) => a,
                _ => {
                    return Err(fail(
                        "MeLo files do not store LoRA alpha; give it explicitly (MeLo's default is 4)".into(),
                    ))
                }
            },
        };
        let count = file.names().filter(|n| n.starts_with("w_a_")).count();
        if count == 0 || count % 2 != 0 {
            return Err(fail(format!(
                "expected an even, non-zero number of w_a_XXX tensors (q and v per block), found {count}"
            )));
        }
        let rank = file.shape_of("w_a_000").map(|s| s[0]).unwrap_or(0);
        if rank == 0 {
            return Err(fail("w_a_000 is missing or has rank 0".into()));
        }
        let heads: Vec<&str> = file.names().filter(|n| n.starts_with("fc_") && n.ends_with("out")).collect();
        let [head_name] = heads.as_slice() else {
            return Err(fail(format!("expected one fc_{{dim}}in_{{C}}out head tensor, found {heads:?}")));
        };
        let head_weight = file.f32_any(head_name)?;
        let (classes, dim) =
            head_weight.dims2().map_err(|_| fail(format!("{head_name} has shape {:?}", head_weight.dims())))?;
        if *head_name != format!("fc_{dim}in_{classes}out") {
            return Err(fail(format!("{head_name} has shape [{classes}, {dim}], its name says otherwise")));
        }
        let metadata = options.metadata(
            classes,
            rank,
            alpha,
            LoraTarget::QV,
            // Not the file's path or name: the adapter is shared, the import's location is not.
            format!("imported from a MeLo file (alpha {alpha}; head bias not stored by MeLo, set to 0)"),
        )?;
        let scale = metadata.scale();
        let factor = |k: usize| -> Result<LowRank> {
            let a = file.f32(&format!("w_a_{k:03}"), &[rank, dim])?;
            let b = file.f32(&format!("w_b_{k:03}"), &[dim, rank])?;
            LowRank::new(a, b, scale)
        };
        let mut blocks = Vec::with_capacity(count / 2);
        for i in 0..count / 2 {
            blocks.push(QkvLora::QV { q: factor(2 * i)?, v: factor(2 * i + 1)? });
        }
        if file.names().filter(|n| n.starts_with("w_b_")).count() != count {
            return Err(fail("numbers of w_a_XXX and w_b_XXX tensors differ".into()));
        }
        let head_bias = Tensor::zeros(classes, DType::F32, &Device::Cpu)?;
        Self::new(metadata, blocks, head_weight, head_bias)
    }

    /// Imports an HF PEFT LoRA adapter saved on a timm ViT: a folder with
    /// `adapter_model.safetensors` and `adapter_config.json` (or the path of the
    /// `.safetensors`, its config beside it), `target_modules` = `qkv`, the head saved via
    /// `modules_to_save=["head"]`. The update applies to the whole fused qkv (q, k and v),
    /// which is what PEFT does — it is kept as such, not mapped onto MeLo's q/v layout.
    pub fn import_peft(path: &Path, options: &ImportOptions) -> Result<Self> {
        let (dir, weights) = if path.is_dir() {
            (path.to_path_buf(), path.join("adapter_model.safetensors"))
        } else {
            (path.parent().map(Path::to_path_buf).unwrap_or_default(), path.to_path_buf())
        };
        let config_path = dir.join("adapter_config.json");
        let fail = |reason: String| Error::Adapter { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: PeftConfig = serde_json::from_str(&text).map_err(|e| fail(format!("adapter_config.json: {e}")))?;
        config.check().map_err(&fail)?;
        let file = read_bounded(&weights)?;

        let prefix = "base_model.model.";
        let mut blocks = Vec::new();
        let mut used = Vec::new();
        // PEFT's config is authoritative for alpha; a different one given by the caller is an error.
        let alpha = config.lora_alpha;
        if options.alpha.is_some_and(|a| a != alpha) {
            return Err(fail(format!(
                "alpha {:?} given, but adapter_config.json says lora_alpha = {alpha}",
                options.alpha
            )));
        }
        let rank = config.r;
        let scale = if config.use_rslora { alpha / (rank as f64).sqrt() } else { alpha / rank as f64 };
        for i in 0.. {
            let a_name = format!("{prefix}blocks.{i}.attn.qkv.lora_A.weight");
            let b_name = format!("{prefix}blocks.{i}.attn.qkv.lora_B.weight");
            if !file.contains(&a_name) {
                break;
            }
            let a = file.f32_any(&a_name)?;
            let b = file.f32_any(&b_name)?;
            if a.dims().first() != Some(&rank) {
                return Err(fail(format!("{a_name} has shape {:?}, config says r = {rank}", a.dims())));
            }
            blocks.push(QkvLora::Fused(LowRank::new(a, b, scale).map_err(|e| fail(format!("block {i}: {e}")))?));
            used.push(a_name);
            used.push(b_name);
        }
        if blocks.is_empty() {
            return Err(fail(format!("no `{prefix}blocks.N.attn.qkv.lora_A.weight` tensors")));
        }
        let head_weight_name = format!("{prefix}head.weight");
        let head_bias_name = format!("{prefix}head.bias");
        if !file.contains(&head_weight_name) {
            return Err(fail(
                "no saved head (`base_model.model.head.weight`): the adapter must be saved with modules_to_save=[\"head\"]"
                    .into(),
            ));
        }
        let head_weight = file.f32_any(&head_weight_name)?;
        let classes = head_weight.dims().first().copied().unwrap_or(0);
        let head_bias = if file.contains(&head_bias_name) {
            file.f32_any(&head_bias_name)?
        } else {
            Tensor::zeros(classes, DType::F32, &Device::Cpu)?
        };
        used.extend([head_weight_name, head_bias_name]);
        if let Some(extra) = file.names().find(|n| !used.iter().any(|u| u == n)) {
            return Err(fail(format!(
                "tensor '{extra}' is not a qkv LoRA factor or the head; only target_modules=[\"qkv\"] is supported"
            )));
        }
        let mut meta = options.metadata(
            classes,
            rank,
            alpha,
            LoraTarget::Qkv,
            format!("imported from a PEFT {} adapter", config.peft_version.as_deref().unwrap_or("?")),
        )?;
        meta.rslora = config.use_rslora;
        Self::new(meta, blocks, head_weight, head_bias)
    }
}

/// The parts of PEFT's `adapter_config.json` that change the arithmetic.
#[derive(Debug, Deserialize)]
struct PeftConfig {
    peft_type: Option<String>,
    peft_version: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    target_modules: Option<serde_json::Value>,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    lora_bias: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    rank_pattern: HashMap<String, serde_json::Value>,
    #[serde(default)]
    alpha_pattern: HashMap<String, serde_json::Value>,
}

impl PeftConfig {
    fn check(&self) -> std::result::Result<(), String> {
        if let Some(kind) = &self.peft_type {
            if kind != "LORA" {
                return Err(format!("peft_type {kind} is not LORA"));
            }
        }
        let targets_qkv = match &self.target_modules {
            Some(serde_json::Value::Array(a)) => a.len() == 1 && a[0].as_str() == Some("qkv"),
            Some(serde_json::Value::String(s)) => s == "qkv",
            _ => false,
        };
        if !targets_qkv {
            return Err(format!("target_modules {:?} is not [\"qkv\"] (timm ViT attention)", self.target_modules));
        }
        if !self.modules_to_save.as_ref().is_some_and(|m| m.iter().any(|x| x == "head")) {
            return Err("modules_to_save does not include \"head\": the adapter has no task head".into());
        }
        if self.use_dora {
            return Err("DoRA adapters are not supported".into());
        }
        if self.fan_in_fan_out {
            return Err("fan_in_fan_out adapters are not supported (timm Linear layers are not Conv1D)".into());
        }
        if self.lora_bias || self.bias.as_deref().is_some_and(|b| b != "none") {
            return Err("LoRA bias terms are not supported".into());
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return Err("per-layer rank_pattern / alpha_pattern is not supported".into());
        }
        if self.r == 0 {
            return Err("r = 0".into());
        }
        Ok(())
    }
}

/// Reads a safetensors file, refusing anything too large to be an adapter before reading it.
fn read_bounded(path: &Path) -> Result<TensorFile> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if len > MAX_ADAPTER_BYTES {
        return Err(Error::Adapter {
            path: path.to_path_buf(),
            reason: format!("{len} bytes is too large for an adapter (limit {MAX_ADAPTER_BYTES})"),
        });
    }
    TensorFile::read(path)
}

/// A small deterministic generator (SplitMix64 + Box–Muller) for synthetic adapters, so
/// benchmarks and tests need no `rand` dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform(), self.uniform());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}
