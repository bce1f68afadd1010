//! Recognising and checking a diffusers `StableDiffusionPipeline` folder from its
//! `model_index.json` and the components' configs, without reading any weights: which kind of
//! model folder it is ([`detect`] → [`PipelineKind`], for the window and the command line), and
//! for a Stable Diffusion 1.x / 2.x pipeline the facts the audit needs before loading
//! ([`inspect`] → [`PipelineIndex`]). Folders of other families (SDXL, SD3, ControlNet, a LoRA
//! without its base, a pixel-space `UNet2DModel`) get a one-line reason naming what was found.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::weights::{self, Variant, DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS};
use crate::diffusion::error::{Error, Result};
use crate::diffusion::scheduler::{NoiseSchedule, PredictionType, SchedulerConfig, SchedulerKind};
use crate::diffusion::{CONFIG_FILE, SCHEDULER_CONFIG_FILE};

pub const MODEL_INDEX_FILE: &str = "model_index.json";

/// Largest image side (pixels) a pipeline may declare: UNet `sample_size` × the VAE's
/// down-sampling factor. Stable Diffusion 1.x works at 512, 2.x at 512 / 768 (SDXL, refused
/// anyway, at 1024); a latent of 2048² px already takes minutes per UNet call on a CPU.
pub const MAX_RESOLUTION: usize = 2048;

/// JSON files of a pipeline are a few KB; anything larger is not one.
const MAX_JSON_BYTES: u64 = 1 << 20;

/// The pipeline classes audited here: both hold the same components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineClass {
    StableDiffusion,
    StableDiffusionImg2Img,
}

impl PipelineClass {
    pub fn class_name(self) -> &'static str {
        match self {
            PipelineClass::StableDiffusion => "StableDiffusionPipeline",
            PipelineClass::StableDiffusionImg2Img => "StableDiffusionImg2ImgPipeline",
        }
    }
}

/// What a Stable Diffusion pipeline folder holds, read from its JSON files only.
#[derive(Debug, Clone)]
pub struct PipelineIndex {
    pub dir: PathBuf,
    pub class: PipelineClass,
    pub diffusers_version: Option<String>,
    pub scheduler: SchedulerKind,
    pub scheduler_config: SchedulerConfig,
    pub prediction: PredictionType,
    /// UNet `sample_size` (latent side).
    pub latent_size: usize,
    /// 2^(VAE blocks − 1): pixels per latent cell.
    pub vae_scale_factor: usize,
    /// The image side the pipeline generates and the audit resizes to: latent × scale.
    pub resolution: usize,
    pub latent_channels: usize,
    /// The text encoder's `hidden_size`, equal to the UNet's `cross_attention_dim`.
    pub text_hidden_size: usize,
    /// Weight variants present for each component, e.g. `[Default, Fp16]`.
    pub unet_variants: Vec<Variant>,
    pub vae_variants: Vec<Variant>,
    pub text_encoder_variants: Vec<Variant>,
}

impl PipelineIndex {
    pub fn component_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Variants all three weighted components have, in preference order (full precision first).
    pub fn common_variants(&self) -> Vec<Variant> {
        self.unet_variants
            .iter()
            .copied()
            .filter(|v| self.vae_variants.contains(v) && self.text_encoder_variants.contains(v))
            .collect()
    }
}

/// What kind of model folder `dir` is, decided from its JSON files only.
#[derive(Debug, Clone)]
pub enum PipelineKind {
    /// A pixel-space `UNet2DModel` folder (`config.json`, `diffusion_pytorch_model.safetensors`
    /// and `scheduler_config.json` together): [`crate::diffusion::DiffusionModel`] loads it.
    PixelDdpm,
    /// A Stable Diffusion 1.x / 2.x pipeline that passed [`inspect`].
    StableDiffusion(Box<PipelineIndex>),
    /// Anything else, with the one-line reason.
    Unsupported(String),
}

/// Recognises the folder kind without loading weights. Never fails: unreadable or unknown
/// folders are [`PipelineKind::Unsupported`] with the reason [`inspect`] gives.
pub fn detect(dir: &Path) -> PipelineKind {
    if !dir.join(MODEL_INDEX_FILE).is_file() && pixel_unet_class(dir).as_deref() == Some("UNet2DModel") {
        if dir.join(SCHEDULER_CONFIG_FILE).is_file() {
            return PipelineKind::PixelDdpm;
        }
        return PipelineKind::Unsupported(format!(
            "{}: a pixel-space UNet2DModel without {SCHEDULER_CONFIG_FILE} beside its {CONFIG_FILE}",
            dir.display()
        ));
    }
    match inspect(dir) {
        Ok(index) => PipelineKind::StableDiffusion(Box::new(index)),
        Err(e) => PipelineKind::Unsupported(e.to_string()),
    }
}

/// `_class_name` of `dir/config.json`, if it is a readable JSON object that has one.
fn pixel_unet_class(dir: &Path) -> Option<String> {
    let path = dir.join(CONFIG_FILE);
    let value = read_json(&path, "model config").ok()?;
    value.get("_class_name")?.as_str().map(str::to_string)
}

fn read_json(path: &Path, what: &'static str) -> Result<Map<String, Value>> {
    let size = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if size > MAX_JSON_BYTES {
        return Err(Error::Json { path: path.to_path_buf(), what, reason: format!("{size} bytes, too large") });
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        what,
        reason: e.to_string(),
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Error::Json { path: path.to_path_buf(), what, reason: "not a JSON object".into() }),
    }
}

fn unsupported(dir: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Unsupported(format!("{}: {reason}", dir.display()))
}

fn missing(dir: &Path, what: impl std::fmt::Display) -> Error {
    Error::Input(format!("{}: missing component: {what}", dir.display()))
}

/// The file names diffusers' `save_lora_weights` writes.
const LORA_FILES: [&str; 2] = ["pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin"];

/// Why a folder without `model_index.json` is not a pipeline, naming what it holds instead.
fn no_model_index(dir: &Path) -> Error {
    for lora in LORA_FILES {
        if dir.join(lora).is_file() {
            return unsupported(
                dir,
                format!(
                    "LoRA weights only ({lora}) and no {MODEL_INDEX_FILE}: a LoRA is not a model on its own; \
                     fuse it into its base pipeline (diffusers fuse_lora + save_pretrained) and audit that folder"
                ),
            );
        }
    }
    match pixel_unet_class(dir).as_deref() {
        Some("UNet2DModel") => {
            unsupported(dir, "a pixel-space UNet2DModel, not a Stable Diffusion pipeline: this is a pixel-space model, audit it as before")
        }
        Some("ControlNetModel") => unsupported(dir, "a ControlNetModel (ControlNet pipelines are not supported)"),
        Some(class) => unsupported(
            dir,
            format!("a single {class} ({CONFIG_FILE}), not a pipeline: give the folder that holds {MODEL_INDEX_FILE}"),
        ),
        None => Error::Input(format!(
            "{}: not a model folder (no {MODEL_INDEX_FILE}; a Stable Diffusion pipeline holds {MODEL_INDEX_FILE} with \
             unet/, vae/, text_encoder/, tokenizer/ and scheduler/)",
            dir.display()
        )),
    }
}

/// The components a `StableDiffusionPipeline` needs, with the (library, classes) accepted.
const REQUIRED: [(&str, &str, &[&str]); 5] = [
    ("unet", "diffusers", &["UNet2DConditionModel"]),
    ("vae", "diffusers", &["AutoencoderKL"]),
    ("text_encoder", "transformers", &["CLIPTextModel"]),
    ("tokenizer", "transformers", &["CLIPTokenizer", "CLIPTokenizerFast"]),
    ("scheduler", "diffusers", &["DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler"]),
];

/// Components the pipeline may list that generation and the audits do not use.
const IGNORED: [&str; 3] = ["safety_checker", "feature_extractor", "image_encoder"];

/// `[library, class]` of a component entry; `None` for `[null, null]` (component left out).
fn component(dir: &Path, name: &str, value: &Value) -> Result<Option<(String, String)>> {
    let bad = || unsupported(dir, format!("{MODEL_INDEX_FILE}: component '{name}' is not a [library, class] pair"));
    let Some(pair) = value.as_array() else { return Err(bad()) };
    match pair.as_slice() {
        [Value::Null, Value::Null] => Ok(None),
        [Value::String(lib), Value::String(class)] => Ok(Some((lib.clone(), class.clone()))),
        _ => Err(bad()),
    }
}

/// An integer config entry.
fn config_usize(config: &Map<String, Value>, key: &str, path: &Path) -> Result<usize> {
    config
        .get(key)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| Error::Config(format!("{}: '{key}' is missing or not a whole number", path.display())))
}

/// Checks a Stable Diffusion 1.x / 2.x pipeline folder and returns what it holds, reading
/// only `model_index.json` and the components' configs. Every refusal is one line naming what
/// was found.
pub fn inspect(dir: &Path) -> Result<PipelineIndex> {
    if !dir.is_dir() {
        return Err(Error::Input(format!("{}: not a folder", dir.display())));
    }
    let index_path = dir.join(MODEL_INDEX_FILE);
    if !index_path.is_file() {
        return Err(no_model_index(dir));
    }
    let index = read_json(&index_path, "pipeline index")?;
    let class_name = index
        .get("_class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| unsupported(dir, format!("{MODEL_INDEX_FILE} has no _class_name")))?;

    // Other families first, by class and by the components that give them away.
    let has = |k: &str| {
        index.get(k).is_some_and(|v| !matches!(v.as_array().map(Vec::as_slice), Some([Value::Null, Value::Null])))
    };
    if class_name.contains("XL") || has("text_encoder_2") {
        return Err(unsupported(
            dir,
            format!(
                "an SDXL pipeline ({class_name}{}): only Stable Diffusion 1.x / 2.x pipelines are supported",
                if has("text_encoder_2") { ", with a second text encoder text_encoder_2" } else { "" }
            ),
        ));
    }
    if class_name.starts_with("StableDiffusion3") || has("transformer") {
        return Err(unsupported(
            dir,
            format!(
                "a Stable Diffusion 3 pipeline ({class_name}, an MMDiT transformer instead of a UNet): only \
                 Stable Diffusion 1.x / 2.x pipelines are supported"
            ),
        ));
    }
    if class_name.contains("ControlNet") || has("controlnet") {
        return Err(unsupported(
            dir,
            format!("a ControlNet pipeline ({class_name}): ControlNet pipelines are not supported"),
        ));
    }
    if matches!(class_name, "DDPMPipeline" | "DDIMPipeline") {
        return Err(unsupported(
            dir,
            format!(
                "a pixel-space {class_name}, not a Stable Diffusion pipeline: this is a pixel-space model, audit it as \
                 before (a folder with {CONFIG_FILE}, {} and {SCHEDULER_CONFIG_FILE} together)",
                crate::diffusion::WEIGHTS_FILE
            ),
        ));
    }
    let class = match class_name {
        "StableDiffusionPipeline" => PipelineClass::StableDiffusion,
        "StableDiffusionImg2ImgPipeline" => PipelineClass::StableDiffusionImg2Img,
        other => {
            return Err(unsupported(
                dir,
                format!("pipeline class {other} (supported: StableDiffusionPipeline, StableDiffusionImg2ImgPipeline)"),
            ))
        }
    };

    // diffusers does not load a LoRA lying beside the components: auditing the folder would
    // audit the base model while the auditor believes it is the fine-tune.
    if let Some(lora) = LORA_FILES.iter().find(|f| dir.join(f).is_file()) {
        return Err(unsupported(
            dir,
            format!(
                "the pipeline folder also holds LoRA weights ({lora}), which loading the pipeline ignores: fuse \
                 them (diffusers fuse_lora + save_pretrained) and audit the fused folder, or move the file away to \
                 audit the base model"
            ),
        ));
    }

    // Every [library, class] entry must be a known component.
    let mut scheduler_class = None;
    for (name, value) in &index {
        if name.starts_with('_') || !value.is_array() || IGNORED.contains(&name.as_str()) {
            continue;
        }
        if !REQUIRED.iter().any(|(n, _, _)| n == name) {
            let what = component(dir, name, value)?.map(|(l, c)| format!(" ({l} {c})")).unwrap_or_default();
            return Err(unsupported(
                dir,
                format!("{MODEL_INDEX_FILE} lists a component '{name}'{what} that a {class_name} does not have"),
            ));
        }
    }
    for (name, library, classes) in REQUIRED {
        let Some(value) = index.get(name) else {
            return Err(missing(dir, format!("'{name}' is not in {MODEL_INDEX_FILE}")));
        };
        let Some((lib, cls)) = component(dir, name, value)? else {
            return Err(missing(dir, format!("'{name}' is [null, null] in {MODEL_INDEX_FILE}")));
        };
        if lib != library || !classes.contains(&cls.as_str()) {
            return Err(unsupported(
                dir,
                format!("component '{name}' is {lib} {cls} (supported: {library} {})", classes.join(" / ")),
            ));
        }
        if !dir.join(name).is_dir() {
            return Err(missing(dir, format!("the folder {name}/ ({MODEL_INDEX_FILE} lists {cls})")));
        }
        if name == "scheduler" {
            scheduler_class = SchedulerKind::from_class_name(&cls);
        }
    }
    let scheduler = scheduler_class.ok_or_else(|| unsupported(dir, "scheduler class"))?;

    let require_file = |rel: &str| -> Result<PathBuf> {
        let p = dir.join(rel);
        if p.is_file() {
            Ok(p)
        } else {
            Err(missing(dir, rel))
        }
    };
    let unet_path = require_file("unet/config.json")?;
    let vae_path = require_file("vae/config.json")?;
    let text_path = require_file("text_encoder/config.json")?;
    require_file("tokenizer/vocab.json")?;
    require_file("tokenizer/merges.txt")?;
    let scheduler_path = require_file(&format!("scheduler/{SCHEDULER_CONFIG_FILE}"))?;

    let variants = |sub: &str, stem: &str| -> Result<Vec<Variant>> {
        let found = weights::available_variants(&dir.join(sub), stem);
        if found.is_empty() {
            // locate() says why (only .bin pickles, nothing at all).
            return Err(match weights::locate(&dir.join(sub), stem, Variant::Default) {
                Err(Error::Weights { reason, .. }) => missing(dir, format!("weights of {sub}/ ({reason})")),
                Err(e) => missing(dir, format!("weights of {sub}/ ({e})")),
                Ok(_) => missing(dir, format!("weights of {sub}/")),
            });
        }
        Ok(found)
    };
    let unet_variants = variants("unet", DIFFUSERS_WEIGHTS)?;
    let vae_variants = variants("vae", DIFFUSERS_WEIGHTS)?;
    let text_encoder_variants = variants("text_encoder", TRANSFORMERS_WEIGHTS)?;

    // The few config facts that tie the components together; each component's own loader
    // checks the rest of its config.
    let unet = read_json(&unet_path, "UNet config")?;
    let vae = read_json(&vae_path, "VAE config")?;
    let text = read_json(&text_path, "text encoder config")?;
    for (config, path, expected) in [(&unet, &unet_path, "UNet2DConditionModel"), (&vae, &vae_path, "AutoencoderKL")] {
        if let Some(found) = config.get("_class_name").and_then(Value::as_str) {
            if found != expected {
                return Err(unsupported(
                    dir,
                    format!("{} is a {found}, {MODEL_INDEX_FILE} says {expected}", path.display()),
                ));
            }
        }
    }
    let latent_size = match unet.get("sample_size") {
        Some(Value::Array(hw)) => {
            let sides: Vec<u64> = hw.iter().filter_map(Value::as_u64).collect();
            match sides.as_slice() {
                [h, w] if h == w => *h as usize,
                _ => {
                    return Err(unsupported(
                        dir,
                        format!("unet sample_size {} (only square sizes)", Value::Array(hw.clone())),
                    ))
                }
            }
        }
        _ => config_usize(&unet, "sample_size", &unet_path)?,
    };
    let vae_blocks = vae
        .get("block_out_channels")
        .and_then(Value::as_array)
        .map(Vec::len)
        .ok_or_else(|| Error::Config(format!("{}: 'block_out_channels' is missing", vae_path.display())))?;
    if !(1..=8).contains(&vae_blocks) {
        return Err(Error::Config(format!("{}: {vae_blocks} VAE blocks (1 to 8)", vae_path.display())));
    }
    let vae_scale_factor = 1usize << (vae_blocks - 1);
    let resolution = latent_size.saturating_mul(vae_scale_factor);
    if latent_size == 0 || resolution > MAX_RESOLUTION {
        return Err(unsupported(
            dir,
            format!(
                "declared sample size {latent_size} (latent) × {vae_scale_factor} (VAE) = {resolution} px \
                 (at most {MAX_RESOLUTION} px)"
            ),
        ));
    }
    let latent_channels = config_usize(&vae, "latent_channels", &vae_path)?;
    let in_channels = config_usize(&unet, "in_channels", &unet_path)?;
    if in_channels != latent_channels {
        let what = if in_channels == latent_channels * 2 + 1 { " (an inpainting UNet: not supported)" } else { "" };
        return Err(unsupported(
            dir,
            format!("the UNet takes {in_channels} input channels, the VAE makes {latent_channels}{what}"),
        ));
    }
    let text_hidden_size = config_usize(&text, "hidden_size", &text_path)?;
    if let Some(cross) = unet.get("cross_attention_dim") {
        if cross.as_u64() != Some(text_hidden_size as u64) {
            return Err(unsupported(
                dir,
                format!("the UNet's cross_attention_dim {cross} differs from the text encoder's hidden_size {text_hidden_size}"),
            ));
        }
    }

    let scheduler_config = SchedulerConfig::from_file_as(&scheduler_path, scheduler)?;
    if let Some(found) = &scheduler_config.class_name {
        if found != scheduler.class_name() {
            return Err(Error::Config(format!(
                "{}: _class_name {found}, {MODEL_INDEX_FILE} says {}",
                scheduler_path.display(),
                scheduler.class_name()
            )));
        }
    }
    // Builds the noise schedule once, so a schedule that cannot be built is refused here.
    NoiseSchedule::new(&scheduler_config)?;
    let prediction = scheduler_config.prediction()?;

    Ok(PipelineIndex {
        dir: dir.to_path_buf(),
        class,
        diffusers_version: index.get("_diffusers_version").and_then(Value::as_str).map(str::to_string),
        scheduler,
        scheduler_config,
        prediction,
        latent_size,
        vae_scale_factor,
        resolution,
        latent_channels,
        text_hidden_size,
        unet_variants,
        vae_variants,
        text_encoder_variants,
    })
}
