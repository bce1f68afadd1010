//! A differentiable forward pass of the backbone on candle's autograd.
//!
//! The engine's forward ([`VisionTransformer::forward`]) works in place on fresh buffers and
//! keeps no graph; training needs one. This re-states the same computation (pre-norm blocks,
//! LayerScale folded into `proj` / `fc2`, bicubic position embedding, exact GELU) with
//! differentiable candle ops. Two things keep it affordable on a CPU:
//!
//! - frozen matrices go through [`FrozenMatmul`], an op whose backward returns the input
//!   gradient only: candle's own matmul backward also computes the (discarded) weight
//!   gradient, a third more work per linear layer;
//! - LayerNorm and softmax are written from primitive ops because candle-nn's fused versions
//!   have no backward.
//!
//! Parity with the engine's forward is tested (`tests/train.rs`).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, Var, D};

use super::Result;
use crate::model::vit::{LinearWeights, NormWeights, VitWeights};
use crate::model::{Pooling, VisionTransformer};

/// `x · W` for a constant W [in, out]; backward returns only ∂/∂x = grad · Wᵀ.
struct FrozenMatmul {
    weight_t: Tensor,
    /// W [out, in], contiguous, for the backward product.
    weight: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(values) = storage else {
            candle_core::bail!("frozen-matmul: f32 input expected");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-matmul: contiguous input expected");
        };
        let x = Tensor::from_slice(&values[start..end], layout.shape(), &candle_core::Device::Cpu)?;
        let y = x.matmul(&self.weight_t)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.matmul(&self.weight)?))
    }
}

/// A linear map whose weight is either frozen (no gradient) or a trainable variable.
pub struct Linear {
    weight_t: Tensor,
    frozen: Option<std::sync::Arc<FrozenMatmulShared>>,
    bias: Option<Tensor>,
}

/// The frozen op's tensors, shared by every call.
pub struct FrozenMatmulShared {
    weight_t: Tensor,
    weight: Tensor,
}

impl Linear {
    fn frozen(w: &LinearWeights) -> Result<Self> {
        Ok(Self {
            weight_t: w.weight_t.clone(),
            frozen: Some(std::sync::Arc::new(FrozenMatmulShared {
                weight_t: w.weight_t.clone(),
                weight: w.weight_t.t()?.contiguous()?,
            })),
            bias: w.bias.clone(),
        })
    }

    fn trainable(w: &LinearWeights, vars: &mut Vec<(String, Var)>, name: &str) -> Result<Self> {
        let weight = Var::from_tensor(&w.weight_t.copy()?)?;
        vars.push((format!("{name}.weight_t"), weight.clone()));
        let bias = match &w.bias {
            Some(b) => {
                let v = Var::from_tensor(&b.copy()?)?;
                vars.push((format!("{name}.bias"), v.clone()));
                Some(v.as_tensor().clone())
            }
            None => None,
        };
        Ok(Self { weight_t: weight.as_tensor().clone(), frozen: None, bias })
    }

    /// x [M, in] → [M, out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.frozen {
            Some(f) => {
                x.contiguous()?.apply_op1(FrozenMatmul { weight_t: f.weight_t.clone(), weight: f.weight.clone() })?
            }
            None => x.matmul(&self.weight_t)?,
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Norm {
    fn new(n: &NormWeights, trainable: Option<(&mut Vec<(String, Var)>, &str)>) -> Result<Self> {
        let (weight, bias) = match trainable {
            Some((vars, name)) => {
                let w = Var::from_tensor(&n.weight.copy()?)?;
                let b = Var::from_tensor(&n.bias.copy()?)?;
                vars.push((format!("{name}.weight"), w.clone()));
                vars.push((format!("{name}.bias"), b.clone()));
                (w.as_tensor().clone(), b.as_tensor().clone())
            }
            None => (n.weight.clone(), n.bias.clone()),
        };
        Ok(Self { weight, bias, eps: f64::from(n.eps) })
    }

    /// LayerNorm over the last dimension, from primitive (differentiable) ops.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// The LoRA factors of one block: q and v, each A [r, dim], B [dim, r].
#[derive(Clone)]
pub struct BlockLora {
    pub q_a: Var,
    pub q_b: Var,
    pub v_a: Var,
    pub v_b: Var,
}

struct Block {
    norm1: Norm,
    qkv: Linear,
    proj: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trainable {
    /// Backbone frozen; LoRA factors (rank r, scale) on q and v of every block.
    Lora { rank: usize, scale: f64 },
    /// Backbone frozen, no LoRA: the head only.
    Head,
    /// Every backbone weight.
    Full,
}

/// The backbone for training: frozen or trainable weights, optional LoRA factors.
pub struct GradVit {
    patch: Linear,
    cls_token: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
    lora: Vec<BlockLora>,
    lora_scale: f64,
    num_heads: usize,
    patch_size: usize,
    /// Every trainable backbone tensor (full fine-tuning) with a name.
    pub backbone_vars: Vec<(String, Var)>,
}

/// Samples U(−bound, bound) with a seeded generator.
pub fn uniform(rng: &mut impl rand::Rng, shape: (usize, usize), bound: f64) -> Result<Tensor> {
    let values: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.random_range(-bound..bound) as f32).collect();
    Ok(Tensor::from_vec(values, shape, &candle_core::Device::Cpu)?)
}

impl GradVit {
    /// Wraps `vit`'s weights. For LoRA, A is drawn kaiming-uniform (a = √5, i.e. U(±1/√dim),
    /// as PyTorch's Linear and PEFT) and B is zero, so training starts at the frozen model.
    pub fn new(vit: &VisionTransformer, trainable: Trainable, rng: &mut impl rand::Rng) -> Result<Self> {
        let w: VitWeights = vit.weights();
        let cfg = vit.config();
        let d = cfg.embed_dim;
        let full = trainable == Trainable::Full;
        let mut backbone_vars = Vec::new();
        let lin = |l: &LinearWeights, vars: &mut Vec<(String, Var)>, name: &str| -> Result<Linear> {
            if full {
                Linear::trainable(l, vars, name)
            } else {
                Linear::frozen(l)
            }
        };
        let patch = lin(
            &LinearWeights { weight_t: w.patch_weight.clone(), bias: Some(w.patch_bias.clone()) },
            &mut backbone_vars,
            "patch_embed",
        )?;
        let cls_token = if full {
            let v = Var::from_tensor(&w.cls_token.copy()?)?;
            backbone_vars.push(("cls_token".into(), v.clone()));
            v.as_tensor().clone()
        } else {
            w.cls_token.clone()
        };
        let mut blocks = Vec::new();
        for (i, b) in w.blocks.iter().enumerate() {
            let name = |s: &str| format!("blocks.{i}.{s}");
            let (n1, n2) = (name("norm1"), name("norm2"));
            let norm1 = Norm::new(&b.norm1, if full { Some((&mut backbone_vars, n1.as_str())) } else { None })?;
            let qkv = lin(&b.qkv, &mut backbone_vars, &name("attn.qkv"))?;
            let proj = lin(&b.proj, &mut backbone_vars, &name("attn.proj"))?;
            let norm2 = Norm::new(&b.norm2, if full { Some((&mut backbone_vars, n2.as_str())) } else { None })?;
            let fc1 = lin(&b.fc1, &mut backbone_vars, &name("mlp.fc1"))?;
            let fc2 = lin(&b.fc2, &mut backbone_vars, &name("mlp.fc2"))?;
            blocks.push(Block { norm1, qkv, proj, norm2, fc1, fc2 });
        }
        let norm = Norm::new(&w.norm, if full { Some((&mut backbone_vars, "norm")) } else { None })?;
        let (lora, lora_scale) = match trainable {
            Trainable::Lora { rank, scale } => {
                let bound = 1.0 / (d as f64).sqrt();
                let mut lora = Vec::new();
                for _ in 0..cfg.depth {
                    lora.push(BlockLora {
                        q_a: Var::from_tensor(&uniform(rng, (rank, d), bound)?)?,
                        q_b: Var::zeros((d, rank), candle_core::DType::F32, &candle_core::Device::Cpu)?,
                        v_a: Var::from_tensor(&uniform(rng, (rank, d), bound)?)?,
                        v_b: Var::zeros((d, rank), candle_core::DType::F32, &candle_core::Device::Cpu)?,
                    });
                }
                (lora, scale)
            }
            _ => (Vec::new(), 0.0),
        };
        Ok(Self {
            patch,
            cls_token,
            blocks,
            norm,
            lora,
            lora_scale,
            num_heads: cfg.num_heads,
            patch_size: cfg.patch_size,
            backbone_vars,
        })
    }

    pub fn lora(&self) -> &[BlockLora] {
        &self.lora
    }

    /// Every LoRA variable with its adapter-file name.
    pub fn lora_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, l) in self.lora.iter().enumerate() {
            out.push((format!("blocks.{i}.attn.q.lora_A"), l.q_a.clone()));
            out.push((format!("blocks.{i}.attn.q.lora_B"), l.q_b.clone()));
            out.push((format!("blocks.{i}.attn.v.lora_A"), l.v_a.clone()));
            out.push((format!("blocks.{i}.attn.v.lora_B"), l.v_b.clone()));
        }
        out
    }

    /// Pooled features [B, F] of normalised pixels [B, 3, S, S]; `pos` is the backbone's
    /// position embedding for this grid ([`VisionTransformer::position_embedding`]).
    pub fn features(&self, pixels: &Tensor, pos: &Tensor, pooling: Pooling) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let n = gh * gw;
        let t = n + 1;
        let x = pixels.narrow(2, 0, gh * p)?.narrow(3, 0, gw * p)?;
        let patches =
            x.reshape((b, c, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.contiguous()?.reshape((b * n, c * p * p))?;
        let patches = self.patch.forward(&patches)?;
        let d = patches.dim(1)?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?;
        let tokens = Tensor::cat(&[&cls, &patches.reshape((b, n, d))?], 1)?.broadcast_add(pos)?;
        let mut x = tokens.reshape((b * t, d))?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = self.block(block, self.lora.get(i), &x, b, t, d)?;
        }
        let tokens = self.norm.forward(&x)?.reshape((b, t, d))?;
        let cls = tokens.narrow(1, 0, 1)?.squeeze(1)?;
        let mean = || -> Result<Tensor> { Ok(tokens.narrow(1, 1, n)?.mean(1)?) };
        Ok(match pooling {
            Pooling::Cls => cls,
            Pooling::MeanPatch => mean()?,
            Pooling::ClsMeanPatch => Tensor::cat(&[&cls, &mean()?], 1)?,
        })
    }

    fn block(
        &self,
        block: &Block,
        lora: Option<&BlockLora>,
        x: &Tensor,
        b: usize,
        t: usize,
        d: usize,
    ) -> Result<Tensor> {
        let nh = self.num_heads;
        let hd = d / nh;
        let h = block.norm1.forward(x)?;
        let qkv = block.qkv.forward(&h)?;
        let mut q = qkv.narrow(1, 0, d)?;
        let k = qkv.narrow(1, d, d)?;
        let mut v = qkv.narrow(1, 2 * d, d)?;
        if let Some(l) = lora {
            // scale · (h Aᵀ) Bᵀ, the scale on the [M, r] intermediate (cheapest place).
            let dq = (h.matmul(&l.q_a.t()?)? * self.lora_scale)?.matmul(&l.q_b.t()?)?;
            let dv = (h.matmul(&l.v_a.t()?)? * self.lora_scale)?.matmul(&l.v_b.t()?)?;
            q = (q + dq)?;
            v = (v + dv)?;
        }
        let heads = |m: Tensor| -> Result<Tensor> { Ok(m.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?) };
        let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let y = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * t, d))?;
        let x = (x + block.proj.forward(&y)?)?;
        let h = block.fc1.forward(&block.norm2.forward(&x)?)?.gelu_erf()?;
        Ok((x + block.fc2.forward(&h)?)?)
    }
}
