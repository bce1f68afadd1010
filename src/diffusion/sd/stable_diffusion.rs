//! A whole Stable Diffusion 1.x / 2.x pipeline folder loaded for auditing: tokenizer, text
//! encoder, VAE, conditional UNet and the noise schedule of its scheduler, with the few
//! operations the membership attacks need — prompt embeddings, image → latent (posterior mean ×
//! scaling factor, as img2img and the training scripts do), latent → image, and the UNet's
//! output read as ε whatever the folder's `prediction_type`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::clip_text::ClipTextModel;
use super::pipeline::{inspect, PipelineIndex};
use super::unet_cond::UNet2DConditionModel;
use super::vae::AutoencoderKL;
use crate::diffusion::{ClipTokenizer, Error, NoiseSchedule, PredictionType, Result};

/// A loaded `StableDiffusionPipeline` folder.
pub struct StableDiffusion {
    pub index: PipelineIndex,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub vae: AutoencoderKL,
    pub unet: UNet2DConditionModel,
    pub schedule: NoiseSchedule,
}

impl std::fmt::Debug for StableDiffusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableDiffusion")
            .field("dir", &self.index.dir)
            .field("resolution", &self.index.resolution)
            .field("unet_parameters", &self.unet.num_params())
            .field("prediction", &self.index.prediction)
            .finish()
    }
}

impl StableDiffusion {
    /// Checks the folder with [`inspect`] (one-line refusals for other families and missing
    /// parts), then loads every component on the CPU.
    pub fn load(dir: &Path) -> Result<Self> {
        let index = inspect(dir)?;
        let device = Device::Cpu;
        let tokenizer = ClipTokenizer::load(&index.component_dir("tokenizer"))?;
        let text_encoder = ClipTextModel::load(&index.component_dir("text_encoder"), &device)?;
        let vae = AutoencoderKL::load(&index.component_dir("vae"), &device)?;
        let unet = UNet2DConditionModel::load(&index.component_dir("unet"), &device)?;
        let schedule = NoiseSchedule::new(&index.scheduler_config)?;
        if text_encoder.hidden_size() != index.text_hidden_size {
            return Err(Error::Config(format!(
                "{}: the text encoder is {} wide, the UNet cross-attends to {}",
                dir.display(),
                text_encoder.hidden_size(),
                index.text_hidden_size
            )));
        }
        if tokenizer.vocab_size() > text_encoder.config().vocab_size {
            return Err(Error::Config(format!(
                "{}: the tokenizer has {} tokens, the text encoder embeds {}",
                dir.display(),
                tokenizer.vocab_size(),
                text_encoder.config().vocab_size
            )));
        }
        Ok(Self { index, tokenizer, text_encoder, vae, unet, schedule })
    }

    pub fn dir(&self) -> &PathBuf {
        &self.index.dir
    }

    /// Image side in pixels that the pipeline generates (and that candidates are resized to).
    pub fn resolution(&self) -> usize {
        self.index.resolution
    }

    /// The text states the UNet cross-attends to, `[N, 77, D]`, one row per prompt, as
    /// `StableDiffusionPipeline.encode_prompt` makes them (no attention mask, clip_skip 0).
    pub fn encode_prompts(&self, prompts: &[String]) -> Result<Tensor> {
        let mut rows = Vec::with_capacity(prompts.len());
        for p in prompts {
            let enc = self.tokenizer.encode_padded(p)?;
            rows.push(Tensor::from_vec(
                enc.ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                (1, enc.ids.len()),
                &Device::Cpu,
            )?);
        }
        if rows.is_empty() {
            return Err(Error::Input("no prompt to encode".into()));
        }
        let ids = Tensor::cat(&rows, 0)?;
        self.text_encoder.prompt_embeds(&ids, 0)
    }

    /// UNet latents of images `[B, 3, H, W]` in [−1, 1]: the VAE posterior mean × scaling factor.
    pub fn encode_images(&self, images: &Tensor) -> Result<Tensor> {
        self.vae.encode_latents(images, None)
    }

    /// Images (nominally [−1, 1], unclamped) from UNet latents.
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        self.vae.decode_latents(latents)
    }

    /// ε̂ for latents `x` at timestep `t` with text states `text` (`[B, 77, D]`): the UNet's
    /// output, converted from v or x₀ prediction where the scheduler says so.
    pub fn predict_noise(&self, x: &Tensor, t: usize, text: &Tensor) -> Result<Tensor> {
        if t >= self.schedule.num_train_timesteps() {
            return Err(Error::Input(format!("timestep {t} is outside 0..{}", self.schedule.num_train_timesteps())));
        }
        let b = x.dim(0)?;
        let out = self.unet.forward(x, &vec![t as f64; b], text)?.to_dtype(DType::F32)?;
        match self.index.prediction {
            PredictionType::Epsilon => Ok(out),
            p => Ok(self.schedule.split_prediction(p, x, &out, t as i64)?.1),
        }
    }
}
