//! 2-D convolution as one large matrix product per chunk of images (im2col + gemm).
//!
//! Why not `candle_nn::Conv2d`: candle 0.11's CPU conv splits the work into one small gemm per
//! image and 512-pixel tile, with a scalar gather; on the small feature maps of a 32 px UNet
//! (4×4 … 32×32, 16–64 channels) that spends most of its time in the gather and in thread
//! synchronisation (measured with perf: ~60 % of a batch-100 forward). Here the patches of many
//! images are laid out as columns `[C_in·k·k, pixels]` with contiguous row copies, and one gemm
//! `[C_out, C_in·k·k] × [C_in·k·k, pixels]` does the arithmetic.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::model::kernels::{exp_f32, matmul, simd, View};

thread_local! {
    /// Per-thread patch matrix and product of [`Conv2d::forward`], reused across calls.
    static CONV_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Patch-matrix budget per gemm (f32 values): big enough for an efficient gemm, small enough to
/// stay in the last-level cache.
const COLS_BUDGET: usize = 4 << 20;

/// Runs `f` on the f32 values of a CPU tensor in row-major order, without copying them when
/// the tensor is already contiguous.
pub(crate) fn with_f32_slice<R>(
    x: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => {
            let all = cpu.as_slice::<f32>()?;
            let start = layout.start_offset();
            f(&all[start..start + layout.shape().elem_count()])
        }
        _ => candle_core::bail!("the diffusion kernels run on the CPU only"),
    }
}

#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `[C_out, C_in·k·k]`, rows in (c, kh, kw) order — the PyTorch weight flattened.
    weight: Vec<f32>,
    bias: Option<Tensor>,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn load(
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let w = vb.get((cout, cin, kernel, kernel), "weight")?;
        let bias = Some(vb.get(cout, "bias")?);
        Ok(Self { weight: w.flatten_all()?.to_vec1::<f32>()?, bias, cin, cout, kernel, stride, padding })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.cin {
            candle_core::bail!("conv2d: {c} input channels, expected {}", self.cin)
        }
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        if h + 2 * p < k || w + 2 * p < k {
            candle_core::bail!("conv2d: input {h}×{w} smaller than the kernel")
        }
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        with_f32_slice(x, |data| self.forward_slice(data, (b, c, h, w), (oh, ow), x.device()))
    }

    fn forward_slice(
        &self,
        data: &[f32],
        (b, c, h, w): (usize, usize, usize, usize),
        (oh, ow): (usize, usize),
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let kk = c * k * k;
        let per_image = kk * oh * ow;
        let chunk = (COLS_BUDGET / per_image.max(1)).clamp(1, b);
        let plane = oh * ow;
        let bias: Vec<f32> = match &self.bias {
            Some(t) => t.to_vec1::<f32>()?,
            None => vec![0.0; self.cout],
        };
        let mut result = vec![0f32; b * self.cout * plane];
        let mut start = 0;
        // The patch matrix and the product live in per-thread buffers kept across calls: every
        // element of the patch matrix is written below (padding as explicit zeros), so it needs
        // no zeroing, and a fresh zeroed allocation per call was 10 % of a batch-100 forward.
        // Taken out of the thread-local, not borrowed: rayon may run another convolution on this
        // thread while this one waits for its parallel loops (a RefCell borrow would panic).
        let (mut cols, mut out) = CONV_SCRATCH.with_borrow_mut(std::mem::take);
        while start < b {
            let n = chunk.min(b - start);
            let pixels = n * plane;
            // cols[(ci, kh, kw), (img, oy, ox)]
            cols.resize(kk * pixels, 0.0);
            cols[..kk * pixels].par_chunks_mut(pixels).enumerate().for_each(|(row, dst)| {
                let (ci, kh, kw) = (row / (k * k), (row / k) % k, row % k);
                for img in 0..n {
                    let src = &data[((start + img) * c + ci) * h * w..][..h * w];
                    for oy in 0..oh {
                        let dst_row = &mut dst[(img * oh + oy) * ow..][..ow];
                        let iy = (oy * s + kh) as isize - p as isize;
                        if iy < 0 || iy >= h as isize {
                            dst_row.fill(0.0); // zero padding
                            continue;
                        }
                        let src_row = &src[iy as usize * w..][..w];
                        if s == 1 {
                            // ix = ox + kw − p: a shifted contiguous copy, zeros outside
                            let lo = p.saturating_sub(kw).min(ow);
                            let hi = (w + p - kw).min(ow).max(lo);
                            dst_row[..lo].fill(0.0);
                            dst_row[hi..].fill(0.0);
                            if lo < hi {
                                let src_lo = lo + kw - p;
                                dst_row[lo..hi].copy_from_slice(&src_row[src_lo..src_lo + (hi - lo)]);
                            }
                        } else {
                            for (ox, d) in dst_row.iter_mut().enumerate() {
                                let ix = (ox * s + kw) as isize - p as isize;
                                *d = if ix >= 0 && (ix as usize) < w { src_row[ix as usize] } else { 0.0 };
                            }
                        }
                    }
                }
            });
            // out [C_out, n·oh·ow] = weight [C_out, kk] · cols [kk, n·oh·ow]
            out.resize(self.cout * pixels, 0.0);
            matmul(
                &mut out[..self.cout * pixels],
                pixels,
                View::rows(&self.weight, self.cout, kk),
                View::rows(&cols[..kk * pixels], kk, pixels),
                false,
                1.0,
            );
            // Back to [B, C_out, oh, ow] with the bias added, in one pass (no candle binary
            // op: its thread pool spin-waits after each op and competes with gemm's threads).
            let dst = &mut result[start * self.cout * plane..(start + n) * self.cout * plane];
            let out = &out[..self.cout * pixels];
            dst.par_chunks_mut(plane).enumerate().for_each(|(i, d)| {
                let (img, co) = (i / self.cout, i % self.cout);
                let src = &out[co * pixels + img * plane..][..plane];
                for (o, &v) in d.iter_mut().zip(src) {
                    *o = v + bias[co];
                }
            });
            start += n;
        }
        CONV_SCRATCH.with_borrow_mut(|scratch| *scratch = (cols, out));
        Tensor::from_vec(result, (b, self.cout, oh, ow), device)
    }
}

/// GroupNorm over NCHW, optionally followed by SiLU, in one pass per group (candle_nn's
/// GroupNorm is eight separate tensor ops over the whole activation).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    groups: usize,
    channels: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn load(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("GroupNorm: {groups} groups do not divide {channels} channels")
        }
        let weight = vb.get(channels, "weight")?.to_vec1::<f32>()?;
        let bias = vb.get(channels, "bias")?.to_vec1::<f32>()?;
        Ok(Self { weight, bias, groups, channels, eps })
    }

    pub fn forward(&self, x: &Tensor, then_silu: bool) -> candle_core::Result<Tensor> {
        self.forward_with_offsets(x, None, then_silu)
    }

    /// GroupNorm(x + o) (then SiLU) where `o` is one value per (image, channel), `[B·C]` — the
    /// ResNet's time-embedding projection, added here instead of in a separate pass.
    pub fn forward_with_offsets(
        &self,
        x: &Tensor,
        offsets: Option<&[f32]>,
        then_silu: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if let Some(o) = offsets {
            if o.len() != b * c {
                candle_core::bail!("GroupNorm: {} offsets for {b}×{c}", o.len())
            }
        }
        if c != self.channels {
            candle_core::bail!("GroupNorm: {c} channels, expected {}", self.channels)
        }
        let mut data = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let cg = c / self.groups;
        let plane = h * w;
        data.par_chunks_mut(cg * plane).enumerate().for_each(|(bg, block)| {
            let g = bg % self.groups;
            if let Some(o) = offsets {
                let img = bg / self.groups;
                for (ci, chan) in block.chunks_mut(plane).enumerate() {
                    let add = o[img * c + g * cg + ci];
                    chan.iter_mut().for_each(|v| *v += add);
                }
            }
            // AVX2 + FMA where the CPU has them; SiLU with the vectorisable exp of the ViT kernels
            // (libm's expf per element was 6 % of a batch-100 forward).
            simd(
                #[inline(always)]
                || {
                    let n = block.len() as f64;
                    let mean = lane_sum(block, |v| v as f64) / n;
                    let var = lane_sum(block, |v| (v as f64 - mean).powi(2)) / n;
                    let inv = 1.0 / (var + self.eps).sqrt();
                    for (ci, chan) in block.chunks_mut(plane).enumerate() {
                        let ch = g * cg + ci;
                        let scale = (inv * self.weight[ch] as f64) as f32;
                        let shift = self.bias[ch] - (mean * inv) as f32 * self.weight[ch];
                        if then_silu {
                            chan.iter_mut().for_each(|v| {
                                let y = *v * scale + shift;
                                *v = y / (1.0 + exp_f32(-y));
                            });
                        } else {
                            chan.iter_mut().for_each(|v| *v = *v * scale + shift);
                        }
                    }
                },
            )
        });
        Tensor::from_vec(data, (b, c, h, w), x.device())
    }
}

/// Σ f(v) in f64 over four independent lanes (so that the loop vectorises; a single running
/// sum is a dependency chain the compiler may not reorder).
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0f64; 4];
    let mut chunks = values.chunks_exact(4);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
    lanes.iter().sum::<f64>() + tail
}
