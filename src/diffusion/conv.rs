//! 2-D convolution as one large matrix product per chunk of images (im2col + gemm).
//!
//! Why not `candle_nn::Conv2d`: candle 0.11's CPU conv splits the work into one small gemm per
//! image and 512-pixel tile, with a scalar gather; on the small feature maps of a 32 px UNet
//! (4×4 … 32×32, 16–64 channels) that spends most of its time in the gather and in thread
//! synchronisation (measured with perf: ~60 % of a batch-100 forward). Here the patches of many
//! images are laid out as rows `[pixels, k·k·C_in]` and one gemm
//! `[pixels, k·k·C_in] × [k·k·C_in, C_out]` does the arithmetic.
//!
//! Why channel-last patch rows (each output pixel's patch contiguous, channels innermost) and
//! a `[pixels, C_out]` product: with few output channels (16–32 in the demo UNet) gemm is 2–3×
//! faster in that orientation than as `[C_out, k·k·C_in] × [k·k·C_in, pixels]` (measured with
//! gemm 0.19 on this machine's AVX2 cores, one thread: 43–72 against 14–31 GFLOP/s for
//! C_out 16–32; 87–96 against 67–77 for C_out 64), and the patch gather becomes contiguous
//! copies of C_in channels from a channel-last copy of the input.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::model::kernels::{exp_f32, matmul, simd, View};

/// Per-thread buffers of [`Conv2d::forward`], reused across calls.
#[derive(Default)]
struct ConvScratch {
    /// The chunk's input, channel-last `[img, y, x, C_in]`.
    channel_last: Vec<f32>,
    /// Patch rows `[pixels, k·k·C_in]`.
    patches: Vec<f32>,
    /// The product `[pixels, C_out]`.
    product: Vec<f32>,
}

thread_local! {
    static CONV_SCRATCH: std::cell::RefCell<ConvScratch> = std::cell::RefCell::new(ConvScratch::default());
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
    /// `[C_out, k·k·C_in]`, each row in (kh, kw, c) order: the PyTorch weight with the input
    /// channel moved innermost, to match the channel-last patch rows.
    weight: Vec<f32>,
    bias: Vec<f32>,
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
        let weight = w.permute((0, 2, 3, 1))?.flatten_all()?.to_vec1::<f32>()?;
        let bias = vb.get(cout, "bias")?.to_vec1::<f32>()?;
        Ok(Self { weight, bias, cin, cout, kernel, stride, padding })
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
        let plane = oh * ow;
        let chunk = (COLS_BUDGET / (kk * plane).max(1)).clamp(1, b);
        // A 1×1, stride-1 convolution's patch rows are the channel-last input itself.
        let pointwise = k == 1 && s == 1 && p == 0;
        let cout = self.cout;
        let mut result = vec![0f32; b * cout * plane];
        // Taken out of the thread-local, not borrowed: rayon may run another convolution on this
        // thread while this one waits for its parallel loops (a RefCell borrow would panic).
        let mut scratch = CONV_SCRATCH.with_borrow_mut(std::mem::take);
        let mut start = 0;
        while start < b {
            let n = chunk.min(b - start);
            let pixels = n * plane;
            let ConvScratch { channel_last, patches, product } = &mut scratch;
            channel_last.resize(n * h * w * c, 0.0);
            let images = &data[start * c * h * w..(start + n) * c * h * w];
            // One task per image row, so that a batch of one still uses every core.
            channel_last.par_chunks_mut(w * c).enumerate().for_each(|(row, dst)| {
                let (img, y) = (row / h, row % h);
                for ci in 0..c {
                    let src = &images[((img * c + ci) * h + y) * w..][..w];
                    for (x, &v) in src.iter().enumerate() {
                        dst[x * c + ci] = v;
                    }
                }
            });
            let rows: &[f32] = if pointwise {
                &channel_last[..]
            } else {
                // patches[(img, oy, ox), (kh, kw, ci)]; every element written (padding as
                // explicit zeros), so the reused buffer needs no zeroing.
                patches.resize(pixels * kk, 0.0);
                let channel_last = &channel_last[..];
                patches.par_chunks_mut(ow * kk).enumerate().for_each(|(row, dst)| {
                    let (img, oy) = (row / oh, row % oh);
                    let image = &channel_last[img * h * w * c..][..h * w * c];
                    for (ox, patch) in dst.chunks_exact_mut(kk).enumerate() {
                        // The k taps of one kernel row are k neighbouring pixels, contiguous in
                        // the channel-last input: one copy of up to k·C_in values per row.
                        let ix0 = (ox * s) as isize - p as isize;
                        let lo = (-ix0).clamp(0, k as isize) as usize;
                        let hi = (w as isize - ix0).clamp(lo as isize, k as isize) as usize;
                        for (kh, taps) in patch.chunks_exact_mut(k * c).enumerate() {
                            let iy = (oy * s + kh) as isize - p as isize;
                            if iy < 0 || iy >= h as isize || lo == hi {
                                taps.fill(0.0); // zero padding
                                continue;
                            }
                            taps[..lo * c].fill(0.0);
                            taps[hi * c..].fill(0.0);
                            let first = (iy as usize * w) as isize + ix0 + lo as isize;
                            taps[lo * c..hi * c].copy_from_slice(&image[first as usize * c..][..(hi - lo) * c]);
                        }
                    }
                });
                &patches[..pixels * kk]
            };
            // product [pixels, C_out] = patches [pixels, kk] · weightᵀ [kk, C_out]
            product.resize(pixels * cout, 0.0);
            matmul(
                &mut product[..pixels * cout],
                cout,
                View::rows(rows, pixels, kk),
                View::rows(&self.weight, cout, kk).t(),
                false,
                1.0,
            );
            // Back to [B, C_out, oh, ow] with the bias added, in one pass (no candle binary
            // op: its thread pool spin-waits after each op and competes with gemm's threads).
            let dst = &mut result[start * cout * plane..(start + n) * cout * plane];
            let product = &product[..pixels * cout];
            // Tasks of up to 16 output channels of one image: each reads one cache line of a
            // product row per pixel and writes 16 planes.
            const CHANNELS_PER_TASK: usize = 16;
            dst.par_chunks_mut(cout * plane).zip(product.par_chunks(plane * cout)).for_each(|(d, src)| {
                d.par_chunks_mut(CHANNELS_PER_TASK * plane).enumerate().for_each(|(block, planes)| {
                    let channels = block * CHANNELS_PER_TASK..block * CHANNELS_PER_TASK + planes.len() / plane;
                    let bias = &self.bias[channels.clone()];
                    for (i, pixel) in src.chunks_exact(cout).enumerate() {
                        for (co, (&v, b)) in pixel[channels.clone()].iter().zip(bias).enumerate() {
                            planes[co * plane + i] = v + b;
                        }
                    }
                });
            });
            start += n;
        }
        CONV_SCRATCH.with_borrow_mut(|kept| *kept = scratch);
        Tensor::from_vec(result, (b, cout, oh, ow), device)
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
