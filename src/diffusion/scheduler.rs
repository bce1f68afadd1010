//! diffusers schedulers read from `scheduler_config.json`: DDPM, DDIM (and its inverse), PNDM
//! and Euler discrete. All four give the noise schedule (linear, scaled-linear and
//! squaredcos_cap_v2 betas, or `trained_betas`) and their inference timestep list, and step for
//! ε-, v- and (except PNDM) x₀-prediction models; the deterministic DDIM move the attacks use
//! runs in both directions. Not ported: PNDM's Runge–Kutta warm-up (`skip_prk_steps` false; SD
//! ships `true`), Euler's churn and its Karras / exponential / beta sigmas.
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

/// Upper bound on a scheduler's training timesteps (diffusers models use 1000–4000).
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;

/// The scheduler classes whose `scheduler_config.json` is read. All four share the noise
/// schedule (betas → ᾱ) and the timestep spacing: [`DdpmScheduler`], [`DdimScheduler`],
/// [`PndmScheduler`], [`EulerDiscreteScheduler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddpm,
    Ddim,
    Pndm,
    EulerDiscrete,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 4] =
        [SchedulerKind::Ddpm, SchedulerKind::Ddim, SchedulerKind::Pndm, SchedulerKind::EulerDiscrete];

    /// The diffusers class name (`_class_name`) of a supported scheduler.
    pub fn from_class_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.class_name() == name)
    }

    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddpm => "DDPMScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Pndm => "PNDMScheduler",
            SchedulerKind::EulerDiscrete => "EulerDiscreteScheduler",
        }
    }

    /// diffusers' default `timestep_spacing` for the class (Euler's differs).
    fn default_timestep_spacing(self) -> &'static str {
        match self {
            SchedulerKind::EulerDiscrete => "linspace",
            _ => "leading",
        }
    }
}

/// What the denoiser predicts (`prediction_type`): the noise ε, the velocity
/// v = √ᾱ ε − √(1−ᾱ) x₀ (Stable Diffusion 2.x at 768 px), or the clean sample x₀.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

impl PredictionType {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "epsilon" => Ok(Self::Epsilon),
            "v_prediction" => Ok(Self::VPrediction),
            "sample" => Ok(Self::Sample),
            other => {
                Err(Error::Unsupported(format!("prediction_type '{other}' (known: epsilon, v_prediction, sample)")))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::VPrediction => "v_prediction",
            Self::Sample => "sample",
        }
    }
}

/// `scheduler_config.json` of a DDPM, DDIM, PNDM or Euler discrete scheduler (the keys of all;
/// each reads the ones it has). Absent keys take the default of the class named in
/// `_class_name`, as diffusers does (PNDM: `set_alpha_to_one` false; Euler: `linspace`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "RawSchedulerConfig")]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: String,
    pub variance_type: String,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    pub set_alpha_to_one: bool,
    pub steps_offset: usize,
    pub timestep_spacing: String,
    pub thresholding: bool,
    pub rescale_betas_zero_snr: bool,
    /// PNDM: PLMS steps only (Stable Diffusion 1.x ships `true`).
    pub skip_prk_steps: bool,
    /// Euler: options that replace the spaced timesteps with other noise levels (refused).
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub interpolation_type: String,
    pub timestep_type: String,
    pub final_sigmas_type: String,
    /// Everything else (`_diffusers_version`, `dynamic_thresholding_ratio`, …): read, unused.
    #[serde(flatten, skip_serializing)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// The file as written: absent keys stay `None` until the class's defaults fill them in.
#[derive(Deserialize)]
struct RawSchedulerConfig {
    #[serde(rename = "_class_name", default)]
    class_name: Option<String>,
    num_train_timesteps: Option<usize>,
    beta_start: Option<f64>,
    beta_end: Option<f64>,
    beta_schedule: Option<String>,
    trained_betas: Option<Vec<f64>>,
    prediction_type: Option<String>,
    variance_type: Option<String>,
    clip_sample: Option<bool>,
    clip_sample_range: Option<f64>,
    set_alpha_to_one: Option<bool>,
    steps_offset: Option<usize>,
    timestep_spacing: Option<String>,
    thresholding: Option<bool>,
    rescale_betas_zero_snr: Option<bool>,
    skip_prk_steps: Option<bool>,
    use_karras_sigmas: Option<bool>,
    use_exponential_sigmas: Option<bool>,
    use_beta_sigmas: Option<bool>,
    interpolation_type: Option<String>,
    timestep_type: Option<String>,
    final_sigmas_type: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

impl From<RawSchedulerConfig> for SchedulerConfig {
    fn from(r: RawSchedulerConfig) -> Self {
        let kind = r.class_name.as_deref().and_then(SchedulerKind::from_class_name);
        let pndm = kind == Some(SchedulerKind::Pndm);
        Self {
            num_train_timesteps: r.num_train_timesteps.unwrap_or(1000),
            beta_start: r.beta_start.unwrap_or(0.0001),
            beta_end: r.beta_end.unwrap_or(0.02),
            beta_schedule: r.beta_schedule.unwrap_or_else(|| "linear".into()),
            trained_betas: r.trained_betas,
            prediction_type: r.prediction_type.unwrap_or_else(|| "epsilon".into()),
            variance_type: r.variance_type.unwrap_or_else(|| "fixed_small".into()),
            // PNDM and Euler have no clipping; DDPM and DDIM default to it.
            clip_sample: r
                .clip_sample
                .unwrap_or(!matches!(kind, Some(SchedulerKind::Pndm | SchedulerKind::EulerDiscrete))),
            clip_sample_range: r.clip_sample_range.unwrap_or(1.0),
            set_alpha_to_one: r.set_alpha_to_one.unwrap_or(!pndm),
            steps_offset: r.steps_offset.unwrap_or(0),
            timestep_spacing: r
                .timestep_spacing
                .unwrap_or_else(|| kind.map_or("leading", SchedulerKind::default_timestep_spacing).into()),
            thresholding: r.thresholding.unwrap_or(false),
            rescale_betas_zero_snr: r.rescale_betas_zero_snr.unwrap_or(false),
            skip_prk_steps: r.skip_prk_steps.unwrap_or(false),
            use_karras_sigmas: r.use_karras_sigmas.unwrap_or(false),
            use_exponential_sigmas: r.use_exponential_sigmas.unwrap_or(false),
            use_beta_sigmas: r.use_beta_sigmas.unwrap_or(false),
            interpolation_type: r.interpolation_type.unwrap_or_else(|| "linear".into()),
            timestep_type: r.timestep_type.unwrap_or_else(|| "discrete".into()),
            final_sigmas_type: r.final_sigmas_type.unwrap_or_else(|| "zero".into()),
            class_name: r.class_name,
            other: r.other,
        }
    }
}

impl SchedulerConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: SchedulerConfig = crate::diffusion::error::read_json_file(path, "scheduler config")?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the config of a scheduler whose class is known from elsewhere (a pipeline's
    /// `model_index.json`): a file without `_class_name` takes that class's defaults.
    pub fn from_file_as(path: &Path, kind: SchedulerKind) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |reason: String| Error::Json { path: path.to_path_buf(), what: "scheduler config", reason };
        let mut value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if let Some(map) = value.as_object_mut() {
            map.entry("_class_name").or_insert_with(|| kind.class_name().into());
        }
        let config: SchedulerConfig = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The scheduler class named in `_class_name`, if it is one of the supported four.
    pub fn kind(&self) -> Option<SchedulerKind> {
        self.class_name.as_deref().and_then(SchedulerKind::from_class_name)
    }

    pub fn prediction(&self) -> Result<PredictionType> {
        PredictionType::parse(&self.prediction_type)
    }

    pub fn validate(&self) -> Result<()> {
        self.prediction()?;
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
        if self.kind() == Some(SchedulerKind::EulerDiscrete) {
            // Each of these replaces the spaced timesteps by other noise levels.
            for (on, what) in [
                (self.use_karras_sigmas, "use_karras_sigmas"),
                (self.use_exponential_sigmas, "use_exponential_sigmas"),
                (self.use_beta_sigmas, "use_beta_sigmas"),
            ] {
                if on {
                    return Err(Error::Unsupported(format!("EulerDiscreteScheduler {what}")));
                }
            }
            for (value, key, default) in [
                (&self.interpolation_type, "interpolation_type", "linear"),
                (&self.timestep_type, "timestep_type", "discrete"),
                (&self.final_sigmas_type, "final_sigmas_type", "zero"),
            ] {
                if value != default {
                    return Err(Error::Unsupported(format!(
                        "EulerDiscreteScheduler {key} '{value}' (only '{default}')"
                    )));
                }
            }
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
                // beta_start**0.5 is taken in Python floats, then torch.linspace runs in f32.
                "scaled_linear" => linspace_f32(config.beta_start.sqrt() as f32, config.beta_end.sqrt() as f32, n)
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

    /// Inference timesteps, descending, as diffusers' DDPM / DDIM `set_timesteps(n)` makes
    /// them (numpy's round-half-to-even included). PNDM and Euler build their own lists on the
    /// same spacing: [`NoiseSchedule::scheduler_timesteps`].
    pub fn inference_timesteps(&self, config: &SchedulerConfig, n: usize) -> Result<Vec<i64>> {
        Ok(self.spaced_timesteps(config, n)?.into_iter().map(|t| t as i64).collect())
    }

    /// The spaced timesteps before any class-specific change, descending, as f64 (Euler keeps
    /// `linspace` fractions; the other spacings are whole numbers).
    fn spaced_timesteps(&self, config: &SchedulerConfig, n: usize) -> Result<Vec<f64>> {
        let total = self.num_train_timesteps();
        if n == 0 || n > total {
            return Err(Error::Input(format!("{n} inference steps (need 1..={total})")));
        }
        let offset = config.steps_offset as f64;
        let ts: Vec<f64> = match config.timestep_spacing.as_str() {
            "leading" => {
                let ratio = (total / n) as f64;
                (0..n).rev().map(|i| i as f64 * ratio + offset).collect()
            }
            "trailing" => {
                // np.round(np.arange(T, 0, -T/n)) - 1
                let ratio = total as f64 / n as f64;
                (0..n).map(|i| (total as f64 - i as f64 * ratio).round_ties_even() - 1.0).collect()
            }
            _ => {
                // np.linspace(0, T-1, n): i·step, the last value exactly T−1.
                let last = (total - 1) as f64;
                let step = if n > 1 { last / (n - 1) as f64 } else { 0.0 };
                let raw = |i: usize| if i + 1 == n && n > 1 { last } else { i as f64 * step };
                match config.kind() {
                    // Euler keeps the fractions (in f32, as diffusers passes them to the UNet).
                    Some(SchedulerKind::EulerDiscrete) => (0..n).rev().map(|i| raw(i) as f32 as f64).collect(),
                    _ => (0..n).rev().map(|i| raw(i).round_ties_even()).collect(),
                }
            }
        };
        Ok(ts)
    }

    /// The timesteps diffusers' `scheduler.timesteps` holds after `set_timesteps(n)` for the
    /// config's class: DDPM / DDIM the spaced list; PNDM its PRK + PLMS list (with
    /// `skip_prk_steps`, n + 1 entries: the second-to-last spaced step repeated); Euler the
    /// spaced values as f32 (fractions under `linspace`). A config without a known class is
    /// treated as DDPM / DDIM.
    pub fn scheduler_timesteps(&self, config: &SchedulerConfig, n: usize) -> Result<Vec<f64>> {
        let spaced = self.spaced_timesteps(config, n)?;
        if config.kind() != Some(SchedulerKind::Pndm) {
            return Ok(spaced);
        }
        // PNDM works on the ascending list.
        let asc: Vec<f64> = spaced.iter().rev().copied().collect();
        if config.skip_prk_steps {
            let mut plms: Vec<f64> = asc[..asc.len() - 1].to_vec();
            if asc.len() >= 2 {
                plms.push(asc[asc.len() - 2]);
            }
            plms.push(asc[asc.len() - 1]);
            plms.reverse();
            return Ok(plms);
        }
        // pndm_order = 4 Runge–Kutta warm-up steps on the last four spaced steps, each with a
        // half step between (diffusers: prk_timesteps[:-1].repeat(2)[1:-1][::-1]).
        if asc.len() < 4 {
            return Err(Error::Input(format!(
                "PNDM without skip_prk_steps needs at least 4 inference steps ({n} asked)"
            )));
        }
        let half = (self.num_train_timesteps() / n / 2) as f64;
        let mut prk = Vec::with_capacity(8);
        for &t in &asc[asc.len() - 4..] {
            prk.extend([t, t + half]);
        }
        prk.pop();
        let mut doubled: Vec<f64> = prk.iter().flat_map(|&t| [t, t]).collect();
        doubled.remove(0);
        doubled.pop();
        doubled.reverse();
        let plms = asc[..asc.len() - 3].iter().rev().copied();
        Ok(doubled.into_iter().chain(plms).collect())
    }

    /// Euler's noise levels σ = √((1−ᾱ)/ᾱ) at its timesteps (linear interpolation between
    /// training steps, as `np.interp`), then the final 0, all rounded to f32 as diffusers keeps
    /// them: n + 1 values, descending.
    pub fn euler_sigmas(&self, config: &SchedulerConfig, n: usize) -> Result<Vec<f64>> {
        let full: Vec<f32> = self
            .alphas_cumprod
            .iter()
            .map(|&a| {
                let a = a as f32;
                ((1.0f32 - a) / a).sqrt()
            })
            .collect();
        let mut out = Vec::with_capacity(n + 1);
        for t in self.spaced_timesteps(config, n)? {
            let last = (full.len() - 1) as f64;
            let t = t.clamp(0.0, last);
            let j = (t.floor() as usize).min(full.len() - 1);
            let sigma = if t == j as f64 {
                full[j] as f64
            } else {
                let (f0, f1) = (full[j] as f64, full[j + 1] as f64);
                (f1 - f0) * (t - j as f64) + f0
            };
            out.push(sigma as f32 as f64);
        }
        out.push(0.0);
        Ok(out)
    }

    /// The model output read as (x̂₀, ε̂) at timestep `t`, as every diffusers scheduler does:
    /// ε: x₀ = (x − √(1−ᾱ) ε)/√ᾱ; v: x₀ = √ᾱ x − √(1−ᾱ) v, ε = √ᾱ v + √(1−ᾱ) x;
    /// sample: ε = (x − √ᾱ x₀)/√(1−ᾱ).
    pub fn split_prediction(
        &self,
        prediction: PredictionType,
        x_t: &Tensor,
        output: &Tensor,
        t: i64,
    ) -> Result<(Tensor, Tensor)> {
        self.split_at(prediction, x_t, output, self.alpha_cumprod(t)?)
    }

    fn split_at(&self, prediction: PredictionType, x_t: &Tensor, output: &Tensor, a: f64) -> Result<(Tensor, Tensor)> {
        let (sa, sb) = (a.sqrt(), (1.0 - a).sqrt());
        Ok(match prediction {
            PredictionType::Epsilon => (((x_t - (output * sb)?)? * (1.0 / sa))?, output.clone()),
            PredictionType::VPrediction => (((x_t * sa)? - (output * sb)?)?, ((output * sa)? + (x_t * sb)?)?),
            PredictionType::Sample => (output.clone(), ((x_t - (output * sa)?)? * (1.0 / sb))?),
        })
    }

    /// The training target of `prediction` for x₀ noised with `noise` at `t` (what the model
    /// output is compared with in the loss attack): ε, v = √ᾱ ε − √(1−ᾱ) x₀, or x₀.
    pub fn target(&self, prediction: PredictionType, x0: &Tensor, noise: &Tensor, t: usize) -> Result<Tensor> {
        let a = self.alpha_cumprod(t as i64)?;
        Ok(match prediction {
            PredictionType::Epsilon => noise.clone(),
            PredictionType::VPrediction => ((noise * a.sqrt())? - (x0 * (1.0 - a).sqrt())?)?,
            PredictionType::Sample => x0.clone(),
        })
    }

    /// [`NoiseSchedule::ddim_move`] for any prediction type: the output made at `t_from` is
    /// read as (x̂₀, ε̂) there, then x′ = √ᾱ′ x̂₀ + √(1−ᾱ′) ε̂. Downwards a DDIM step (η = 0),
    /// upwards a DDIM inversion step.
    pub fn ddim_move_prediction(
        &self,
        prediction: PredictionType,
        x: &Tensor,
        output: &Tensor,
        t_from: i64,
        t_to: i64,
    ) -> Result<Tensor> {
        if prediction == PredictionType::Epsilon {
            return self.ddim_move(x, output, t_from, t_to);
        }
        let (x0, eps) = self.split_prediction(prediction, x, output, t_from)?;
        let a1 = self.alpha_cumprod(t_to)?;
        Ok(((x0 * a1.sqrt())? + (eps * (1.0 - a1).sqrt())?)?)
    }
}

/// What one scheduler step returns.
pub struct StepOutput {
    /// x at the previous (less noisy) timestep.
    pub prev_sample: Tensor,
    /// The model's estimate of the clean image (clipped when the config asks for it).
    pub pred_original_sample: Tensor,
}

/// diffusers `DDPMScheduler` (`fixed_small` / `fixed_large` variance). `step` takes the model
/// output of the config's `prediction_type` (named `eps` for the ε case).
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
        let (mut x0, _) = self.schedule.split_prediction(self.config.prediction()?, x_t, eps, t)?;
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

/// diffusers `DDIMScheduler` with η = 0 (deterministic), any prediction type, and its
/// inverse (`DDIMInverseScheduler`, same config).
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

    /// ᾱ for a DDIM step's far end: below 0 the final ᾱ (1 with `set_alpha_to_one`, else ᾱ₀).
    fn alpha_or_final(&self, t: i64) -> Result<f64> {
        if t >= 0 {
            self.schedule.alpha_cumprod(t)
        } else {
            Ok(self.final_alpha_cumprod)
        }
    }

    fn step_ratio(&self) -> i64 {
        (self.schedule.num_train_timesteps() / self.num_inference_steps) as i64
    }

    /// One deterministic step from `t` to `t − T/n` (below 0: the final ᾱ), as
    /// `DDIMScheduler.step(eta=0)`: `output` is the model output of the config's
    /// `prediction_type` (ε, v or x₀), read as (x̂₀, ε̂) at `t`; x̂₀ is clipped when the config
    /// says so, ε̂ is not (`use_clipped_model_output` false).
    pub fn step(&self, output: &Tensor, t: i64, x_t: &Tensor) -> Result<StepOutput> {
        let a_prev = self.alpha_or_final(t - self.step_ratio())?;
        let (x0, eps) = self.schedule.split_prediction(self.config.prediction()?, x_t, output, t)?;
        self.finish(x0, &eps, a_prev)
    }

    /// One DDIM inversion step, as `DDIMInverseScheduler.step`: `x` is at `t − T/n` (capped at
    /// T − 1; below 0 it is the clean end with the final ᾱ), `output` the model output made
    /// for it, and the result is at `t`.
    pub fn inverse_step(&self, output: &Tensor, t: i64, x: &Tensor) -> Result<StepOutput> {
        let last = self.schedule.num_train_timesteps() as i64 - 1;
        let from = (t - self.step_ratio()).min(last);
        let a_from = self.alpha_or_final(from)?;
        let a_to = self.schedule.alpha_cumprod(t)?;
        let (x0, eps) = self.schedule.split_at(self.config.prediction()?, x, output, a_from)?;
        self.finish(x0, &eps, a_to)
    }

    fn finish(&self, mut x0: Tensor, eps: &Tensor, a_to: f64) -> Result<StepOutput> {
        if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0 = x0.clamp(-r, r)?;
        }
        let prev_sample = ((&x0 * a_to.sqrt())? + (eps * (1.0 - a_to).sqrt())?)?;
        Ok(StepOutput { prev_sample, pred_original_sample: x0 })
    }
}

/// diffusers `PNDMScheduler` stepping with `skip_prk_steps` (the pseudo linear multistep
/// sampler Stable Diffusion 1.x ships with): each step combines the last model outputs
/// (Adams–Bashforth weights) and moves with the PNDM transfer. Stateful like diffusers':
/// call [`PndmScheduler::set_timesteps`], then [`PndmScheduler::step`] once per entry of
/// [`PndmScheduler::timesteps`], in order. The Runge–Kutta warm-up (`skip_prk_steps` false)
/// is not ported: such configs give their timestep list but refuse to step.
#[derive(Debug, Clone)]
pub struct PndmScheduler {
    pub config: SchedulerConfig,
    pub schedule: NoiseSchedule,
    final_alpha_cumprod: f64,
    timesteps: Vec<i64>,
    num_inference_steps: usize,
    ets: Vec<Tensor>,
    counter: usize,
    cur_sample: Option<Tensor>,
}

impl PndmScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(&config)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { schedule.alphas_cumprod[0] };
        Ok(Self {
            config,
            schedule,
            final_alpha_cumprod,
            timesteps: Vec::new(),
            num_inference_steps: 0,
            ets: Vec::new(),
            counter: 0,
            cur_sample: None,
        })
    }

    /// Sets the timestep list for `n` steps and forgets the previous run's history.
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let ts = self.schedule.scheduler_timesteps(&self.config, n)?;
        self.timesteps = ts.into_iter().map(|t| t as i64).collect();
        self.num_inference_steps = n;
        self.ets.clear();
        self.counter = 0;
        self.cur_sample = None;
        Ok(())
    }

    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// One PLMS step from `t` (the next entry of the timestep list) with the model output
    /// made for `sample` at `t`.
    pub fn step(&mut self, output: &Tensor, t: i64, sample: &Tensor) -> Result<Tensor> {
        if self.num_inference_steps == 0 {
            return Err(Error::Input("PNDM step before set_timesteps".into()));
        }
        if !self.config.skip_prk_steps {
            return Err(Error::Unsupported("PNDM Runge–Kutta warm-up steps (skip_prk_steps false)".into()));
        }
        let prediction = self.config.prediction()?;
        if prediction == PredictionType::Sample {
            return Err(Error::Unsupported("PNDM with prediction_type 'sample'".into()));
        }
        let ratio = (self.schedule.num_train_timesteps() / self.num_inference_steps) as i64;
        let (mut t_from, mut t_to) = (t, t - ratio);
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(output.clone());
        } else {
            // The second call repeats the first timestep: redo the first move with the mean of
            // both outputs (a Heun step), from the first call's sample.
            t_to = t;
            t_from = t + ratio;
        }
        let e = &self.ets;
        let mut sample = sample.clone();
        let combined = match (e.as_slice(), self.counter) {
            ([_], 0) => {
                self.cur_sample = Some(sample.clone());
                output.clone()
            }
            ([e0], 1) => {
                sample = self.cur_sample.take().ok_or_else(|| Error::Input("PNDM step out of order".into()))?;
                ((output + e0)? / 2.0)?
            }
            ([e0, e1], _) => (((e1 * 3.0)? - e0)? / 2.0)?,
            ([e0, e1, e2], _) => ((((e2 * 23.0)? - (e1 * 16.0)?)? + (e0 * 5.0)?)? / 12.0)?,
            ([e0, e1, e2, e3], _) => {
                (((((e3 * 55.0)? - (e2 * 59.0)?)? + (e1 * 37.0)?)? - (e0 * 9.0)?)? * (1.0 / 24.0))?
            }
            _ => return Err(Error::Input("PNDM step out of order (call set_timesteps first)".into())),
        };
        let prev = self.transfer(&sample, t_from, t_to, &combined, prediction)?;
        self.counter += 1;
        Ok(prev)
    }

    /// PNDM's move from `t_from` to `t_to` (eq. 9 of Liu et al. 2022, as diffusers writes it).
    fn transfer(
        &self,
        x: &Tensor,
        t_from: i64,
        t_to: i64,
        output: &Tensor,
        prediction: PredictionType,
    ) -> Result<Tensor> {
        let a = self.schedule.alpha_cumprod(t_from)?;
        let a_prev = if t_to >= 0 { self.schedule.alpha_cumprod(t_to)? } else { self.final_alpha_cumprod };
        let (b, b_prev) = (1.0 - a, 1.0 - a_prev);
        let eps = match prediction {
            PredictionType::VPrediction => ((output * a.sqrt())? + (x * b.sqrt())?)?,
            _ => output.clone(),
        };
        let sample_coeff = (a_prev / a).sqrt();
        let denom = a * b_prev.sqrt() + (a * b * a_prev).sqrt();
        Ok(((x * sample_coeff)? - (eps * ((a_prev - a) / denom))?)?)
    }
}

/// diffusers `EulerDiscreteScheduler` stepping (no churn: `s_churn` 0, its pipeline default).
/// Steps are addressed by their index in [`EulerDiscreteScheduler::timesteps`]; the model
/// sees [`EulerDiscreteScheduler::scale_model_input`] of the sample and the (possibly
/// fractional) timestep.
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    pub config: SchedulerConfig,
    pub schedule: NoiseSchedule,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
}

impl EulerDiscreteScheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        let schedule = NoiseSchedule::new(&config)?;
        Ok(Self { config, schedule, timesteps: Vec::new(), sigmas: Vec::new() })
    }

    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.timesteps = self.schedule.scheduler_timesteps(&self.config, n)?;
        self.sigmas = self.schedule.euler_sigmas(&self.config, n)?;
        Ok(())
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// σ for each step and a final 0.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    fn sigma(&self, i: usize) -> Result<f64> {
        match (self.sigmas.get(i), i + 1 < self.sigmas.len()) {
            (Some(&s), true) => Ok(s),
            _ => Err(Error::Input(format!("Euler step {i} of {}", self.timesteps.len()))),
        }
    }

    /// The scale of the starting noise: σ_max (√(σ_max² + 1) under `leading` spacing).
    pub fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().copied().fold(0.0, f64::max);
        match self.config.timestep_spacing.as_str() {
            "linspace" | "trailing" => max,
            _ => (max * max + 1.0).sqrt(),
        }
    }

    /// The model input at step `i`: x / √(σ² + 1).
    pub fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        let s = self.sigma(i)?;
        Ok((sample * (1.0 / (s * s + 1.0).sqrt()))?)
    }

    /// Noises clean latents for a start at step `i` (img2img): x = x₀ + σᵢ ε.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, i: usize) -> Result<Tensor> {
        Ok((x0 + (noise * self.sigma(i)?)?)?)
    }

    /// One Euler step from step `i` to `i + 1`.
    pub fn step(&self, output: &Tensor, i: usize, sample: &Tensor) -> Result<StepOutput> {
        let sigma = self.sigma(i)?;
        let x0 = match self.config.prediction()? {
            PredictionType::Sample => output.clone(),
            PredictionType::Epsilon => (sample - (output * sigma)?)?,
            PredictionType::VPrediction => {
                let v = sigma * sigma + 1.0;
                ((output * (-sigma / v.sqrt()))? + (sample * (1.0 / v))?)?
            }
        };
        let derivative = ((sample - &x0)? * (1.0 / sigma))?;
        let dt = self.sigmas[i + 1] - sigma;
        let prev_sample = (sample + (derivative * dt)?)?;
        Ok(StepOutput { prev_sample, pred_original_sample: x0 })
    }
}
