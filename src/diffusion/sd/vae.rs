//! diffusers' `AutoencoderKL` (the Stable Diffusion 1.x / 2.x VAE) in candle, read from a
//! pipeline's `vae/` folder: `config.json` + `diffusion_pytorch_model.safetensors`.
//!
//! Encoder: `conv_in` → `DownEncoderBlock2D`s (ResNets without time embedding, then a stride-2
//! conv after right/bottom zero padding) → mid block (ResNet, single-head self-attention over
//! the pixels, ResNet) → GroupNorm + SiLU → `conv_out` (2 × latent channels) → `quant_conv`.
//! The posterior is the diagonal Gaussian of diffusers' `DiagonalGaussianDistribution`: mean and
//! log-variance split along the channels, the log-variance clamped to [-30, 20].
//! Decoder: `post_quant_conv` → `conv_in` → mid block → `UpDecoderBlock2D`s (ResNets, nearest
//! ×2 upsampling then a conv) → GroupNorm + SiLU → `conv_out`.
//!
//! Every norm of the VAE uses eps 1e-6 (diffusers hard-codes it in `Encoder` / `Decoder`).
//! Parity with diffusers: `tests/sd_vae.rs` on the fixtures in `tests/data/sd/vae_*`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::weights::{self, Variant, Weights, DIFFUSERS_WEIGHTS};
use crate::diffusion::conv::{Conv2d, GroupNorm};
use crate::diffusion::error::{Error, Result};
use crate::diffusion::unet::TrackedTensors;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// diffusers' `Encoder` / `Decoder` build every GroupNorm with this eps, whatever the config says.
const NORM_EPS: f64 = 1e-6;
/// diffusers' `DiagonalGaussianDistribution` clamps the log-variance to this range.
const LOGVAR_MIN: f64 = -30.0;
const LOGVAR_MAX: f64 = 20.0;
/// Largest mid-block attention score matrix (values per image) this port computes: 2^30 f32 is
/// 4 GiB, reached by a 1448 px image with the SD VAE's 8× downsampling.
const MAX_ATTENTION_SCORES: usize = 1 << 30;

fn default_three() -> usize {
    3
}
fn default_down_blocks() -> Vec<String> {
    vec!["DownEncoderBlock2D".into()]
}
fn default_up_blocks() -> Vec<String> {
    vec!["UpDecoderBlock2D".into()]
}
fn default_block_out_channels() -> Vec<usize> {
    vec![64]
}
fn default_one() -> usize {
    1
}
fn default_silu() -> String {
    "silu".into()
}
fn default_four() -> usize {
    4
}
fn default_groups() -> usize {
    32
}
fn default_sample_size() -> SampleSize {
    SampleSize::Square(32)
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn default_true() -> bool {
    true
}

/// `sample_size` is one number or `[height, width]` in diffusers configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    HeightWidth([usize; 2]),
}

impl SampleSize {
    /// (height, width) in pixels.
    pub fn height_width(self) -> (usize, usize) {
        match self {
            SampleSize::Square(s) => (s, s),
            SampleSize::HeightWidth([h, w]) => (h, w),
        }
    }
}

/// `vae/config.json` of a diffusers `AutoencoderKL`. Defaults are those of diffusers 0.42's
/// constructor for keys a file leaves out (older `save_pretrained` versions write fewer keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "default_three")]
    pub in_channels: usize,
    #[serde(default = "default_three")]
    pub out_channels: usize,
    #[serde(default = "default_down_blocks")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_up_blocks")]
    pub up_block_types: Vec<String>,
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_one")]
    pub layers_per_block: usize,
    #[serde(default = "default_silu")]
    pub act_fn: String,
    #[serde(default = "default_four")]
    pub latent_channels: usize,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// The resolution the VAE was trained at (diffusers uses it only for tiling).
    #[serde(default = "default_sample_size")]
    pub sample_size: SampleSize,
    /// UNet latents = posterior × scaling_factor; decoding divides by it first.
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    /// SD3 / Flux VAEs: `StableDiffusionPipeline` ignores it, so a non-null value means the VAE
    /// belongs to another pipeline and is refused.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent normalisation of other pipelines (refused when set, as shift_factor).
    #[serde(default)]
    pub latents_mean: Option<serde_json::Value>,
    #[serde(default)]
    pub latents_std: Option<serde_json::Value>,
    /// diffusers runs such a VAE in f32 even in an f16 pipeline; this port always computes in f32.
    #[serde(default = "default_true")]
    pub force_upcast: bool,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
    /// Keys this port does not know: `_class_name`, `_diffusers_version` and other `_` keys are
    /// bookkeeping; any other one is refused, since it could change the computation.
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

impl Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Config = crate::diffusion::error::read_json_file(path, "AutoencoderKL config")?;
        config.validate()?;
        Ok(config)
    }

    /// How many times smaller the latents are than the image (8 for the SD VAEs).
    pub fn downsample_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Refuses configs this port would compute wrongly: unsupported options and contradictions.
    pub fn validate(&self) -> Result<()> {
        let unsupported = |what: String| Err(Error::Unsupported(format!("AutoencoderKL {what}")));
        if let Some(class) = self.unknown.get("_class_name").and_then(|v| v.as_str()) {
            if class != "AutoencoderKL" {
                return unsupported(format!("config of class '{class}' (only AutoencoderKL)"));
            }
        }
        if let Some(key) = self.unknown.keys().find(|k| !k.starts_with('_')) {
            return unsupported(format!("config key '{key}' is not known to this port"));
        }
        if self.act_fn != "silu" {
            return unsupported(format!("act_fn '{}' (only 'silu')", self.act_fn));
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            return unsupported(format!("down block type '{t}' (only DownEncoderBlock2D)"));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return unsupported(format!("up block type '{t}' (only UpDecoderBlock2D)"));
        }
        if self.shift_factor.is_some() {
            return unsupported("shift_factor (an SD3 / Flux VAE; Stable Diffusion 1.x / 2.x VAEs have null)".into());
        }
        if self.latents_mean.as_ref().is_some_and(|v| !v.is_null())
            || self.latents_std.as_ref().is_some_and(|v| !v.is_null())
        {
            return unsupported("latents_mean / latents_std (not used by Stable Diffusion 1.x / 2.x)".into());
        }
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(Error::Config("AutoencoderKL block_out_channels is empty".into()));
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(Error::Config(format!(
                "AutoencoderKL has {} down blocks and {} up blocks for {n} block_out_channels (must be equal)",
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 || self.layers_per_block == 0 {
            return Err(Error::Config(
                "AutoencoderKL in_channels, out_channels, latent_channels and layers_per_block must be positive".into(),
            ));
        }
        for &c in &self.block_out_channels {
            if self.norm_num_groups == 0 || c == 0 || c % self.norm_num_groups != 0 {
                return Err(Error::Config(format!(
                    "AutoencoderKL norm_num_groups {} does not divide block channels {c}",
                    self.norm_num_groups
                )));
            }
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(Error::Config(format!(
                "AutoencoderKL scaling_factor {} must be a positive number",
                self.scaling_factor
            )));
        }
        let (h, w) = self.sample_size.height_width();
        if h == 0 || w == 0 {
            return Err(Error::Config("AutoencoderKL sample_size must be positive".into()));
        }
        Ok(())
    }
}

/// diffusers' `ResnetBlock2D` without time embedding (`temb_channels=None`), default norm:
/// GroupNorm → SiLU → conv → GroupNorm → SiLU → conv, plus the input (through a 1×1 conv when
/// the channel count changes). Dropout is inactive at inference.
/// Patch-matrix values per band of [`conv3x3_in_bands`]: 16 MB of f32, the chunk size
/// `diffusion::conv` aims for.
const BAND_COLS: usize = 4 << 20;

/// A 3×3, stride-1, padding-1 convolution computed over horizontal bands of at most `budget`
/// patch-matrix values each (every band with one halo row above and below, whose output rows
/// are dropped). Same values as `conv.forward(x)`: each output is the same dot product. Why:
/// at the VAE's 512 × 512 and 256 × 256 levels one image's patch matrix is 0.3–1.2 GB, which
/// `Conv2d` allocates (page faults), fills and streams through the gemm from memory; bands
/// keep it near the cache and the allocator reuses the same block.
fn conv3x3_in_bands(conv: &Conv2d, x: &Tensor, budget: usize) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let rows = (budget / (b * c * 9 * w).max(1)).max(1);
    if rows + 2 >= h {
        return conv.forward(x);
    }
    let mut bands = Vec::with_capacity(h.div_ceil(rows));
    let mut r0 = 0;
    while r0 < h {
        let r1 = (r0 + rows).min(h);
        let lo = r0.saturating_sub(1);
        let hi = (r1 + 1).min(h);
        let out = conv.forward(&x.narrow(2, lo, hi - lo)?)?;
        bands.push(out.narrow(2, r0 - lo, r1 - r0)?);
        r0 = r1;
    }
    Tensor::cat(&bands, 2)
}

struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(cin: usize, cout: usize, groups: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let conv_shortcut =
            if cin != cout { Some(Conv2d::load(cin, cout, 1, 1, 0, vb.pp("conv_shortcut"))?) } else { None };
        Ok(Self {
            norm1: GroupNorm::load(groups, cin, NORM_EPS, vb.pp("norm1"))?,
            conv1: Conv2d::load(cin, cout, 3, 1, 1, vb.pp("conv1"))?,
            norm2: GroupNorm::load(groups, cout, NORM_EPS, vb.pp("norm2"))?,
            conv2: Conv2d::load(cout, cout, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = conv3x3_in_bands(&self.conv1, &self.norm1.forward(x, true)?, BAND_COLS)?;
        let h = conv3x3_in_bands(&self.conv2, &self.norm2.forward(&h, true)?, BAND_COLS)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        shortcut + h
    }
}

/// The mid block's attention: diffusers' `Attention` with one head of all C channels,
/// GroupNorm before the projections, the residual added after `to_out`
/// (`residual_connection=True`, `rescale_output_factor=1`).
struct Attention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl Attention {
    fn new(channels: usize, groups: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::load(groups, channels, NORM_EPS, vb.pp("group_norm"))?,
            to_q: candle_nn::linear(channels, channels, vb.pp("to_q"))?,
            to_k: candle_nn::linear(channels, channels, vb.pp("to_k"))?,
            to_v: candle_nn::linear(channels, channels, vb.pp("to_v"))?,
            to_out: candle_nn::linear(channels, channels, vb.pp("to_out").pp("0"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = self.group_norm.forward(x, false)?;
        let scale = 1.0 / (c as f64).sqrt();
        // One image at a time: the score matrix is (H·W)² per image, the memory peak of the VAE.
        let mut outs = Vec::with_capacity(b);
        for i in 0..b {
            let seq = normed.narrow(0, i, 1)?.reshape((1, c, h * w))?.transpose(1, 2)?.contiguous()?; // [1, HW, C]
            let q = self.to_q.forward(&seq)?;
            let k = self.to_k.forward(&seq)?;
            let v = self.to_v.forward(&seq)?;
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
            let attn = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?; // [1, HW, C]
            outs.push(self.to_out.forward(&attn)?.transpose(1, 2)?.reshape((1, c, h, w))?);
        }
        Tensor::cat(&outs, 0)? + x
    }
}

struct MidBlock {
    resnet_a: ResnetBlock,
    attention: Option<Attention>,
    resnet_b: ResnetBlock,
}

impl MidBlock {
    fn new(channels: usize, cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let g = cfg.norm_num_groups;
        Ok(Self {
            resnet_a: ResnetBlock::new(channels, channels, g, vb.pp("resnets.0"))?,
            attention: if cfg.mid_block_add_attention {
                Some(Attention::new(channels, g, vb.pp("attentions.0"))?)
            } else {
                None
            },
            resnet_b: ResnetBlock::new(channels, channels, g, vb.pp("resnets.1"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.resnet_a.forward(x)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnet_b.forward(&h)
    }
}

struct DownBlock {
    resnets: Vec<ResnetBlock>,
    /// diffusers' `Downsample2D` with padding 0: zero-pad right and bottom by one, then a
    /// stride-2 3×3 conv without padding.
    downsample: Option<Conv2d>,
}

struct UpBlock {
    resnets: Vec<ResnetBlock>,
    /// Nearest-neighbour ×2, then this 3×3 conv.
    upsample: Option<Conv2d>,
}

struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let g = cfg.norm_num_groups;
        let conv_in = Conv2d::load(cfg.in_channels, boc[0], 3, 1, 1, vb.pp("conv_in"))?;
        let mut down = Vec::with_capacity(n);
        let mut out_ch = boc[0];
        for (i, &ch) in boc.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = ch;
            let vbb = vb.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    ResnetBlock::new(if j == 0 { in_ch } else { out_ch }, out_ch, g, vbb.pp(format!("resnets.{j}")))
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let downsample = if i + 1 < n {
                Some(Conv2d::load(out_ch, out_ch, 3, 2, 0, vbb.pp("downsamplers.0.conv"))?)
            } else {
                None
            };
            down.push(DownBlock { resnets, downsample });
        }
        let top = boc[n - 1];
        Ok(Self {
            conv_in,
            down,
            mid: MidBlock::new(top, cfg, vb.pp("mid_block"))?,
            conv_norm_out: GroupNorm::load(g, top, NORM_EPS, vb.pp("conv_norm_out"))?,
            conv_out: Conv2d::load(top, 2 * cfg.latent_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = conv3x3_in_bands(&self.conv_in, x, BAND_COLS)?;
        for block in &self.down {
            for r in &block.resnets {
                h = r.forward(&h)?;
            }
            if let Some(conv) = &block.downsample {
                h = conv.forward(&h.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)?;
            }
        }
        let h = self.mid.forward(&h)?;
        conv3x3_in_bands(&self.conv_out, &self.conv_norm_out.forward(&h, true)?, BAND_COLS)
    }
}

struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(cfg: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let boc = &cfg.block_out_channels;
        let n = boc.len();
        let g = cfg.norm_num_groups;
        let top = boc[n - 1];
        let conv_in = Conv2d::load(cfg.latent_channels, top, 3, 1, 1, vb.pp("conv_in"))?;
        let mid = MidBlock::new(top, cfg, vb.pp("mid_block"))?;
        let mut up = Vec::with_capacity(n);
        let mut out_ch = top;
        for i in 0..n {
            let prev_out = out_ch;
            out_ch = boc[n - 1 - i];
            let vbb = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| {
                    ResnetBlock::new(if j == 0 { prev_out } else { out_ch }, out_ch, g, vbb.pp(format!("resnets.{j}")))
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let upsample = if i + 1 < n {
                Some(Conv2d::load(out_ch, out_ch, 3, 1, 1, vbb.pp("upsamplers.0.conv"))?)
            } else {
                None
            };
            up.push(UpBlock { resnets, upsample });
        }
        Ok(Self {
            conv_in,
            mid,
            up,
            conv_norm_out: GroupNorm::load(g, boc[0], NORM_EPS, vb.pp("conv_norm_out"))?,
            conv_out: Conv2d::load(boc[0], cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.mid.forward(&conv3x3_in_bands(&self.conv_in, z, BAND_COLS)?)?;
        for block in &self.up {
            for r in &block.resnets {
                h = r.forward(&h)?;
            }
            if let Some(conv) = &block.upsample {
                let (_, _, hh, ww) = h.dims4()?;
                h = conv3x3_in_bands(conv, &h.upsample_nearest2d(hh * 2, ww * 2)?, BAND_COLS)?;
            }
        }
        conv3x3_in_bands(&self.conv_out, &self.conv_norm_out.forward(&h, true)?, BAND_COLS)
    }
}

/// The VAE's posterior q(z | x): a diagonal Gaussian per latent value, `[B, latent_channels,
/// H/f, W/f]` each (f = [`Config::downsample_factor`]). Latents here are unscaled: multiply by
/// `scaling_factor` (see [`AutoencoderKL::encode_latents`]) before they go to the UNet.
#[derive(Debug, Clone)]
pub struct Posterior {
    pub mean: Tensor,
    /// Log-variance, already clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor,
}

impl Posterior {
    /// Standard deviation exp(logvar / 2).
    pub fn std(&self) -> Result<Tensor> {
        Ok((&self.logvar * 0.5)?.exp()?)
    }

    /// A draw mean + std · noise for a given standard-normal `noise` of the posterior's shape
    /// (diffusers' `latent_dist.sample(generator)`, with the noise supplied by the caller).
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.dims() != self.mean.dims() {
            return Err(Error::Input(format!(
                "posterior noise has shape {:?}, the posterior {:?}",
                noise.dims(),
                self.mean.dims()
            )));
        }
        let noise = noise.to_dtype(DType::F32)?;
        Ok((&self.mean + self.std()?.mul(&noise)?)?)
    }

    /// The most likely latents (the mean; diffusers' `latent_dist.mode()`).
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }
}

/// diffusers' `AutoencoderKL`, inference only, f32 on the CPU.
pub struct AutoencoderKL {
    config: Config,
    encoder: Encoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    decoder: Decoder,
    device: Device,
    num_params: usize,
}

impl std::fmt::Debug for AutoencoderKL {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoencoderKL")
            .field("block_out_channels", &self.config.block_out_channels)
            .field("latent_channels", &self.config.latent_channels)
            .field("parameters", &self.num_params)
            .finish()
    }
}

impl AutoencoderKL {
    /// Loads a diffusers `vae/` folder: `config.json` and the weights of the variant
    /// [`weights::preferred_variant`] picks (`diffusion_pytorch_model.safetensors`, else a lone
    /// `.fp16` copy; either may be sharded with an index).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_variant(dir, weights::preferred_variant(dir, DIFFUSERS_WEIGHTS), device)
    }

    /// Loads the `vae/` folder's weights of `variant` (see [`Variant`]); f16 / bf16 are widened
    /// to f32 one tensor at a time, so loading peaks at the f32 model plus one tensor.
    pub fn load_variant(dir: &Path, variant: Variant, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Input(format!("{}: not a VAE folder", dir.display())));
        }
        let config = Config::from_file(&dir.join(CONFIG_FILE))?;
        let weights = Weights::load(dir, DIFFUSERS_WEIGHTS, variant)?;
        Self::from_weights(config, &weights, device)
    }

    /// Builds the VAE from opened weights (diffusers names), reading each tensor as the model
    /// asks for it. Tensors the config does not account for are refused.
    pub fn from_weights(config: Config, weights: &Weights, device: &Device) -> Result<Self> {
        config.validate()?;
        let model =
            Self::build(config, weights.var_builder(device), device, weights.num_params()).map_err(|e| match e {
                Error::Candle(inner) => Error::Weights {
                    context: weights.files().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                    reason: format!("weights do not fit config.json: {inner}"),
                },
                other => other,
            })?;
        weights.check_all_used("AutoencoderKL", |_| false)?;
        Ok(model)
    }

    /// Builds the VAE from named tensors (diffusers names, f32 or f16) and a config. Tensors the
    /// config does not account for are refused: they mean the config describes another model.
    pub fn from_tensors(config: Config, tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        config.validate()?;
        let num_params = tensors.values().map(|t| t.elem_count()).sum();
        let (vb, usage) = TrackedTensors::var_builder(tensors, device);
        let model = Self::build(config, vb, device, num_params)?;
        usage.refuse_unused("AutoencoderKL", |_| "")?;
        Ok(model)
    }

    fn build(config: Config, vb: VarBuilder, device: &Device, num_params: usize) -> Result<Self> {
        let lc = config.latent_channels;
        let encoder = Encoder::new(&config, vb.pp("encoder"))?;
        let decoder = Decoder::new(&config, vb.pp("decoder"))?;
        let quant_conv = if config.use_quant_conv {
            Some(Conv2d::load(2 * lc, 2 * lc, 1, 1, 0, vb.pp("quant_conv"))?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(Conv2d::load(lc, lc, 1, 1, 0, vb.pp("post_quant_conv"))?)
        } else {
            None
        };
        Ok(Self { config, encoder, quant_conv, post_quant_conv, decoder, device: device.clone(), num_params })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of parameters in the weights the VAE was built from (for reports).
    pub fn num_params(&self) -> usize {
        self.num_params
    }

    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// Checks a `[B, C, H, W]` batch with `channels` channels, and that the mid-block attention
    /// at `H/f × W/f` stays within [`MAX_ATTENTION_SCORES`].
    fn check_batch(&self, x: &Tensor, channels: usize, what: &str, f: usize) -> Result<(usize, usize)> {
        let dims = x.dims();
        if dims.len() != 4 {
            return Err(Error::Input(format!("VAE {what}: expected a batch [B, C, H, W], got shape {dims:?}")));
        }
        let (b, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
        if b == 0 || h == 0 || w == 0 {
            return Err(Error::Input(format!("VAE {what}: empty batch (shape {dims:?})")));
        }
        if c != channels {
            return Err(Error::Input(format!("VAE {what}: takes {channels} channel(s), the batch has {c}")));
        }
        let pixels = (h / f.max(1)).max(1) * (w / f.max(1)).max(1);
        if self.config.mid_block_add_attention && pixels.saturating_mul(pixels) > MAX_ATTENTION_SCORES {
            return Err(Error::Input(format!(
                "VAE {what}: {h}×{w} is too large (the mid-block attention over {pixels} positions would need {} GiB)",
                (pixels as u128 * pixels as u128 * 4) >> 30
            )));
        }
        Ok((h, w))
    }

    /// The posterior q(z | x) of images `x` `[B, in_channels, H, W]` in [-1, 1].
    /// Any H, W of at least 2 per halving works (diffusers pads right/bottom before each
    /// stride-2 conv); the pipeline uses multiples of [`Config::downsample_factor`].
    pub fn encode(&self, x: &Tensor) -> Result<Posterior> {
        let f = self.config.downsample_factor();
        let (mut h, mut w) = self.check_batch(x, self.config.in_channels, "encode", f)?;
        for _ in 1..self.config.block_out_channels.len() {
            if h < 2 || w < 2 {
                return Err(Error::Input(format!(
                    "VAE encode: image {}×{} is too small for {} halvings",
                    x.dims()[2],
                    x.dims()[3],
                    self.config.block_out_channels.len() - 1
                )));
            }
            (h, w) = ((h - 2) / 2 + 1, (w - 2) / 2 + 1);
        }
        let x = x.to_dtype(DType::F32)?;
        let mut moments = self.encoder.forward(&x)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        let lc = self.config.latent_channels;
        let mean = moments.narrow(1, 0, lc)?.contiguous()?;
        let logvar = moments.narrow(1, lc, lc)?.clamp(LOGVAR_MIN, LOGVAR_MAX)?.contiguous()?;
        Ok(Posterior { mean, logvar })
    }

    /// Images `[B, out_channels, H·f, W·f]` (nominally in [-1, 1], not clamped) from unscaled
    /// latents `z` `[B, latent_channels, H, W]`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.check_batch(z, self.config.latent_channels, "decode", 1)?;
        let mut z = z.to_dtype(DType::F32)?;
        if let Some(q) = &self.post_quant_conv {
            z = q.forward(&z)?;
        }
        Ok(self.decoder.forward(&z)?)
    }

    /// UNet latents of images: the posterior mean (`noise` None) or the draw mean + std · noise,
    /// times `scaling_factor` — what diffusers' training scripts and img2img feed the UNet.
    pub fn encode_latents(&self, x: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let posterior = self.encode(x)?;
        let z = match noise {
            Some(n) => posterior.sample(n)?,
            None => posterior.mean,
        };
        Ok((z * self.config.scaling_factor)?)
    }

    /// Images from UNet latents: `decode(latents / scaling_factor)`, as the pipeline does.
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let z = (latents.to_dtype(DType::F32)? / self.config.scaling_factor)?;
        self.decode(&z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banded_conv_equals_the_whole_image_conv() {
        let cpu = Device::Cpu;
        let (cin, cout) = (5, 7);
        let tensors = HashMap::from([
            ("weight".to_string(), Tensor::randn(0f32, 0.3, (cout, cin, 3, 3), &cpu).unwrap()),
            ("bias".to_string(), Tensor::randn(0f32, 0.3, cout, &cpu).unwrap()),
        ]);
        let conv = Conv2d::load(cin, cout, 3, 1, 1, VarBuilder::from_tensors(tensors, DType::F32, &cpu)).unwrap();
        // 2 images of 23 × 11: budgets of 1, 2 and 6 rows per band (the last band shorter), and
        // one large enough for the plain path.
        let x = Tensor::randn(0f32, 1.0, (2, cin, 23, 11), &cpu).unwrap();
        let whole = conv.forward(&x).unwrap();
        for rows in [1, 2, 6, 100] {
            let banded = conv3x3_in_bands(&conv, &x, rows * 2 * cin * 9 * 11).unwrap();
            assert_eq!(banded.dims(), whole.dims());
            let d = (&banded - &whole).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            let d = d.to_scalar::<f32>().unwrap();
            assert!(d <= 1e-6, "{rows} rows per band: max |diff| {d}");
        }
    }
}
