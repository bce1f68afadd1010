//! A Vision Transformer (Dosovitskiy et al. 2021) in candle, with timm's weight names, that
//! accepts per-task LoRA updates on its attention projections.
//!
//! candle-transformers has a ViT and a DINOv2, but their fields are private (no LoRA) and its
//! DINOv2 resizes the position embedding with nearest-neighbour sampling, which changes the
//! tokens far beyond 1e-4. This one covers:
//!
//! - DINOv2 ViT-S/14 (LayerScale, CLS token, position embedding stored for a 37×37 grid and
//!   resized bicubically — Keys a = −0.75, half-pixel centres, clamped edges, no antialias —
//!   to the input's patch grid, exactly as the ONNX graph and `F.interpolate` do);
//! - timm ViT-B/16 (MeLo's backbone: no LayerScale, position embedding at its native grid);
//! - any timm `VisionTransformer` with a CLS token, e.g. the tiny test fixture.
//!
//! Weights: safetensors with timm keys (`blocks.N.attn.qkv.weight`, …), any float type
//! (the shipped backbone is f16), always computed in f32.
//!
//! LoRA: the frozen `qkv` projection is computed once, then `scale · (x Aᵀ) Bᵀ` is added to
//! the q and v slices (MeLo) or to the whole fused qkv (PEFT with `target_modules=["qkv"]`).
//! The deltas are passed to [`VisionTransformer::forward`] per call, so switching tasks never
//! copies or modifies a backbone weight.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::core;
use super::error::{Error, Result};
use super::kernels::add_repeated_;
use super::safetensors_io::TensorFile;

/// Largest attention-score tensor one forward pass may allocate (bytes).
const MAX_ATTENTION_BYTES: u128 = 4 << 30;

/// Architecture of a ViT. Field names follow timm's constructor (with `img_size` accepted as
/// an alias) and `assets/backbone/config.json`, so both deserialise directly into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The input side the model is normally run at (pixels, square).
    #[serde(alias = "img_size")]
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    /// MLP hidden width = embed_dim × mlp_ratio.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    /// Per-channel residual scaling (`ls1.gamma`, `ls2.gamma`), as in DINOv2 and CaiT.
    #[serde(default, alias = "layerscale")]
    pub layer_scale: bool,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Side of the square patch grid the stored `pos_embed` covers (37 for DINOv2, trained at
    /// 518 px). `None`: whatever the file holds. Other input grids are resized to bicubically.
    #[serde(default)]
    pub pos_embed_grid: Option<usize>,
    /// The normalisation the backbone was pretrained with (adapters carry their own).
    #[serde(default = "imagenet_mean")]
    pub mean: [f32; 3],
    #[serde(default = "imagenet_std")]
    pub std: [f32; 3],
}

fn default_in_chans() -> usize {
    3
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_true() -> bool {
    true
}
fn default_eps() -> f64 {
    1e-6
}
fn imagenet_mean() -> [f32; 3] {
    [0.485, 0.456, 0.406]
}
fn imagenet_std() -> [f32; 3] {
    [0.229, 0.224, 0.225]
}

impl Config {
    /// DINOv2 ViT-S/14 as shipped in `assets/backbone/` (run at 224 px).
    pub fn dinov2_vits14() -> Self {
        Self {
            image_size: 224,
            patch_size: 14,
            in_chans: 3,
            embed_dim: 384,
            depth: 12,
            num_heads: 6,
            mlp_ratio: 4.0,
            qkv_bias: true,
            layer_scale: true,
            layer_norm_eps: 1e-6,
            pos_embed_grid: Some(37),
            mean: imagenet_mean(),
            std: imagenet_std(),
        }
    }

    /// timm `vit_base_patch16_224` (MeLo's backbone; timm's default weights use mean = std = 0.5).
    pub fn vit_base_patch16_224() -> Self {
        Self {
            image_size: 224,
            patch_size: 16,
            in_chans: 3,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            qkv_bias: true,
            layer_scale: false,
            layer_norm_eps: 1e-6,
            pos_embed_grid: Some(14),
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }

    /// Reads a JSON config (e.g. `assets/backbone/config.json`); unknown keys are ignored.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: Config =
            serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads.max(1)
    }

    pub fn mlp_hidden_dim(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio).round() as usize
    }

    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if self.patch_size == 0 || self.embed_dim == 0 || self.depth == 0 || self.num_heads == 0 || self.in_chans == 0 {
            return fail("patch_size, embed_dim, depth, num_heads and in_chans must be positive".into());
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return fail(format!("embed_dim {} is not divisible by num_heads {}", self.embed_dim, self.num_heads));
        }
        if self.image_size < self.patch_size {
            return fail(format!("image_size {} is smaller than patch_size {}", self.image_size, self.patch_size));
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio.is_finite()) || self.mlp_hidden_dim() == 0 {
            return fail(format!("mlp_ratio {} is not a positive number", self.mlp_ratio));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return fail(format!("layer_norm_eps {} is not in (0, 1)", self.layer_norm_eps));
        }
        if self.std.iter().any(|s| !(*s > 0.0 && s.is_finite())) || self.mean.iter().any(|m| !m.is_finite()) {
            return fail("mean must be finite and std positive".into());
        }
        Ok(())
    }
}

/// Which tokens a classification head reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The CLS token after the final norm (timm `global_pool='token'`; MeLo and PEFT heads).
    #[default]
    Cls,
    /// The mean of the patch tokens after the final norm.
    MeanPatch,
    /// CLS ‖ mean patch (2 × dim): the DINOv2 linear-probe feature.
    ClsMeanPatch,
}

impl Pooling {
    /// Width of the pooled feature for a backbone of width `embed_dim`.
    pub fn feature_dim(self, embed_dim: usize) -> usize {
        match self {
            Pooling::Cls | Pooling::MeanPatch => embed_dim,
            Pooling::ClsMeanPatch => 2 * embed_dim,
        }
    }
}

/// One low-rank update of a linear map: `Δ(x) = scale · (x Aᵀ) Bᵀ`, A [r, in], B [out, r].
#[derive(Debug, Clone)]
pub struct LowRank {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

impl LowRank {
    pub fn new(a: Tensor, b: Tensor, scale: f64) -> Result<Self> {
        let (Ok((r, _)), Ok((_, r_b))) = (a.dims2(), b.dims2()) else {
            return Err(Error::weights("LoRA", format!("A {:?} and B {:?} must be matrices", a.dims(), b.dims())));
        };
        if r != r_b || r == 0 {
            return Err(Error::weights("LoRA", format!("A {:?} and B {:?} disagree on the rank", a.dims(), b.dims())));
        }
        if !scale.is_finite() {
            return Err(Error::weights("LoRA", format!("scale {scale} is not finite")));
        }
        Ok(Self { a: a.to_dtype(DType::F32)?.contiguous()?, b: b.to_dtype(DType::F32)?.contiguous()?, scale })
    }

    pub fn a(&self) -> &Tensor {
        &self.a
    }
    pub fn b(&self) -> &Tensor {
        &self.b
    }
    pub fn scale(&self) -> f64 {
        self.scale
    }
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }
    pub fn in_dim(&self) -> usize {
        self.a.dims()[1]
    }
    pub fn out_dim(&self) -> usize {
        self.b.dims()[0]
    }

    /// `scale · (x Aᵀ) Bᵀ` for x [M, in]. Scaling the [M, r] intermediate costs M·r
    /// multiplications, less than scaling either factor or the output.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let low = x.matmul(&self.a.t()?)?.affine(self.scale, 0.0)?;
        Ok(low.matmul(&self.b.t()?)?)
    }
}

/// The LoRA update of one attention block.
#[derive(Debug, Clone)]
pub enum QkvLora {
    /// MeLo: separate updates of q and v (k untouched), each [dim → dim].
    QV { q: LowRank, v: LowRank },
    /// HF PEFT on timm's fused `qkv` Linear: one update [dim → 3·dim] touching q, k and v.
    Fused(LowRank),
    /// The fused qkv update and one on each MLP map (`melo train --targets qkv,mlp`).
    FusedMlp { qkv: LowRank, fc1: LowRank, fc2: LowRank },
}

impl QkvLora {
    pub fn rank(&self) -> usize {
        self.parts()[0].1.rank()
    }

    /// Each update with the map (and columns) it acts on, in the core's order.
    pub fn parts(&self) -> Vec<(core::Target, &LowRank)> {
        match self {
            QkvLora::QV { q, v } => vec![(core::Target::Q, q), (core::Target::V, v)],
            QkvLora::Fused(f) => vec![(core::Target::Qkv, f)],
            QkvLora::FusedMlp { qkv, fc1, fc2 } => {
                vec![(core::Target::Qkv, qkv), (core::Target::Fc1, fc1), (core::Target::Fc2, fc2)]
            }
        }
    }
}

/// The checkpoint's own classifier, if it has one: weight [in, out], bias [out].
struct Head {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

/// What one forward pass returns.
#[derive(Debug, Clone)]
pub struct VitOutput {
    /// Final-norm tokens [B, 1 + gh·gw, dim]: CLS first, then patches row-major.
    pub tokens: Tensor,
    /// The patch grid (rows, cols).
    pub grid: (usize, usize),
    /// Head-averaged attention probabilities of each block, [B, T, T]; empty unless asked.
    pub attention: Vec<Tensor>,
}

impl VitOutput {
    /// The pooled feature [B, F] a head reads.
    pub fn pooled(&self, pooling: Pooling) -> Result<Tensor> {
        let cls = || -> Result<Tensor> { Ok(self.tokens.i((.., 0, ..))?.contiguous()?) };
        let mean = || -> Result<Tensor> {
            let n = self.tokens.dim(1)?;
            Ok(self.tokens.narrow(1, 1, n - 1)?.mean(1)?)
        };
        match pooling {
            Pooling::Cls => cls(),
            Pooling::MeanPatch => mean(),
            Pooling::ClsMeanPatch => Ok(Tensor::cat(&[cls()?, mean()?], 1)?),
        }
    }

    /// Attention rollout (Abnar & Zuidema 2020) for item `index` of the batch: the CLS row of
    /// Π_l (½·A_l + ½·I), A_l the head-averaged attention of block l (the identity accounts
    /// for the residual path), over the patch grid, row-major, scaled to max 1.
    /// Needs a forward pass run with attention kept.
    pub fn rollout(&self, index: usize) -> Result<Vec<f32>> {
        if self.attention.is_empty() {
            return Err(Error::Unsupported("attention rollout needs a forward pass with attention kept".into()));
        }
        let t = self.tokens.dim(1)?;
        let eye = Tensor::eye(t, DType::F32, &Device::Cpu)?;
        // Row 0 of A_L ⋯ A_1 is e₀ᵀ A_L ⋯ A_1: multiply a row vector from the last block down.
        let mut row = eye.narrow(0, 0, 1)?;
        for attention in self.attention.iter().rev() {
            let a = ((attention.get(index)? * 0.5)? + (&eye * 0.5)?)?;
            row = row.matmul(&a)?;
        }
        let mut map = row.flatten_all()?.narrow(0, 1, t - 1)?.to_vec1::<f32>()?;
        let max = map.iter().copied().fold(0.0f32, f32::max);
        if max > 0.0 {
            map.iter_mut().for_each(|v| *v /= max);
        }
        Ok(map)
    }
}

/// The ViT backbone (no classification head except the checkpoint's own, if it has one).
pub struct VisionTransformer {
    config: Config,
    /// Every weight as plain f32 buffers, LayerScale folded into `proj` / `fc2`; the patch
    /// embedding as a matrix [C·p·p, dim] (the conv kernel flattened, transposed: stride =
    /// kernel, so the convolution is one matmul over non-overlapping patches).
    weights: core::Weights,
    arch: core::Backbone,
    /// The CLS row of the position embedding [1, dim] and its grid rows [g, g, dim].
    pos_cls: Tensor,
    pos_grid: Tensor,
    stored_grid: usize,
    /// Position embeddings [1, 1 + gh·gw, dim] per input grid, computed once.
    pos_cache: Mutex<HashMap<(usize, usize), Tensor>>,
    head: Option<Head>,
    sha256: String,
}

impl std::fmt::Debug for VisionTransformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionTransformer")
            .field("config", &self.config)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Lowercase hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl VisionTransformer {
    /// Loads timm-named weights from a safetensors file. The file's sha256 is computed from
    /// the bytes already read (in parallel with parsing), so adapters can be matched to it.
    pub fn load(path: &Path, config: Config) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (sha256, file) = rayon::join(|| sha256_hex(&bytes), || TensorFile::parse(path, &bytes));
        drop(bytes);
        Self::from_file(&file?, config, sha256)
    }

    /// Builds the model from weights in memory (`sha256` identifies them to adapters).
    pub(crate) fn from_file(file: &TensorFile, config: Config, sha256: String) -> Result<Self> {
        config.validate()?;
        let d = config.embed_dim;
        let c = config.in_chans;
        let p = config.patch_size;
        let hidden = config.mlp_hidden_dim();
        let mut used: HashSet<String> = HashSet::new();
        let mut get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            used.insert(name.to_string());
            file.f32(name, shape)
        };

        let patch_weight = get("patch_embed.proj.weight", &[d, c, p, p])?.reshape((d, c * p * p))?;
        let patch = core::Linear::new(&patch_weight, Some(&get("patch_embed.proj.bias", &[d])?))?;
        let cls = get("cls_token", &[1, 1, d])?.flatten_all()?.to_vec1::<f32>()?;

        // pos_embed [1, 1 + g², dim]: g from the file, checked against the config if given.
        let pos_shape = file.shape_of("pos_embed").map(<[usize]>::to_vec).unwrap_or_default();
        let stored_grid = match pos_shape.as_slice() {
            [1, n, dd] if *dd == d && *n >= 2 => {
                let g = ((n - 1) as f64).sqrt().round() as usize;
                if g * g + 1 != *n {
                    return Err(Error::weights("pos_embed", format!("{n} rows is not 1 + a square grid")));
                }
                g
            }
            _ => {
                return Err(Error::weights(
                    file.path.display().to_string(),
                    format!("pos_embed has shape {pos_shape:?}, expected [1, 1 + g², {d}] (a CLS token is required)"),
                ))
            }
        };
        if let Some(g) = config.pos_embed_grid {
            if g != stored_grid {
                return Err(Error::weights(
                    "pos_embed",
                    format!("stores a {stored_grid}×{stored_grid} grid, the config says {g}×{g}"),
                ));
            }
        }
        let pos = get("pos_embed", &pos_shape)?;
        let pos_cls = pos.i((0, 0..1, ..))?.contiguous()?;
        let pos_grid = pos.i((0, 1.., ..))?.reshape((stored_grid, stored_grid, d))?;

        let norm = |get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>, prefix: &str| -> Result<core::Norm> {
            let (w, b) = (get(&format!("{prefix}.weight"), &[d])?, get(&format!("{prefix}.bias"), &[d])?);
            core::Norm::new(&w, &b, config.layer_norm_eps as f32)
        };
        let linear = |get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
                      prefix: &str,
                      out: usize,
                      inp: usize,
                      bias: bool|
         -> Result<core::Linear> {
            let weight = get(&format!("{prefix}.weight"), &[out, inp])?;
            let bias = if bias { Some(get(&format!("{prefix}.bias"), &[out])?) } else { None };
            core::Linear::new(&weight, bias.as_ref())
        };

        let mut blocks = Vec::with_capacity(config.depth);
        for i in 0..config.depth {
            let b = format!("blocks.{i}");
            let norm1 = norm(&mut get, &format!("{b}.norm1"))?;
            let qkv = linear(&mut get, &format!("{b}.attn.qkv"), 3 * d, d, config.qkv_bias)?;
            let mut proj = linear(&mut get, &format!("{b}.attn.proj"), d, d, true)?;
            let norm2 = norm(&mut get, &format!("{b}.norm2"))?;
            let fc1 = linear(&mut get, &format!("{b}.mlp.fc1"), hidden, d, true)?;
            let mut fc2 = linear(&mut get, &format!("{b}.mlp.fc2"), d, hidden, true)?;
            if config.layer_scale {
                proj = proj.scale_outputs(&get(&format!("{b}.ls1.gamma"), &[d])?)?;
                fc2 = fc2.scale_outputs(&get(&format!("{b}.ls2.gamma"), &[d])?)?;
            }
            blocks.push(core::Block { norm1, qkv, proj, norm2, fc1, fc2 });
        }
        let final_norm = norm(&mut get, "norm")?;

        // The checkpoint's own classifier, if any (timm ViT-B/16's ImageNet head, the fixture's
        // base head). Any other tensor means the file is not the architecture the config says.
        let head = match file.shape_of("head.weight").map(<[usize]>::to_vec) {
            Some(shape) if shape.len() == 2 && shape[1] == d => {
                let weight = get("head.weight", &shape)?;
                let bias = if file.contains("head.bias") { Some(get("head.bias", &[shape[0]])?) } else { None };
                Some(Head { weight_t: weight.t()?.contiguous()?, bias })
            }
            Some(shape) => {
                return Err(Error::weights(
                    "head.weight",
                    format!("shape {shape:?} does not read a {d}-wide CLS token"),
                ))
            }
            None => None,
        };
        let mut unexpected: Vec<&str> = file.names().filter(|n| !used.contains(*n)).collect();
        if !unexpected.is_empty() {
            unexpected.sort_unstable();
            let more = if unexpected.len() > 5 { format!(" and {} more", unexpected.len() - 5) } else { String::new() };
            return Err(Error::weights(
                file.path.display().to_string(),
                format!(
                    "tensors not part of the configured architecture (depth {}, layer_scale {}, qkv_bias {}): {}{more}",
                    config.depth,
                    config.layer_scale,
                    config.qkv_bias,
                    unexpected[..unexpected.len().min(5)].join(", ")
                ),
            ));
        }

        let model = Self {
            weights: core::Weights { patch, cls, blocks, norm: final_norm },
            arch: core::Backbone::new(config.num_heads, p),
            pos_cls,
            pos_grid,
            stored_grid,
            pos_cache: Mutex::new(HashMap::new()),
            head,
            sha256,
            config,
        };
        // Warm the cache for the usual input size so the first prediction is not slower.
        let g = model.config.image_size / model.config.patch_size;
        model.position_embedding(g, g)?;
        Ok(model)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// sha256 of the weights file this model was loaded from (adapters are bound to it).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn embed_dim(&self) -> usize {
        self.config.embed_dim
    }

    pub fn depth(&self) -> usize {
        self.config.depth
    }

    /// The weights (plain f32, LayerScale folded), e.g. as full fine-tuning's starting point.
    pub fn weights(&self) -> &core::Weights {
        &self.weights
    }

    /// The architecture the weights run in (heads, patch size).
    pub fn arch(&self) -> core::Backbone {
        self.arch
    }

    /// Logits of the checkpoint's own head on the CLS token, if the file had a head.
    pub fn base_logits(&self, output: &VitOutput) -> Result<Option<Tensor>> {
        match &self.head {
            Some(head) => {
                let y = output.pooled(Pooling::Cls)?.matmul(&head.weight_t)?;
                Ok(Some(match &head.bias {
                    Some(b) => add_repeated_(y, b)?,
                    None => y,
                }))
            }
            None => Ok(None),
        }
    }

    /// Checks that a set of per-block LoRA updates fits this model.
    pub fn check_lora(&self, lora: &[QkvLora]) -> Result<()> {
        self.arch.check(&self.weights, &core_lora(lora)?)
    }

    /// The position embedding for a gh × gw patch grid: [1, 1 + gh·gw, dim] (CLS row first,
    /// the stored grid resized bicubically when gh × gw differs from it).
    pub fn position_embedding(&self, gh: usize, gw: usize) -> Result<Tensor> {
        if let Ok(cache) = self.pos_cache.lock() {
            if let Some(t) = cache.get(&(gh, gw)) {
                return Ok(t.clone());
            }
        }
        let d = self.config.embed_dim;
        let g = self.stored_grid;
        let grid = if (gh, gw) == (g, g) {
            self.pos_grid.reshape((g * g, d))?
        } else {
            let values = self.pos_grid.flatten_all()?.to_vec1::<f32>()?;
            Tensor::from_vec(resize_grid_bicubic(&values, g, d, gh, gw), (gh * gw, d), &Device::Cpu)?
        };
        let pos = Tensor::cat(&[&self.pos_cls, &grid], 0)?.unsqueeze(0)?;
        if let Ok(mut cache) = self.pos_cache.lock() {
            cache.insert((gh, gw), pos.clone());
        }
        Ok(pos)
    }

    /// Final-norm tokens for a batch of normalised images [B, C, H, W] (H, W multiples of the
    /// patch size; extra pixels are cropped like the strided convolution does), with the given
    /// per-block LoRA updates (`None`: the frozen backbone).
    pub fn forward(&self, pixels: &Tensor, lora: Option<&[QkvLora]>) -> Result<VitOutput> {
        self.forward_impl(pixels, lora, false)
    }

    /// As [`forward`](Self::forward), also keeping each block's head-averaged attention.
    pub fn forward_with_attention(&self, pixels: &Tensor, lora: Option<&[QkvLora]>) -> Result<VitOutput> {
        self.forward_impl(pixels, lora, true)
    }

    fn forward_impl(&self, pixels: &Tensor, lora: Option<&[QkvLora]>, keep_attention: bool) -> Result<VitOutput> {
        let cfg = &self.config;
        let (b, c, h, w) = pixels
            .dims4()
            .map_err(|_| Error::weights("input", format!("expected [B, C, H, W], got {:?}", pixels.dims())))?;
        let p = cfg.patch_size;
        if c != cfg.in_chans || h < p || w < p || b == 0 {
            return Err(Error::weights(
                "input",
                format!("got {:?}, expected [B ≥ 1, {}, H ≥ {p}, W ≥ {p}]", pixels.dims(), cfg.in_chans),
            ));
        }
        let (gh, gw) = (h / p, w / p);
        let d = cfg.embed_dim;
        let n = gh * gw;
        let t = n + 1;
        // Attention scores take B·H·T² floats: refuse inputs that could not be allocated
        // rather than abort on allocation failure.
        let score_bytes = (b as u128) * (cfg.num_heads as u128) * (t as u128) * (t as u128) * 4;
        if score_bytes > MAX_ATTENTION_BYTES {
            return Err(Error::weights(
                "input",
                format!("{b} image(s) of {h}×{w} px give {t} tokens; attention would need {} MiB", score_bytes >> 20),
            ));
        }

        let lora = match lora {
            Some(blocks) => core_lora(blocks)?,
            None => core::Lora::none(cfg.depth),
        };
        let pos = self.position_embedding(gh, gw)?;
        let (tokens, attention) = self.arch.tokens(&self.weights, &lora, (pixels, &pos), keep_attention)?;
        let tokens = Tensor::from_vec(tokens, (b, t, d), &Device::Cpu)?;
        let attention = attention
            .into_iter()
            .map(|a| Ok(Tensor::from_vec(a, (b, t, t), &Device::Cpu)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(VitOutput { tokens, grid: (gh, gw), attention })
    }
}

/// The core's form of per-block LoRA updates.
fn core_lora(blocks: &[QkvLora]) -> Result<core::Lora> {
    let update = |target, l: &LowRank| -> Result<core::Update> {
        let values = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        Ok(core::Update { target, rank: l.rank(), scale: l.scale() as f32, a: values(&l.a)?, b: values(&l.b)? })
    };
    let blocks = blocks
        .iter()
        .map(|block| block.parts().into_iter().map(|(t, l)| update(t, l)).collect())
        .collect::<Result<Vec<_>>>()?;
    Ok(core::Lora { blocks })
}

/// Keys cubic convolution kernel, a = −0.75 (PyTorch's and ONNX's bicubic).
fn cubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.75;
    let x = x.abs();
    if x <= 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// The 1-D bicubic resize n_in → n_out as a dense [n_out, n_in] matrix: half-pixel centres,
/// taps clamped to the edge, no antialias (`F.interpolate(..., align_corners=False)`).
pub fn bicubic_matrix(n_in: usize, n_out: usize) -> Vec<f64> {
    let mut m = vec![0.0; n_out * n_in];
    let scale = n_in as f64 / n_out as f64;
    for o in 0..n_out {
        let src = (o as f64 + 0.5) * scale - 0.5;
        let i0 = src.floor();
        let frac = src - i0;
        let weights =
            [cubic_kernel(frac + 1.0), cubic_kernel(frac), cubic_kernel(1.0 - frac), cubic_kernel(2.0 - frac)];
        for (k, w) in weights.iter().enumerate() {
            let tap = (i0 as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
            m[o * n_in + tap] += w;
        }
    }
    m
}

/// Resizes a [g, g, dim] grid (row-major) to [gh, gw, dim] with separable bicubic
/// interpolation, accumulated in f64.
pub fn resize_grid_bicubic(grid: &[f32], g: usize, dim: usize, gh: usize, gw: usize) -> Vec<f32> {
    let rows = bicubic_matrix(g, gh);
    let cols = bicubic_matrix(g, gw);
    // Along rows: tmp[i, b, :] = Σ_a rows[i, a] · grid[a, b, :].
    let mut tmp = vec![0.0f64; gh * g * dim];
    for i in 0..gh {
        for a in 0..g {
            let w = rows[i * g + a];
            if w == 0.0 {
                continue;
            }
            for bcol in 0..g {
                let src = &grid[(a * g + bcol) * dim..(a * g + bcol + 1) * dim];
                let dst = &mut tmp[(i * g + bcol) * dim..(i * g + bcol + 1) * dim];
                dst.iter_mut().zip(src).for_each(|(o, &s)| *o += w * f64::from(s));
            }
        }
    }
    // Along columns: out[i, j, :] = Σ_b cols[j, b] · tmp[i, b, :].
    let mut out = vec![0.0f64; gh * gw * dim];
    for i in 0..gh {
        for j in 0..gw {
            for bcol in 0..g {
                let w = cols[j * g + bcol];
                if w == 0.0 {
                    continue;
                }
                let src = &tmp[(i * g + bcol) * dim..(i * g + bcol + 1) * dim];
                let dst = &mut out[(i * gw + j) * dim..(i * gw + j + 1) * dim];
                dst.iter_mut().zip(src).for_each(|(o, &s)| *o += w * s);
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_rows_sum_to_one_and_identity_at_same_size() {
        let m = bicubic_matrix(37, 16);
        for o in 0..16 {
            let s: f64 = m[o * 37..(o + 1) * 37].iter().sum();
            assert!((s - 1.0).abs() < 1e-12, "row {o} sums to {s}");
        }
        let id = bicubic_matrix(5, 5);
        for o in 0..5 {
            for i in 0..5 {
                let want = if o == i { 1.0 } else { 0.0 };
                assert!((id[o * 5 + i] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn config_reads_timm_kwargs_and_backbone_json() {
        let timm: Config = serde_json::from_str(
            r#"{"img_size": 32, "patch_size": 8, "in_chans": 3, "embed_dim": 64, "depth": 2,
                "num_heads": 4, "mlp_ratio": 4.0, "num_classes": 3, "class_token": true, "qkv_bias": true}"#,
        )
        .unwrap();
        assert_eq!(timm.image_size, 32);
        assert!(!timm.layer_scale);
        assert_eq!(timm.mlp_hidden_dim(), 256);
        let dino: Config = serde_json::from_str(
            r#"{"image_size": 224, "patch_size": 14, "embed_dim": 384, "depth": 12,
            "num_heads": 6, "layerscale": true, "pos_embed_grid": 37}"#,
        )
        .unwrap();
        assert!(dino.layer_scale);
        assert_eq!(dino, Config::dinov2_vits14());
    }

    #[test]
    fn invalid_config_is_refused() {
        let mut c = Config::dinov2_vits14();
        c.num_heads = 5;
        assert!(c.validate().is_err());
    }
}
