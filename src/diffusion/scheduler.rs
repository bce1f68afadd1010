//! DDPM and DDIM schedulers of diffusers, read from `scheduler_config.json`, for ε-prediction
//! models: the noise schedule (linear, scaled-linear and squaredcos_cap_v2 betas), the sampling
//! steps, and the deterministic DDIM move the attacks use in both directions.
//!
//! Numbers follow diffusers exactly where it matters for parity: the betas and ᾱ are computed in
//! f32 like diffusers does (linear betas with torch's `linspace` formula, cosine betas in f64 then
//! rounded), and [`NoiseSchedule::alphas_cumprod`] holds those f32 values widened to f64.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

pub const SCHEDULER_CONFIG_FILE: &str = "scheduler_config.json";

fn default_steps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_linear() -> String {
    "linear".into()
}
fn default_epsilon() -> String {
    "epsilon".into()
}
fn default_fixed_small() -> String {
    "fixed_small".into()
}
fn default_true() -> bool {
    true
}
fn default_one() -> f64 {
    1.0
}
fn default_leading() -> String {
    "leading".into()
}

/// Upper bound on a scheduler's training timesteps (diffusers models use 1000–4000).
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// `scheduler_config.json` of a `DDPMScheduler` or `DDIMScheduler` (the keys of both; each
/// scheduler reads the ones it has).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "default_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_linear")]
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "default_epsilon")]
    pub prediction_type: String,
    #[serde(default = "default_fixed_small")]
    pub variance_type: String,
    #[serde(default = "default_true")]
    pub clip_sample: bool,
    #[serde(default = "default_one")]
    pub clip_sample_range: f64,
    #[serde(default = "default_true")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default = "default_leading")]
    pub timestep_spacing: String,
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// Everything else (`_diffusers_version`, `dynamic_thresholding_ratio`, …): read, unused.
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl SchedulerConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: SchedulerConfig = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            what: "scheduler config",
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if self.prediction_type != "epsilon" {
            return Err(Error::Unsupported(format!("prediction_type '{}' (only 'epsilon')", self.prediction_type)));
        }
        if self.thresholding {
            return Err(Error::Unsupported("dynamic thresholding".into()));
        }
        if self.rescale_betas_zero_snr {
            return Err(Error::Unsupported("rescale_betas_zero_snr".into()));
        }
        if self.num_train_timesteps < 2 {
            return Err(Error::Config(format!("num_train_timesteps {} (need at least 2)", self.num_train_timesteps)));
        }
        // The schedule holds several f64 tables of this length: a lying config would have them
        // allocate terabytes (found by fuzz/diffusers_config). Published models use 1000–4000.
        if self.num_train_timesteps > MAX_TRAIN_TIMESTEPS {
            return Err(Error::Config(format!(
                "num_train_timesteps {} (at most {MAX_TRAIN_TIMESTEPS})",
                self.num_train_timesteps
            )));
        }
        if !matches!(self.timestep_spacing.as_str(), "leading" | "trailing" | "linspace") {
            return Err(Error::Unsupported(format!("timestep_spacing '{}'", self.timestep_spacing)));
        }
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                return Err(Error::Config(format!(
                    "{} trained_betas for {} timesteps",
                    b.len(),
                    self.num_train_timesteps
                )));
            }
        } else if !matches!(self.beta_schedule.as_str(), "linear" | "scaled_linear" | "squaredcos_cap_v2") {
            return Err(Error::Unsupported(format!("beta_schedule '{}'", self.beta_schedule)));
        }
        if !(self.beta_start > 0.0 && self.beta_end < 1.0 && self.beta_start <= self.beta_end) {
            return Err(Error::Config(format!(
                "beta_start {} / beta_end {} (need 0 < start ≤ end < 1)",
                self.beta_start, self.beta_end
            )));
        }
        Ok(())
    }
}

/// torch.linspace in f32 (ATen's CPU kernel: the first half from the start, the second half
/// from the end), so the betas are bit-identical to diffusers'.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let halfway = n / 2;
    (0..n).map(|i| if i < halfway { start + step * i as f32 } else { end - step * (n - i - 1) as f32 }).collect()
}

/// The forward-process noise schedule: βₜ and ᾱₜ = Π(1 − βₛ) for t = 0 … T−1.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        config.validate()?;
        let n = config.num_train_timesteps;
        let betas32: Vec<f32> = if let Some(b) = &config.trained_betas {
            b.iter().map(|&v| v as f32).collect()
        } else {
            match config.beta_schedule.as_str() {
                "linear" => linspace_f32(config.beta_start as f32, config.beta_end as f32, n),
                "scaled_linear" => linspace_f32((config.beta_start as f32).sqrt(), (config.beta_end as f32).sqrt(), n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect(),
                _ => {
                    // squaredcos_cap_v2 (Nichol & Dhariwal): in f64, capped at 0.999, then f32.
                    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                    (0..n)
                        .map(|i| {
                            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                        })
                        .collect()
                }
            }
        };
        if let Some((i, b)) = betas32.iter().enumerate().find(|(_, b)| !(**b > 0.0 && **b < 1.0)) {
            return Err(Error::Config(format!("beta[{i}] = {b} is outside (0, 1)")));
        }
        // torch.cumprod on the CPU accumulates f32 in f64 and rounds each output to f32.
        let mut acp = Vec::with_capacity(n);
        let mut prod = 1.0f64;
        for &b in &betas32 {
            prod *= (1.0f32 - b) as f64;
            acp.push(prod as f32 as f64);
        }
        Ok(Self { betas: betas32.iter().map(|&b| b as f64).collect(), alphas_cumprod: acp })
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// ᾱ at `t`; `t < 0` means "before the first step" (ᾱ = 1).
    pub fn alpha_cumprod(&self, t: i64) -> Result<f64> {
        if t < 0 {
            return Ok(1.0);
        }
        self.alphas_cumprod
            .get(t as usize)
            .copied()
            .ok_or_else(|| Error::Input(format!("timestep {t} is outside 0..{}", self.alphas_cumprod.len())))
    }

    /// Noises clean images: x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, t: usize) -> Result<Tensor> {
        let a = self.alpha_cumprod(t as i64)?;
        Ok(((x0 * a.sqrt())? + (noise * (1.0 - a).sqrt())?)?)
    }

    /// The model's estimate of the clean image from x_t and its noise prediction:
    /// x̂₀ = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t.
    pub fn predict_x0(&self, x_t: &Tensor, eps: &Tensor, t: i64) -> Result<Tensor> {
        let a = self.alpha_cumprod(t)?;
        Ok(((x_t - (eps * (1.0 - a).sqrt())?)? * (1.0 / a.sqrt()))?)
    }

    /// The deterministic DDIM move from `t_from` to `t_to` with the noise prediction `eps` made at
    /// `t_from`, unclipped: x₀ = (x − √(1−ᾱ) ε)/√ᾱ, x′ = √ᾱ′ x₀ + √(1−ᾱ′) ε. Downwards it is a
    /// DDIM sampling step (η = 0); upwards it is one DDIM inversion step (SecMI). Negative
    /// timesteps mean ᾱ = 1. The coefficients are folded in f64 so that the f32 tensors see one
    /// multiply-add: x′ = (√ᾱ′/√ᾱ) x + (√(1−ᾱ′) − √ᾱ′ √(1−ᾱ)/√ᾱ) ε.
    pub fn ddim_move(&self, x: &Tensor, eps: &Tensor, t_from: i64, t_to: i64) -> Result<Tensor> {
        let (a0, a1) = (self.alpha_cumprod(t_from)?, self.alpha_cumprod(t_to)?);
        let cx = (a1 / a0).sqrt();
        let ce = (1.0 - a1).sqrt() - a1.sqrt() * (1.0 - a0).sqrt() / a0.sqrt();
        Ok(((x * cx)? + (eps * ce)?)?)
    }

    /// Inference timesteps, descending, as diffusers' `set_timesteps(n)` makes them.
    pub fn inference_timesteps(&self, config: &SchedulerConfig, n: usize) -> Result<Vec<i64>> {
        let total = self.num_train_timesteps();
        if n == 0 || n > total {
            return Err(Error::Input(format!("{n} inference steps (need 1..={total})")));
        }
        let offset = config.steps_offset as i64;
        let ts: Vec<i64> = match config.timestep_spacing.as_str() {
            "leading" => {
                let ratio = (total / n) as i64;
                (0..n as i64).rev().map(|i| i * ratio + offset).collect()
            }
            "trailing" => {
                let ratio = total as f64 / n as f64;
                (0..n).map(|i| (total as f64 - i as f64 * ratio).round() as i64 - 1).collect()
            }
            _ => {
                let last = (total - 1) as f64;
                (0..n)
                    .rev()
                    .map(|i| if n == 1 { 0 } else { (i as f64 * last / (n - 1) as f64).round() as i64 })
                    .collect()
            }
        };
        Ok(ts)
    }
}

/// What one scheduler step returns.
pub struct StepOutput {
    /// x at the previous (less noisy) timestep.
    pub prev_sample: Tensor,
    /// The model's estimate of the clean image (clipped when the config asks for it).
    pub pred_original_sample: Tensor,
}

/// diffusers `DDPMScheduler` (ε-prediction, `fixed_small` / `fixed_large` variance).
#[derive(Debug, Clone)]
pub struct DdpmScheduler {
    pub config: SchedulerConfig,
    pub schedule: NoiseSchedule,
    timesteps: Vec<i64>,
    num_inference_steps: Option<usize>,
}

impl DdpmScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        if !matches!(config.variance_type.as_str(), "fixed_small" | "fixed_large") {
            return Err(Error::Unsupported(format!("DDPM variance_type '{}'", config.variance_type)));
        }
        let schedule = NoiseSchedule::new(&config)?;
        let timesteps = (0..schedule.num_train_timesteps() as i64).rev().collect();
        Ok(Self { config, schedule, timesteps, num_inference_steps: None })
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        Self::new(SchedulerConfig::from_file(path)?)
    }

    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.timesteps = self.schedule.inference_timesteps(&self.config, n)?;
        self.num_inference_steps = Some(n);
        Ok(())
    }

    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// The timestep a step from `t` lands on: the next entry of the timestep list after
    /// `set_timesteps`, else t − 1 (−1 after the last).
    pub fn previous_timestep(&self, t: i64) -> i64 {
        if self.num_inference_steps.is_some() {
            match self.timesteps.iter().position(|&s| s == t) {
                Some(i) if i + 1 < self.timesteps.len() => self.timesteps[i + 1],
                _ => -1,
            }
        } else {
            t - 1
        }
    }

    /// Posterior variance of the step from `t` (`fixed_small` is clamped at 1e-20 as diffusers).
    pub fn variance(&self, t: i64) -> Result<f64> {
        let prev = self.previous_timestep(t);
        let a = self.schedule.alpha_cumprod(t)?;
        let a_prev = self.schedule.alpha_cumprod(prev)?;
        let beta_t = 1.0 - a / a_prev;
        Ok(match self.config.variance_type.as_str() {
            "fixed_large" => beta_t,
            _ => ((1.0 - a_prev) / (1.0 - a) * beta_t).max(1e-20),
        })
    }

    /// One reverse step from `t`. `noise` (standard normal, shape of x) is added with the step's
    /// variance when given and t > 0; `None` returns the posterior mean.
    pub fn step(&self, eps: &Tensor, t: i64, x_t: &Tensor, noise: Option<&Tensor>) -> Result<StepOutput> {
        let prev = self.previous_timestep(t);
        let a = self.schedule.alpha_cumprod(t)?;
        let a_prev = self.schedule.alpha_cumprod(prev)?;
        let (beta_prod, beta_prod_prev) = (1.0 - a, 1.0 - a_prev);
        let alpha_t = a / a_prev;
        let beta_t = 1.0 - alpha_t;
        let mut x0 = self.schedule.predict_x0(x_t, eps, t)?;
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0 = x0.clamp(-r, r)?;
        }
        let c_x0 = a_prev.sqrt() * beta_t / beta_prod;
        let c_xt = alpha_t.sqrt() * beta_prod_prev / beta_prod;
        let mut prev_sample = ((&x0 * c_x0)? + (x_t * c_xt)?)?;
        if let (Some(z), true) = (noise, t > 0) {
            prev_sample = (prev_sample + (z * self.variance(t)?.sqrt())?)?;
        }
        Ok(StepOutput { prev_sample, pred_original_sample: x0 })
    }
}

/// diffusers `DDIMScheduler` with η = 0 (deterministic), ε-prediction.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    pub config: SchedulerConfig,
    pub schedule: NoiseSchedule,
    final_alpha_cumprod: f64,
    timesteps: Vec<i64>,
    num_inference_steps: usize,
}

impl DdimScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(&config)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { schedule.alphas_cumprod[0] };
        let n = schedule.num_train_timesteps();
        let timesteps = (0..n as i64).rev().collect();
        Ok(Self { config, schedule, final_alpha_cumprod, timesteps, num_inference_steps: n })
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        Self::new(SchedulerConfig::from_file(path)?)
    }

    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.timesteps = self.schedule.inference_timesteps(&self.config, n)?;
        self.num_inference_steps = n;
        Ok(())
    }

    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// One deterministic step from `t` to `t − T/n` (below 0: the final ᾱ).
    pub fn step(&self, eps: &Tensor, t: i64, x_t: &Tensor) -> Result<StepOutput> {
        let prev = t - (self.schedule.num_train_timesteps() / self.num_inference_steps) as i64;
        let a_prev = if prev >= 0 { self.schedule.alpha_cumprod(prev)? } else { self.final_alpha_cumprod };
        let mut x0 = self.schedule.predict_x0(x_t, eps, t)?;
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0 = x0.clamp(-r, r)?;
        }
        let prev_sample = ((&x0 * a_prev.sqrt())? + (eps * (1.0 - a_prev).sqrt())?)?;
        Ok(StepOutput { prev_sample, pred_original_sample: x0 })
    }
}
