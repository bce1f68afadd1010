//! diffusers' `Transformer2DModel` (continuous input) as the cross-attention blocks of a Stable
//! Diffusion UNet build it: GroupNorm (eps 1e-6, fixed in diffusers), `proj_in` (1×1 conv in
//! SD 1, Linear in SD 2's `use_linear_projection`), `BasicTransformerBlock`s, `proj_out`, plus
//! the residual. Each block: LayerNorm + self-attention, LayerNorm + cross-attention on the text
//! states, LayerNorm + GEGLU feed-forward with the exact (erf) GELU — candle-transformers' port
//! uses the tanh approximation there, which is what this file exists to avoid.

use candle_core::{Module, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use rayon::prelude::*;

use crate::diffusion::conv::{with_f32_slice, Conv2d, GroupNorm};
use crate::model::kernels::gelu_erf_f32;

/// Weight layout of one `Transformer2DModel`, read from the UNet config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransformerShape {
    pub channels: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub cross_attention_dim: usize,
    pub norm_groups: usize,
    pub linear_projection: bool,
}

/// diffusers' `Attention` with the defaults the UNet uses: q/k/v without bias, `to_out.0` with
/// bias, scale 1/√head_dim. Self-attention when no context is given.
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn load(
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
        })
    }

    /// `x` [B, T, query_dim], `context` [B, S, context_dim] (None: x itself) → [B, T, query_dim].
    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let q = self.to_q.forward(x)?.contiguous()?;
        let k = self.to_k.forward(ctx)?.contiguous()?;
        let v = self.to_v.forward(ctx)?.contiguous()?;
        // upcast_attention only matters for f16 activations: everything here is f32.
        let y = crate::model::kernels::attention_q_kv(&q, &k, &v, self.heads)?;
        self.to_out.forward(&y)
    }
}

/// `BasicTransformerBlock` (norm_type "layer_norm", activation "geglu").
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    /// GEGLU's projection to 2 × inner (value half first, gate half second).
    ff_proj: Linear,
    ff_out: Linear,
    ff_inner: usize,
}

impl BasicTransformerBlock {
    fn load(shape: &TransformerShape, vb: VarBuilder) -> candle_core::Result<Self> {
        let dim = shape.heads * shape.head_dim;
        let (h, hd) = (shape.heads, shape.head_dim);
        let ff_inner = 4 * dim;
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::load(dim, dim, h, hd, vb.pp("attn1"))?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::load(dim, shape.cross_attention_dim, h, hd, vb.pp("attn2"))?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_proj: candle_nn::linear(dim, 2 * ff_inner, vb.pp("ff.net.0.proj"))?,
            ff_out: candle_nn::linear(ff_inner, dim, vb.pp("ff.net.2"))?,
            ff_inner,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, Some(context))? + &x)?;
        let p = self.ff_proj.forward(&self.norm3.forward(&x)?)?;
        self.ff_out.forward(&geglu(&p, self.ff_inner)?)? + x
    }
}

/// GEGLU's gating on the projection `p` [.., 2·inner]: value · GELU(gate), value the first
/// half, gate the second, with the exact-form (erf) GELU. One parallel pass with the f32 erf of
/// `model::kernels` (|error| ≤ 4.2e-7), instead of two strided views, a libm `erff` per
/// element and a product on candle's own thread pool.
fn geglu(p: &Tensor, inner: usize) -> candle_core::Result<Tensor> {
    let dims = p.dims().to_vec();
    let last = dims.last().copied().unwrap_or(0);
    if last != 2 * inner || inner == 0 {
        candle_core::bail!("GEGLU: projection of width {last}, expected {}", 2 * inner)
    }
    if !p.device().is_cpu() {
        let value = p.narrow(D::Minus1, 0, inner)?;
        return value * p.narrow(D::Minus1, inner, inner)?.gelu_erf()?;
    }
    let rows = p.elem_count() / last;
    let mut out = vec![0f32; rows * inner];
    with_f32_slice(p, |data| {
        out.par_chunks_mut(inner).zip(data.par_chunks(last)).for_each(|(o, row)| {
            let (value, gate) = row.split_at(inner);
            for ((o, &v), &g) in o.iter_mut().zip(value).zip(gate) {
                *o = v * gelu_erf_f32(g);
            }
        });
        Ok(())
    })?;
    let mut shape = dims;
    if let Some(l) = shape.last_mut() {
        *l = inner;
    }
    Tensor::from_vec(out, shape, p.device())
}

enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

pub(crate) struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
    inner: usize,
}

impl Transformer2D {
    pub(crate) fn load(shape: &TransformerShape, vb: VarBuilder) -> candle_core::Result<Self> {
        let c = shape.channels;
        let inner = shape.heads * shape.head_dim;
        let projection = |from: usize, to: usize, vb: VarBuilder| -> candle_core::Result<Projection> {
            Ok(if shape.linear_projection {
                Projection::Linear(candle_nn::linear(from, to, vb)?)
            } else {
                Projection::Conv(Conv2d::load(from, to, 1, 1, 0, vb)?)
            })
        };
        let blocks = (0..shape.layers)
            .map(|i| BasicTransformerBlock::load(shape, vb.pp(format!("transformer_blocks.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::load(shape.norm_groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: projection(c, inner, vb.pp("proj_in"))?,
            blocks,
            proj_out: projection(inner, c, vb.pp("proj_out"))?,
            inner,
        })
    }

    /// `x` [B, C, H, W], `context` [B, S, cross_attention_dim] → [B, C, H, W] (residual included).
    pub(crate) fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x, false)?;
        // pixels as tokens: [B, C, H, W] → [B, H·W, C]
        let tokens = |t: Tensor, ch: usize| t.permute((0, 2, 3, 1))?.reshape((b, h * w, ch));
        let mut seq = match &self.proj_in {
            Projection::Conv(conv) => tokens(conv.forward(&normed)?, self.inner)?,
            Projection::Linear(lin) => lin.forward(&tokens(normed, c)?.contiguous()?)?,
        };
        for block in &self.blocks {
            seq = block.forward(&seq, context)?;
        }
        let image = |t: Tensor, ch: usize| t.reshape((b, h, w, ch))?.permute((0, 3, 1, 2))?.contiguous();
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&image(seq, self.inner)?)?,
            Projection::Linear(lin) => image(lin.forward(&seq)?, c)?,
        };
        out + x
    }
}
