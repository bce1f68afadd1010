//! What the window shows around an audit, for both target kinds (a pixel-space DDPM or a Stable
//! Diffusion pipeline): the members with what the model makes of each when generation starts
//! from it ([`MemberGallery`]), and the cost of an audit before it runs ([`estimate`]).
//!
//! A pipeline's reconstruction is img2img, as its generation API does it: the member is encoded
//! with the VAE (posterior mean × scaling factor), noised to t₀ with the seeded
//! [`gaussian_noise`], taken back down with DDIM conditioned on the member's own caption, and the
//! last x̂₀ is decoded to pixels. Nothing here depends on egui.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::attacks::trajectory::{generate_back, reconstruction};
use super::attacks::{check_timestep, gaussian_noise, rows, QueryRunner};
use super::error::{Error, Result};
use super::target::{AuditTarget, Conditioning, LatentTarget};
use super::{AttackKind, AuditConfig, Image2d, SampleSet};
use crate::diffusion::sd::pipeline::{detect, PipelineKind};
use crate::diffusion::sd::stable_diffusion::StableDiffusion;
use crate::diffusion::DiffusionModel;

/// The noise stream of a reconstruction: the trajectory attack's first strength, first draw.
const RECONSTRUCTION_STREAM: u64 = 100_000;

/// The loaded target of an audit.
pub enum LoadedTarget {
    Pixel(Box<DiffusionModel>),
    Pipeline(Box<StableDiffusion>),
}

impl LoadedTarget {
    /// Loads the model in `config.target`, whichever kind it is (the refusal reason otherwise).
    pub fn load(config: &AuditConfig) -> Result<Self> {
        if !config.target.is_dir() {
            return Err(Error::Model(crate::diffusion::Error::Input(format!(
                "{}: not a model folder (no such folder)",
                config.target.display()
            ))));
        }
        match detect(&config.target) {
            PipelineKind::PixelDdpm => Ok(Self::Pixel(Box::new(DiffusionModel::load(&config.target)?))),
            PipelineKind::StableDiffusion(_) => Ok(Self::Pipeline(Box::new(StableDiffusion::load(&config.target)?))),
            PipelineKind::Unsupported(reason) => Err(Error::Model(crate::diffusion::Error::Unsupported(reason))),
        }
    }

    /// The member and non-member sets as this model takes them (captioned folders resized to a
    /// pipeline's resolution, as [`crate::audit::run`] loads them).
    pub fn load_samples(&self, config: &AuditConfig) -> Result<(SampleSet, SampleSet)> {
        match self {
            Self::Pixel(_) => config.load_samples(),
            Self::Pipeline(sd) => config.load_captioned_samples(sd.resolution()),
        }
    }
}

/// The members of an audit beside the loaded target: originals, captions and reconstructions.
pub struct MemberGallery {
    pub target: LoadedTarget,
    pub members: SampleSet,
}

impl MemberGallery {
    /// Loads the target of `config` and its member set (the first `max_per_set`, as the audit did,
    /// so that a report's member index is an index here).
    pub fn load(config: &AuditConfig) -> Result<Self> {
        let target = LoadedTarget::load(config)?;
        let members = match &target {
            LoadedTarget::Pixel(_) => SampleSet::load(&config.members, config.max_per_set)?,
            LoadedTarget::Pipeline(sd) => {
                let r = sd.resolution();
                if super::data::is_captioned_folder(&config.members) {
                    SampleSet::load_captioned(&config.members, r, config.max_per_set)?
                } else {
                    SampleSet::load(&config.members, config.max_per_set)?
                }
            }
        };
        Ok(Self { target, members })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn check_index(&self, i: usize) -> Result<()> {
        if i >= self.members.len() {
            return Err(Error::Params(format!("member {i} is outside the {} loaded members", self.members.len())));
        }
        Ok(())
    }

    /// Member `i`'s caption (`None` for a set without captions).
    pub fn caption(&self, i: usize) -> Option<&str> {
        self.members.captions.as_ref().and_then(|c| c.get(i)).map(String::as_str)
    }

    /// Member `i` as the model sees it (a pipeline's: resized to its resolution), grey.
    pub fn original(&self, i: usize) -> Result<Image2d> {
        self.check_index(i)?;
        Ok(self.members.image2d(i))
    }

    /// What the model makes of member `i` when generation starts from it at `t_start` and goes
    /// back in `steps` DDIM steps (noise seeded by `seed`), as a grey image of the member's size.
    pub fn reconstruction(&self, i: usize, t_start: usize, steps: usize, seed: u64) -> Result<Image2d> {
        self.check_index(i)?;
        let m = &self.members;
        let (c, h, w) = (m.channels, m.height, m.width);
        match &self.target {
            LoadedTarget::Pixel(model) => reconstruction(model, m.image(i), (c, h, w), t_start, steps, seed)?
                .pop()
                .ok_or_else(|| Error::Params("reconstruction: no step".into())),
            LoadedTarget::Pipeline(sd) => {
                if steps == 0 || t_start < steps {
                    return Err(Error::Params(format!(
                        "reconstruction: {steps} steps from t₀ = {t_start} (need 1 ≤ steps ≤ t₀)"
                    )));
                }
                let r = sd.resolution();
                if (c, h, w) != (3, r, r) {
                    return Err(Error::Data(format!(
                        "{}: images are {w}×{h} with {c} channel(s); the pipeline takes RGB at {r}×{r}",
                        m.source.display()
                    )));
                }
                let caption = self.caption(i).unwrap_or_default().to_string();
                let target = LatentTarget::new(sd, &[caption])?;
                check_timestep(&target, t_start, "reconstruction strength")?;
                let x0 = Tensor::from_slice(m.image(i), (1, c, h, w), &Device::Cpu)?;
                let latent = sd.encode_images(&x0)?;
                let noise = gaussian_noise(latent.dims(), seed, RECONSTRUCTION_STREAM)?;
                let cancel = AtomicBool::new(false);
                let mut ignore = |_: super::Progress| {};
                let mut runner = QueryRunner::new(&target, 1, &cancel, &mut ignore, steps);
                let estimates = generate_back(&mut runner, &latent, &noise, t_start, steps)?;
                let last = estimates.last().ok_or_else(|| Error::Params("reconstruction: no step".into()))?;
                let pixels = sd.decode_latents(last)?;
                Ok(Image2d::from_chw(&rows(&pixels)?[0], c, h, w))
            }
        }
    }
}

/// The cost of an audit before it runs: what it will call and how long one call takes here.
#[derive(Debug, Clone, PartialEq)]
pub struct CostEstimate {
    /// Members + non-members (after `max_per_set`).
    pub samples: usize,
    /// Model calls per sample over the selected attacks (sum of `queries_per_sample`).
    pub calls_per_sample: usize,
    /// Per-sample denoiser (UNet) calls of the whole audit: `samples × calls_per_sample`, the
    /// total that [`crate::audit::run`] reports in its progress.
    pub model_calls: usize,
    /// Per-sample VAE encodes before the attacks (a pipeline: one per sample; else 0).
    pub vae_encodes: usize,
    /// Per-sample VAE decodes of the trajectory attack's estimates on a pipeline (else 0).
    pub vae_decodes: usize,
    /// Measured seconds per per-sample UNet call: one batch of `batch_size` samples (at most
    /// `samples`) after one warm-up call, divided by the batch.
    pub seconds_per_call: f64,
    /// Measured seconds per per-sample VAE encode (one batch), 0 without a VAE.
    pub seconds_per_encode: f64,
    /// Measured seconds per per-sample VAE decode (one batch), 0 when no decode is planned.
    pub seconds_per_decode: f64,
    /// The audit's projected wall time: every call above at its measured rate (loading, text
    /// encoding and the metrics are not counted).
    pub projected_seconds: f64,
}

/// Loads the target and the sets of `config`, counts the calls its attacks will make and times
/// one batch of `batch_size` UNet calls (after a warm-up call). `cancel` stops it between steps.
pub fn estimate(config: &AuditConfig, cancel: &AtomicBool) -> Result<CostEstimate> {
    if config.attacks.is_empty() {
        return Err(Error::Params("no attack selected".into()));
    }
    if config.batch_size == 0 {
        return Err(Error::Params("batch size must be positive".into()));
    }
    let check = || if cancel.load(Ordering::Relaxed) { Err(Error::Cancelled) } else { Ok(()) };
    let target = LoadedTarget::load(config)?;
    check()?;
    let (members, nonmembers) = target.load_samples(config)?;
    check()?;
    let samples = members.len() + nonmembers.len();
    if members.is_empty() || nonmembers.is_empty() {
        return Err(Error::Data("an audit needs members and non-members: one set is empty".into()));
    }
    let calls_per_sample: usize = config.build_attacks().iter().map(|a| a.queries_per_sample()).sum();
    let batch = config.batch_size.min(members.len());
    let pixels = members.to_tensor(&Device::Cpu)?.narrow(0, 0, batch)?;
    let mut e = CostEstimate {
        samples,
        calls_per_sample,
        model_calls: samples * calls_per_sample,
        vae_encodes: 0,
        vae_decodes: 0,
        seconds_per_call: 0.0,
        seconds_per_encode: 0.0,
        seconds_per_decode: 0.0,
        projected_seconds: 0.0,
    };
    match &target {
        LoadedTarget::Pixel(model) => {
            e.seconds_per_call = time_unet(model.as_ref(), &pixels, 0..batch, &check)?;
        }
        LoadedTarget::Pipeline(sd) => {
            e.vae_encodes = samples;
            if config.attacks.contains(&AttackKind::Trajectory) {
                let t = &config.trajectory;
                e.vae_decodes = samples * t.strengths.len() * t.steps * t.draws;
            }
            let captions: Vec<String> = match &members.captions {
                Some(c) => c[..batch].to_vec(),
                None => vec![String::new(); batch],
            };
            let conditioned = LatentTarget::new(sd, &captions)?;
            check()?;
            // warm-up encode of one image, then the timed batch
            sd.encode_images(&pixels.narrow(0, 0, 1)?)?;
            check()?;
            let started = Instant::now();
            let latents = sd.encode_images(&pixels)?;
            e.seconds_per_encode = started.elapsed().as_secs_f64() / batch as f64;
            check()?;
            e.seconds_per_call = time_unet(&conditioned, &latents, 0..batch, &check)?;
            if e.vae_decodes > 0 {
                check()?;
                let started = Instant::now();
                sd.decode_latents(&latents)?;
                e.seconds_per_decode = started.elapsed().as_secs_f64() / batch as f64;
            }
        }
    }
    e.projected_seconds = e.model_calls as f64 * e.seconds_per_call
        + e.vae_encodes as f64 * e.seconds_per_encode
        + e.vae_decodes as f64 * e.seconds_per_decode;
    Ok(e)
}

/// Seconds per sample of one batched UNet call on `x` (candidates `rows`), after a warm-up call
/// on its first sample (the first call allocates and fills caches).
fn time_unet(
    model: &dyn AuditTarget,
    x: &Tensor,
    rows: std::ops::Range<usize>,
    check: &dyn Fn() -> Result<()>,
) -> Result<f64> {
    let t = model.schedule().num_train_timesteps() / 2;
    model.predict_noise(&x.narrow(0, 0, 1)?, t, rows.start..rows.start + 1, Conditioning::Caption)?;
    check()?;
    let n = rows.len();
    let started = Instant::now();
    model.predict_noise(x, t, rows, Conditioning::Caption)?;
    Ok(started.elapsed().as_secs_f64() / n as f64)
}
