//! Distances between a candidate image and what the model made of it, for the trajectory attack:
//! MSE, L1 (mean absolute error), SSIM, and the least-squares trend of a series of them.

/// Mean squared difference.
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len().max(1) as f64
}

/// Mean absolute difference.
pub fn l1(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| ((x - y) as f64).abs()).sum::<f64>() / a.len().max(1) as f64
}

/// Options of [`ssim`]: Wang et al. 2004 with a Gaussian window (σ = 1.5), constants
/// K₁ = 0.01, K₂ = 0.03, over the "valid" positions of the window (no padding).
#[derive(Debug, Clone, Copy)]
pub struct SsimOptions {
    /// Side of the Gaussian window (odd); shrunk to the image if the image is smaller.
    pub window: usize,
    pub sigma: f64,
    /// Value range of the images: 2 for the model's [−1, 1].
    pub data_range: f64,
}

impl Default for SsimOptions {
    fn default() -> Self {
        Self { window: 7, sigma: 1.5, data_range: 2.0 }
    }
}

/// Mean structural similarity of two channel-first images of `channels × height × width`,
/// averaged over channels. 1 for identical images.
pub fn ssim(a: &[f32], b: &[f32], channels: usize, height: usize, width: usize, opts: &SsimOptions) -> f64 {
    let plane = height * width;
    let mut win = opts.window.min(height).min(width);
    if win.is_multiple_of(2) {
        win = win.saturating_sub(1).max(1);
    }
    let half = (win / 2) as f64;
    let mut g: Vec<f64> =
        (0..win).map(|i| (-((i as f64 - half).powi(2)) / (2.0 * opts.sigma * opts.sigma)).exp()).collect();
    let s: f64 = g.iter().sum();
    g.iter_mut().for_each(|v| *v /= s);
    let c1 = (0.01 * opts.data_range).powi(2);
    let c2 = (0.03 * opts.data_range).powi(2);
    let (oh, ow) = (height - win + 1, width - win + 1);
    let mut total = 0.0;
    for c in 0..channels {
        let x = &a[c * plane..(c + 1) * plane];
        let y = &b[c * plane..(c + 1) * plane];
        // Separable filtering of x, y, x², y², xy: rows first, then columns.
        let mut rows = vec![[0.0f64; 5]; height * ow];
        for r in 0..height {
            for j in 0..ow {
                let mut acc = [0.0; 5];
                for (k, &gk) in g.iter().enumerate() {
                    let (xv, yv) = (x[r * width + j + k] as f64, y[r * width + j + k] as f64);
                    acc[0] += gk * xv;
                    acc[1] += gk * yv;
                    acc[2] += gk * xv * xv;
                    acc[3] += gk * yv * yv;
                    acc[4] += gk * xv * yv;
                }
                rows[r * ow + j] = acc;
            }
        }
        let mut sum = 0.0;
        for i in 0..oh {
            for j in 0..ow {
                let mut m = [0.0; 5];
                for (k, &gk) in g.iter().enumerate() {
                    let v = rows[(i + k) * ow + j];
                    for q in 0..5 {
                        m[q] += gk * v[q];
                    }
                }
                let (mx, my) = (m[0], m[1]);
                let (vx, vy, cxy) = (m[2] - mx * mx, m[3] - my * my, m[4] - mx * my);
                sum += ((2.0 * mx * my + c1) * (2.0 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
            }
        }
        total += sum / (oh * ow) as f64;
    }
    total / channels as f64
}

/// Least-squares slope of `values` against 0, 1, 2, … (0 for fewer than two values).
pub fn slope(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return 0.0;
    }
    let mean_x = (n - 1) as f64 / 2.0;
    let mean_y = values.iter().sum::<f64>() / n as f64;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, &v) in values.iter().enumerate() {
        let dx = i as f64 - mean_x;
        num += dx * (v - mean_y);
        den += dx * dx;
    }
    num / den
}
