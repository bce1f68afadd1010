//! Handlers of `melo predict`, `melo adapters` and `melo bench` (the `Command` variants in
//! `crate::cli` only forward here).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::engine::{default_adapters_dir, default_backbone_dir, Engine, Prediction, Rejected};
use super::error::{Error, Result};
use super::lora::{Adapter, AdapterMetadata, ImportOptions};
use crate::image::{load_image, LoadOptions};

/// `melo predict IMAGE [--task T | --all] [--json]`
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// DICOM, PNG or JPEG file.
    pub image: PathBuf,
    /// The task (adapter) to run; may be omitted when only one is registered.
    #[arg(long, conflicts_with = "all")]
    pub task: Option<String>,
    /// Run every registered task.
    #[arg(long)]
    pub all: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Frame of a multi-frame image.
    #[arg(long, default_value_t = 0)]
    pub frame: usize,
    /// Write the task's attention-rollout heatmap, aligned to the image, as a grey PNG.
    #[arg(long, conflicts_with = "all")]
    pub heatmap: Option<PathBuf>,
    /// Adapters folder (default: $MELO_ADAPTERS, else ./adapters).
    #[arg(long)]
    pub adapters: Option<PathBuf>,
    /// Backbone folder with config.json (default: $MELO_BACKBONE, else assets/backbone).
    #[arg(long)]
    pub backbone: Option<PathBuf>,
}

/// `melo adapters [--json]`, `melo adapters import-melo|import-peft …`
#[derive(Debug, Args)]
pub struct AdaptersArgs {
    #[command(subcommand)]
    pub action: Option<AdaptersAction>,
    /// Machine-readable listing.
    #[arg(long)]
    pub json: bool,
    /// Adapters folder (default: $MELO_ADAPTERS, else ./adapters).
    #[arg(long, global = true)]
    pub adapters: Option<PathBuf>,
    /// Backbone folder with config.json (default: $MELO_BACKBONE, else assets/backbone).
    #[arg(long, global = true)]
    pub backbone: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AdaptersAction {
    /// Import a MeLo (LoRA-ViT) adapter: w_a_XXX / w_b_XXX / fc_{D}in_{C}out.
    ImportMelo {
        file: PathBuf,
        #[command(flatten)]
        common: ImportArgs,
        /// LoRA alpha used in training (MeLo files do not store it; MeLo's default is 4).
        #[arg(long)]
        alpha: f64,
    },
    /// Import an HF PEFT LoRA adapter folder (adapter_model.safetensors + adapter_config.json).
    ImportPeft {
        folder: PathBuf,
        #[command(flatten)]
        common: ImportArgs,
    },
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Task name (also the file name in the adapters folder).
    #[arg(long)]
    pub task: String,
    /// Class labels in head order, comma-separated (default class_0, class_1, …).
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// Intended modality (e.g. CR, microscopy).
    #[arg(long, default_value = "")]
    pub modality: String,
    /// Replace an existing adapter file of the same name.
    #[arg(long)]
    pub force: bool,
}

/// `melo bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Timed forward passes at batch 1 (batch 8 runs a quarter as many, at least 3).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Adapter switches timed.
    #[arg(long, default_value_t = 1000)]
    pub switches: usize,
    /// Synthetic adapters registered for the memory and switch measurements.
    #[arg(long, default_value_t = 10)]
    pub adapters: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Backbone folder with config.json (default: $MELO_BACKBONE, else assets/backbone).
    #[arg(long)]
    pub backbone: Option<PathBuf>,
}

fn backbone_dir(given: &Option<PathBuf>) -> Result<PathBuf> {
    given.clone().or_else(default_backbone_dir).ok_or_else(|| {
        Error::Config("no backbone folder: pass --backbone DIR or set MELO_BACKBONE (expected assets/backbone)".into())
    })
}

fn adapters_dir(given: &Option<PathBuf>) -> Option<PathBuf> {
    given.clone().or_else(default_adapters_dir)
}

fn adapter_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")))
                .collect()
        })
        .unwrap_or_default()
}

const NO_ADAPTERS_HINT: &str = "adapters are trained per task (a later step) or imported with \
     `melo adapters import-melo FILE --task T --alpha A` / `melo adapters import-peft FOLDER --task T`";

/// Loads the backbone and registers the adapters folder; refuses early (before loading the
/// backbone) when the folder holds no adapter file.
fn engine_with_adapters(
    backbone: &Option<PathBuf>,
    adapters: &Option<PathBuf>,
) -> Result<(Engine, PathBuf, Vec<Rejected>)> {
    let dir = adapters_dir(adapters).ok_or_else(|| Error::NoAdapters {
        hint: format!(" (no adapters folder found: pass --adapters DIR or set MELO_ADAPTERS); {NO_ADAPTERS_HINT}"),
    })?;
    if adapter_files(&dir).is_empty() {
        return Err(Error::NoAdapters {
            hint: format!(" ({} holds no *.safetensors adapter); {NO_ADAPTERS_HINT}", dir.display()),
        });
    }
    let mut engine = Engine::open(&backbone_dir(backbone)?)?;
    let rejected = engine.register_dir(&dir)?;
    Ok((engine, dir, rejected))
}

#[derive(Serialize)]
struct PredictReport<'a> {
    image: String,
    frame: usize,
    backbone_sha256: &'a str,
    predictions: Vec<Prediction>,
    rejected_adapters: Vec<Rejected>,
}

pub fn predict(args: &PredictArgs) -> Result<()> {
    if let Some(out) = &args.heatmap {
        // Before any work: the heatmap must not replace the scan or an adapter file (a heatmap
        // beside them, in the same folder, is fine).
        let adapters = adapters_dir(&args.adapters).map(|d| adapter_files(&d)).unwrap_or_default();
        let inputs: Vec<&Path> =
            std::iter::once(args.image.as_path()).chain(adapters.iter().map(PathBuf::as_path)).collect();
        crate::atomic::refuse_overwriting_inputs("--heatmap", out, &inputs)?;
    }
    let image = load_image(&args.image, &LoadOptions::default())?;
    let (mut engine, dir, rejected) = engine_with_adapters(&args.backbone, &args.adapters)?;
    if engine.adapters().is_empty() {
        return Err(Error::NoAdapters {
            hint: format!(
                " ({} has {} file(s), none usable: {})",
                dir.display(),
                rejected.len(),
                rejected.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>().join("; ")
            ),
        });
    }
    for r in &rejected {
        eprintln!("melo: skipped {}: {}", r.path.display(), one_line(&r.reason));
    }
    let predictions = if args.all {
        engine.predict_all(&image, args.frame)?
    } else {
        let task = match &args.task {
            Some(t) => t.clone(),
            None if engine.adapters().len() == 1 => engine.adapters()[0].task().to_string(),
            None => {
                return Err(Error::Config(format!(
                    "several tasks are registered; choose one with --task ({}) or run all with --all",
                    engine.tasks().collect::<Vec<_>>().join(", ")
                )))
            }
        };
        engine.switch(&task)?;
        if let Some(out) = &args.heatmap {
            let explanation = engine.explain(&image, args.frame)?;
            write_heatmap_png(&explanation.heatmap, out)?;
            vec![explanation.prediction]
        } else {
            vec![engine.predict_frame(&image, args.frame)?]
        }
    };
    if args.json {
        let report = PredictReport {
            image: args.image.display().to_string(),
            frame: args.frame,
            backbone_sha256: engine.backbone().sha256(),
            predictions,
            rejected_adapters: rejected,
        };
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        for p in &predictions {
            let (label, prob) = p.top();
            println!("{}: {label} ({:.1} %)", p.task, 100.0 * prob);
            for (l, q) in p.labels.iter().zip(&p.probabilities) {
                println!("    {l:<24} {:>6.2} %", 100.0 * q);
            }
        }
        if let Some(out) = &args.heatmap {
            println!("heatmap written to {}", out.display());
        }
    }
    Ok(())
}

fn write_heatmap_png(heatmap: &super::engine::Heatmap, path: &Path) -> Result<()> {
    let grey: Vec<u8> = heatmap.values.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    let buffer = image::GrayImage::from_raw(heatmap.cols as u32, heatmap.rows as u32, grey)
        .ok_or_else(|| Error::Image("heatmap size does not match its values".into()))?;
    let mut bytes = Vec::new();
    buffer
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::Unsupported(format!("cannot encode heatmap PNG: {e}")))?;
    crate::atomic::write_bytes_atomic(path, &bytes)?;
    Ok(())
}

#[derive(Serialize)]
struct AdapterEntry<'a> {
    #[serde(flatten)]
    metadata: &'a AdapterMetadata,
    parameters: usize,
}

#[derive(Serialize)]
struct AdaptersReport<'a> {
    folder: String,
    backbone_sha256: &'a str,
    adapters: Vec<AdapterEntry<'a>>,
    rejected: Vec<Rejected>,
}

pub fn adapters(args: &AdaptersArgs) -> Result<()> {
    match &args.action {
        None => list_adapters(args),
        Some(AdaptersAction::ImportMelo { file, common, alpha }) => import(args, common, |options| {
            let mut options = options;
            options.alpha = Some(*alpha);
            Adapter::import_melo(file, &options)
        }),
        Some(AdaptersAction::ImportPeft { folder, common }) => {
            import(args, common, |options| Adapter::import_peft(folder, &options))
        }
    }
}

fn list_adapters(args: &AdaptersArgs) -> Result<()> {
    let dir = adapters_dir(&args.adapters);
    if dir.as_deref().is_none_or(|d| adapter_files(d).is_empty()) {
        if args.json {
            let folder = dir.as_ref().map(|d| d.display().to_string());
            println!("{}", serde_json::json!({ "folder": folder, "adapters": [], "rejected": [] }));
        } else {
            match &dir {
                Some(d) => println!("No adapters in {}.\n{NO_ADAPTERS_HINT}.", d.display()),
                None => println!(
                    "No adapters folder found (pass --adapters DIR or set MELO_ADAPTERS).\n{NO_ADAPTERS_HINT}."
                ),
            }
        }
        return Ok(());
    }
    let (engine, dir, rejected) = engine_with_adapters(&args.backbone, &args.adapters)?;
    if args.json {
        let report = AdaptersReport {
            folder: dir.display().to_string(),
            backbone_sha256: engine.backbone().sha256(),
            adapters: engine
                .adapters()
                .iter()
                .map(|a| AdapterEntry { metadata: a.metadata(), parameters: a.parameter_count() })
                .collect(),
            rejected,
        };
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return Ok(());
    }
    println!(
        "{} ({} adapter(s), backbone {})",
        dir.display(),
        engine.adapters().len(),
        &engine.backbone().sha256()[..12]
    );
    for a in engine.adapters() {
        let m = a.metadata();
        println!("\n{}  [{}]", m.task, if m.modality.is_empty() { "any modality" } else { &m.modality });
        if !m.description.is_empty() {
            println!("    {}", m.description);
        }
        println!("    labels     {}", m.labels.join(", "));
        println!(
            "    LoRA       r = {}, alpha = {}, target {:?}, {} parameters",
            m.rank,
            m.alpha,
            m.target,
            a.parameter_count()
        );
        println!(
            "    input      {0}×{0}, mean {1:?}, std {2:?}, pooling {3:?}",
            m.input_size, m.mean, m.std, m.pooling
        );
        if !m.training.dataset.is_empty() {
            let licence = if m.data_set.licence.is_empty() { "licence not stated" } else { &m.data_set.licence };
            println!("    trained on {} ({licence})", m.training.dataset);
        }
        if !m.metrics.is_empty() {
            let metrics: Vec<String> = m.metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            println!("    metrics    {}", metrics.join(", "));
        }
        if !m.source.is_empty() {
            println!("    source     {}", m.source);
        }
    }
    for r in &rejected {
        println!("\nrefused {}: {}", r.path.display(), one_line(&r.reason));
    }
    Ok(())
}

fn import(args: &AdaptersArgs, common: &ImportArgs, read: impl FnOnce(ImportOptions) -> Result<Adapter>) -> Result<()> {
    let file_stem: String =
        common.task.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if file_stem.trim_matches('_').is_empty() {
        return Err(Error::Config(format!("task name {:?} gives no usable file name", common.task)));
    }
    let dir = args.adapters.clone().or_else(default_adapters_dir).unwrap_or_else(|| PathBuf::from("adapters"));
    let target = dir.join(format!("{file_stem}.safetensors"));
    if target.exists() && !common.force {
        return Err(Error::Config(format!("{} exists; pass --force to replace it", target.display())));
    }
    let mut engine = Engine::open(&backbone_dir(&args.backbone)?)?;
    let mut options = ImportOptions::for_backbone(&common.task, engine.backbone());
    options.labels = common.labels.clone();
    options.modality = common.modality.clone();
    let adapter = read(options)?;
    // Registering checks that it fits this backbone before anything is written.
    engine.register(adapter.clone())?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    adapter.save(&target)?;
    println!(
        "imported '{}' ({} labels, {} parameters) to {}",
        adapter.task(),
        adapter.labels().len(),
        adapter.parameter_count(),
        target.display()
    );
    Ok(())
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let report = super::bench::run(&backbone_dir(&args.backbone)?, args.runs, args.switches, args.adapters)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        report.print();
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
