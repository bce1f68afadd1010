//! Membership-inference attacks on a diffusion model, each behind [`Attack`]: given the
//! candidate images (members first, then non-members) they return one score per evaluated sample,
//! higher = more likely a member.
//!
//! - [`loss::LossAttack`]: denoising loss at chosen t (Matsumoto et al. 2023);
//! - [`pia::PiaAttack`]: proximal initialisation, p-norm of the ε difference (Kong et al. 2024);
//! - [`secmi::SecmiAttack`]: DDIM round-trip t-error (Duan et al. 2023);
//! - [`trajectory::TrajectoryAttack`]: the black-box generation-trajectory attack of Cilloni et
//!   al. 2023 with a classifier trained on a labelled split and scored on the disjoint rest;
//! - [`clid::ClidAttack`]: conditional likelihood discrepancy of a caption-conditioned model
//!   (Zhai et al. 2024).
//!
//! The model behind the queries is an [`AuditTarget`]: a pixel-space DDPM or a Stable Diffusion
//! pipeline queried in its latent space with each candidate's caption.
//!
//! All model calls go through [`QueryRunner`], which batches them, counts them, reports progress
//! and honours cancellation between batches. Randomness (noise draws, splits) comes from seeded
//! generators, so a run is deterministic for a seed.

pub mod clid;
pub mod loss;
pub mod pia;
pub mod secmi;
pub mod trajectory;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};

use super::error::{Error, Result};
use super::target::{AuditTarget, Conditioning};
use super::Progress;

/// What every attack gets.
pub struct AttackInput<'a> {
    /// `[N, C, H, W]` in the model's space (pixels in [−1, 1], or a latent pipeline's
    /// latents): members first, then non-members.
    pub images: &'a Tensor,
    /// The candidates' pixels when `images` are latents (what a generated image is compared with).
    pub pixels: Option<&'a Tensor>,
    pub is_member: &'a [bool],
    pub seed: u64,
}

/// Scores of the samples an attack evaluates (all of them, or the evaluation split of a learned
/// attack), as indices into the input.
#[derive(Debug, Clone)]
pub struct AttackOutput {
    pub evaluated: Vec<usize>,
    pub scores: Vec<f64>,
    /// Free-form facts worth reporting (split sizes, classifier settings).
    pub notes: Vec<String>,
}

pub trait Attack {
    /// Short name used on the command line and in reports.
    fn name(&self) -> &'static str;
    /// One line saying what is computed, with its parameters.
    fn description(&self) -> String;
    /// Model calls per candidate image (the query budget).
    fn queries_per_sample(&self) -> usize;
    fn run(&self, input: &AttackInput, runner: &mut QueryRunner) -> Result<AttackOutput>;
}

/// Batches model calls, counts them, reports progress and checks for cancellation.
pub struct QueryRunner<'a> {
    pub model: &'a dyn AuditTarget,
    pub batch_size: usize,
    cancel: &'a AtomicBool,
    progress: &'a mut dyn FnMut(Progress),
    pub label: String,
    /// Per-sample model calls done / planned over the whole audit.
    pub done: usize,
    pub total: usize,
}

impl<'a> QueryRunner<'a> {
    pub fn new(
        model: &'a dyn AuditTarget,
        batch_size: usize,
        cancel: &'a AtomicBool,
        progress: &'a mut dyn FnMut(Progress),
        total: usize,
    ) -> Self {
        Self { model, batch_size: batch_size.max(1), cancel, progress, label: String::new(), done: 0, total }
    }

    pub fn check_cancel(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// ε_θ(x, t) for all of `x` (one row per candidate, in order), each with its own caption.
    pub fn eps(&mut self, x: &Tensor, t: usize) -> Result<Tensor> {
        self.eps_with(x, t, Conditioning::Caption)
    }

    /// ε_θ(x, t) for all of `x`, in batches, with the given conditioning.
    pub fn eps_with(&mut self, x: &Tensor, t: usize, conditioning: Conditioning) -> Result<Tensor> {
        let n = x.dim(0)?;
        let mut parts = Vec::with_capacity(n.div_ceil(self.batch_size));
        let mut start = 0;
        let model = self.model;
        let batch = |start: usize, len: usize| -> Result<Tensor> {
            model.predict_noise(&x.narrow(0, start, len)?, t, start..start + len, conditioning)
        };
        while start < n {
            self.check_cancel()?;
            // Two batches at once: the UNet's element-wise ops run on one thread each, so one
            // batch at a time left a core idle for a third of the time (1.4 of 2 cores busy).
            let len = self.batch_size.min(n - start);
            let next = self.batch_size.min(n - start - len);
            if next > 0 {
                let (a, b) = rayon::join(|| batch(start, len), || batch(start + len, next));
                parts.push(a?);
                parts.push(b?);
            } else {
                parts.push(batch(start, len)?);
            }
            start += len + next;
            self.done += len + next;
            (self.progress)(Progress { message: self.label.clone(), done: self.done, total: self.total });
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Pixels of model-space tensors in batches (the tensor itself for a pixel-space model).
    pub fn to_pixels(&mut self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let mut parts = Vec::with_capacity(n.div_ceil(self.batch_size));
        let mut start = 0;
        while start < n {
            self.check_cancel()?;
            let len = self.batch_size.min(n - start);
            match self.model.decode(&x.narrow(0, start, len)?)? {
                Some(p) => parts.push(p),
                None => return Ok(x.clone()),
            }
            start += len;
        }
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// Standard-normal noise of `shape`, from a generator seeded by (seed, stream): the same seed and
/// stream always give the same tensor. The generator is specified so that any reimplementation
/// reproduces the attacks' scores (`tools/sd/audit_reference.py` does, in numpy). With
/// γ = 0x9E3779B97F4A7C15 and mix = the splitmix64 output function:
/// key = mix(seed·γ ⊕ (stream + 0xD1B54A32D192ED03)), uᵢ = ((mix(key + i·γ) >> 11) + 1) / 2⁵³
/// ∈ (0, 1], and value k of the tensor (row-major) is z = √(−2 ln u₂ₖ) cos(2π u₂ₖ₊₁), computed
/// in f64 and rounded to f32 (wrapping u64 arithmetic throughout).
pub fn gaussian_noise(shape: &[usize], seed: u64, stream: u64) -> Result<Tensor> {
    let key = splitmix64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.wrapping_add(0xD1B5_4A32_D192_ED03));
    let n: usize = shape.iter().product();
    let uniform = |i: u64| -> f64 {
        let bits = splitmix64(key.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))) >> 11;
        (bits as f64 + 1.0) / (1u64 << 53) as f64
    };
    let data: Vec<f32> = (0..n as u64)
        .map(|k| {
            let (u1, u2) = (uniform(2 * k), uniform(2 * k + 1));
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// The splitmix64 output function (Steele, Lea, Flood 2014).
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Per-sample mean of (a − b)² over all but the first dimension, in f64.
pub fn per_sample_mse(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    let d = (a - b)?.flatten_from(1)?.to_dtype(DType::F64)?;
    Ok(d.sqr()?.mean(1)?.to_vec1::<f64>()?)
}

/// Rows of a `[N, …]` tensor as f32 vectors.
pub fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(t.flatten_from(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

pub(crate) fn check_timestep(model: &dyn AuditTarget, t: usize, what: &str) -> Result<()> {
    let n = model.schedule().num_train_timesteps();
    if t >= n {
        return Err(Error::Params(format!("{what} = {t} is outside the model's 0..{n} timesteps")));
    }
    Ok(())
}
