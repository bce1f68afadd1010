//! `melo train`: arguments and handler (the `Command` variant in `crate::cli` forwards here).

use std::path::PathBuf;

use clap::Args;

use super::data::SplitFractions;
use super::trainer::{report_path, train_with, Augment, DataSetInfo, Method, TrainOptions};
use super::{Error, Result};
use crate::model::engine::default_backbone_dir;
use crate::model::lora::LoraTarget;
use crate::model::Pooling;

/// `melo train --data D --out ADAPTER.safetensors --task NAME [--method lora|linear|full] …`
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// ImageFolder directory (train/ val/ test/ of class folders, or class folders only, split
    /// by --seed) or a MedMNIST-style .npz.
    #[arg(long)]
    pub data: PathBuf,
    /// The data set's name, recorded in the adapter and its report instead of the --data path
    /// (default: the official name of a MedMNIST .npz, else "unnamed").
    #[arg(long)]
    pub data_name: Option<String>,
    /// The data set's licence, recorded beside its name (e.g. "CC BY 4.0").
    #[arg(long, default_value = "")]
    pub data_licence: String,
    /// The adapter to write (`.safetensors`; a report is written beside it as `.report.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// Task name the adapter is selected by (default: the file name of --out).
    #[arg(long)]
    pub task: Option<String>,
    #[arg(long, value_enum, default_value_t = Method::Lora)]
    pub method: Method,
    /// LoRA rank.
    #[arg(long, default_value_t = 4)]
    pub rank: usize,
    /// LoRA alpha (scale = alpha / rank).
    #[arg(long, default_value_t = 4.0)]
    pub alpha: f64,
    /// Where LoRA acts: `qv` (q and v, MeLo), `qkv` (the fused qkv map, as PEFT) or `qkv,mlp`
    /// (qkv and both MLP maps). The adapter records it.
    #[arg(long, default_value = "qv", value_parser = LoraTarget::parse)]
    pub targets: LoraTarget,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Peak learning rate (MeLo: 3e-4…2e-3 for LoRA, 3e-5 for full fine-tuning).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-6)]
    pub min_lr: f64,
    /// Fraction of the steps spent on linear warm-up.
    #[arg(long, default_value_t = 0.05)]
    pub warmup: f64,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Square input side in pixels (a multiple of the 14-px patch).
    #[arg(long, default_value_t = 224)]
    pub size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Class names in label order (npz labels 0, 1, …; for folders, replaces the folder names).
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// Modality the adapter is meant for (DICOM code such as CR, or e.g. microscopy).
    #[arg(long, default_value = "")]
    pub modality: String,
    #[arg(long, default_value = "")]
    pub description: String,
    #[arg(long, value_enum, default_value_t = Augment::Hflip)]
    pub augment: Augment,
    #[arg(long, default_value_t = 0.1)]
    pub label_smoothing: f64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Do not weight the loss by inverse class frequency.
    #[arg(long)]
    pub no_class_weights: bool,
    /// Features the head reads: cls, mean_patch or cls_mean_patch (DINOv2's linear-probe feature).
    #[arg(long, value_enum, default_value = "cls_mean_patch")]
    pub pooling: PoolingArg,
    /// Use at most N images of each split (quick trials).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Validation and test fractions when --data is one folder of class folders; with train/
    /// and test/ but no val/, the validation fraction is taken out of train.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Continue an interrupted run from its checkpoint (OUT with extension .ckpt).
    #[arg(long)]
    pub resume: bool,
    /// LoRA / full: train the head alone on frozen features for N epochs first (LP-FT).
    #[arg(long, default_value_t = 0)]
    pub head_epochs: usize,
    /// Peak learning rate of that head-only phase.
    #[arg(long, default_value_t = 3e-3)]
    pub head_lr: f64,
    /// Share of in-distribution validation images that pass the out-of-distribution
    /// threshold fitted after training.
    #[arg(long, default_value_t = crate::model::ood::THRESHOLD_QUANTILE)]
    pub ood_pass_rate: f64,
    /// Stop after N epochs of this invocation, keeping the checkpoint (continue with --resume).
    #[arg(long)]
    pub stop_after: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Intended use for the adapter's model facts (default: research use, naming the task,
    /// modality and classes).
    #[arg(long, default_value = "")]
    pub intended_use: String,
    /// A known limitation for the model facts (repeatable); the run adds its own (one data
    /// set, input size, classes with few test images).
    #[arg(long)]
    pub limitation: Vec<String>,
    /// Backbone folder with config.json (default: $MELO_BACKBONE, else assets/backbone).
    #[arg(long)]
    pub backbone: Option<PathBuf>,
}

/// `--pooling` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[clap(rename_all = "snake_case")]
pub enum PoolingArg {
    Cls,
    MeanPatch,
    ClsMeanPatch,
}

impl From<PoolingArg> for Pooling {
    fn from(p: PoolingArg) -> Self {
        match p {
            PoolingArg::Cls => Pooling::Cls,
            PoolingArg::MeanPatch => Pooling::MeanPatch,
            PoolingArg::ClsMeanPatch => Pooling::ClsMeanPatch,
        }
    }
}

impl TrainArgs {
    /// The name and licence recorded for `--data`.
    pub fn data_set(&self) -> DataSetInfo {
        let mut info = DataSetInfo::default_for(&self.data);
        if let Some(name) = &self.data_name {
            info.name = name.clone();
        }
        info.licence = self.data_licence.clone();
        info
    }

    /// The options these arguments describe.
    pub fn options(&self) -> Result<TrainOptions> {
        let backbone = match &self.backbone {
            Some(b) => b.clone(),
            None => default_backbone_dir()
                .ok_or_else(|| Error::Options("no backbone folder found; pass --backbone DIR".into()))?,
        };
        let task = match &self.task {
            Some(t) => t.clone(),
            None => self
                .out
                .file_stem()
                .and_then(|s| s.to_str())
                .map(str::to_string)
                .ok_or_else(|| Error::Options("pass --task NAME".into()))?,
        };
        Ok(TrainOptions {
            data: self.data.clone(),
            method: self.method,
            rank: self.rank,
            alpha: self.alpha,
            targets: self.targets,
            epochs: self.epochs,
            lr: self.lr,
            min_lr: self.min_lr,
            warmup: self.warmup,
            batch: self.batch,
            size: self.size,
            seed: self.seed,
            out: self.out.clone(),
            task,
            labels: self.labels.clone(),
            modality: self.modality.clone(),
            description: self.description.clone(),
            augment: self.augment,
            label_smoothing: self.label_smoothing,
            weight_decay: self.weight_decay,
            class_weights: !self.no_class_weights,
            pooling: self.pooling.into(),
            backbone,
            limit: self.limit,
            split: SplitFractions { val: self.val_fraction, test: self.test_fraction, seed: self.seed },
            resume: self.resume,
            stop_after: self.stop_after,
            head_epochs: self.head_epochs,
            head_lr: self.head_lr,
            ood_pass_rate: self.ood_pass_rate,
            progress: !self.quiet,
            intended_use: self.intended_use.clone(),
            limitations: self.limitation.clone(),
        })
    }
}

/// Runs `melo train` and prints the test metrics.
pub fn run(args: &TrainArgs) -> Result<()> {
    // candle runs each element-wise op on its own worker pool whose threads spin between ops;
    // training issues thousands of small ops per step, and on few cores the spinning workers
    // starve gemm's threads (measured 2.7x slower per step on 2 cores). Matrix products keep
    // their threads (RAYON_NUM_THREADS); this only makes candle's element-wise ops inline.
    // Set before the first candle op, which creates the pool.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let options = args.options()?;
    let data_set = args.data_set();
    if args.data_name.is_none() {
        eprintln!("note: the adapter records the data set as '{}' (name it with --data-name)", data_set.name);
    }
    let report = train_with(&options, &data_set)?;
    let t = &report.test;
    println!(
        "{}: {:?} on {} — test accuracy {:.4}, macro F1 {:.4}, macro AUC {}; {} trainable parameters ({:.3} %), {} bytes; \
         {:.0} s, {:.2} train images/s; best epoch {}",
        report.task,
        report.method,
        report.data,
        t.accuracy,
        t.macro_f1,
        t.macro_auc.map(|a| format!("{a:.4}")).unwrap_or_else(|| "n/a".into()),
        report.trainable_parameters,
        report.trainable_percent,
        report.file_bytes,
        report.train_seconds,
        report.train_images_per_second,
        report.best_epoch
    );
    println!("wrote {} and {}", options.out.display(), report_path(&options.out).display());
    Ok(())
}
