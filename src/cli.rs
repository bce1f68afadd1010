//! The command line: `melo` alone opens the window; subcommands do the same work headless.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::display::{default_voi, preset_voi, Voi, WindowPreset};
use crate::error::{Error, Result};
use crate::image::{load_image, LoadOptions, Window};

#[derive(Debug, Parser)]
#[command(
    name = "melo",
    version,
    about = "MeLo Workstation: medical image viewer, LoRA diagnosis, diffusion privacy audit"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Files or folders to open in the window (default: the shipped samples).
    pub paths: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print what a file holds: modality, size, frames, transfer syntax, window, pixel range.
    Info {
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Also print patient name, ID and birth date (hidden by default).
        #[arg(long)]
        show_patient: bool,
        /// Then decode the file N more times in this process and print the median decode time
        /// (file read included), the measure benches/pydicom_decode.py takes of pydicom.
        #[arg(long, value_name = "N", default_value_t = 0)]
        time_decode: usize,
    },
    /// Convert a DICOM/PNG/JPEG file: `.npy` = float32 values after the modality LUT (all
    /// frames); `.png` = the windowed display image of one frame.
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// Frame for `.png` output.
        #[arg(long, default_value_t = 0)]
        frame: usize,
        /// Window as CENTER,WIDTH for `.png` output (default: from the header, else full range).
        #[arg(long, value_parser = parse_window, allow_hyphen_values = true)]
        window: Option<Window>,
    },
    /// Diagnose an image with the LoRA task adapters: class probabilities per task.
    Predict(crate::model::cli::PredictArgs),
    /// List the registered diagnosis adapters with their metadata, or import MeLo/PEFT ones.
    Adapters(crate::model::cli::AdaptersArgs),
    /// Measure the diagnosis engine: ViT forward, adapter switch latency, resident memory.
    Bench(crate::model::cli::BenchArgs),
    /// Privacy audit: membership-inference attacks on a diffusion model (ROC, AUC with CI, TPR at low FPR).
    Audit(crate::audit::cli::AuditArgs),
    /// Train a diagnosis adapter (LoRA, linear probe) or fine-tune the backbone on labelled
    /// images: an ImageFolder directory or a MedMNIST .npz.
    Train(crate::train::cli::TrainArgs),
    /// Fit an existing adapter's temperature (calibrated probabilities) and out-of-distribution
    /// statistics on its training data, without changing its weights.
    Calibrate(crate::train::calibrate::CalibrateArgs),
    /// PACS networking: echo, find, get, move, store to a DICOM node (`AET@HOST:PORT`), or
    /// listen for incoming C-STOREs into a local study store.
    Net(crate::net::cli::NetArgs),
    /// De-identify DICOM files into new ones (PS3.15 Annex E Basic Application Level
    /// Confidentiality Profile, new UIDs consistent within the run); pixel data untouched.
    Deidentify(crate::deid::cli::DeidentifyArgs),
}

fn parse_window(s: &str) -> std::result::Result<Window, String> {
    let (c, w) = s.split_once(',').ok_or("expected CENTER,WIDTH")?;
    let center: f64 = c.trim().parse().map_err(|_| format!("bad centre {c:?}"))?;
    let width: f64 = w.trim().parse().map_err(|_| format!("bad width {w:?}"))?;
    if !(width > 0.0 && width.is_finite() && center.is_finite()) {
        return Err("width must be positive".into());
    }
    Ok(Window { center, width })
}

/// What `melo info` reports.
#[derive(Debug, Serialize)]
pub struct InfoReport {
    pub file: String,
    pub modality: String,
    pub photometric: String,
    pub rows: usize,
    pub columns: usize,
    pub frames: usize,
    pub channels: usize,
    pub transfer_syntax: String,
    pub transfer_syntax_name: String,
    pub bits_stored: u16,
    pub window: Option<Window>,
    pub units: String,
    pub min: f32,
    pub max: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<PatientInfo>,
}

#[derive(Debug, Serialize)]
pub struct PatientInfo {
    pub name: String,
    pub id: String,
    pub birth_date: String,
}

pub fn info(file: &std::path::Path, show_patient: bool) -> Result<InfoReport> {
    let image = load_image(file, &LoadOptions::default())?;
    let (min, max) = image.value_range();
    let m = &image.meta;
    Ok(InfoReport {
        file: file.display().to_string(),
        modality: m.modality.clone(),
        photometric: m.photometric.clone(),
        rows: image.rows,
        columns: image.cols,
        frames: image.frames,
        channels: image.channels,
        transfer_syntax: m.transfer_syntax.clone(),
        transfer_syntax_name: m.transfer_syntax_name.clone(),
        bits_stored: m.bits_stored,
        window: m.windows.first().copied(),
        units: m.units.clone(),
        min,
        max,
        patient: show_patient.then(|| PatientInfo {
            name: m.patient_name.clone(),
            id: m.patient_id.clone(),
            birth_date: m.patient_birth_date.clone(),
        }),
    })
}

fn info_command(file: &std::path::Path, json: bool, show_patient: bool, time_decode: usize) -> Result<()> {
    let r = info(file, show_patient)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        print_info(&r);
    }
    if time_decode > 0 {
        let ms = median_decode_ms(file, time_decode)?;
        println!("decode: median {ms:.1} ms over {time_decode} runs");
    }
    Ok(())
}

/// Median wall time of `runs` loads of `file` (read, parse, decode, modality LUT), in ms.
pub fn median_decode_ms(file: &std::path::Path, runs: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = std::time::Instant::now();
        let image = load_image(file, &LoadOptions::default())?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(image);
    }
    Ok(crate::stats::median(&times))
}

pub fn convert(input: &std::path::Path, output: &std::path::Path, frame: usize, window: Option<Window>) -> Result<()> {
    let ext = output.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if ext.as_deref() != Some("npy") && ext.as_deref() != Some("png") {
        return Err(Error::Invalid(format!("output must end in .npy or .png: {}", output.display())));
    }
    crate::atomic::refuse_overwriting_inputs("output", output, &[input])?;
    let image = load_image(input, &LoadOptions::default())?;
    match ext.as_deref() {
        Some("npy") => crate::export::write_npy(&image, output),
        _ => {
            let voi = match window {
                Some(w) => Voi::Window(w),
                None if image.meta.windows.is_empty() && image.meta.voi_luts.is_empty() => {
                    preset_voi(&image, frame, WindowPreset::FullRange)
                }
                None => default_voi(&image, frame),
            };
            crate::export::write_png(&image, frame, &voi, output)
        }
    }
}

/// Runs a subcommand; returns the process exit code.
pub fn run(command: Command) -> i32 {
    // A malformed MELO_MAX_* setting is reported, not silently replaced by the defaults.
    if let Err(e) = crate::image::LoadLimits::from_env() {
        eprintln!("melo: {}", one_line(&e.to_string()));
        return 2;
    }
    let result = match command {
        Command::Info { file, json, show_patient, time_decode } => info_command(&file, json, show_patient, time_decode),
        Command::Convert { input, output, frame, window } => convert(&input, &output, frame, window),
        Command::Predict(args) => crate::model::cli::predict(&args).map_err(Into::into),
        Command::Adapters(args) => crate::model::cli::adapters(&args).map_err(Into::into),
        Command::Bench(args) => crate::model::cli::bench(&args).map_err(Into::into),
        Command::Audit(args) => crate::audit::cli::audit(&args).map_err(Into::into),
        Command::Train(args) => crate::train::cli::run(&args).map_err(Into::into),
        Command::Calibrate(args) => crate::train::calibrate::run(&args).map_err(Into::into),
        Command::Net(args) => crate::net::cli::run(&args).map_err(Into::into),
        Command::Deidentify(args) => crate::deid::cli::run(&args).map_err(Into::into),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("melo: {}", one_line(&e.to_string()));
            1
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn print_info(r: &InfoReport) {
    println!("file            {}", r.file);
    println!("modality        {}", r.modality);
    println!("photometric     {}", r.photometric);
    println!("size            {} × {} (cols × rows), {} channel(s)", r.columns, r.rows, r.channels);
    println!("frames          {}", r.frames);
    println!("transfer syntax {} ({})", r.transfer_syntax_name, r.transfer_syntax);
    println!("bits stored     {}", r.bits_stored);
    match r.window {
        Some(w) => println!("window          centre {} width {}", w.center, w.width),
        None => println!("window          none in header"),
    }
    println!("pixel range     {} .. {} {}", r.min, r.max, r.units);
    if let Some(p) = &r.patient {
        println!("patient         {} / {} / {}", p.name, p.id, p.birth_date);
    }
}
