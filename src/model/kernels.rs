//! Scalar and element-wise kernels shared by the ViT core (`model::core`), the Stable
//! Diffusion UNet and the heads.
//!
//! - erf / GELU: candle's `gelu_erf` calls libm's `erff` per element (≈ 14 ns each: 60 ms of a
//!   ViT-S forward at batch 1). Here erf is the rational approximation Eigen and XLA use for
//!   f32 — erf(x) ≈ x·P(x²)/Q(x²) on x clamped to [−4, 4], max abs error 4.2e-7.
//! - the attention softmax: softmax(scale · x) over rows, the 1/√hd scale folded in (no pass
//!   over q), exp by Cephes' range reduction and polynomial (rel. error ~1e-7) instead of
//!   libm's `expf` per element.
//! - `attention_q_kv`: the attention core for the Stable Diffusion UNet's self- and
//!   cross-attention (separate q and k/v tensors, T ≠ S), in blocks of query rows so the T×S
//!   scores of a 64×64 latent never exist whole.
//! - `add_repeated_`: an in-place add of a pattern repeated along a fresh tensor (a head's
//!   bias): candle's binary ops allocate a new tensor and run on candle's own spinning thread
//!   pool, which then competes for the 2 cores with the rayon pool gemm uses.
//!
//! The kernels are branch-free loops that compile to SIMD code; on x86-64 a copy compiled for
//! AVX2 + FMA is chosen at run time ([`simd`]; the default target only assumes SSE2), and rows
//! are spread over the rayon pool in chunks.

// One of the modules allowed unsafe code (see the crate root): raw-pointer gemm calls.
#![allow(unsafe_code)]

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::error::Result;

const ERF_ALPHA: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906_3e-4,
    -2.954_600_1e-3,
    -1.609_603_3e-2,
];
const ERF_BETA: [f32; 5] = [-1.456_607_2e-5, -2.133_740_5e-4, -1.682_827e-3, -7.373_329_2e-3, -1.426_474e-2];

/// erf(x) for f32, |error| ≤ 4.2e-7 (Eigen's `generic_fast_erf_float`).
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ERF_ALPHA[0];
    for c in &ERF_ALPHA[1..] {
        p = p * x2 + c;
    }
    let mut q = ERF_BETA[0];
    for c in &ERF_BETA[1..] {
        q = q * x2 + c;
    }
    x * p / q
}

/// Exact-form (erf) GELU: x · ½(1 + erf(x/√2)).
#[inline(always)]
pub fn gelu_erf_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// eˣ for f32 (Cephes `expf`: x = n·ln2 + r, |r| ≤ ½ln2, degree-6 polynomial, 2ⁿ from the
/// exponent bits). x is clamped to [−87, 88], so the result is never 0, ∞ or subnormal.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n sits in the low mantissa bits of `shifted`: 2ⁿ from integer ops only (vectorises).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

#[inline(always)]
fn softmax_rows_generic(rows: &mut [f32], width: usize, scale: f32) {
    const LANES: usize = 8;
    for row in rows.chunks_exact_mut(width) {
        // Max in 8 independent lanes (a select, so it vectorises; NaN-free input assumed).
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (m, &v) in lanes.iter_mut().zip(chunk) {
                *m = if v > *m { v } else { *m };
            }
        }
        let max = chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        let shift = scale * max;
        let mut sums = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for chunk in &mut chunks {
            for (s, v) in sums.iter_mut().zip(chunk.iter_mut()) {
                *v = exp_f32(scale * *v - shift);
                *s += *v;
            }
        }
        let mut sum: f32 = sums.iter().sum();
        for v in chunks.into_remainder() {
            *v = exp_f32(scale * *v - shift);
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Runs `f` compiled for AVX2 + FMA where the CPU has them: the element-wise kernels are plain
/// loops, which the default x86-64 target (SSE2) vectorises only 4 wide and without FMA. The
/// closure must be `#[inline(always)]`, or it is compiled for the default target after all.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected on this CPU just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// softmax(scale · x) over rows of `width`.
pub(crate) fn softmax_rows(rows: &mut [f32], width: usize, scale: f32) {
    simd(
        #[inline(always)]
        || softmax_rows_generic(rows, width, scale),
    )
}

/// Whole rows per parallel task: about 16 k values, enough work to amortise scheduling (the
/// kernels here and those of `model::core` alike).
pub(crate) fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else { candle_core::bail!("{op}: f32 only, got {:?}", storage.dtype()) };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&values[start..end]),
        None => candle_core::bail!("{op}: operand must be contiguous"),
    }
}

fn contiguous_f32_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a mut [f32]> {
    let dtype = storage.dtype();
    let CpuStorage::F32(values) = storage else { candle_core::bail!("{op}: f32 only, got {dtype:?}") };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut values[start..end]),
        None => candle_core::bail!("{op}: destination must be contiguous"),
    }
}

/// Parallel chunk length (≈ 16 k values) for element-wise work.
const CHUNK: usize = 16_384;

/// dst[j] += pattern[(offset + j) mod len]: `pattern` repeats along dst.
#[inline(always)]
fn add_cyclic(dst: &mut [f32], pattern: &[f32], offset: usize) {
    let mut pos = offset % pattern.len();
    let mut done = 0;
    while done < dst.len() {
        let n = (pattern.len() - pos).min(dst.len() - done);
        dst[done..done + n].iter_mut().zip(&pattern[pos..pos + n]).for_each(|(o, &p)| *o += p);
        done += n;
        pos = 0;
    }
}

/// dst += pattern repeated along dst (a bias per row, a position embedding per image).
struct AddRepeated;

impl InplaceOp2 for AddRepeated {
    fn name(&self) -> &'static str {
        "add-repeated-inplace"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let pattern = contiguous_f32(s2, l2, self.name())?;
        let dst = contiguous_f32_mut(s1, l1, self.name())?;
        if pattern.is_empty() || dst.len() % pattern.len() != 0 {
            candle_core::bail!("{}: {} values are not a whole number of {}", self.name(), dst.len(), pattern.len())
        }
        dst.par_chunks_mut(CHUNK).enumerate().for_each(|(i, chunk)| add_cyclic(chunk, pattern, i * CHUNK));
        Ok(())
    }
}

/// A raw pointer into one `f32` buffer that parallel tasks write through.
///
/// Sending it to other threads is sound only under what every use site must guarantee:
/// 1. the buffer outlives the parallel loop and nothing else reads or writes it during the
///    loop (it comes from a `&mut` borrow or a local `Vec` held across the loop);
/// 2. each task writes only its own block, every block lies inside the buffer (the site
///    checks the buffer's length against the shape first), and no two tasks' blocks overlap;
/// 3. no task reads another task's block.
///
/// Use sites: `attention_forward` and `attention_backward` in `model::core` (each (image,
/// head) task writes its hd columns of its image's rows of y, or of ∂qkv's three thirds).
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
// SAFETY: see the type's documentation; each use site upholds points 1–3 with a size check
// before the loop and a SAFETY comment at each write.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Through a method, so closures capture the whole (Sync) wrapper, not the raw field.
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

// ---- Stable Diffusion UNet attention (diffusion::sd::transformer2d) ----
//
// softmax(q kᵀ / √hd) v without materialising the [B, heads, T, S] score tensor. At SD 2.1's
// 64×64 latents a self-attention has T = S = 4096 tokens, so candle's batched-matmul route
// holds 5 heads × 4096² f32 = 335 MB of scores per image (twice, with the softmax output) and
// copies q, k, v and the output through head-major transposes. Here each parallel task takes
// a block of query rows and runs every head on it: scores [rows, S] in a task-local buffer,
// the softmax above, and the product with v written straight into the task's own rows of
// the output [B, T, D] (a `par_chunks_mut` block: no shared writes).

/// Query rows per task: with S = 4096 keys the score block is 128 × 4096 f32 = 2 MB.
const ROWS: usize = 128;

/// softmax(q kᵀ · scale) v per head, heads side by side in the last dimension:
/// q [B, T, D], k and v [B, S, D] (D = heads · hd) → [B, T, D].
pub(crate) fn attention_q_kv(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, t, d) = q.dims3()?;
    let (kb, s, kd) = k.dims3()?;
    if kb != b || kd != d || v.dims() != k.dims() || heads == 0 || d % heads != 0 || s == 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} with {heads} heads do not fit together",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let hd = d / heads;
    let scale = 1.0 / (hd as f32).sqrt();
    if !(q.device().is_cpu() && q.dtype() == DType::F32 && k.dtype() == DType::F32 && v.dtype() == DType::F32) {
        // Reference path (other devices or types): candle ops.
        let split = |x: &Tensor, len: usize| x.reshape((b, len, heads, hd))?.transpose(1, 2)?.contiguous();
        let (qh, kh, vh) = (split(q, t)?, split(k, s)?, split(v, s)?);
        let probs = candle_nn::ops::softmax_last_dim(&(qh.matmul(&kh.t()?)? * f64::from(scale))?)?;
        return probs.matmul(&vh)?.transpose(1, 2)?.reshape((b, t, d));
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (q_storage, q_layout) = q.storage_and_layout();
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    let (Storage::Cpu(qc), Storage::Cpu(kc), Storage::Cpu(vc)) = (&*q_storage, &*k_storage, &*v_storage) else {
        candle_core::bail!("attention: q, k, v on different devices")
    };
    let qd = contiguous_f32(qc, q_layout, "attention")?;
    let kd = contiguous_f32(kc, k_layout, "attention")?;
    let vd = contiguous_f32(vc, v_layout, "attention")?;
    let mut y = vec![0f32; b * t * d];
    y.par_chunks_mut(ROWS * d).enumerate().for_each_init(
        || vec![0f32; ROWS * s],
        |scores, (chunk, yc)| {
            // Row blocks may straddle two images: split at the image boundary.
            let first = chunk * ROWS;
            let mut done = 0;
            while done < yc.len() / d {
                let row = first + done;
                let (bi, r) = (row / t, row % t);
                let n = (yc.len() / d - done).min(t - r);
                let block = &mut yc[done * d..(done + n) * d];
                let qrows = &qd[row * d..(row + n) * d];
                let kimg = &kd[bi * s * d..(bi + 1) * s * d];
                let vimg = &vd[bi * s * d..(bi + 1) * s * d];
                attention_heads_block(qrows, kimg, vimg, block, &mut scores[..n * s], (n, s, d, hd), scale);
                done += n;
            }
        },
    );
    Tensor::from_vec(y, (b, t, d), &candle_core::Device::Cpu)
}

/// All heads for `n` query rows of one image: `q` [n, D], `k`, `v` [S, D], `y` [n, D].
fn attention_heads_block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    y: &mut [f32],
    scores: &mut [f32],
    (n, s, d, hd): (usize, usize, usize, usize),
    scale: f32,
) {
    assert!(q.len() == n * d && y.len() == n * d && k.len() == s * d && v.len() == s * d && scores.len() == n * s);
    for col in (0..d).step_by(hd) {
        let (qh, kh, vh) =
            (View::columns(q, n, d, col, hd), View::columns(k, s, d, col, hd), View::columns(v, s, d, col, hd));
        // SAFETY: the lengths are checked above. scores [n, S] is written in full; q, k and v
        // are read at columns col..col+hd of their rows, inside their slices since col + hd ≤ D.
        unsafe { gemm_raw(scores.as_mut_ptr(), s, qh, kh.t(), false, 1.0, Parallelism::None) };
        softmax_rows(scores, s, scale);
        // SAFETY: y is written at rows 0..n, columns col..col+hd (row stride D), inside the
        // checked slice, and only by this call.
        unsafe { gemm_raw(y.as_mut_ptr().add(col), d, View::rows(scores, n, s), vh, false, 1.0, Parallelism::None) };
    }
}

/// A read-only matrix view: element (i, j) at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// A row-major `rows × cols` matrix at the start of `data`.
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, rs: cols, cs: 1 }
    }

    /// `cols` columns starting at column `first` of a row-major matrix with row stride `rs`.
    pub(crate) fn columns(data: &'a [f32], rows: usize, rs: usize, first: usize, cols: usize) -> Self {
        Self { data: &data[first.min(data.len())..], rows, cols, rs, cs: 1 }
    }

    pub(crate) fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, data: self.data }
    }

    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

thread_local! {
    static SERIAL_GEMM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`matmul`] single-threaded on this thread when `serial`. For data-parallel
/// shards, one per core: measured on the 2-core machine at 56 px, two single-threaded
/// products on half the rows each did 1.3× the work per second of both cores on one product
/// (gemm's split of a 544-row product over two threads reaches ~60 % of their peak).
pub(crate) fn with_serial_gemm<R>(serial: bool, f: impl FnOnce() -> R) -> R {
    let before = SERIAL_GEMM.with(|s| s.replace(serial));
    let out = f();
    SERIAL_GEMM.with(|s| s.set(before));
    out
}

/// `dst = beta · a · b` (or `dst += beta · a · b` when `accumulate`), dst row-major with row
/// stride `dst_rs` starting at `dst[0]`; on the rayon pool (on this thread alone inside
/// [`with_serial_gemm`]).
pub(crate) fn matmul(dst: &mut [f32], dst_rs: usize, a: View, b: View, accumulate: bool, beta: f32) {
    let (m, n) = (a.rows, b.cols);
    assert!(a.cols == b.rows && a.fits() && b.fits(), "matmul: operand shapes or strides do not fit");
    assert!(m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len(), "matmul: destination too small");
    let par = if SERIAL_GEMM.with(std::cell::Cell::get) { Parallelism::None } else { Parallelism::Rayon(0) };
    // SAFETY: the asserts above keep every element gemm reads or writes inside its slice.
    unsafe { gemm_raw(dst.as_mut_ptr(), dst_rs, a, b, accumulate, beta, par) }
}

/// # Safety
/// `dst` must be valid for writes of a `a.rows × b.cols` matrix with row stride `dst_rs`, not
/// overlapping `a` or `b`, and not written by anyone else during the call.
pub(crate) unsafe fn gemm_raw(
    dst: *mut f32,
    dst_rs: usize,
    a: View,
    b: View,
    accumulate: bool,
    beta: f32,
    par: Parallelism,
) {
    gemm::gemm(
        a.rows,
        b.cols,
        a.cols,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr(),
        b.cs as isize,
        b.rs as isize,
        1.0,
        beta,
        false,
        false,
        false,
        par,
    )
}

fn fast_path(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32 && t.device().is_cpu() && t.is_contiguous())
}

/// `y += pattern` in place, pattern repeated along y (y must be a tensor the caller owns
/// alone: a fresh matmul output). Falls back to candle's add otherwise.
pub(crate) fn add_repeated_(y: Tensor, pattern: &Tensor) -> Result<Tensor> {
    if fast_path(&[&y, pattern]) && pattern.elem_count() > 0 && y.elem_count().is_multiple_of(pattern.elem_count()) {
        y.inplace_op2(pattern, &AddRepeated)?;
        Ok(y)
    } else {
        Ok(y.broadcast_add(pattern)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn gelu_matches_candle_libm() {
        let xs: Vec<f32> = (-80_000..=80_000).map(|i| i as f32 * 1e-4).collect();
        let reference = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap().gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        let worst = xs
            .iter()
            .zip(&reference)
            .map(|(&x, &r)| (gelu_erf_f32(x) - r).abs() / x.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst < 5e-7, "worst error {worst}");
    }

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        // From −86.999: −87 000 × 1e-3 rounds below the clamp at −87.
        let worst = (-86_999..=10_000)
            .map(|i| i as f32 * 1e-3)
            .map(|x| ((exp_f32(x) - x.exp()) / x.exp()).abs())
            .fold(0f32, f32::max);
        assert!(worst < 3e-7, "worst relative error {worst}");
    }

    #[test]
    fn in_place_add_equals_candle_add() {
        let y = Tensor::arange(0f32, 6.0 * 10.0, &Device::Cpu).unwrap().reshape((6, 10)).unwrap();
        let b = Tensor::arange(0f32, 10.0, &Device::Cpu).unwrap().affine(-0.5, 1.0).unwrap();
        let got = add_repeated_(y.copy().unwrap(), &b).unwrap();
        assert_eq!(got.to_vec2::<f32>().unwrap(), y.broadcast_add(&b).unwrap().to_vec2::<f32>().unwrap());
        // The source tensor was not touched: the op wrote into its own copy.
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            Tensor::arange(0f32, 60.0, &Device::Cpu).unwrap().reshape((6, 10)).unwrap().to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn q_kv_attention_equals_candle_ops() {
        // T = 200 query rows: row blocks of ROWS = 128 straddle the two images; S = 7 keys
        // (cross-attention) and S = T (self-attention).
        let (b, t, heads, hd) = (2, 200, 3, 8);
        let d = heads * hd;
        let wave = |n: usize, f: f64| {
            Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap().affine(f, 0.0).unwrap().sin().unwrap()
        };
        let q = wave(b * t * d, 0.013).reshape((b, t, d)).unwrap();
        for s in [7, t] {
            let k = wave(b * s * d, 0.029).affine(2.0, 0.0).unwrap().reshape((b, s, d)).unwrap();
            let v = wave(b * s * d, 0.017).reshape((b, s, d)).unwrap();
            let y = attention_q_kv(&q, &k, &v, heads).unwrap();
            let split = |x: &Tensor, n: usize| {
                x.reshape((b, n, heads, hd)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
            };
            let scores = split(&q, t).matmul(&split(&k, s).t().unwrap()).unwrap();
            let p = candle_nn::ops::softmax_last_dim(&(scores / (hd as f64).sqrt()).unwrap()).unwrap();
            let want = p.matmul(&split(&v, s).contiguous().unwrap()).unwrap().transpose(1, 2).unwrap();
            let want = want.reshape((b, t, d)).unwrap();
            let diff = (&y - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "S = {s}: max |diff| {diff}");
        }
    }

    #[test]
    fn scaled_softmax_equals_candle() {
        let x = Tensor::arange(0f32, 3.0 * 5.0 * 257.0, &Device::Cpu)
            .unwrap()
            .affine(0.37, 0.0)
            .unwrap()
            .sin()
            .unwrap()
            .affine(30.0, 0.0)
            .unwrap()
            .reshape((3, 5, 257))
            .unwrap();
        let mut values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        softmax_rows(&mut values, 257, 0.125);
        let fused = Tensor::from_vec(values, (3, 5, 257), &Device::Cpu).unwrap();
        let plain = candle_nn::ops::softmax_last_dim(&(&x * 0.125).unwrap()).unwrap();
        let diff = (&fused - plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
        let sums = fused.sum(2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
    }
}
