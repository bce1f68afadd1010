//! diffusers' `UNet2DConditionModel` as Stable Diffusion 1.x / 2.x use it, read from a
//! pipeline's `unet/` folder (`config.json` + `diffusion_pytorch_model.safetensors`).
//!
//! Supported: positional time embedding, `CrossAttnDownBlock2D` / `DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D` / `UpBlock2D`, per-block lists for
//! `attention_head_dim`, `transformer_layers_per_block`, `layers_per_block` and
//! `cross_attention_dim`, 1×1-conv (SD 1) or Linear (SD 2) transformer projections, one timestep
//! per sample (fractional ones too) and text states of any length. Everything else in the
//! config (SDXL's added time/text embedding, class embeddings, LCM's `time_cond_proj_dim`, …) is
//! refused with the key it comes from rather than silently computed differently.
//!
//! The naming quirk that matters: for these configs diffusers leaves `num_attention_heads` null
//! and uses `attention_head_dim` as the NUMBER OF HEADS per block (each head then has
//! `channels / heads` dimensions). The parity fixtures in `tests/data/sd/unet_sd{1,2}` pin it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::transformer2d::{Transformer2D, TransformerShape};
use super::weights::{self, Variant, Weights, DIFFUSERS_WEIGHTS};
use crate::diffusion::conv::{Conv2d, GroupNorm};
use crate::diffusion::error::{Error, Result};
use crate::diffusion::unet::{
    block_kinds, check_batch, per_sample_timesteps, timestep_features, BatchKind, BlockKind, Downsample, ResnetBlock,
    TimeScaleShift, TrackedTensors,
};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

fn default_four() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_down_blocks() -> Vec<String> {
    ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"].map(String::from).to_vec()
}
fn default_up_blocks() -> Vec<String> {
    ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"].map(String::from).to_vec()
}
fn default_mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_block_out_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn default_layers_per_block() -> Value {
    Value::from(2)
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
fn default_groups() -> Option<usize> {
    Some(32)
}
fn default_eps() -> f64 {
    1e-5
}
fn default_cross_attention_dim() -> Value {
    Value::from(1280)
}
fn default_transformer_layers() -> Value {
    Value::from(1)
}
fn default_head_dim() -> Value {
    Value::from(8)
}
fn default_false_value() -> Value {
    Value::Bool(false)
}
fn default_shift() -> String {
    "default".into()
}
fn default_positional() -> String {
    "positional".into()
}
fn default_three() -> usize {
    3
}
fn default_attention_type() -> String {
    "default".into()
}

/// `config.json` of a diffusers `UNet2DConditionModel`. Defaults are diffusers 0.42's for keys a
/// file leaves out (older `save_pretrained` versions write fewer keys). Keys that may be an int
/// or a per-block list are kept as JSON and resolved by [`Config::per_block`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub sample_size: Option<Value>,
    #[serde(default = "default_four")]
    pub in_channels: usize,
    #[serde(default = "default_four")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: usize,
    #[serde(default = "default_down_blocks")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_mid_block")]
    pub mid_block_type: Option<String>,
    #[serde(default = "default_up_blocks")]
    pub up_block_types: Vec<String>,
    #[serde(default = "default_false_value")]
    pub only_cross_attention: Value,
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: Value,
    #[serde(default = "default_one_usize")]
    pub downsample_padding: usize,
    #[serde(default = "default_one")]
    pub mid_block_scale_factor: f64,
    /// Training-only; ignored at inference.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "default_silu")]
    pub act_fn: String,
    #[serde(default = "default_groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_cross_attention_dim")]
    pub cross_attention_dim: Value,
    #[serde(default = "default_transformer_layers")]
    pub transformer_layers_per_block: Value,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Value>,
    #[serde(default)]
    pub encoder_hid_dim: Option<Value>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// Number of attention HEADS per block (diffusers' naming quirk), an int or a list.
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: Value,
    #[serde(default)]
    pub num_attention_heads: Option<Value>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// Computes the attention scores in f32 under f16 weights; this port computes in f32 always.
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "default_one")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "default_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "default_three")]
    pub conv_in_kernel: usize,
    #[serde(default = "default_three")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "default_attention_type")]
    pub attention_type: String,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    /// Only used by the `text_image` addition embedding, which is refused.
    #[serde(default)]
    pub addition_embed_type_num_heads: Option<usize>,
    /// Keys this port does not know. Those starting with `_` (`_class_name`,
    /// `_diffusers_version`, …) are bookkeeping and ignored; any other one is refused.
    #[serde(flatten, skip_serializing)]
    pub unknown: BTreeMap<String, Value>,
}

impl Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Config = crate::diffusion::error::read_json_file(path, "UNet2DConditionModel config")?;
        config.validate()?;
        Ok(config)
    }

    /// Resolves a key that is either one positive int for every block or a list with one per
    /// block (`block_out_channels.len()` entries), as diffusers does.
    pub fn per_block(&self, key: &str, value: &Value) -> Result<Vec<usize>> {
        let n = self.block_out_channels.len();
        let positive = |v: &Value| v.as_u64().filter(|&x| x > 0).map(|x| x as usize);
        match value {
            Value::Array(items) => {
                if items.len() != n {
                    return Err(Error::Config(format!(
                        "{key} has {} entries for {n} blocks (must be equal)",
                        items.len()
                    )));
                }
                items
                    .iter()
                    .map(|v| {
                        positive(v).ok_or_else(|| {
                            Error::Unsupported(format!("{key} entry {v} (only positive integers per block)"))
                        })
                    })
                    .collect()
            }
            v => match positive(v) {
                Some(x) => Ok(vec![x; n]),
                None => Err(Error::Config(format!("{key} {v} is not a positive integer or a per-block list"))),
            },
        }
    }

    /// The down and up block lists as kinds (cross-attention or plain).
    pub(crate) fn block_kinds(&self) -> Result<(Vec<BlockKind>, Vec<BlockKind>)> {
        block_kinds(
            self.block_out_channels.len(),
            &self.down_block_types,
            &self.up_block_types,
            &[BlockKind::CrossAttention, BlockKind::Plain],
        )
    }

    /// Attention heads per down block (diffusers' `attention_head_dim`, see the module doc).
    pub fn heads(&self) -> Result<Vec<usize>> {
        self.per_block("attention_head_dim", &self.attention_head_dim)
    }

    pub fn layers_per_block(&self) -> Result<Vec<usize>> {
        self.per_block("layers_per_block", &self.layers_per_block)
    }

    pub fn transformer_layers_per_block(&self) -> Result<Vec<usize>> {
        self.per_block("transformer_layers_per_block", &self.transformer_layers_per_block)
    }

    pub fn cross_attention_dims(&self) -> Result<Vec<usize>> {
        self.per_block("cross_attention_dim", &self.cross_attention_dim)
    }

    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or(self.block_out_channels[0] * 4)
    }

    /// Number of resolution halvings between the input and the lowest resolution, as a factor.
    pub fn downsample_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// The width of the text states every cross-attention block reads (the text encoder's
    /// hidden size must match it; `validate` makes sure all blocks agree on it).
    pub fn text_dim(&self) -> Result<usize> {
        Ok(self.cross_attention_dims()?[0])
    }

    /// Refuses configs this port would compute wrongly: unsupported options and contradictions.
    pub fn validate(&self) -> Result<()> {
        if let Some(key) = self.unknown.keys().find(|k| !k.starts_with('_')) {
            return Err(Error::Unsupported(format!(
                "UNet2DConditionModel config key '{key}' is not known to this port"
            )));
        }
        let unsupported = |what: String| Err(Error::Unsupported(what));
        if let Some(kind) = &self.addition_embed_type {
            if kind == "text_time" {
                return unsupported(
                    "addition_embed_type 'text_time' is Stable Diffusion XL (pooled text embedding and size \
                     conditioning from a second text encoder); only SD 1.x / 2.x UNets are supported"
                        .into(),
                );
            }
            return unsupported(format!("addition_embed_type '{kind}' (only null: SD 1.x / 2.x)"));
        }
        if self.addition_time_embed_dim.is_some() || self.projection_class_embeddings_input_dim.is_some() {
            return unsupported(
                "added conditioning embeddings (addition_time_embed_dim / projection_class_embeddings_input_dim: \
                 SDXL-style); only SD 1.x / 2.x UNets are supported"
                    .into(),
            );
        }
        if self.class_embed_type.is_some() || self.num_class_embeds.is_some() || self.class_embeddings_concat {
            return unsupported(
                "class-conditional UNet (class_embed_type / num_class_embeds / class_embeddings_concat)".into(),
            );
        }
        if self.encoder_hid_dim.as_ref().is_some_and(|v| !v.is_null()) || self.encoder_hid_dim_type.is_some() {
            return unsupported("a projection of the text states (encoder_hid_dim / encoder_hid_dim_type)".into());
        }
        if self.num_attention_heads.as_ref().is_some_and(|v| !v.is_null()) {
            return unsupported(
                "num_attention_heads (diffusers itself refuses it for UNet2DConditionModel; SD configs give the \
                 head count in attention_head_dim)"
                    .into(),
            );
        }
        if self.reverse_transformer_layers_per_block.as_ref().is_some_and(|v| !v.is_null()) {
            return unsupported("reverse_transformer_layers_per_block".into());
        }
        if self.time_embedding_type != "positional" {
            return unsupported(format!("time_embedding_type '{}' (only 'positional')", self.time_embedding_type));
        }
        if let Some(a) = &self.time_embedding_act_fn {
            return unsupported(format!("time_embedding_act_fn '{a}' (only null)"));
        }
        if let Some(a) = &self.timestep_post_act {
            return unsupported(format!("timestep_post_act '{a}' (only null)"));
        }
        if self.time_cond_proj_dim.is_some() {
            return unsupported("time_cond_proj_dim (guidance-distilled / LCM UNet)".into());
        }
        if self.act_fn != "silu" {
            return unsupported(format!("act_fn '{}' (only 'silu')", self.act_fn));
        }
        TimeScaleShift::parse(&self.resnet_time_scale_shift)?;
        if self.resnet_skip_time_act {
            return unsupported("resnet_skip_time_act true".into());
        }
        if self.resnet_out_scale_factor != 1.0 {
            return unsupported(format!("resnet_out_scale_factor {} (only 1.0)", self.resnet_out_scale_factor));
        }
        if self.conv_in_kernel != 3 || self.conv_out_kernel != 3 {
            return unsupported(format!(
                "conv_in_kernel {} / conv_out_kernel {} (only 3)",
                self.conv_in_kernel, self.conv_out_kernel
            ));
        }
        if self.attention_type != "default" {
            return unsupported(format!("attention_type '{}' (only 'default')", self.attention_type));
        }
        if self.dual_cross_attention {
            return unsupported("dual_cross_attention true".into());
        }
        if let Some(n) = &self.cross_attention_norm {
            return unsupported(format!("cross_attention_norm '{n}' (only null)"));
        }
        let no_only_cross = match &self.only_cross_attention {
            Value::Bool(b) => !b,
            Value::Array(items) => items.iter().all(|v| v == &Value::Bool(false)),
            _ => false,
        };
        if !no_only_cross || self.mid_block_only_cross_attention == Some(true) {
            return unsupported("only_cross_attention / mid_block_only_cross_attention true (only false)".into());
        }
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") => {}
            None => return unsupported("a UNet without mid block (mid_block_type null)".into()),
            Some(other) => return unsupported(format!("mid_block_type '{other}' (only 'UNetMidBlock2DCrossAttn')")),
        }
        if self.downsample_padding > 1 {
            return unsupported(format!("downsample_padding {}", self.downsample_padding));
        }
        let n = self.block_out_channels.len();
        let (down_kinds, up_kinds) = self.block_kinds()?;
        let heads = self.heads()?;
        self.layers_per_block()?;
        self.transformer_layers_per_block()?;
        let xdims = self.cross_attention_dims()?;
        if xdims.iter().any(|&x| x != xdims[0]) {
            // Every block reads the same text states, so they must have one width.
            return unsupported(format!(
                "cross_attention_dim {xdims:?} differs between blocks: one text encoder's states cannot feed them all"
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 {
            return Err(Error::Config("in_channels and out_channels must be positive".into()));
        }
        if self.block_out_channels[0] < 2 || self.block_out_channels[0] / 2 <= self.freq_shift {
            return Err(Error::Config(format!(
                "block_out_channels[0] {} leaves no time-embedding frequencies (freq_shift {})",
                self.block_out_channels[0], self.freq_shift
            )));
        }
        let groups = match self.norm_num_groups {
            Some(g) if g > 0 => g,
            _ => return unsupported("norm_num_groups null or 0 (the SD UNet normalises with GroupNorm)".into()),
        };
        for &c in &self.block_out_channels {
            if c == 0 || !c.is_multiple_of(groups) {
                return Err(Error::Config(format!("norm_num_groups {groups} does not divide block channels {c}")));
            }
        }
        // Heads only matter where a transformer is built: cross-attention down blocks, the mid
        // block (last entry) and cross-attention up blocks (lists read reversed).
        let n_last = n - 1;
        let with_attention = down_kinds
            .iter()
            .enumerate()
            .filter(|(_, &k)| k == BlockKind::CrossAttention)
            .map(|(i, _)| i)
            .chain(std::iter::once(n_last))
            .chain(
                up_kinds.iter().enumerate().filter(|(_, &k)| k == BlockKind::CrossAttention).map(|(i, _)| n_last - i),
            );
        for i in with_attention {
            let c = self.block_out_channels[i];
            if heads[i] > c {
                return Err(Error::Config(format!(
                    "attention_head_dim {} (heads) exceeds the {c} channels of block {i}",
                    heads[i]
                )));
            }
        }
        if !(self.norm_eps > 0.0) || !(self.mid_block_scale_factor > 0.0) {
            return Err(Error::Config("norm_eps and mid_block_scale_factor must be positive".into()));
        }
        Ok(())
    }
}

struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    downsample: Option<Downsample>,
}

struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    upsample: Option<Conv2d>,
}

struct MidBlock {
    resnet_a: ResnetBlock,
    attention: Transformer2D,
    resnet_b: ResnetBlock,
}

/// The conditional denoiser of a Stable Diffusion pipeline: ε_θ(z_t, t, text) (or v: the
/// network does not care what it was trained to predict).
pub struct UNet2DConditionModel {
    config: Config,
    linear_1: Linear,
    linear_2: Linear,
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    text_dim: usize,
    device: Device,
    num_params: usize,
}

impl std::fmt::Debug for UNet2DConditionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UNet2DConditionModel")
            .field("block_out_channels", &self.config.block_out_channels)
            .field("cross_attention_dim", &self.text_dim)
            .field("parameters", &self.num_params)
            .finish()
    }
}

impl UNet2DConditionModel {
    /// Loads a diffusers `unet/` folder: `config.json` and the weights of the variant
    /// [`weights::preferred_variant`] picks (`diffusion_pytorch_model.safetensors`, else a lone
    /// `.fp16` copy; either may be sharded with an index).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_variant(dir, weights::preferred_variant(dir, DIFFUSERS_WEIGHTS), device)
    }

    /// Loads the `unet/` folder's weights of `variant` (see [`Variant`]); f16 / bf16 are widened
    /// to f32 one tensor at a time, so loading peaks at the f32 model plus one tensor.
    pub fn load_variant(dir: &Path, variant: Variant, device: &Device) -> Result<Self> {
        let config = Config::from_file(&dir.join(CONFIG_FILE))?;
        let weights = Weights::load(dir, DIFFUSERS_WEIGHTS, variant)?;
        Self::from_weights(config, &weights, device)
    }

    /// Builds the model from opened weights (diffusers names), reading each tensor as the model
    /// asks for it. Refuses tensors the config does not account for: they mean the config
    /// describes another model.
    pub fn from_weights(config: Config, weights: &Weights, device: &Device) -> Result<Self> {
        config.validate()?;
        let context = || weights.files().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        let model =
            Self::build(config, weights.var_builder(device), device, weights.num_params()).map_err(|e| match e {
                Error::Candle(inner) => {
                    Error::Weights { context: context(), reason: format!("weights do not fit config.json: {inner}") }
                }
                other => other,
            })?;
        weights.check_all_used("UNet2DConditionModel", |_| false)?;
        Ok(model)
    }

    /// Builds the model from named tensors (diffusers names) and a config. Refuses tensors the
    /// config does not account for: they mean the config describes another model.
    pub fn from_tensors(config: Config, tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        config.validate()?;
        let num_params = tensors.values().map(|t| t.elem_count()).sum();
        let (vb, usage) = TrackedTensors::var_builder(tensors, device);
        let model = Self::build(config, vb, device, num_params)?;
        usage.refuse_unused("UNet2DConditionModel", |_| "")?;
        Ok(model)
    }

    fn build(config: Config, vb: VarBuilder, device: &Device, num_params: usize) -> Result<Self> {
        let c = &config;
        let boc = &c.block_out_channels;
        let n = boc.len();
        let heads = c.heads()?;
        let layers = c.layers_per_block()?;
        let tlayers = c.transformer_layers_per_block()?;
        let xdims = c.cross_attention_dims()?;
        let groups = c.norm_num_groups.unwrap_or(32);
        let norm = (groups, c.norm_eps);
        let scale_shift = TimeScaleShift::parse(&c.resnet_time_scale_shift)? == TimeScaleShift::ScaleShift;
        let (down_kinds, up_kinds) = c.block_kinds()?;
        let temb_dim = c.time_embed_dim();
        let resnet = |cin: usize, cout: usize, scale: f64, vb: VarBuilder| {
            ResnetBlock::load(cin, cout, norm, temb_dim, scale_shift, scale, vb)
        };
        let transformer = |channels: usize, heads: usize, layers: usize, xdim: usize, vb: VarBuilder| {
            let shape = TransformerShape {
                channels,
                heads,
                head_dim: channels / heads,
                layers,
                cross_attention_dim: xdim,
                norm_groups: groups,
                linear_projection: c.use_linear_projection,
            };
            Transformer2D::load(&shape, vb)
        };

        let linear_1 = candle_nn::linear(boc[0], temb_dim, vb.pp("time_embedding.linear_1"))?;
        let linear_2 = candle_nn::linear(temb_dim, temb_dim, vb.pp("time_embedding.linear_2"))?;
        let conv_in = Conv2d::load(c.in_channels, boc[0], 3, 1, 1, vb.pp("conv_in"))?;

        let mut down = Vec::with_capacity(n);
        let mut out_ch = boc[0];
        for (i, &kind) in down_kinds.iter().enumerate() {
            let in_ch = out_ch;
            out_ch = boc[i];
            let vbb = vb.pp(format!("down_blocks.{i}"));
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers[i] {
                let cin = if j == 0 { in_ch } else { out_ch };
                resnets.push(resnet(cin, out_ch, 1.0, vbb.pp(format!("resnets.{j}")))?);
                if kind == BlockKind::CrossAttention {
                    let vba = vbb.pp(format!("attentions.{j}"));
                    attentions.push(transformer(out_ch, heads[i], tlayers[i], xdims[i], vba)?);
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
        let mid = MidBlock {
            resnet_a: resnet(mid_ch, mid_ch, sf, vbm.pp("resnets.0"))?,
            attention: transformer(mid_ch, heads[n - 1], tlayers[n - 1], xdims[n - 1], vbm.pp("attentions.0"))?,
            resnet_b: resnet(mid_ch, mid_ch, sf, vbm.pp("resnets.1"))?,
        };

        // Up blocks read every per-block list reversed.
        let rev = |v: &[usize]| v.iter().rev().copied().collect::<Vec<usize>>();
        let (rboc, rheads, rlayers, rtlayers, rxdims) =
            (rev(boc), rev(&heads), rev(&layers), rev(&tlayers), rev(&xdims));
        let mut up = Vec::with_capacity(n);
        let mut out_ch = rboc[0];
        for (i, &kind) in up_kinds.iter().enumerate() {
            let prev_out = out_ch;
            out_ch = rboc[i];
            let in_ch = rboc[(i + 1).min(n - 1)];
            let vbb = vb.pp(format!("up_blocks.{i}"));
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            let count = rlayers[i] + 1;
            for j in 0..count {
                let skip_ch = if j == count - 1 { in_ch } else { out_ch };
                let res_in = if j == 0 { prev_out } else { out_ch };
                resnets.push(resnet(res_in + skip_ch, out_ch, 1.0, vbb.pp(format!("resnets.{j}")))?);
                if kind == BlockKind::CrossAttention {
                    let vba = vbb.pp(format!("attentions.{j}"));
                    attentions.push(transformer(out_ch, rheads[i], rtlayers[i], rxdims[i], vba)?);
                }
            }
            let upsample = if i + 1 < n {
                Some(Conv2d::load(out_ch, out_ch, 3, 1, 1, vbb.pp("upsamplers.0.conv"))?)
            } else {
                None
            };
            up.push(UpBlock { resnets, attentions, upsample });
        }
        let conv_norm_out = GroupNorm::load(groups, boc[0], c.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = Conv2d::load(boc[0], c.out_channels, 3, 1, 1, vb.pp("conv_out"))?;
        let text_dim = c.text_dim()?;
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
            text_dim,
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

    /// Number of parameters in the weights the model was built from (for reports).
    pub fn num_params(&self) -> usize {
        self.num_params
    }

    /// Checks a latent batch `[B, C, H, W]` and its text states `[B, S, cross_attention_dim]`.
    pub fn check_input(&self, x: &Tensor, text: &Tensor) -> Result<()> {
        check_batch(x.dims(), BatchKind::Latent, self.config.in_channels, self.config.downsample_factor())?;
        let b = x.dim(0)?;
        let td = text.dims();
        if td.len() != 3 || td[0] != b || td[1] == 0 || td[2] != self.text_dim {
            return Err(Error::Input(format!(
                "text states of shape {td:?} do not fit a batch of {b}: expected [{b}, tokens, {}]",
                self.text_dim
            )));
        }
        Ok(())
    }

    /// Predicts the noise (or v) for latents `x` [B, C, H, W] at `timesteps` (one per sample, or
    /// one for the whole batch; fractional values allowed) given the text encoder's hidden
    /// states `text` [B, S, cross_attention_dim]. Returns `[B, out_channels, H, W]` f32.
    pub fn forward(&self, x: &Tensor, timesteps: &[f64], text: &Tensor) -> Result<Tensor> {
        self.check_input(x, text)?;
        let ts = per_sample_timesteps(timesteps, x.dim(0)?)?;
        let c = &self.config;
        let x = x.to_dtype(DType::F32)?;
        let x = if c.center_input_sample { ((x * 2.0)? - 1.0)? } else { x };
        let text = text.to_dtype(DType::F32)?.contiguous()?;
        let temb = timestep_features(&ts, c.block_out_channels[0], c.freq_shift, c.flip_sin_to_cos, &self.device)?;
        let temb = self.linear_2.forward(&candle_nn::ops::silu(&self.linear_1.forward(&temb)?)?)?;
        // Every ResNet applies SiLU to the time embedding before its projection.
        let temb = candle_nn::ops::silu(&temb)?;

        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down {
            for (j, resnet) in block.resnets.iter().enumerate() {
                h = resnet.forward(&h, &temb)?;
                if let Some(a) = block.attentions.get(j) {
                    h = a.forward(&h, &text)?;
                }
                skips.push(h.clone());
            }
            if let Some(d) = &block.downsample {
                h = d.forward(&h)?;
                skips.push(h.clone());
            }
        }
        h = self.mid.resnet_a.forward(&h, &temb)?;
        h = self.mid.attention.forward(&h, &text)?;
        h = self.mid.resnet_b.forward(&h, &temb)?;
        for block in &self.up {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| Error::Config("skip connections exhausted".into()))?;
                h = Tensor::cat(&[&h, &skip], 1)?; // current hidden first, then the skip
                h = resnet.forward(&h, &temb)?;
                if let Some(a) = block.attentions.get(j) {
                    h = a.forward(&h, &text)?;
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
}
