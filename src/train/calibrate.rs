//! Fitting an adapter's temperature and OOD statistics (issue 15), shared by `melo train`
//! (after the epoch is chosen) and `melo calibrate` (on an existing adapter, whose LoRA
//! factors and head are left byte for byte as they are).
//!
//! - temperature: fitted on the validation logits, measured on test ([`Calibration`]);
//! - Mahalanobis statistics: the adapter's own pooled features (LoRA applied, no augmentation)
//!   of at most [`DEFAULT_MAX_TRAIN`] training images, evenly spread over the split;
//! - thresholds: a quantile of each detector's validation scores (`--ood-pass-rate`).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use clap::Args;
use serde::Serialize;

use super::data::{DataSource, Prepared, Split, SplitFractions};
use super::trainer::TrainReport;
use super::{Error, Result};
use crate::model::calibration::Calibration;
use crate::model::engine::default_backbone_dir;
use crate::model::ood::{
    energy, quantile, quantile_grid, Detector, Mahalanobis, OodSummary, DEFAULT_COMPONENTS, DEFAULT_DETECTOR,
    THRESHOLD_QUANTILE,
};
use crate::model::{Adapter, Engine, VisionTransformer};

/// Training images whose features make the OOD statistics (enough for a 768-wide covariance
/// reduced to 64 components; bounds the time of a refit).
pub const DEFAULT_MAX_TRAIN: usize = 2000;

/// Pooled features [n, F] and uncalibrated logits [n, C] of a prepared split through `adapter`.
pub fn features_and_logits(
    vit: &VisionTransformer,
    adapter: &Adapter,
    data: &Prepared,
    items: &[usize],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let s = data.size;
    let (mut features, mut logits) = (Vec::new(), Vec::new());
    for chunk in items.chunks(32) {
        let mut pixels = Vec::with_capacity(chunk.len() * 3 * s * s);
        for &i in chunk {
            pixels.extend_from_slice(data.item(i));
        }
        let batch = Tensor::from_vec(pixels, (chunk.len(), 3, s, s), &Device::Cpu)?;
        let out = vit.forward(&batch, Some(adapter.lora()))?;
        let f = adapter.features(&out)?;
        logits.extend(adapter.head_on(&f)?.flatten_all()?.to_vec1::<f32>()?);
        features.extend(f.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok((features, logits))
}

/// Up to `max` indices of 0..n, evenly spread (all of them when n ≤ max).
pub fn spread(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max).map(|i| i * n / max).collect()
}

/// What a fit produced: the calibration (None for multi-label heads, which keep independent
/// uncalibrated sigmoids) and the OOD detector.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub calibration: Option<Calibration>,
    pub ood: OodSummary,
    pub stats: Mahalanobis,
}

/// How the OOD statistics are fitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// k: leading eigenpairs of the shared covariance kept.
    pub components: usize,
    /// Training images whose features make the statistics (evenly spread).
    pub max_train: usize,
    /// Share of in-distribution validation images that must pass the threshold.
    pub pass_rate: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self { components: DEFAULT_COMPONENTS, max_train: DEFAULT_MAX_TRAIN, pass_rate: THRESHOLD_QUANTILE }
    }
}

/// Fits temperature and OOD statistics for `adapter` on prepared train/val/test splits.
pub fn fit(
    vit: &VisionTransformer,
    adapter: &Adapter,
    train: &Prepared,
    val: &Prepared,
    test: &Prepared,
    options: FitOptions,
) -> Result<Fitted> {
    let FitOptions { components, max_train, pass_rate } = options;
    if !(0.5..=1.0).contains(&pass_rate) {
        return Err(Error::Options(format!("OOD pass rate {pass_rate}: expected 0.5 to 1")));
    }
    let classes = adapter.labels().len();
    let dim = adapter.head_weight().dims2()?.1;
    for (split, p) in [("train", train), ("validation", val), ("test", test)] {
        if p.is_empty() {
            return Err(Error::Options(format!("the {split} split is empty: nothing to calibrate on")));
        }
    }
    let train_items = spread(train.len(), max_train);
    let (train_features, _) = features_and_logits(vit, adapter, train, &train_items)?;
    let train_labels: Vec<usize> = train_items.iter().map(|&i| train.labels[i]).collect();
    // Small backbones or data sets (tests, quick trials) cannot carry k components: at most
    // half the feature width and fewer than the images' degrees of freedom.
    let components = components.min(dim / 2).min(train_items.len().saturating_sub(classes + 1)).max(1);
    let stats = Mahalanobis::fit(&train_features, &train_labels, classes, dim, components)?;

    let all = |p: &Prepared| (0..p.len()).collect::<Vec<_>>();
    let (val_features, val_logits) = features_and_logits(vit, adapter, val, &all(val))?;
    let (_, test_logits) = features_and_logits(vit, adapter, test, &all(test))?;
    let calibration = (!adapter.metadata().multi_label)
        .then(|| Calibration::fit(classes, &val_logits, &val.labels, &test_logits, &test.labels));

    let maha: Vec<f64> = val_features.chunks_exact(dim).map(|f| stats.score(f)).collect();
    let energies: Vec<f64> = val_logits.chunks_exact(classes).map(energy).collect();
    let ood = OodSummary {
        detector: DEFAULT_DETECTOR,
        components,
        residual_variance: stats.residual_variance(),
        mahalanobis_threshold: quantile(&maha, pass_rate),
        energy_threshold: quantile(&energies, pass_rate),
        fitted_on: "train".into(),
        fitted_samples: train_items.len() as u64,
        threshold_on: "validation".into(),
        threshold_samples: val.len() as u64,
        threshold_quantile: pass_rate,
        validation_quantiles: quantile_grid(match DEFAULT_DETECTOR {
            Detector::Mahalanobis => &maha,
            Detector::Energy => &energies,
        }),
    };
    Ok(Fitted { calibration, ood, stats })
}

/// `melo calibrate --adapter FILE --data DIR|FILE.npz`: fits temperature and OOD statistics
/// on an existing adapter without changing its weights.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The adapter to calibrate; rewritten in place (atomically), LoRA factors and head
    /// unchanged. A report beside it (`.report.json`) gets the same `calibration` and `ood`.
    #[arg(long)]
    pub adapter: PathBuf,
    /// The adapter's training data: ImageFolder directory or MedMNIST-style .npz, split as
    /// it was for training (same fractions and seed).
    #[arg(long)]
    pub data: PathBuf,
    /// Class names in label order, as given to `melo train` (must equal the adapter's labels).
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Leading eigenpairs of the shared covariance kept for the Mahalanobis score.
    #[arg(long, default_value_t = DEFAULT_COMPONENTS)]
    pub components: usize,
    /// Training images used for the OOD statistics (evenly spread over the split).
    #[arg(long, default_value_t = DEFAULT_MAX_TRAIN)]
    pub max_train: usize,
    /// Share of the in-distribution validation images that pass the OOD threshold (the
    /// threshold is that quantile of their scores).
    #[arg(long, default_value_t = THRESHOLD_QUANTILE)]
    pub ood_pass_rate: f64,
    /// Write the adapter here instead of over --adapter (no report is written then).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Backbone folder with config.json (default: $MELO_BACKBONE, else assets/backbone).
    #[arg(long)]
    pub backbone: Option<PathBuf>,
}

/// What `melo calibrate` prints (JSON).
#[derive(Debug, Serialize)]
struct CalibrateReport<'a> {
    task: &'a str,
    calibration: &'a Option<Calibration>,
    ood: &'a OodSummary,
    file_bytes: u64,
}

/// Runs `melo calibrate`.
pub fn run(args: &CalibrateArgs) -> Result<()> {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let backbone = match &args.backbone {
        Some(b) => b.clone(),
        None => default_backbone_dir()
            .ok_or_else(|| Error::Options("no backbone folder found; pass --backbone DIR".into()))?,
    };
    let mut engine = Engine::open(&backbone)?;
    let adapter = Adapter::load(&args.adapter)?;
    engine.register(adapter)?;
    let task = engine.adapters()[0].task().to_string();
    let adapter = engine.adapter(&task)?.clone();
    let split = SplitFractions { val: args.val_fraction, test: args.test_fraction, seed: args.seed };
    let source = DataSource::open(&args.data, args.labels.as_deref(), split)?;
    if source.classes != adapter.labels() {
        return Err(Error::Options(format!(
            "the data's classes {:?} are not the adapter's labels {:?} (give --labels as for training)",
            source.classes,
            adapter.labels()
        )));
    }
    let m = adapter.metadata();
    let prepare = |s: Split| source.prepare(s, m.input_size, m.mean, m.std, None);
    let (train, val, test) = (prepare(Split::Train)?, prepare(Split::Val)?, prepare(Split::Test)?);
    let options = FitOptions { components: args.components, max_train: args.max_train, pass_rate: args.ood_pass_rate };
    let fitted = fit(engine.backbone(), &adapter, &train, &val, &test, options)?;
    let mut out_adapter = adapter.clone();
    out_adapter.set_calibration(fitted.calibration.clone(), Some((fitted.ood.clone(), fitted.stats)))?;
    let out = args.out.clone().unwrap_or_else(|| args.adapter.clone());
    out_adapter.save(&out)?;
    let file_bytes = std::fs::metadata(&out).map_err(|e| Error::io(&out, e))?.len();
    if args.out.is_none() {
        update_report(&super::trainer::report_path(&args.adapter), &fitted.calibration, &fitted.ood, file_bytes)?;
    }
    let report = CalibrateReport { task: &task, calibration: &fitted.calibration, ood: &fitted.ood, file_bytes };
    println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Error::Options(e.to_string()))?);
    Ok(())
}

/// Sets `calibration`, `ood` and the new `file_bytes` in the training report beside the
/// adapter, if there is one (read and written as a [`TrainReport`], so fields keep the order
/// `melo train` writes; atomically).
fn update_report(path: &Path, calibration: &Option<Calibration>, ood: &OodSummary, file_bytes: u64) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let bad = |e: serde_json::Error| Error::Options(format!("{}: {e}", path.display()));
    let mut report: TrainReport = serde_json::from_str(&text).map_err(bad)?;
    report.calibration = calibration.clone();
    report.ood = Some(ood.clone());
    report.file_bytes = file_bytes;
    let text = serde_json::to_string_pretty(&report).map_err(bad)?;
    crate::atomic::write_bytes_atomic(path, text.as_bytes())?;
    Ok(())
}
