//! `UNet2DModel` of diffusers (unconditional denoiser of DDPM / DDIM) in candle, reading the
//! diffusers folder layout: `config.json` + `diffusion_pytorch_model.safetensors`.
//!
//! Supported: positional (sinusoidal) time embedding, `DownBlock2D` / `AttnDownBlock2D` /
//! `UpBlock2D` / `AttnUpBlock2D`, `UNetMidBlock2D` with or without attention,
//! `resnet_time_scale_shift` "default" | "scale_shift", conv down/upsampling with either
//! `downsample_padding`, one timestep per sample. Everything else in the config is refused with
//! an error that names the key, rather than silently computing something else.
//! The quirks that matter (and are checked by the parity fixtures in `tests/data/diffusion`)
//! are listed in `tests/data/diffusion/README.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Module, Shape, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::conv::{Conv2d, GroupNorm};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

fn default_in_out_channels() -> usize {
    3
}
fn default_true() -> bool {
    true
}
fn default_positional() -> String {
    "positional".into()
}
fn default_conv() -> String {
    "conv".into()
}
fn default_down_blocks() -> Vec<String> {
    ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"].map(String::from).to_vec()
}
fn default_up_blocks() -> Vec<String> {
    ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"].map(String::from).to_vec()
}
fn default_block_out_channels() -> Vec<usize> {
    vec![224, 448, 672, 896]
}
fn default_layers_per_block() -> usize {
    2
}
fn default_one() -> f64 {
    1.0
}
fn default_one_usize() -> usize {
    1
}
fn default_silu() -> String {
    "silu".into()
}
fn default_head_dim() -> Option<usize> {
    Some(8)
}
fn default_groups() -> usize {
    32
}
fn default_eps() -> f64 {
    1e-5
}
fn default_shift() -> String {
    "default".into()
}
fn default_mid_block() -> Option<String> {
    Some("UNetMidBlock2D".into())
}

/// `config.json` of a diffusers `UNet2DModel`. Defaults are those of diffusers 0.42 for keys a
/// file leaves out (older `save_pretrained` versions write fewer keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default = "default_in_out_channels")]
    pub in_channels: usize,
    #[serde(default = "default_in_out_channels")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "default_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub freq_shift: usize,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default = "default_down_blocks")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_up_blocks")]
    pub up_block_types: Vec<String>,
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: usize,
    #[serde(default = "default_one")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "default_one_usize")]
    pub downsample_padding: usize,
    #[serde(default = "default_conv")]
    pub downsample_type: String,
    #[serde(default = "default_conv")]
    pub upsample_type: String,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_silu")]
    pub act_fn: String,
    /// Size of one attention head (UNet2DModel semantics); `null` = one head over all channels.
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: Option<usize>,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "default_true")]
    pub add_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
    #[serde(default = "default_mid_block")]
    pub mid_block_type: Option<String>,
    /// Keys this port does not know. Those starting with `_` (`_class_name`,
    /// `_diffusers_version`, …) are bookkeeping and ignored; any other one is refused, since it
    /// would change the computation in a way this port would silently miss.
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

impl Config {
    /// The down and up block lists as kinds (self-attention or plain).
    pub(crate) fn block_kinds(&self) -> Result<(Vec<BlockKind>, Vec<BlockKind>)> {
        block_kinds(
            self.block_out_channels.len(),
            &self.down_block_types,
            &self.up_block_types,
            &[BlockKind::SelfAttention, BlockKind::Plain],
        )
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Config = crate::diffusion::error::read_json_file(path, "UNet2DModel config")?;
        config.validate()?;
        Ok(config)
    }

    /// Number of resolution halvings between the input and the lowest resolution.
    pub fn downsample_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or(self.block_out_channels[0] * 4)
    }

    /// Refuses configs this port would compute wrongly: unsupported options and contradictions.
    pub fn validate(&self) -> Result<()> {
        if let Some(key) = self.unknown.keys().find(|k| !k.starts_with('_')) {
            return Err(Error::Unsupported(format!("UNet2DModel config key '{key}' is not known to this port")));
        }
        let unsupported = |what: String| Err(Error::Unsupported(what));
        if self.time_embedding_type != "positional" {
            return unsupported(format!("time_embedding_type '{}' (only 'positional')", self.time_embedding_type));
        }
        if self.class_embed_type.is_some() || self.num_class_embeds.is_some() {
            return unsupported("class-conditional UNet (class_embed_type / num_class_embeds)".into());
        }
        if self.downsample_type != "conv" || self.upsample_type != "conv" {
            return unsupported(format!(
                "downsample_type '{}' / upsample_type '{}' (only 'conv')",
                self.downsample_type, self.upsample_type
            ));
        }
        if self.act_fn != "silu" {
            return unsupported(format!("act_fn '{}' (only 'silu')", self.act_fn));
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2D") => {}
            None => return unsupported("a UNet without mid block (mid_block_type null)".into()),
            Some(other) => return unsupported(format!("mid_block_type '{other}'")),
        }
        TimeScaleShift::parse(&self.resnet_time_scale_shift)?;
        if self.downsample_padding > 1 {
            return unsupported(format!("downsample_padding {}", self.downsample_padding));
        }
        let n = self.block_out_channels.len();
        self.block_kinds()?;
        if self.in_channels == 0 || self.out_channels == 0 || self.layers_per_block == 0 {
            return Err(Error::Config("in_channels, out_channels and layers_per_block must be positive".into()));
        }
        if self.block_out_channels[0] < 2 {
            return Err(Error::Config("block_out_channels[0] must be at least 2 (time embedding width)".into()));
        }
        if self.block_out_channels[0] / 2 <= self.freq_shift {
            return Err(Error::Config(format!("freq_shift {} leaves no frequencies", self.freq_shift)));
        }
        for &c in &self.block_out_channels {
            if self.norm_num_groups == 0 || c % self.norm_num_groups != 0 {
                return Err(Error::Config(format!(
                    "norm_num_groups {} does not divide block channels {c}",
                    self.norm_num_groups
                )));
            }
            if let Some(h) = self.attention_head_dim {
                if h == 0 || c % h != 0 {
                    return Err(Error::Config(format!("attention_head_dim {h} does not divide block channels {c}")));
                }
            }
        }
        if let Some(g) = self.attn_norm_num_groups {
            if g == 0 || !self.block_out_channels[n - 1].is_multiple_of(g) {
                return Err(Error::Config(format!("attn_norm_num_groups {g} does not divide the mid-block channels")));
            }
        }
        if !(self.norm_eps > 0.0) || !(self.mid_block_scale_factor > 0.0) {
            return Err(Error::Config("norm_eps and mid_block_scale_factor must be positive".into()));
        }
        Ok(())
    }
}

/// What a diffusers down or up block computes besides its ResNets. Configs name blocks by
/// class name (`AttnDownBlock2D`, `CrossAttnUpBlock2D`, …); [`block_kinds`] turns the names
/// into kinds once, when the config is checked, so that model building matches on kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockKind {
    /// `DownBlock2D` / `UpBlock2D`: ResNets only.
    Plain,
    /// `AttnDownBlock2D` / `AttnUpBlock2D`: a self-attention after each ResNet.
    SelfAttention,
    /// `CrossAttnDownBlock2D` / `CrossAttnUpBlock2D`: a transformer reading the text states.
    CrossAttention,
}

impl BlockKind {
    fn class_name(self, down: bool) -> &'static str {
        match (self, down) {
            (BlockKind::Plain, true) => "DownBlock2D",
            (BlockKind::SelfAttention, true) => "AttnDownBlock2D",
            (BlockKind::CrossAttention, true) => "CrossAttnDownBlock2D",
            (BlockKind::Plain, false) => "UpBlock2D",
            (BlockKind::SelfAttention, false) => "AttnUpBlock2D",
            (BlockKind::CrossAttention, false) => "CrossAttnUpBlock2D",
        }
    }
}

/// diffusers' `resnet_time_scale_shift`: how a ResNet block adds the time embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeScaleShift {
    /// `"default"`: added as a bias.
    Default,
    /// `"scale_shift"`: a per-channel scale and shift after the GroupNorm.
    ScaleShift,
}

impl TimeScaleShift {
    pub(crate) fn parse(name: &str) -> Result<Self> {
        match name {
            "default" => Ok(TimeScaleShift::Default),
            "scale_shift" => Ok(TimeScaleShift::ScaleShift),
            other => Err(Error::Unsupported(format!("resnet_time_scale_shift '{other}'"))),
        }
    }
}

/// The block lists of a diffusers UNet config as kinds: one down and one up block per
/// `block_out_channels` entry, each of a kind this port computes (`allowed`).
pub(crate) fn block_kinds(
    n: usize,
    down: &[String],
    up: &[String],
    allowed: &[BlockKind],
) -> Result<(Vec<BlockKind>, Vec<BlockKind>)> {
    if n == 0 {
        return Err(Error::Config("block_out_channels is empty".into()));
    }
    if down.len() != n || up.len() != n {
        return Err(Error::Config(format!(
            "{} down blocks and {} up blocks for {n} block_out_channels (must be equal)",
            down.len(),
            up.len()
        )));
    }
    let parse = |names: &[String], is_down: bool| -> Result<Vec<BlockKind>> {
        names
            .iter()
            .map(|name| {
                allowed.iter().copied().find(|k| k.class_name(is_down) == name).ok_or_else(|| {
                    let names: Vec<&str> = allowed.iter().map(|k| k.class_name(is_down)).collect();
                    let side = if is_down { "down" } else { "up" };
                    Error::Unsupported(format!("{side} block type '{name}' (only {})", names.join(", ")))
                })
            })
            .collect()
    };
    Ok((parse(down, true)?, parse(up, false)?))
}

/// Named tensors that remember which ones the model asked for (shared with the Stable
/// Diffusion components, which refuse weights their config does not account for in the same way).
pub(crate) struct TrackedTensors {
    pub(crate) tensors: HashMap<String, Tensor>,
    pub(crate) used: Arc<Mutex<HashSet<String>>>,
}

/// What [`TrackedTensors::var_builder`] recorded: which of the file's tensors a model read.
pub(crate) struct TensorUsage {
    names: Vec<String>,
    used: Arc<Mutex<HashSet<String>>>,
}

impl TensorUsage {
    /// Refuses weights the model never read: tensors the config does not account for mean the
    /// config describes another model (e.g. `add_attention: false` on weights with a mid
    /// attention), so they are refused, not ignored. `hint` names what the unused tensors
    /// suggest (or ""), and follows the count.
    pub(crate) fn refuse_unused(&self, component: &str, hint: fn(&[&String]) -> &'static str) -> Result<()> {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        let mut unused: Vec<&String> = self.names.iter().filter(|n| !used.contains(*n)).collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        let hint = hint(&unused);
        Err(Error::Weights {
            context: component.into(),
            reason: format!(
                "weights do not fit config.json: {} tensor(s) are not used by the architecture it describes{hint} (e.g. {})",
                unused.len(),
                unused.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
        })
    }
}

impl TrackedTensors {
    /// A `VarBuilder` (f32, on `device`) over `tensors`, and the record of which ones the model
    /// built from it reads.
    pub(crate) fn var_builder(tensors: HashMap<String, Tensor>, device: &Device) -> (VarBuilder<'static>, TensorUsage) {
        let names: Vec<String> = tensors.keys().cloned().collect();
        let used = Arc::new(Mutex::new(HashSet::new()));
        let backend = TrackedTensors { tensors, used: used.clone() };
        (VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone()), TensorUsage { names, used })
    }

    fn fetch(&self, name: &str) -> candle_core::Result<&Tensor> {
        let t = match self.tensors.get(name) {
            Some(t) => t,
            None => candle_core::bail!("cannot find tensor {name}"),
        };
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
        Ok(t)
    }
}

impl candle_nn::var_builder::SimpleBackend for TrackedTensors {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.fetch(name)?;
        if t.shape() != &s {
            candle_core::bail!("shape mismatch for {name}: expected {s:?}, the file has {:?}", t.shape())
        }
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.fetch(name)?.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

pub(crate) struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    scale_shift: bool,
    output_scale_factor: f64,
}

fn conv3x3(cin: usize, cout: usize, stride: usize, padding: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    Conv2d::load(cin, cout, 3, stride, padding, vb)
}

impl ResnetBlock {
    fn new(
        cin: usize,
        cout: usize,
        output_scale_factor: f64,
        cfg: &Config,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let scale_shift = TimeScaleShift::parse(&cfg.resnet_time_scale_shift)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            == TimeScaleShift::ScaleShift;
        let norm = (cfg.norm_num_groups, cfg.norm_eps);
        Self::load(cin, cout, norm, cfg.time_embed_dim(), scale_shift, output_scale_factor, vb)
    }

    /// diffusers' `ResnetBlock2D` with SiLU: GroupNorm `(groups, eps)`, a time projection from
    /// `temb_dim` (doubled for `scale_shift`), `conv_shortcut` when the channels change.
    pub(crate) fn load(
        cin: usize,
        cout: usize,
        (g, eps): (usize, f64),
        temb_dim: usize,
        scale_shift: bool,
        output_scale_factor: f64,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let proj_out = if scale_shift { 2 * cout } else { cout };
        let conv_shortcut =
            if cin != cout { Some(Conv2d::load(cin, cout, 1, 1, 0, vb.pp("conv_shortcut"))?) } else { None };
        Ok(Self {
            norm1: GroupNorm::load(g, cin, eps, vb.pp("norm1"))?,
            conv1: conv3x3(cin, cout, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: candle_nn::linear(temb_dim, proj_out, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::load(g, cout, eps, vb.pp("norm2"))?,
            conv2: conv3x3(cout, cout, 1, 1, vb.pp("conv2"))?,
            conv_shortcut,
            scale_shift,
            output_scale_factor,
        })
    }

    /// `temb_silu` is SiLU(time embedding): every ResNet applies SiLU before its projection,
    /// so the caller computes it once.
    pub(crate) fn forward(&self, x: &Tensor, temb_silu: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x, true)?)?;
        let proj = self.time_emb_proj.forward(temb_silu)?;
        let h = if self.scale_shift {
            let proj = proj.unsqueeze(2)?.unsqueeze(3)?;
            let half = proj.dim(1)? / 2;
            let scale = proj.narrow(1, 0, half)?;
            let shift = proj.narrow(1, half, half)?;
            let n = self.norm2.forward(&h, false)?;
            candle_nn::ops::silu(&n.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?)?
        } else {
            let offsets = proj.flatten_all()?.to_vec1::<f32>()?;
            self.norm2.forward_with_offsets(&h, Some(&offsets), true)?
        };
        let h = self.conv2.forward(&h)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let out = (shortcut + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// Self-attention over the pixels of a feature map (the `_from_deprecated_attn_block` layout:
/// `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0`), with the residual added inside.
struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    rescale_output_factor: f64,
}

impl Attention {
    fn new(
        channels: usize,
        groups: Option<usize>,
        rescale: f64,
        cfg: &Config,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let heads = cfg.attention_head_dim.map_or(1, |d| channels / d);
        let group_norm = match groups {
            Some(g) => Some(GroupNorm::load(g, channels, cfg.norm_eps, vb.pp("group_norm"))?),
            None => None,
        };
        Ok(Self {
            group_norm,
            to_q: candle_nn::linear(channels, channels, vb.pp("to_q"))?,
            to_k: candle_nn::linear(channels, channels, vb.pp("to_k"))?,
            to_v: candle_nn::linear(channels, channels, vb.pp("to_v"))?,
            to_out: candle_nn::linear(channels, channels, vb.pp("to_out").pp("0"))?,
            heads,
            rescale_output_factor: rescale,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = match &self.group_norm {
            Some(g) => g.forward(x, false)?,
            None => x.clone(),
        };
        let seq = normed.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?; // [B, HW, C]
        let dh = c / self.heads;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, h * w, self.heads, dh))?.transpose(1, 2)?.contiguous()
        };
        let q = split(self.to_q.forward(&seq)?)?;
        let k = split(self.to_k.forward(&seq)?)?;
        let v = split(self.to_v.forward(&seq)?)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (dh as f64).sqrt()))?;
        let attn = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?; // [B, heads, HW, dh]
        let merged = attn.transpose(1, 2)?.reshape((b, h * w, c))?;
        let out = self.to_out.forward(&merged)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        let out = (out + x)?;
        if self.rescale_output_factor == 1.0 {
            Ok(out)
        } else {
            out / self.rescale_output_factor
        }
    }
}

pub(crate) struct Downsample {
    conv: Conv2d,
    /// `downsample_padding` 0: pad right and bottom by one before a stride-2 conv (asymmetric).
    pad_right_bottom: bool,
}

impl Downsample {
    /// diffusers' `Downsample2D` with a conv (`downsamplers.0.conv`), `padding` 0 or 1.
    pub(crate) fn load(channels: usize, padding: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self { conv: conv3x3(channels, channels, 2, padding, vb.pp("conv"))?, pad_right_bottom: padding == 0 })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.pad_right_bottom {
            self.conv.forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)
        } else {
            self.conv.forward(x)
        }
    }
}

struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Attention>,
    downsample: Option<Downsample>,
}

struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Attention>,
    upsample: Option<Conv2d>,
}

struct MidBlock {
    resnet_a: ResnetBlock,
    attention: Option<Attention>,
    resnet_b: ResnetBlock,
}

/// The denoiser ε_θ(x_t, t) of an unconditional diffusion model.
pub struct UNet2DModel {
    config: Config,
    linear_1: Linear,
    linear_2: Linear,
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    device: Device,
    num_params: usize,
}

impl UNet2DModel {
    /// Loads a diffusers folder: `config.json` + `diffusion_pytorch_model.safetensors`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = Config::from_file(&dir.join(CONFIG_FILE))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.is_file() {
            return Err(Error::Weights {
                context: dir.display().to_string(),
                reason: format!("no {WEIGHTS_FILE} in the model folder"),
            });
        }
        let tensors = candle_core::safetensors::load(&weights_path, device).map_err(|e| Error::Weights {
            context: weights_path.display().to_string(),
            reason: format!("not a readable safetensors file ({e})"),
        })?;
        Self::from_tensors(config, tensors, device).map_err(|e| match e {
            Error::Candle(inner) => Error::Weights {
                context: weights_path.display().to_string(),
                reason: format!("weights do not fit config.json: {inner}"),
            },
            other => other,
        })
    }

    /// Builds the model from named tensors (diffusers names) and a validated config.
    pub fn from_tensors(config: Config, tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        config.validate()?;
        let num_params = tensors.values().map(|t| t.elem_count()).sum();
        let (vb, usage) = TrackedTensors::var_builder(tensors, device);
        let model = Self::build(config, vb, device, num_params)?;
        usage.refuse_unused("UNet2DModel", |_| "")?;
        Ok(model)
    }

    fn build(config: Config, vb: VarBuilder, device: &Device, num_params: usize) -> Result<Self> {
        let c = &config;
        let boc = &c.block_out_channels;
        let n = boc.len();
        let lpb = c.layers_per_block;
        let temb_dim = c.time_embed_dim();
        let linear_1 = candle_nn::linear(boc[0], temb_dim, vb.pp("time_embedding.linear_1"))?;
        let linear_2 = candle_nn::linear(temb_dim, temb_dim, vb.pp("time_embedding.linear_2"))?;
        let conv_in = conv3x3(c.in_channels, boc[0], 1, 1, vb.pp("conv_in"))?;

        let mut down = Vec::with_capacity(n);
        let mut out_ch = boc[0];
        let (down_kinds, up_kinds) = c.block_kinds()?;
        let scale_shift = TimeScaleShift::parse(&c.resnet_time_scale_shift)? == TimeScaleShift::ScaleShift;
        for (i, &kind) in down_kinds.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = boc[i];
            let vbb = vb.pp(format!("down_blocks.{i}"));
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..lpb {
                let cin = if j == 0 { in_ch } else { out_ch };
                resnets.push(ResnetBlock::new(cin, out_ch, 1.0, c, vbb.pp(format!("resnets.{j}")))?);
                if kind == BlockKind::SelfAttention {
                    let a = Attention::new(out_ch, Some(c.norm_num_groups), 1.0, c, vbb.pp(format!("attentions.{j}")))?;
                    attentions.push(a);
                }
            }
            let downsample = if i + 1 < n {
                Some(Downsample::load(out_ch, c.downsample_padding, vbb.pp("downsamplers.0"))?)
            } else {
                None
            };
            down.push(DownBlock { resnets, attentions, downsample });
        }

        let mid_ch = boc[n - 1];
        let sf = c.mid_block_scale_factor;
        let vbm = vb.pp("mid_block");
        // The mid attention normalises with attn_norm_num_groups, else with the ResNet groups —
        // but only for the "default" time shift: diffusers builds it without a GroupNorm otherwise.
        let mid_attn_groups = c.attn_norm_num_groups.or((!scale_shift).then_some(c.norm_num_groups));
        let mid = MidBlock {
            resnet_a: ResnetBlock::new(mid_ch, mid_ch, sf, c, vbm.pp("resnets.0"))?,
            attention: if c.add_attention {
                Some(Attention::new(mid_ch, mid_attn_groups, sf, c, vbm.pp("attentions.0"))?)
            } else {
                None
            },
            resnet_b: ResnetBlock::new(mid_ch, mid_ch, sf, c, vbm.pp("resnets.1"))?,
        };

        let rev: Vec<usize> = boc.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut out_ch = rev[0];
        for (i, &kind) in up_kinds.iter().enumerate() {
            let prev_out = out_ch;
            out_ch = rev[i];
            let in_ch = rev[(i + 1).min(n - 1)];
            let vbb = vb.pp(format!("up_blocks.{i}"));
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            let layers = lpb + 1;
            for j in 0..layers {
                let skip_ch = if j == layers - 1 { in_ch } else { out_ch };
                let res_in = if j == 0 { prev_out } else { out_ch };
                resnets.push(ResnetBlock::new(res_in + skip_ch, out_ch, 1.0, c, vbb.pp(format!("resnets.{j}")))?);
                if kind == BlockKind::SelfAttention {
                    let a = Attention::new(out_ch, Some(c.norm_num_groups), 1.0, c, vbb.pp(format!("attentions.{j}")))?;
                    attentions.push(a);
                }
            }
            let upsample =
                if i + 1 < n { Some(conv3x3(out_ch, out_ch, 1, 1, vbb.pp("upsamplers.0.conv"))?) } else { None };
            up.push(UpBlock { resnets, attentions, upsample });
        }
        let conv_norm_out = GroupNorm::load(c.norm_num_groups, boc[0], c.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = conv3x3(boc[0], c.out_channels, 1, 1, vb.pp("conv_out"))?;
        Ok(Self {
            config,
            linear_1,
            linear_2,
            conv_in,
            down,
            mid,
            up,
            conv_norm_out,
            conv_out,
            device: device.clone(),
            num_params,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Sinusoidal timestep features `[B, block_out_channels[0]]`, computed in f32 as diffusers
    /// does (`get_timestep_embedding`).
    pub fn timestep_features(&self, timesteps: &[f64]) -> Result<Tensor> {
        let c = &self.config;
        timestep_features(timesteps, c.block_out_channels[0], c.freq_shift, c.flip_sin_to_cos, &self.device)
    }

    /// Checks that a batch `[B, C, H, W]` is something this model takes.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        check_batch(dims, BatchKind::Image, self.config.in_channels, self.config.downsample_factor())
    }

    /// Predicts the noise ε_θ(x, t): `x` is `[B, C, H, W]` f32, `timesteps` one per sample (or
    /// one for the whole batch). Returns `[B, out_channels, H, W]`.
    pub fn forward(&self, x: &Tensor, timesteps: &[f64]) -> Result<Tensor> {
        // On a rayon worker, so that the forward's many short parallel loops run on this thread
        // and its peers: from an outside thread each loop is a hand-off and a wake-up (at batch
        // 1 on one thread, 40 % of the time went to task switches).
        rayon::scope(|_| self.forward_on_pool(x, timesteps))
    }

    fn forward_on_pool(&self, x: &Tensor, timesteps: &[f64]) -> Result<Tensor> {
        self.check_input(x)?;
        let ts = per_sample_timesteps(timesteps, x.dim(0)?)?;
        let x = x.to_dtype(DType::F32)?;
        let x = if self.config.center_input_sample { ((x * 2.0)? - 1.0)? } else { x };
        let temb = self.timestep_features(&ts)?;
        let temb = self.linear_2.forward(&candle_nn::ops::silu(&self.linear_1.forward(&temb)?)?)?;
        let temb = candle_nn::ops::silu(&temb)?;

        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down {
            for (j, resnet) in block.resnets.iter().enumerate() {
                h = resnet.forward(&h, &temb)?;
                if let Some(a) = block.attentions.get(j) {
                    h = a.forward(&h)?;
                }
                skips.push(h.clone());
            }
            if let Some(d) = &block.downsample {
                h = d.forward(&h)?;
                skips.push(h.clone());
            }
        }
        h = self.mid.resnet_a.forward(&h, &temb)?;
        if let Some(a) = &self.mid.attention {
            h = a.forward(&h)?;
        }
        h = self.mid.resnet_b.forward(&h, &temb)?;
        for block in &self.up {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| Error::Config("skip connections exhausted".into()))?;
                h = Tensor::cat(&[&h, &skip], 1)?; // current hidden first, then the skip
                h = resnet.forward(&h, &temb)?;
                if let Some(a) = block.attentions.get(j) {
                    h = a.forward(&h)?;
                }
            }
            if let Some(conv) = &block.upsample {
                let (_, _, hh, ww) = h.dims4()?;
                h = conv.forward(&h.upsample_nearest2d(hh * 2, ww * 2)?)?;
            }
        }
        let h = self.conv_norm_out.forward(&h, true)?;
        Ok(self.conv_out.forward(&h)?)
    }

    /// Number of parameters in the weights file the model was built from (for reports).
    pub fn num_params(&self) -> usize {
        self.num_params
    }
}

/// What a UNet's input batch holds, for its error messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BatchKind {
    /// Pixels (the pixel-space DDPM).
    Image,
    /// VAE latents (Stable Diffusion).
    Latent,
}

/// Checks that a `[B, C, H, W]` batch fits a UNet with `in_channels` inputs whose lowest
/// resolution is `1 / factor` of the input's (`Config::downsample_factor`, a power of two; both
/// UNets take the same shapes).
pub(crate) fn check_batch(dims: &[usize], kind: BatchKind, in_channels: usize, factor: usize) -> Result<()> {
    let noun = match kind {
        BatchKind::Image => "image",
        BatchKind::Latent => "latent",
    };
    let [b, c, h, w] = dims else {
        return Err(Error::Input(format!("expected a batch of {noun}s [B, C, H, W], got shape {dims:?}")));
    };
    if *b == 0 {
        return Err(Error::Input("empty batch".into()));
    }
    if *c != in_channels {
        return Err(Error::Input(format!("the UNet takes {in_channels} {noun} channel(s), the batch has {c}")));
    }
    if *h == 0 || *w == 0 || h % factor != 0 || w % factor != 0 {
        return Err(Error::Input(format!(
            "{noun} size {h}×{w} is not a multiple of {factor} (the UNet halves the resolution {} times)",
            factor.trailing_zeros()
        )));
    }
    Ok(())
}

/// One timestep per sample of a batch of `b`: `timesteps` holds one for the whole batch or one
/// per sample, all finite.
pub(crate) fn per_sample_timesteps(timesteps: &[f64], b: usize) -> Result<Vec<f64>> {
    let ts = match timesteps.len() {
        1 => vec![timesteps[0]; b],
        n if n == b => timesteps.to_vec(),
        n => return Err(Error::Input(format!("{n} timesteps for a batch of {b} (need 1 or {b})"))),
    };
    match ts.iter().find(|t| !t.is_finite()) {
        Some(t) => Err(Error::Input(format!("timestep {t} is not finite"))),
        None => Ok(ts),
    }
}

/// Sinusoidal timestep features `[B, dim]` (diffusers' `get_timestep_embedding` with
/// `downscale_freq_shift = freq_shift`), computed in f32 as diffusers does.
pub(crate) fn timestep_features(
    timesteps: &[f64],
    dim: usize,
    freq_shift: usize,
    flip_sin_to_cos: bool,
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let denom = (half - freq_shift) as f32;
    let ln_period = (10000.0f64).ln() as f32;
    let freqs: Vec<f32> = (0..half).map(|k| (-ln_period * k as f32 / denom).exp()).collect();
    let mut data = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let t = t as f32;
        let args: Vec<f32> = freqs.iter().map(|&f| t * f).collect();
        let sin = args.iter().map(|&a| (a as f64).sin() as f32);
        let cos = args.iter().map(|&a| (a as f64).cos() as f32);
        if flip_sin_to_cos {
            data.extend(cos);
            data.extend(sin);
        } else {
            data.extend(sin);
            data.extend(cos);
        }
        if dim % 2 == 1 {
            data.push(0.0);
        }
    }
    Ok(Tensor::from_vec(data, (timesteps.len(), dim), device)?)
}
