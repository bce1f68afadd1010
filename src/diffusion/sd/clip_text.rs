//! The text encoder of Stable Diffusion 1.x / 2.x pipelines: transformers' `CLIPTextModel`,
//! read from the pipeline's `text_encoder/` folder (`config.json` + `model.safetensors` or the
//! `model.fp16.safetensors` variant).
//!
//! SD 1.x ships OpenAI's CLIP ViT-L/14 text tower (`hidden_act` "quick_gelu"), SD 2.x the
//! OpenCLIP ViT-H/14 one (`hidden_act` "gelu", the exact erf form, 23 of its 24 layers). Both are
//! the same pre-LayerNorm causal transformer; everything that differs is read from the config.
//! SDXL's second encoder (`CLIPTextModelWithProjection`) and other activations are refused.
//!
//! The forward pass follows transformers 5.25's `CLIPTextModel` (checked against it in
//! `tests/sd_clip_text.rs` with fixtures from `tools/sd/make_clip_text_fixture.py`):
//! token + position embeddings, `num_hidden_layers` × (LN → causal self-attention → residual,
//! LN → MLP → residual), `final_layer_norm`. The pooled output is the state at the EOS token,
//! chosen exactly as transformers chooses it (see [`ClipTextModel::pooled_positions`]).
//! Computation is in float32 whatever the weights' type (f16 weights are widened on load).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

use super::weights::{self, Variant, WeightFiles, Weights, TRANSFORMERS_WEIGHTS};
use crate::diffusion::error::{Error, Result};
use crate::diffusion::unet::TrackedTensors;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_FILE_FP16: &str = "model.fp16.safetensors";

/// The class this module implements, as `architectures` in `config.json` names it.
const ARCHITECTURE: &str = "CLIPTextModel";

/// transformers' `CLIPTextConfig`: the fields the forward pass depends on, with the class's own
/// defaults for the ones a config may leave out. Other keys of `config.json` (initializer
/// ranges, dropout, dtype, version stamps, the generic `PretrainedConfig` keys) do not change
/// the inference forward and are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// Used only by the projection head of `CLIPTextModelWithProjection` / `CLIPModel`; kept
    /// so the config reads back complete.
    #[serde(default = "default_projection_dim")]
    pub projection_dim: Option<usize>,
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: Option<i64>,
    #[serde(default = "default_bos_token_id")]
    pub bos_token_id: Option<i64>,
    /// A number in every SD config; transformers also allows a list or null, which this port
    /// refuses (the pooled output needs one EOS id).
    #[serde(default = "default_eos_token_id")]
    pub eos_token_id: serde_json::Value,
    /// Not a transformers field: diffusers' `encode_prompt` passes the tokenizer's attention
    /// mask to the encoder only when a text encoder config sets it true (none of the SD 1.x /
    /// 2.x folders does). Read here so the pipeline can do the same.
    #[serde(default)]
    pub use_attention_mask: Option<bool>,
}

fn default_vocab_size() -> usize {
    49408
}
fn default_hidden_size() -> usize {
    512
}
fn default_intermediate_size() -> usize {
    2048
}
fn default_projection_dim() -> Option<usize> {
    Some(512)
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    8
}
fn default_max_position_embeddings() -> usize {
    77
}
fn default_hidden_act() -> String {
    "quick_gelu".into()
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_pad_token_id() -> Option<i64> {
    Some(1)
}
fn default_bos_token_id() -> Option<i64> {
    Some(49406)
}
fn default_eos_token_id() -> serde_json::Value {
    serde_json::Value::from(49407)
}

/// The MLP activation, `hidden_act` of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(1.702 x)`: OpenAI CLIP (SD 1.x).
    QuickGelu,
    /// The exact erf GELU (PyTorch's `F.gelu` default): OpenCLIP (SD 2.x).
    Gelu,
}

impl Config {
    /// Reads and validates `config.json` of a `text_encoder/` folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Config = crate::diffusion::error::read_json_file(path, "CLIPTextModel config")?;
        config.validate()?;
        Ok(config)
    }

    /// The EOS id the pooled output is chosen by.
    pub fn eos_token_id(&self) -> Result<i64> {
        self.eos_token_id.as_i64().ok_or_else(|| {
            Error::Unsupported(format!("CLIPTextModel eos_token_id {} (only a single integer id)", self.eos_token_id))
        })
    }

    pub fn activation(&self) -> Result<Activation> {
        match self.hidden_act.as_str() {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => Err(Error::Unsupported(format!(
                "CLIPTextModel hidden_act '{other}' (only 'quick_gelu' of SD 1.x and 'gelu' of SD 2.x)"
            ))),
        }
    }

    /// Refuses other classes, unsupported options and contradictions.
    pub fn validate(&self) -> Result<()> {
        if let Some(archs) = &self.architectures {
            if archs.iter().any(|a| a == "CLIPTextModelWithProjection") {
                return Err(Error::Unsupported(
                    "CLIPTextModelWithProjection (the second text encoder of SDXL pipelines); \
                     only the CLIPTextModel of Stable Diffusion 1.x / 2.x is supported"
                        .into(),
                ));
            }
            if archs.len() != 1 || archs[0] != ARCHITECTURE {
                return Err(Error::Unsupported(format!(
                    "text encoder architectures {archs:?} (only [\"{ARCHITECTURE}\"])"
                )));
            }
        }
        if let Some(t) = &self.model_type {
            if t != "clip_text_model" {
                return Err(Error::Unsupported(format!("text encoder model_type '{t}' (only 'clip_text_model')")));
            }
        }
        self.activation()?;
        self.eos_token_id()?;
        let fail = |what: String| Err(Error::Config(format!("CLIPTextModel {what}")));
        if self.vocab_size == 0
            || self.hidden_size == 0
            || self.intermediate_size == 0
            || self.num_attention_heads == 0
            || self.max_position_embeddings == 0
        {
            return fail("vocab_size, hidden_size, intermediate_size, num_attention_heads and max_position_embeddings must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return fail(format!("layer_norm_eps {} is not in (0, 1)", self.layer_norm_eps));
        }
        Ok(())
    }
}

/// What the encoder gives for a batch of token ids.
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// `[B, L, D]`, after `final_layer_norm`: the `encoder_hidden_states` the SD UNet is
    /// conditioned on.
    pub last_hidden_state: Tensor,
    /// `num_hidden_layers + 1` tensors `[B, L, D]` as transformers' `hidden_states`: the
    /// embeddings, then each layer's output (the last one without `final_layer_norm`).
    pub hidden_states: Vec<Tensor>,
    /// `[B, D]`: `last_hidden_state` at the EOS position of each sequence.
    pub pooled: Tensor,
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self { weight: vb.get(dim, "weight")?, bias: vb.get(dim, "bias")?, eps: eps as f32 })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn new(c: &Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = c.hidden_size;
        let head_dim = d / c.num_attention_heads;
        Ok(Self {
            q_proj: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(d, d, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(d, d, vb.pp("out_proj"))?,
            heads: c.num_attention_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `x` `[B, L, D]`; `bias` `[B, 1, L, L]` added to the scores (0 or -inf).
    fn forward(&self, x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let split = |t: Tensor| t.reshape((b, l, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous();
        let q = split(self.q_proj.forward(x)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? * self.scale)?.broadcast_add(bias)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        self.out_proj.forward(&out)
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl EncoderLayer {
    fn new(c: &Config, activation: Activation, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = c.hidden_size;
        Ok(Self {
            layer_norm1: LayerNorm::new(d, c.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: Attention::new(c, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(d, c.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(d, c.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(c.intermediate_size, d, vb.pp("mlp.fc2"))?,
            activation,
        })
    }

    fn forward(&self, x: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
        let x = (x + self.self_attn.forward(&self.layer_norm1.forward(x)?, bias)?)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let h = match self.activation {
            Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            Activation::Gelu => h.gelu_erf()?,
        };
        x + self.fc2.forward(&h)?
    }
}

/// transformers' `CLIPTextModel` (inference).
pub struct ClipTextModel {
    config: Config,
    eos_token_id: i64,
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    device: Device,
}

impl std::fmt::Debug for ClipTextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTextModel").field("config", &self.config).finish()
    }
}

/// A candle error's message without the backtrace candle appends when `RUST_BACKTRACE` is set,
/// so that a refused file is reported in one line.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// What unused text-encoder tensors suggest, for the refusal.
fn unused_hint(unused: &[&str]) -> &'static str {
    if unused.iter().any(|n| n.contains("text_projection")) {
        " (a text projection: these are CLIPTextModelWithProjection / CLIPModel weights)"
    } else if unused.iter().any(|n| n.contains("encoder.layers.")) {
        " (more layers than num_hidden_layers)"
    } else {
        ""
    }
}

impl ClipTextModel {
    /// Loads a `text_encoder/` folder: `config.json` and the weights of the variant
    /// [`weights::preferred_variant`] picks (`model.safetensors`, else a lone
    /// `model.fp16.safetensors`; either may be sharded with an index).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_variant(dir, weights::preferred_variant(dir, TRANSFORMERS_WEIGHTS), device)
    }

    /// Loads the `text_encoder/` folder's weights of `variant` (see [`Variant`]).
    pub fn load_variant(dir: &Path, variant: Variant, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Input(format!("{}: not a text encoder folder", dir.display())));
        }
        // Weights first: a folder without them is "not a text encoder" before its config matters.
        let weights = Weights::load(dir, TRANSFORMERS_WEIGHTS, variant)?;
        let config = Config::from_file(&dir.join(CONFIG_FILE))?;
        Self::from_weights(config, &weights, device)
    }

    /// Loads the given `config.json` and safetensors file (f32, f16 or bf16 weights).
    pub fn load_files(config_path: &Path, weights_path: &Path, device: &Device) -> Result<Self> {
        let config = Config::from_file(config_path)?;
        let weights = Weights::open(&WeightFiles::Single(weights_path.to_path_buf()))?;
        Self::from_weights(config, &weights, device)
    }

    /// Builds the model from opened weights in either layout transformers has written (see
    /// [`ClipTextModel::from_tensors`]), reading each tensor as the model asks for it.
    pub fn from_weights(config: Config, weights: &Weights, device: &Device) -> Result<Self> {
        let context = || weights.files().iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        let prefixed = weights.contains("text_model.embeddings.token_embedding.weight");
        let position_ids = if prefixed { "text_model.embeddings.position_ids" } else { "embeddings.position_ids" };
        let model = Self::build(config, weights.var_builder(device), prefixed).map_err(|e| match e {
            Error::Candle(inner) => Error::Weights {
                context: context(),
                reason: format!("weights do not fit config.json: {}", first_line(&inner)),
            },
            other => other,
        })?;
        weights.check_all_used_hinted("CLIPTextModel", |n| n == position_ids, unused_hint).map_err(|e| match e {
            Error::Weights { reason, .. } => Error::Weights { context: context(), reason },
            other => other,
        })?;
        Ok(model)
    }

    /// Builds the model from named tensors in either layout transformers has written:
    /// `text_model.`-prefixed (transformers 4.x, every SD folder on the hub) or bare
    /// (transformers 5). The `position_ids` buffer older versions saved is ignored, as
    /// transformers ignores it; any other tensor the config does not account for is refused.
    pub fn from_tensors(config: Config, mut tensors: HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        let prefixed = tensors.contains_key("text_model.embeddings.token_embedding.weight");
        let prefix = if prefixed { "text_model." } else { "" };
        tensors.remove(&format!("{prefix}embeddings.position_ids"));
        let (root, usage) = TrackedTensors::var_builder(tensors, device);
        let model = Self::build(config, root, prefixed)?;
        usage.refuse_unused("CLIPTextModel", |unused| {
            unused_hint(&unused.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        })?;
        Ok(model)
    }

    /// The model from a [`VarBuilder`] over transformers' names (`text_model.`-prefixed or not).
    fn build(config: Config, root: VarBuilder, prefixed: bool) -> Result<Self> {
        config.validate()?;
        let activation = config.activation()?;
        let eos_token_id = config.eos_token_id()?;
        let device = root.device().clone();
        let vb = if prefixed { root.pp("text_model") } else { root };
        let c = &config;
        let d = c.hidden_size;
        let token_embedding = candle_nn::embedding(c.vocab_size, d, vb.pp("embeddings.token_embedding"))?;
        let position_embedding = vb.get((c.max_position_embeddings, d), "embeddings.position_embedding.weight")?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| EncoderLayer::new(c, activation, vb.pp(format!("encoder.layers.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_layer_norm = LayerNorm::new(d, c.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self { config, eos_token_id, token_embedding, position_embedding, layers, final_layer_norm, device })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Width of the hidden states (the UNet's `cross_attention_dim`).
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Token ids as rows, checked: `[B, L]` integers, `1 ≤ L ≤ max_position_embeddings`, every id
    /// below `vocab_size`.
    fn id_rows(&self, ids: &Tensor) -> Result<Vec<Vec<i64>>> {
        let dims = ids.dims();
        if dims.len() != 2 || dims[0] == 0 || dims[1] == 0 {
            return Err(Error::Input(format!("token ids must be a non-empty [batch, length] tensor, got {dims:?}")));
        }
        if !ids.dtype().is_int() {
            return Err(Error::Input(format!("token ids must be integers, got {:?}", ids.dtype())));
        }
        let max = self.config.max_position_embeddings;
        if dims[1] > max {
            return Err(Error::Input(format!(
                "{} tokens per sequence, the text encoder takes at most {max} (max_position_embeddings)",
                dims[1]
            )));
        }
        let rows = ids.to_dtype(DType::I64)?.to_vec2::<i64>()?;
        let vocab = self.config.vocab_size as i64;
        if let Some(bad) = rows.iter().flatten().find(|&&id| id < 0 || id >= vocab) {
            return Err(Error::Input(format!("token id {bad} is outside the text encoder's vocabulary (0..{vocab})")));
        }
        Ok(rows)
    }

    /// Where the pooled output is taken in each row, as transformers' `CLIPTextModel` does it:
    /// with `eos_token_id` 2 (the value configs had before transformers PR #24773, kept by
    /// every SD 1.x / 2.x folder) the position of the largest id (the first one if it repeats;
    /// with the real CLIP vocabulary that is the first `<|endoftext|>`, 49407); otherwise the
    /// first position of `eos_token_id`, or 0 where the row has none.
    pub fn pooled_positions(&self, rows: &[Vec<i64>]) -> Vec<usize> {
        rows.iter()
            .map(|row| {
                if self.eos_token_id == 2 {
                    let mut best = 0;
                    for (i, &id) in row.iter().enumerate() {
                        if id > row[best] {
                            best = i;
                        }
                    }
                    best
                } else {
                    row.iter().position(|&id| id == self.eos_token_id).unwrap_or(0)
                }
            })
            .collect()
    }

    /// The additive attention bias `[B, 1, L, L]`: -inf above the diagonal (causal) and at
    /// masked keys. `mask` must be 0/1 per token and keep the first token (BOS), so that every
    /// query still sees at least one key (transformers gives no defined result otherwise).
    fn attention_bias(&self, b: usize, l: usize, mask: Option<&Tensor>) -> Result<Tensor> {
        let keep: Vec<Vec<bool>> = match mask {
            None => vec![vec![true; l]; b],
            Some(m) => {
                if m.dims() != [b, l] {
                    return Err(Error::Input(format!(
                        "attention mask has shape {:?}, the token ids [{b}, {l}]",
                        m.dims()
                    )));
                }
                let rows = m.to_dtype(DType::F64)?.to_vec2::<f64>()?;
                if rows.iter().flatten().any(|&v| v != 0.0 && v != 1.0) {
                    return Err(Error::Input("attention mask values must be 0 or 1".into()));
                }
                if rows.iter().any(|r| r[0] == 0.0) {
                    return Err(Error::Input(
                        "attention mask hides the first token of a sequence (only right padding is supported)".into(),
                    ));
                }
                rows.iter().map(|r| r.iter().map(|&v| v == 1.0).collect()).collect()
            }
        };
        let mut bias = vec![0f32; b * l * l];
        for (bi, keep) in keep.iter().enumerate() {
            for q in 0..l {
                for (k, &kept) in keep.iter().enumerate() {
                    if k > q || !kept {
                        bias[(bi * l + q) * l + k] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(bias, (b, 1, l, l), &self.device)?)
    }

    /// The full forward pass: `ids` `[B, L]` (any integer type), an optional 0/1 attention mask
    /// `[B, L]` (the SD pipelines pass none; with one, padded keys are hidden as in transformers).
    pub fn forward(&self, ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<ClipTextOutput> {
        let rows = self.id_rows(ids)?;
        let (b, l) = (rows.len(), rows[0].len());
        let bias = self.attention_bias(b, l, attention_mask)?;
        let flat: Vec<u32> = rows.iter().flatten().map(|&id| id as u32).collect();
        let ids = Tensor::from_vec(flat, (b, l), &self.device)?;
        let positions = self.position_embedding.narrow(0, 0, l)?;
        let mut x = self.token_embedding.forward(&ids)?.broadcast_add(&positions)?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        for layer in &self.layers {
            let next = layer.forward(&x, &bias)?;
            hidden_states.push(x);
            x = next;
        }
        let last_hidden_state = self.final_layer_norm.forward(&x)?;
        hidden_states.push(x);
        let pooled = self
            .pooled_positions(&rows)
            .iter()
            .enumerate()
            .map(|(bi, &p)| last_hidden_state.i((bi, p)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = Tensor::stack(&pooled, 0)?;
        Ok(ClipTextOutput { last_hidden_state, hidden_states, pooled })
    }

    /// `final_layer_norm` alone: diffusers applies it to an earlier hidden state when a
    /// pipeline is called with `clip_skip`.
    pub fn final_layer_norm(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.final_layer_norm.forward(x)?)
    }

    /// The prompt embeddings a diffusers SD pipeline feeds its UNet: `last_hidden_state`
    /// with `clip_skip` 0 (the default), else `final_layer_norm(hidden_states[-(clip_skip + 1)])`
    /// as `StableDiffusionPipeline.encode_prompt` computes it.
    pub fn prompt_embeds(&self, ids: &Tensor, clip_skip: usize) -> Result<Tensor> {
        if clip_skip > self.layers.len() {
            return Err(Error::Input(format!(
                "clip_skip {clip_skip} is more than the text encoder's {} layers",
                self.layers.len()
            )));
        }
        let out = self.forward(ids, None)?;
        if clip_skip == 0 {
            return Ok(out.last_hidden_state);
        }
        let h = &out.hidden_states[out.hidden_states.len() - 1 - clip_skip];
        self.final_layer_norm(h)
    }
}
