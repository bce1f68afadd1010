//! Diffusion models in candle, in the diffusers folder layout.
//!
//! - [`unet`]: `UNet2DModel` (the ε-prediction denoiser), `config.json` +
//!   `diffusion_pytorch_model.safetensors`;
//! - [`scheduler`]: `DDPMScheduler` / `DDIMScheduler` / `PNDMScheduler` / `EulerDiscreteScheduler`
//!   from `scheduler_config.json`, the noise schedule, and the deterministic DDIM move (both
//!   directions) that the attacks build on;
//! - [`DiffusionModel`]: both together, loaded from one folder — what `melo audit` calls a target;
//! - [`clip_tokenizer`]: the CLIP BPE tokenizer of a Stable Diffusion pipeline's `tokenizer/`
//!   folder (ids and attention mask as transformers' `CLIPTokenizer` gives them).
//!
//! Parity with diffusers is checked in `tests/diffusion_parity.rs` against fixtures in
//! `tests/data/diffusion`, the tokenizer's with transformers in `tests/sd_tokenizer.rs`
//! against `tests/data/sd`. Nothing here depends on egui.

pub mod clip_tokenizer;
mod conv;
mod error;
pub mod scheduler;
pub mod sd;
pub mod unet;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub use clip_tokenizer::{ClipTokenizer, Encoding};
pub use error::{Error, Result};
pub use scheduler::{
    DdimScheduler, DdpmScheduler, EulerDiscreteScheduler, NoiseSchedule, PndmScheduler, PredictionType,
    SchedulerConfig, SchedulerKind, StepOutput, SCHEDULER_CONFIG_FILE,
};
pub use unet::{Config, UNet2DModel, CONFIG_FILE, WEIGHTS_FILE};

/// An unconditional diffusion model: the denoiser and the noise schedule it was trained with.
pub struct DiffusionModel {
    pub dir: PathBuf,
    pub unet: UNet2DModel,
    pub scheduler_config: SchedulerConfig,
    pub schedule: NoiseSchedule,
}

impl std::fmt::Debug for DiffusionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffusionModel")
            .field("dir", &self.dir)
            .field("parameters", &self.unet.num_params())
            .field("num_train_timesteps", &self.schedule.num_train_timesteps())
            .finish()
    }
}

impl DiffusionModel {
    /// Loads a diffusers folder holding `config.json`, `diffusion_pytorch_model.safetensors`
    /// and `scheduler_config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Input(format!("{}: not a model folder", dir.display())));
        }
        for f in [CONFIG_FILE, WEIGHTS_FILE, SCHEDULER_CONFIG_FILE] {
            if !dir.join(f).is_file() {
                return Err(Error::Input(format!(
                    "{}: no {f} (a diffusers model folder holds {CONFIG_FILE}, {WEIGHTS_FILE} and {SCHEDULER_CONFIG_FILE})",
                    dir.display()
                )));
            }
        }
        let scheduler_config = SchedulerConfig::from_file(&dir.join(SCHEDULER_CONFIG_FILE))?;
        // The pixel-space attacks read the UNet output as ε.
        if scheduler_config.prediction()? != PredictionType::Epsilon {
            return Err(Error::Unsupported(format!(
                "prediction_type '{}' in a pixel-space model (only 'epsilon')",
                scheduler_config.prediction_type
            )));
        }
        let schedule = NoiseSchedule::new(&scheduler_config)?;
        let unet = UNet2DModel::load(dir, &Device::Cpu)?;
        if let Some(n) = unet.config().num_train_timesteps {
            if n != schedule.num_train_timesteps() {
                return Err(Error::Config(format!(
                    "config.json says {n} training timesteps, scheduler_config.json {}",
                    schedule.num_train_timesteps()
                )));
            }
        }
        Ok(Self { dir: dir.to_path_buf(), unet, scheduler_config, schedule })
    }

    /// ε_θ(x, t) for a batch with one timestep for all samples.
    pub fn predict_noise(&self, x: &Tensor, t: usize) -> Result<Tensor> {
        if t >= self.schedule.num_train_timesteps() {
            return Err(Error::Input(format!("timestep {t} is outside 0..{}", self.schedule.num_train_timesteps())));
        }
        self.unet.forward(x, &[t as f64])
    }
}
