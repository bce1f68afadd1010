//! The diagnosis engine: one backbone in memory, every adapter of a folder registered,
//! one of them active. Switching is an index change — no weight is copied or modified —
//! because the LoRA updates are applied on the fly inside attention (see [`super::vit`]).
//!
//! Preprocessing follows the adapter's metadata: values after the modality LUT → the
//! header's VOI (window or LUT; full frame range without one) → 0..1, MONOCHROME1 inverted
//! so that the model sees what the reader sees → grey copied to 3 channels → resized to the
//! adapter's square input (bilinear, `image`'s triangle filter: antialiased when shrinking,
//! like Pillow's BILINEAR) → (x − mean) / std.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use image::{ImageBuffer, Luma, Rgb};
use serde::Serialize;

use super::error::{Error, Result};
use super::lora::Adapter;
use super::ood::{energy, Detector, UNUSUAL_RANK};
use super::vit::{Config, VisionTransformer};
use crate::display::default_voi;
use crate::image::MedicalImage;

/// Images smaller than this on either side carry too little for a diagnosis.
pub const MIN_IMAGE_SIDE: usize = 16;
/// Largest frame preprocessed (pixels); the loader's own limits apply before this.
pub const MAX_IMAGE_PIXELS: usize = 1 << 28;

/// Class probabilities of one task on one image.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub task: String,
    pub labels: Vec<String>,
    /// Softmax over labels (sums to 1), or independent sigmoids for multi-label tasks.
    pub probabilities: Vec<f32>,
    pub multi_label: bool,
    /// The probabilities went through the adapter's fitted temperature; false: the raw
    /// softmax of an adapter without calibration (shown as *uncalibrated*).
    pub calibrated: bool,
    /// The image checked against the adapter's training features; `None` when the adapter
    /// carries no statistics (imported, or trained before they existed).
    #[serde(flatten)]
    pub ood: Option<OodCheck>,
}

/// Whether an image looks like the adapter's training data (issue 15): an out-of-distribution
/// score on the resident backbone's features and the threshold fixed on validation images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OodCheck {
    /// Which detector produced the score, e.g. "mahalanobis".
    pub ood_detector: String,
    /// Higher = further from the training data.
    pub ood_score: f32,
    pub ood_threshold: f32,
    /// `ood_score <= ood_threshold`.
    pub in_distribution: bool,
    /// Share of the adapter's in-distribution validation images scoring at or below this
    /// image (from the adapter's stored quantiles; `None` for adapters without them).
    pub ood_validation_rank: Option<f32>,
}

impl OodCheck {
    /// In distribution, but scoring higher than [`UNUSUAL_RANK`] of the validation images.
    pub fn is_unusual(&self) -> bool {
        self.in_distribution && self.ood_validation_rank.is_some_and(|r| f64::from(r) > UNUSUAL_RANK)
    }
}

impl Prediction {
    /// What a reader of text output must know besides the numbers: the image is out of
    /// distribution, the probabilities are uncalibrated, or there was no OOD check. Empty when
    /// none applies.
    pub fn caveats(&self) -> String {
        let mut notes = Vec::new();
        match &self.ood {
            Some(o) if !o.in_distribution => notes.push(format!(
                "OUT OF DISTRIBUTION: unlike this adapter's training images ({} score {:.1} > threshold {:.1})",
                o.ood_detector, o.ood_score, o.ood_threshold
            )),
            Some(o) if o.is_unusual() => notes.push(format!(
                "unusual for this adapter: {} score higher than {:.1} % of its validation images",
                o.ood_detector,
                100.0 * o.ood_validation_rank.unwrap_or(1.0)
            )),
            Some(_) => {}
            None => notes.push("no out-of-distribution check".to_string()),
        }
        if !self.calibrated {
            notes.push("uncalibrated".to_string());
        }
        notes.join("; ")
    }

    /// The most probable label and its probability.
    pub fn top(&self) -> (&str, f32) {
        let (i, p) =
            self.probabilities
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &p)| if p > best.1 { (i, p) } else { best });
        (self.labels.get(i).map(String::as_str).unwrap_or(""), p)
    }
}

/// Where the model looked: attention rollout from the CLS token.
#[derive(Debug, Clone, Serialize)]
pub struct Heatmap {
    /// Size of the image it is aligned to.
    pub rows: usize,
    pub cols: usize,
    /// rows × cols values in 0..1 (max 1), row-major, aligned pixel for pixel to the image.
    pub values: Vec<f32>,
    /// The patch-grid map it was upsampled from (grid_rows × grid_cols).
    pub grid_rows: usize,
    pub grid_cols: usize,
    pub grid: Vec<f32>,
}

/// A prediction with its explanation.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub prediction: Prediction,
    pub heatmap: Heatmap,
}

/// An adapter file that was not registered, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub path: PathBuf,
    pub reason: String,
}

/// The backbone with its registered adapters.
pub struct Engine {
    vit: VisionTransformer,
    adapters: Vec<Adapter>,
    by_task: HashMap<String, usize>,
    active: Option<usize>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backbone", &self.vit)
            .field("tasks", &self.tasks().collect::<Vec<_>>())
            .field("active", &self.active().map(Adapter::task))
            .finish()
    }
}

impl Engine {
    pub fn new(vit: VisionTransformer) -> Self {
        Self { vit, adapters: Vec::new(), by_task: HashMap::new(), active: None }
    }

    /// Loads the backbone of a folder holding `config.json` (a [`Config`], plus a `weights`
    /// entry naming the safetensors file) — the layout of `assets/backbone/`.
    pub fn open(backbone_dir: &Path) -> Result<Self> {
        let config_path = backbone_dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let bad = |reason: String| Error::Config(format!("{}: {reason}", config_path.display()));
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let weights = json
            .get("weights")
            .and_then(|w| w.as_str())
            .map(str::to_string)
            .ok_or_else(|| bad("no \"weights\" entry naming the safetensors file".into()))?;
        let config: Config = serde_json::from_value(json).map_err(|e| bad(e.to_string()))?;
        config.validate()?;
        let vit = VisionTransformer::load(&backbone_dir.join(weights), config)?;
        Ok(Self::new(vit))
    }

    pub fn backbone(&self) -> &VisionTransformer {
        &self.vit
    }

    /// Adds an adapter after checking that it belongs to this backbone and fits its shapes.
    pub fn register(&mut self, adapter: Adapter) -> Result<()> {
        let meta = adapter.metadata();
        if !meta.backbone_sha256.eq_ignore_ascii_case(self.vit.sha256()) {
            return Err(Error::BackboneMismatch {
                task: meta.task.clone(),
                expected: meta.backbone_sha256.clone(),
                found: self.vit.sha256().to_string(),
            });
        }
        let bad = |reason: String| Error::Adapter { path: PathBuf::from(&meta.task), reason };
        self.vit.check_lora(adapter.lora()).map_err(|e| bad(e.to_string()))?;
        let patch = self.vit.config().patch_size;
        if meta.input_size < patch || !meta.input_size.is_multiple_of(patch) {
            return Err(bad(format!("input size {} is not a multiple of the patch size {patch}", meta.input_size)));
        }
        if self.by_task.contains_key(&meta.task) {
            return Err(Error::DuplicateTask(meta.task.clone()));
        }
        self.by_task.insert(meta.task.clone(), self.adapters.len());
        self.adapters.push(adapter);
        Ok(())
    }

    /// Registers every `*.safetensors` file of a folder (sorted by name). Files that are not
    /// valid adapters for this backbone are skipped and returned with the reason, so one bad
    /// file does not hide the others.
    pub fn register_dir(&mut self, dir: &Path) -> Result<Vec<Rejected>> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")))
            .collect();
        paths.sort();
        let mut rejected = Vec::new();
        for path in paths {
            let outcome = Adapter::load(&path).and_then(|a| self.register(a));
            if let Err(e) = outcome {
                rejected.push(Rejected { path, reason: e.to_string() });
            }
        }
        Ok(rejected)
    }

    pub fn adapters(&self) -> &[Adapter] {
        &self.adapters
    }

    pub fn tasks(&self) -> impl Iterator<Item = &str> {
        self.adapters.iter().map(Adapter::task)
    }

    pub fn adapter(&self, task: &str) -> Result<&Adapter> {
        self.by_task.get(task).map(|&i| &self.adapters[i]).ok_or_else(|| self.unknown(task))
    }

    fn unknown(&self, task: &str) -> Error {
        if self.adapters.is_empty() {
            return Error::NoAdapters { hint: String::new() };
        }
        Error::UnknownTask { task: task.to_string(), available: self.tasks().collect::<Vec<_>>().join(", ") }
    }

    /// Makes `task` the active one: a hash lookup and an index store, nothing else.
    pub fn switch(&mut self, task: &str) -> Result<()> {
        match self.by_task.get(task) {
            Some(&i) => {
                self.active = Some(i);
                Ok(())
            }
            None => Err(self.unknown(task)),
        }
    }

    pub fn active(&self) -> Option<&Adapter> {
        self.active.map(|i| &self.adapters[i])
    }

    fn active_or_error(&self) -> Result<&Adapter> {
        match self.active() {
            Some(a) => Ok(a),
            None if self.adapters.is_empty() => Err(Error::NoAdapters { hint: String::new() }),
            None => Err(Error::UnknownTask {
                task: "(none selected; call switch first)".into(),
                available: self.tasks().collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// Class probabilities of the active task on the first frame.
    pub fn predict(&self, image: &MedicalImage) -> Result<Prediction> {
        self.predict_frame(image, 0)
    }

    /// Class probabilities of the active task on one frame.
    pub fn predict_frame(&self, image: &MedicalImage, frame: usize) -> Result<Prediction> {
        let adapter = self.active_or_error()?;
        let pixels = preprocess_for(adapter, image, frame)?;
        run_task(&self.vit, adapter, &pixels)
    }

    /// Class probabilities of one named task, without changing the active one.
    pub fn predict_task(&self, task: &str, image: &MedicalImage, frame: usize) -> Result<Prediction> {
        let adapter = self.adapter(task)?;
        run_task(&self.vit, adapter, &preprocess_for(adapter, image, frame)?)
    }

    /// Every registered task on one frame (one backbone pass per task: each adapter changes
    /// the attention of every block). Adapters sharing an input size and normalisation share
    /// the preprocessed image.
    pub fn predict_all(&self, image: &MedicalImage, frame: usize) -> Result<Vec<Prediction>> {
        if self.adapters.is_empty() {
            return Err(Error::NoAdapters { hint: String::new() });
        }
        let mut prepared: HashMap<(usize, [u32; 6]), Tensor> = HashMap::new();
        let mut out = Vec::with_capacity(self.adapters.len());
        for adapter in &self.adapters {
            let m = adapter.metadata();
            let key = (m.input_size, [m.mean[0], m.mean[1], m.mean[2], m.std[0], m.std[1], m.std[2]].map(f32::to_bits));
            let pixels = match prepared.get(&key) {
                Some(p) => p.clone(),
                None => {
                    let p = preprocess_for(adapter, image, frame)?;
                    prepared.insert(key, p.clone());
                    p
                }
            };
            out.push(run_task(&self.vit, adapter, &pixels)?);
        }
        Ok(out)
    }

    /// The active task's prediction and an attention-rollout heatmap aligned to the frame.
    pub fn explain(&self, image: &MedicalImage, frame: usize) -> Result<Explanation> {
        let adapter = self.active_or_error()?;
        let pixels = preprocess_for(adapter, image, frame)?;
        let output = self.vit.forward_with_attention(&pixels, Some(adapter.lora()))?;
        let features = adapter.features(&output)?;
        let prediction = to_prediction(adapter, &adapter.head_on(&features)?, &features)?;
        let grid = output.rollout(0)?;
        let (grid_rows, grid_cols) = output.grid;
        let values = upsample_bilinear(&grid, grid_rows, grid_cols, image.rows, image.cols);
        Ok(Explanation {
            prediction,
            heatmap: Heatmap { rows: image.rows, cols: image.cols, values, grid_rows, grid_cols, grid },
        })
    }
}

fn run_task(vit: &VisionTransformer, adapter: &Adapter, pixels: &Tensor) -> Result<Prediction> {
    // The OOD score reads the same pooled features as the head: no second forward pass.
    let output = vit.forward(pixels, Some(adapter.lora()))?;
    let features = adapter.features(&output)?;
    to_prediction(adapter, &adapter.head_on(&features)?, &features)
}

/// Probabilities (through the adapter's temperature when it has one; multi-label heads are
/// never temperature-scaled) and the OOD check of one image's logits [1, C] and features [1, F].
fn to_prediction(adapter: &Adapter, logits: &Tensor, features: &Tensor) -> Result<Prediction> {
    let meta = adapter.metadata();
    let calibrated = meta.calibration.is_some() && !meta.multi_label;
    let scaled = if calibrated { (logits / adapter.temperature())? } else { logits.clone() };
    let probabilities = adapter.probabilities(&scaled)?.flatten_all()?.to_vec1::<f32>()?;
    if probabilities.iter().any(|p| !p.is_finite()) {
        return Err(Error::Image("the model produced non-finite scores for this image".into()));
    }
    let ood = match &meta.ood {
        Some(summary) => {
            let score = match summary.detector {
                Detector::Mahalanobis => match adapter.ood_stats() {
                    Some(stats) => stats.score(&features.flatten_all()?.to_vec1::<f32>()?),
                    None => return Err(Error::Config(format!("adapter {}: OOD statistics missing", meta.task))),
                },
                Detector::Energy => energy(&logits.flatten_all()?.to_vec1::<f32>()?),
            };
            let threshold = summary.threshold(summary.detector);
            Some(OodCheck {
                ood_detector: summary.detector.name().to_string(),
                ood_score: score as f32,
                ood_threshold: threshold as f32,
                // A NaN score (it cannot arise from finite features) would fail this test: flagged.
                in_distribution: score <= threshold,
                ood_validation_rank: summary.validation_rank(score).map(|r| r as f32),
            })
        }
        None => None,
    };
    Ok(Prediction {
        task: adapter.task().to_string(),
        labels: adapter.labels().to_vec(),
        probabilities,
        multi_label: meta.multi_label,
        calibrated,
        ood,
    })
}

fn preprocess_for(adapter: &Adapter, image: &MedicalImage, frame: usize) -> Result<Tensor> {
    let m = adapter.metadata();
    preprocess(image, frame, m.input_size, m.mean, m.std)
}

/// One frame as the network input [1, 3, size, size] (see the module notes for the steps).
pub fn preprocess(image: &MedicalImage, frame: usize, size: usize, mean: [f32; 3], std: [f32; 3]) -> Result<Tensor> {
    let unit = unit_rgb_or_grey(image, frame)?;
    if size == 0 || size > super::lora::MAX_INPUT_SIZE {
        return Err(Error::Config(format!("input size {size} is not in 1..={}", super::lora::MAX_INPUT_SIZE)));
    }
    let (w, h, s) = (image.cols as u32, image.rows as u32, size as u32);
    let plane = size * size;
    let mut chw = vec![0f32; 3 * plane];
    if image.channels == 1 {
        let buf: ImageBuffer<Luma<f32>, Vec<f32>> = ImageBuffer::from_raw(w, h, unit)
            .ok_or_else(|| Error::Image("pixel buffer does not match the image size".into()))?;
        let resized = image::imageops::resize(&buf, s, s, FilterType::Triangle).into_raw();
        for c in 0..3 {
            for (dst, &v) in chw[c * plane..(c + 1) * plane].iter_mut().zip(&resized) {
                *dst = (v - mean[c]) / std[c];
            }
        }
    } else {
        let buf: ImageBuffer<Rgb<f32>, Vec<f32>> = ImageBuffer::from_raw(w, h, unit)
            .ok_or_else(|| Error::Image("pixel buffer does not match the image size".into()))?;
        let resized = image::imageops::resize(&buf, s, s, FilterType::Triangle).into_raw();
        for (i, px) in resized.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = (px[c] - mean[c]) / std[c];
            }
        }
    }
    Ok(Tensor::from_vec(chw, (1, 3, size, size), &Device::Cpu)?)
}

/// Checks the image and maps one frame to 0..1 (grey through the VOI, colour by bit depth).
fn unit_rgb_or_grey(image: &MedicalImage, frame: usize) -> Result<Vec<f32>> {
    let (rows, cols, channels) = (image.rows, image.cols, image.channels);
    if rows < MIN_IMAGE_SIDE || cols < MIN_IMAGE_SIDE {
        return Err(Error::Image(format!(
            "{cols}×{rows} pixels is too small (at least {MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE})"
        )));
    }
    let pixels = rows.checked_mul(cols).filter(|&n| n <= MAX_IMAGE_PIXELS).ok_or_else(|| {
        Error::Image(format!("{cols}×{rows} pixels is too large (limit {MAX_IMAGE_PIXELS} pixels per frame)"))
    })?;
    if channels != 1 && channels != 3 {
        return Err(Error::Image(format!("{channels} channels (expected grey or RGB)")));
    }
    if frame >= image.frames {
        return Err(Error::Image(format!("frame {frame} does not exist ({} frames)", image.frames)));
    }
    let len = pixels * channels;
    let start = frame * len;
    let values = image.values.get(start..start + len).ok_or_else(|| {
        Error::Image(format!("pixel data holds {} values, frame {frame} needs {}", image.values.len(), start + len))
    })?;
    let clean = |v: f64| if v.is_finite() { v.clamp(0.0, 1.0) as f32 } else { 0.0 };
    if channels == 1 {
        let voi = default_voi(image, frame);
        let invert = image.meta.is_monochrome1();
        Ok(values
            .iter()
            .map(|&v| {
                let g = voi.apply(f64::from(v));
                clean(if invert { 1.0 - g } else { g })
            })
            .collect())
    } else {
        let bits = image.meta.bits_stored;
        let max = if (1..=16).contains(&bits) { f64::from((1u32 << bits) - 1) } else { 255.0 };
        Ok(values.iter().map(|&v| clean(f64::from(v) / max)).collect())
    }
}

/// Bilinear upsampling with half-pixel centres (edges clamped) of a gh × gw map to rows × cols.
fn upsample_bilinear(grid: &[f32], gh: usize, gw: usize, rows: usize, cols: usize) -> Vec<f32> {
    let axis = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        (0..n_out)
            .map(|o| {
                let src = ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).clamp(0.0, (n_in - 1) as f64);
                let i0 = src.floor() as usize;
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, (src - i0 as f64) as f32)
            })
            .collect()
    };
    let ys = axis(gh, rows);
    let xs = axis(gw, cols);
    let mut out = Vec::with_capacity(rows * cols);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let top = grid[y0 * gw + x0] * (1.0 - fx) + grid[y0 * gw + x1] * fx;
            let bottom = grid[y1 * gw + x0] * (1.0 - fx) + grid[y1 * gw + x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// The shipped backbone folder: `$MELO_BACKBONE`, else `assets/backbone` beside the sources,
/// the executable, or the current directory.
pub fn default_backbone_dir() -> Option<PathBuf> {
    find_dir("MELO_BACKBONE", &Path::new("assets").join("backbone"))
}

/// The adapters folder: `$MELO_ADAPTERS`, else `adapters` in the current directory, beside
/// the executable, or beside the sources.
pub fn default_adapters_dir() -> Option<PathBuf> {
    find_dir("MELO_ADAPTERS", Path::new("adapters"))
}

fn find_dir(env: &str, relative: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(cwd.join(relative));
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        candidates.push(exe_dir.join(relative));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative));
    candidates.into_iter().find(|d| d.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_a_constant_map_is_constant_and_sized() {
        let out = upsample_bilinear(&[0.5; 4], 2, 2, 7, 5);
        assert_eq!(out.len(), 35);
        assert!(out.iter().all(|v| (v - 0.5).abs() < 1e-6));
    }

    #[test]
    fn prediction_top_picks_the_largest() {
        let p = Prediction {
            task: "t".into(),
            labels: vec!["a".into(), "b".into()],
            probabilities: vec![0.3, 0.7],
            multi_label: false,
            calibrated: false,
            ood: None,
        };
        assert_eq!(p.top(), ("b", 0.7));
    }
}
