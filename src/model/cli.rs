//! Handlers of `melo predict`, `melo adapters` and `melo bench` (the `Command` variants in
//! `crate::cli` only forward here).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::engine::{default_adapters_dir, default_backbone_dir, Engine, Prediction, Rejected};
use super::error::{Error, Result};
use super::lora::{Adapter, AdapterMetadata, ImportOptions};
use crate::image::{load_image, LoadOptions};

/// `melo predict IMAGE… [--task T | --all] [--json | --csv FILE]`
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// DICOM, PNG or JPEG files, or folders (searched recursively, slices in series order).
    /// One file prints its prediction; several, or a folder, print one line per image.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// The task (adapter) to run; may be omitted when only one is registered.
    #[arg(long, conflicts_with = "all")]
    pub task: Option<String>,
    /// Run every registered task.
    #[arg(long)]
    pub all: bool,
    /// Machine-readable output: one JSON object for one image, JSON lines for several.
    #[arg(long)]
    pub json: bool,
    /// Write one CSV row per image and task to FILE (atomically) instead of printing them.
    #[arg(long, conflicts_with_all = ["json", "heatmap"])]
    pub csv: Option<PathBuf>,
    /// Frame of a multi-frame image.
    #[arg(long, default_value_t = 0)]
    pub frame: usize,
    /// Write the task's attention-rollout heatmap, aligned to the image, as a grey PNG.
    #[arg(long, conflicts_with = "all")]
    pub heatmap: Option<PathBuf>,
    /// Write the result as a DICOM Comprehensive SR (TID 1500 Measurement Report) that
    /// references the (DICOM) image; with --all, one measurement group per task.
    #[arg(long, conflicts_with = "csv")]
    pub sr: Option<PathBuf>,
    /// Write a DICOM Secondary Capture of the image with the heatmap and the result burned in.
    #[arg(long, conflicts_with_all = ["csv", "all"])]
    pub sc: Option<PathBuf>,
    /// Adapters folder (default: $MELO_ADAPTERS, else ./adapters).
    #[arg(long)]
    pub adapters: Option<PathBuf>,
    /// Backbone folder with config.json (default: $MELO_BACKBONE, else assets/backbone).
    #[arg(long)]
    pub backbone: Option<PathBuf>,
}

/// A report (SR/SC) failure as this module's error: I/O keeps its path.
fn report_error(e: crate::report::Error) -> Error {
    match e {
        crate::report::Error::Io(io) => Error::Io(io),
        other => Error::Unsupported(other.to_string()),
    }
}

/// `melo adapters [TASK] [--json]`, `melo adapters import-melo|import-peft …`
#[derive(Debug, Args)]
pub struct AdaptersArgs {
    #[command(subcommand)]
    pub action: Option<AdaptersAction>,
    /// Print this task's model facts (intended use, data, test metrics with 95 % intervals,
    /// calibration, limitations) instead of the one-line-per-adapter list.
    pub task: Option<String>,
    /// Machine-readable listing (with TASK: that adapter's metadata).
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
    let single = match args.images.as_slice() {
        [one] if !one.is_dir() && args.csv.is_none() => Some(one.as_path()),
        _ => None,
    };
    let Some(image_path) = single else {
        for (flag, given) in
            [("--heatmap", args.heatmap.is_some()), ("--sr", args.sr.is_some()), ("--sc", args.sc.is_some())]
        {
            if given {
                return Err(Error::Config(format!("{flag} takes one image file")));
            }
        }
        return predict_many(args);
    };
    for (flag, out) in [("--heatmap", &args.heatmap), ("--sr", &args.sr), ("--sc", &args.sc)] {
        if let Some(out) = out {
            // Before any work: an output must not replace the scan or an adapter file (one
            // beside them, in the same folder, is fine).
            let adapters = adapters_dir(&args.adapters).map(|d| adapter_files(&d)).unwrap_or_default();
            let inputs: Vec<&Path> = std::iter::once(image_path).chain(adapters.iter().map(PathBuf::as_path)).collect();
            crate::atomic::refuse_overwriting_inputs(flag, out, &inputs)?;
        }
    }
    let outputs: Vec<(&str, &PathBuf)> = [("--heatmap", &args.heatmap), ("--sr", &args.sr), ("--sc", &args.sc)]
        .into_iter()
        .filter_map(|(flag, out)| out.as_ref().map(|o| (flag, o)))
        .collect();
    for (i, (_, a)) in outputs.iter().enumerate() {
        for (flag, b) in &outputs[i + 1..] {
            crate::atomic::refuse_same_output(flag, a, b)?;
        }
    }
    // SR and SC reference the source instance: read its identity first, so a PNG or a file
    // without UIDs is refused before the backbone is loaded.
    let source = match (&args.sr, &args.sc) {
        (None, None) => None,
        _ => Some(crate::report::SourceInstance::read(image_path).map_err(report_error)?),
    };
    let image = load_image(image_path, &LoadOptions::default())?;
    let (mut engine, rejected) = engine_for_predict(args)?;
    let predictions = if args.all {
        engine.predict_all(&image, args.frame)?
    } else {
        engine.switch(&chosen_task(args, &engine)?)?;
        if args.heatmap.is_some() || args.sc.is_some() {
            let explanation = engine.explain(&image, args.frame)?;
            if let Some(out) = &args.heatmap {
                write_heatmap_png(&explanation.heatmap, out)?;
            }
            if let (Some(out), Some(source)) = (&args.sc, &source) {
                let sc = crate::report::sc::build(source, &image, args.frame, &explanation).map_err(report_error)?;
                crate::report::write_part10(sc, out).map_err(report_error)?;
            }
            vec![explanation.prediction]
        } else {
            vec![engine.predict_frame(&image, args.frame)?]
        }
    };
    if let (Some(out), Some(source)) = (&args.sr, &source) {
        let sr = crate::report::sr::build(source, &predictions, engine.backbone().sha256()).map_err(report_error)?;
        crate::report::write_part10(sr, out).map_err(report_error)?;
    }
    if args.json {
        let report = PredictReport {
            image: image_path.display().to_string(),
            frame: args.frame,
            backbone_sha256: engine.backbone().sha256(),
            predictions,
            rejected_adapters: rejected,
        };
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        for p in &predictions {
            let (label, prob) = p.top();
            println!("{}: {label} ({:.1} %){}", p.task, 100.0 * prob, bracketed(&p.caveats()));
            for (l, q) in p.labels.iter().zip(&p.probabilities) {
                println!("    {l:<24} {:>6.2} %", 100.0 * q);
            }
        }
        for (what, out) in [("heatmap", &args.heatmap), ("SR", &args.sr), ("secondary capture", &args.sc)] {
            if let Some(out) = out {
                println!("{what} written to {}", out.display());
            }
        }
    }
    Ok(())
}

/// The engine with the adapters folder registered; refused when no adapter is usable, and
/// each rejected file reported on stderr.
fn engine_for_predict(args: &PredictArgs) -> Result<(Engine, Vec<Rejected>)> {
    let (engine, dir, rejected) = engine_with_adapters(&args.backbone, &args.adapters)?;
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
    Ok((engine, rejected))
}

/// `--task`, or the only registered task.
fn chosen_task(args: &PredictArgs, engine: &Engine) -> Result<String> {
    match &args.task {
        Some(t) => Ok(t.clone()),
        None if engine.adapters().len() == 1 => Ok(engine.adapters()[0].task().to_string()),
        None => Err(Error::Config(format!(
            "several tasks are registered; choose one with --task ({}) or run all with --all",
            engine.tasks().collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// One line of `melo predict --json` over several images: the predictions, or why the image
/// could not be classified.
#[derive(Serialize)]
struct PredictLine<'a> {
    image: String,
    frame: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    predictions: Option<&'a [Prediction]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Several images (files, folders, series) through one resident engine: JSON lines, CSV rows
/// or text lines, in series order, with a progress bar on a terminal. An image that cannot be
/// read or classified becomes an error line and the run goes on; the command then fails with
/// the count, after writing everything else.
fn predict_many(args: &PredictArgs) -> Result<()> {
    if let Some(csv) = &args.csv {
        let inputs: Vec<&Path> = args.images.iter().map(PathBuf::as_path).collect();
        crate::atomic::refuse_overwriting_inputs("--csv", csv, &inputs)?;
    }
    let scan = crate::series::scan_paths(&args.images)?;
    let files: Vec<&Path> = scan.series.iter().flat_map(|s| s.files.iter().map(PathBuf::as_path)).collect();
    // Files that are not images at all (READMEs, licences) are passed over, as the viewer does.
    let unreadable: Vec<_> = scan.skipped.iter().filter(|s| s.looks_like_image).collect();
    if files.is_empty() && unreadable.is_empty() {
        return Err(Error::Config("no DICOM, PNG or JPEG image among the inputs".into()));
    }
    let (mut engine, _) = engine_for_predict(args)?;
    if !args.all {
        engine.switch(&chosen_task(args, &engine)?)?;
    }
    let bar = indicatif::ProgressBar::new((files.len() + unreadable.len()) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} images, {eta} left")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut csv = String::from(
        "image,frame,task,top_label,top_probability,probabilities,calibrated,in_distribution,ood_score,ood_threshold\n",
    );
    let mut failed = 0usize;
    let mut emit = |image: &Path, result: std::result::Result<Vec<Prediction>, String>| {
        let name = image.display().to_string();
        if result.is_err() {
            failed += 1;
        }
        if args.csv.is_some() {
            match &result {
                Ok(predictions) => {
                    for p in predictions {
                        let (label, prob) = p.top();
                        let all: Vec<String> =
                            p.labels.iter().zip(&p.probabilities).map(|(l, q)| format!("{l}={q:.6}")).collect();
                        // Empty OOD columns: the adapter carries no statistics.
                        let ood = p
                            .ood
                            .as_ref()
                            .map(|o| format!("{},{},{}", o.in_distribution, o.ood_score, o.ood_threshold))
                            .unwrap_or_else(|| ",,".into());
                        csv.push_str(&format!(
                            "{},{},{},{},{prob:.6},{},{},{ood}\n",
                            crate::export::csv_field(&name),
                            args.frame,
                            crate::export::csv_field(&p.task),
                            crate::export::csv_field(label),
                            crate::export::csv_field(&all.join(";")),
                            p.calibrated
                        ));
                    }
                }
                Err(e) => csv.push_str(&format!(
                    "{},{},,,,{},,,,\n",
                    crate::export::csv_field(&name),
                    args.frame,
                    crate::export::csv_field(&format!("error: {e}"))
                )),
            }
        } else if args.json {
            let (predictions, error) = match &result {
                Ok(p) => (Some(p.as_slice()), None),
                Err(e) => (None, Some(e.clone())),
            };
            let line = PredictLine { image: name, frame: args.frame, predictions, error };
            bar.suspend(|| println!("{}", serde_json::to_string(&line).unwrap_or_default()));
        } else {
            bar.suspend(|| match &result {
                Ok(predictions) => {
                    for p in predictions {
                        let (label, prob) = p.top();
                        println!("{name}: {}: {label} ({:.1} %){}", p.task, 100.0 * prob, bracketed(&p.caveats()));
                    }
                }
                Err(e) => println!("{name}: error: {e}"),
            });
        }
        bar.inc(1);
    };
    for skipped in &unreadable {
        emit(&skipped.path, Err(one_line(&skipped.reason)));
    }
    for file in files {
        let result =
            load_image(file, &LoadOptions::default()).map_err(|e| one_line(&e.to_string())).and_then(|image| {
                if args.all {
                    engine.predict_all(&image, args.frame)
                } else {
                    engine.predict_frame(&image, args.frame).map(|p| vec![p])
                }
                .map_err(|e| one_line(&e.to_string()))
            });
        emit(file, result);
    }
    bar.finish_and_clear();
    if let Some(out) = &args.csv {
        crate::atomic::write_bytes_atomic(out, csv.as_bytes())?;
        eprintln!("{} written", out.display());
    }
    let total = bar.length().unwrap_or(0) as usize;
    if failed > 0 {
        return Err(Error::Config(format!(
            "{failed} of {total} images could not be classified (see their error lines)"
        )));
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
        if let Some(task) = &args.task {
            return Err(Error::Config(format!(
                "no adapter '{task}': the adapters folder holds none; {NO_ADAPTERS_HINT}"
            )));
        }
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
    if let Some(task) = &args.task {
        let adapter = engine.adapters().iter().find(|a| a.task() == task).ok_or_else(|| {
            Error::Config(format!(
                "no adapter '{task}' in {} (registered: {})",
                dir.display(),
                engine.tasks().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let mut metadata = adapter.metadata().clone();
        // Adapters trained before the facts existed still record their confusion matrix.
        metadata.facts.test_intervals = super::facts::intervals_of(&metadata);
        if args.json {
            let entry = AdapterEntry { metadata: &metadata, parameters: adapter.parameter_count() };
            println!("{}", serde_json::to_string_pretty(&entry).unwrap_or_default());
        } else {
            print!("{}", facts_label(&metadata, adapter.parameter_count()));
        }
        return Ok(());
    }
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
        "{} ({} adapter(s), backbone {}; `melo adapters TASK` for one adapter's model facts)",
        dir.display(),
        engine.adapters().len(),
        &engine.backbone().sha256()[..12]
    );
    let width = engine.adapters().iter().map(|a| a.task().chars().count()).max().unwrap_or(0);
    for a in engine.adapters() {
        println!("{}", summary_line(a.metadata(), width));
    }
    for r in &rejected {
        println!("refused {}: {}", r.path.display(), one_line(&r.reason));
    }
    Ok(())
}

/// Whether the adapter's probabilities went through a fitted temperature.
fn calibration_text(m: &AdapterMetadata) -> String {
    match &m.calibration {
        Some(c) => {
            let temperature = match c.fitted_temperature.filter(|&t| t != c.temperature) {
                Some(t) => format!(
                    "temperature 1 kept (fitted {t:.2} not significantly better on {} {} images: \
                     likelihood ratio {:.2} < 3.84)",
                    c.fitted_samples,
                    c.fitted_on,
                    c.likelihood_ratio.unwrap_or(0.0)
                ),
                None => {
                    format!("temperature {:.2} fitted on {} ({} images)", c.temperature, c.fitted_on, c.fitted_samples)
                }
            };
            format!(
                "calibrated: {temperature}; {} ECE {:.3} -> {:.3}{}, Brier {:.3} -> {:.3}",
                c.evaluated_on,
                c.ece_before,
                c.ece_after,
                c.ece_change_ci.map(|[a, b]| format!(" (change 95 % CI [{a:+.3}, {b:+.3}])")).unwrap_or_default(),
                c.brier_before,
                c.brier_after
            )
        }
        None => "uncalibrated (raw softmax; no temperature fitted)".into(),
    }
}

/// `pneumonia  2 classes (normal, pneumonia)  CR  test AUC 0.946, ACC 0.879  uncalibrated`
pub fn summary_line(m: &AdapterMetadata, task_width: usize) -> String {
    let classes = if m.labels.len() <= 3 {
        format!("{} classes ({})", m.labels.len(), m.labels.join(", "))
    } else {
        format!("{} classes", m.labels.len())
    };
    let mut metrics = Vec::new();
    if let Some(auc) = m.metrics.get("test_macro_auc") {
        metrics.push(format!("AUC {auc:.3}"));
    }
    if let Some(acc) = m.metrics.get("test_accuracy") {
        metrics.push(format!("ACC {acc:.3}"));
    }
    let metrics =
        if metrics.is_empty() { "no test metrics".to_string() } else { format!("test {}", metrics.join(", ")) };
    let calibration = calibration_text(m);
    let calibration = calibration.split([' ', ':']).next().unwrap_or_default();
    format!(
        "{:<task_width$}  {classes}  {}  {metrics}  {calibration}",
        m.task,
        if m.modality.is_empty() { "any modality" } else { &m.modality }
    )
}

/// The "Model facts" label of one adapter as text (`melo adapters TASK`).
pub fn facts_label(m: &AdapterMetadata, parameters: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut row = |heading: &str, text: &str| {
        let _ = writeln!(out, "  {heading:<15}{text}");
    };
    let facts = &m.facts;
    let mut text = format!("Model facts: {}\n", m.task);
    if facts.research_use_only {
        text.push_str("  RESEARCH USE ONLY: not a medical device; not for diagnosis or treatment decisions.\n");
    }
    let intended = if facts.intended_use.trim().is_empty() { "not stated" } else { facts.intended_use.trim() };
    row("Intended use", intended);
    if !m.description.is_empty() {
        row("Description", &m.description);
    }
    row("Modality", if m.modality.is_empty() { "any (not stated)" } else { &m.modality });
    row("Classes", &m.labels.join(", "));
    row(
        "Input",
        &format!(
            "{0} × {0} px RGB, normalised with mean {1:?} and std {2:?}; head reads {3}",
            m.input_size,
            m.mean,
            m.std,
            pooling_text(m.pooling)
        ),
    );
    let dataset = if m.training.dataset.is_empty() { "not recorded" } else { &m.training.dataset };
    let licence = if m.data_set.licence.is_empty() { "licence not stated" } else { &m.data_set.licence };
    row("Training data", &format!("{dataset} ({licence})"));
    // Train, val, test first, in that order; any other split after them.
    let mut splits: Vec<(&String, &std::collections::BTreeMap<String, u64>)> = m.data_set.counts.iter().collect();
    splits.sort_by_key(|(s, _)| ["train", "val", "test"].iter().position(|k| k == s).unwrap_or(3));
    for (split, per_class) in splits {
        let total: u64 = per_class.values().sum();
        let classes: Vec<String> = per_class.iter().map(|(c, n)| format!("{c} {n}")).collect();
        row("", &format!("{split}: {total} images ({})", classes.join(", ")));
    }
    if m.data_set.skipped_files > 0 {
        row("", &format!("{} unreadable files left out", m.data_set.skipped_files));
    }
    let intervals = super::facts::intervals_of(m);
    if intervals.is_empty() {
        row("Test metrics", "no confusion matrix recorded: no intervals");
        let headline: Vec<String> = m
            .metrics
            .iter()
            .filter(|(k, _)| k.starts_with("test_") && !k.contains('.'))
            .map(|(k, v)| format!("{} {v:.3}", k.trim_start_matches("test_")))
            .collect();
        if !headline.is_empty() {
            row("", &headline.join(", "));
        }
    } else {
        row("Test metrics", "95 % confidence intervals:");
        for i in &intervals {
            row("", &format!("{:<28}{}  n = {}, {}", i.metric, super::facts::interval_text(i), i.n, i.method));
        }
        if m.labels.len() > 2 && m.metrics.contains_key("test_macro_auc") {
            row(
                "",
                &format!(
                    "{:<28}{:.3} (no interval: needs the per-image test probabilities)",
                    "macro_auc", m.metrics["test_macro_auc"]
                ),
            );
        }
    }
    row("Calibration", &calibration_text(m));
    if facts.limitations.is_empty() {
        row("Limitations", "none stated");
    }
    for (k, l) in facts.limitations.iter().enumerate() {
        row(if k == 0 { "Limitations" } else { "" }, &format!("- {l}"));
    }
    row(
        "Model",
        &format!(
            "LoRA r = {}, alpha = {}, target {:?}, {parameters} parameters; backbone sha256 {}",
            m.rank,
            m.alpha,
            m.target,
            &m.backbone_sha256[..m.backbone_sha256.len().min(12)]
        ),
    );
    if !m.training.selection.is_empty() {
        row("Selection", &m.training.selection);
    }
    if !m.source.is_empty() {
        row("Source", &m.source);
    }
    text.push_str(&out);
    text
}

fn pooling_text(p: super::vit::Pooling) -> &'static str {
    match p {
        super::vit::Pooling::Cls => "the CLS token",
        super::vit::Pooling::MeanPatch => "the mean of the patch tokens",
        super::vit::Pooling::ClsMeanPatch => "the CLS token and the mean of the patch tokens",
    }
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

/// ` [note]`, or nothing for an empty note.
fn bracketed(note: &str) -> String {
    if note.is_empty() {
        String::new()
    } else {
        format!(" [{note}]")
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
