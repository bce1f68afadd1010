//! Out-of-distribution scores on the features an adapter's head reads (issue 15).
//!
//! **Mahalanobis** (Lee et al. 2018): class means μ_c and one covariance Σ shared by the
//! classes (pooled within-class scatter) of the training features; the score is
//! min_c (f − μ_c)ᵀ Σ⁻¹ (f − μ_c). A 768-wide Σ⁻¹ is 2.4 MB in f32, more than an adapter may
//! weigh, so Σ is kept as its k leading eigenpairs (V, λ) plus one variance σ² for the rest of
//! the space (the probabilistic-PCA form of Tipping & Bishop 1999): the distance is
//! Σ_i (v_iᵀd)²/λ_i + (‖d‖² − Σ_i (v_iᵀd)²)/σ², d = f − μ_c. Stored: μ [C, F], V [k, F], λ [k].
//!
//! **Energy** (Liu et al. 2020): −log Σ_c exp(logit_c) of the uncalibrated logits; needs no
//! statistics, kept for comparison.
//!
//! Both are "higher = further from the training data"; the threshold is the 99th percentile of
//! the validation split's scores, so 99 % of in-distribution validation images pass. (95 % was
//! the first choice; on the shipped adapters' test splits it raised false alarms on 12–14 % of
//! in-distribution BreastMNIST and PneumoniaMNIST images, whose validation splits are small or
//! easier than their test splits; 99 % keeps all four under 5 % — docs/results.md.)

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// Share of in-distribution validation images whose score is at or below the threshold.
pub const THRESHOLD_QUANTILE: f64 = 0.99;
/// Leading eigenpairs of the shared covariance kept (see docs/results.md for the measurement
/// that chose it).
pub const DEFAULT_COMPONENTS: usize = 64;
/// Subspace-iteration steps of the eigen-solver (Σ V, re-orthonormalised each step).
const SUBSPACE_ITERATIONS: usize = 150;
/// Extra vectors carried by the subspace iteration beyond k (faster, surer convergence).
const OVERSAMPLE: usize = 16;

/// Which score decides `in_distribution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Mahalanobis,
    Energy,
}

impl Detector {
    pub fn name(self) -> &'static str {
        match self {
            Detector::Mahalanobis => "mahalanobis",
            Detector::Energy => "energy",
        }
    }
}

/// The detector used for predictions; both thresholds are stored so the other can be
/// compared (`tools/ood/`).
pub const DEFAULT_DETECTOR: Detector = Detector::Mahalanobis;

/// What the adapter's metadata says about its OOD statistics (the arrays are tensors of the
/// adapter file: `ood.class_means`, `ood.components`, `ood.eigenvalues`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodSummary {
    pub detector: Detector,
    /// k: leading eigenpairs of the shared covariance kept.
    pub components: usize,
    /// σ²: mean variance of the shared covariance outside the k components.
    pub residual_variance: f64,
    pub mahalanobis_threshold: f64,
    pub energy_threshold: f64,
    /// Split and number of images the statistics were computed on.
    pub fitted_on: String,
    pub fitted_samples: u64,
    /// Split and number of images the thresholds were fixed on.
    pub threshold_on: String,
    pub threshold_samples: u64,
    pub threshold_quantile: f64,
    /// The used detector's validation scores at 0, 0.5, …, 100 % ([`VALIDATION_QUANTILES`]
    /// values, numpy's linear interpolation): the window's histogram and "this image scores
    /// higher than x % of validation images". Empty in adapters fitted before it existed.
    #[serde(default)]
    pub validation_quantiles: Vec<f64>,
}

/// An in-distribution image scoring higher than this share of the validation images is
/// reported as *unusual* (a caution, probabilities not greyed): the old 95 % threshold, kept
/// as a second tier so that images just under the 99 % threshold — e.g. an adult chest CR
/// through the paediatric pneumonia adapter, rank 0.985 — still carry a word of warning.
pub const UNUSUAL_RANK: f64 = 0.95;

/// Points of the stored validation-score quantile grid (every 0.5 %).
pub const VALIDATION_QUANTILES: usize = 201;

/// The quantile grid stored in [`OodSummary::validation_quantiles`].
pub fn quantile_grid(scores: &[f64]) -> Vec<f64> {
    (0..VALIDATION_QUANTILES).map(|i| quantile(scores, i as f64 / (VALIDATION_QUANTILES - 1) as f64)).collect()
}

impl OodSummary {
    /// Share of validation images scoring at or below `score`, read off the stored quantile
    /// grid (linear between grid points); `None` without a grid.
    pub fn validation_rank(&self, score: f64) -> Option<f64> {
        let q = &self.validation_quantiles;
        if q.len() < 2 || score.is_nan() {
            return None;
        }
        let step = 1.0 / (q.len() - 1) as f64;
        if score < q[0] {
            return Some(0.0);
        }
        if score >= q[q.len() - 1] {
            return Some(1.0);
        }
        // Last grid point ≤ score; ties (equal grid values) resolve to the highest rank.
        let i = q.partition_point(|&v| v <= score).saturating_sub(1).min(q.len() - 2);
        let span = q[i + 1] - q[i];
        let within = if span > 0.0 { (score - q[i]) / span } else { 1.0 };
        Some(((i as f64 + within) * step).clamp(0.0, 1.0))
    }

    pub fn threshold(&self, detector: Detector) -> f64 {
        match detector {
            Detector::Mahalanobis => self.mahalanobis_threshold,
            Detector::Energy => self.energy_threshold,
        }
    }
}

/// Class means and the reduced shared covariance, with what scoring needs precomputed.
#[derive(Debug, Clone)]
pub struct Mahalanobis {
    features: usize,
    /// [C, F] row-major.
    class_means: Vec<f32>,
    /// [k, F] row-major, orthonormal rows.
    components: Vec<f32>,
    /// [k], descending, > 0.
    eigenvalues: Vec<f32>,
    residual_variance: f64,
    /// V μ_c: [C, k].
    projected_means: Vec<f64>,
    /// ‖μ_c‖².
    mean_norms: Vec<f64>,
}

impl Mahalanobis {
    /// Statistics of `features` ([n, F] row-major) with labels in 0..classes, keeping k
    /// components. Fails when a class has no image or there are too few images.
    pub fn fit(features: &[f32], labels: &[usize], classes: usize, dim: usize, k: usize) -> Result<Self> {
        let n = labels.len();
        if features.len() != n * dim || dim == 0 {
            return Err(Error::Config(format!("{} feature values for {n} images of width {dim}", features.len())));
        }
        if k == 0 || k >= dim {
            return Err(Error::Config(format!("{k} components: expected 1..{dim}")));
        }
        if n <= classes + 1 {
            return Err(Error::Config(format!("{n} images are too few for OOD statistics of {classes} classes")));
        }
        let mut sums = vec![0f64; classes * dim];
        let mut counts = vec![0usize; classes];
        for (row, &y) in features.chunks_exact(dim).zip(labels) {
            if y >= classes {
                return Err(Error::Config(format!("label {y} is not below {classes}")));
            }
            counts[y] += 1;
            for (s, &v) in sums[y * dim..(y + 1) * dim].iter_mut().zip(row) {
                *s += f64::from(v);
            }
        }
        if let Some(c) = counts.iter().position(|&n| n == 0) {
            return Err(Error::Config(format!("class {c} has no image for the OOD statistics")));
        }
        let means: Vec<f64> =
            sums.chunks_exact(dim).zip(&counts).flat_map(|(s, &n)| s.iter().map(move |v| v / n as f64)).collect();
        let centred: Vec<f64> = features
            .chunks_exact(dim)
            .zip(labels)
            .flat_map(|(row, &y)| row.iter().zip(&means[y * dim..(y + 1) * dim]).map(|(&v, m)| f64::from(v) - m))
            .collect();
        let x = Tensor::from_vec(centred, (n, dim), &Device::Cpu)?;
        let cov = (x.t()?.matmul(&x)? / (n - classes) as f64)?;
        let trace: f64 = (0..dim)
            .map(|i| cov.get(i).and_then(|r| r.get(i)).and_then(|v| v.to_scalar::<f64>()))
            .sum::<std::result::Result<f64, _>>()?;
        let (vectors, values) = leading_eigenpairs(&cov, k)?;
        let kept: f64 = values.iter().sum();
        // Rounding can leave the residual at or below zero when the features span < k + 1
        // dimensions; a floor keeps the score finite and still large off the subspace.
        let residual_variance = ((trace - kept) / (dim - k) as f64).max(values[k - 1] * 1e-6).max(1e-12);
        if values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::Config("the training features are degenerate (zero variance)".into()));
        }
        Self::new(
            dim,
            means.iter().map(|&v| v as f32).collect(),
            vectors.iter().map(|&v| v as f32).collect(),
            values.iter().map(|&v| v as f32).collect(),
            residual_variance,
        )
    }

    /// Rebuilds the statistics from their stored parts, checking their shapes.
    pub fn new(
        features: usize,
        class_means: Vec<f32>,
        components: Vec<f32>,
        eigenvalues: Vec<f32>,
        residual_variance: f64,
    ) -> Result<Self> {
        let k = eigenvalues.len();
        let bad = |m: String| Error::Config(format!("OOD statistics: {m}"));
        if features == 0 || class_means.is_empty() || !class_means.len().is_multiple_of(features) {
            return Err(bad(format!("{} class-mean values for width {features}", class_means.len())));
        }
        if k == 0 || components.len() != k * features {
            return Err(bad(format!("{} component values for {k} eigenvalues of width {features}", components.len())));
        }
        if eigenvalues.iter().any(|v| !(v.is_finite() && *v > 0.0))
            || !(residual_variance.is_finite() && residual_variance > 0.0)
        {
            return Err(bad("eigenvalues and residual variance must be positive".into()));
        }
        if class_means.iter().chain(&components).any(|v| !v.is_finite()) {
            return Err(bad("non-finite values".into()));
        }
        let projected_means = class_means
            .chunks_exact(features)
            .flat_map(|mu| components.chunks_exact(features).map(move |v| dot(v, mu)))
            .collect();
        let mean_norms = class_means.chunks_exact(features).map(|mu| dot(mu, mu)).collect();
        Ok(Self { features, class_means, components, eigenvalues, residual_variance, projected_means, mean_norms })
    }

    pub fn feature_dim(&self) -> usize {
        self.features
    }
    pub fn classes(&self) -> usize {
        self.class_means.len() / self.features
    }
    pub fn components(&self) -> usize {
        self.eigenvalues.len()
    }
    pub fn residual_variance(&self) -> f64 {
        self.residual_variance
    }
    pub fn class_means(&self) -> &[f32] {
        &self.class_means
    }
    pub fn component_vectors(&self) -> &[f32] {
        &self.components
    }
    pub fn eigenvalues(&self) -> &[f32] {
        &self.eigenvalues
    }

    /// The distance of one feature vector to the nearest class mean (see the module notes).
    pub fn score(&self, f: &[f32]) -> f64 {
        let k = self.components();
        let p: Vec<f64> = self.components.chunks_exact(self.features).map(|v| dot(v, f)).collect();
        let norm = dot(f, f);
        let mut best = f64::INFINITY;
        for (c, mu) in self.class_means.chunks_exact(self.features).enumerate() {
            let d2 = (norm - 2.0 * dot(f, mu) + self.mean_norms[c]).max(0.0);
            let (mut inside, mut weighted) = (0.0, 0.0);
            let centre = &self.projected_means[c * k..(c + 1) * k];
            for ((&pi, &mi), &lambda) in p.iter().zip(centre).zip(&self.eigenvalues) {
                let t = pi - mi;
                inside += t * t;
                weighted += t * t / f64::from(lambda);
            }
            best = best.min(weighted + (d2 - inside).max(0.0) / self.residual_variance);
        }
        best
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
}

/// Energy score −logsumexp(logits) (higher = more unusual).
pub fn energy(logits: &[f32]) -> f64 {
    let max = logits.iter().map(|&z| f64::from(z)).fold(f64::NEG_INFINITY, f64::max);
    -(max + logits.iter().map(|&z| (f64::from(z) - max).exp()).sum::<f64>().ln())
}

/// The q-quantile with linear interpolation between order statistics (numpy's default).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Area under the ROC curve for "out scores higher than in": P(out > in) + ½ P(tie).
pub fn auroc(inside: &[f64], outside: &[f64]) -> f64 {
    crate::stats::rank_auc(outside, inside)
}

/// The k leading eigenpairs of a symmetric positive semi-definite [F, F] f64 matrix:
/// subspace iteration with Rayleigh–Ritz (matrix products by candle, the small k×k problem by
/// cyclic Jacobi). Returns V [k, F] row-major and λ descending.
fn leading_eigenpairs(matrix: &Tensor, k: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let dim = matrix.dim(0)?;
    let m = (k + OVERSAMPLE).min(dim);
    // Deterministic start: a fixed pseudo-random basis (SplitMix64-style hash of the index).
    let start: Vec<f64> = (0..dim * m)
        .map(|i| {
            let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect();
    let mut basis = orthonormal_columns(start, dim, m);
    for _ in 0..SUBSPACE_ITERATIONS {
        let v = Tensor::from_vec(basis, (dim, m), &Device::Cpu)?;
        let w = matrix.matmul(&v)?.flatten_all()?.to_vec1::<f64>()?;
        basis = orthonormal_columns(w, dim, m);
    }
    let v = Tensor::from_vec(basis.clone(), (dim, m), &Device::Cpu)?;
    let h = v.t()?.matmul(&matrix.matmul(&v)?)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let (values, vectors) = jacobi_eigen(h, m);
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    let mut out = Vec::with_capacity(k * dim);
    for &j in order.iter().take(k) {
        // Ritz vector = basis · u_j.
        out.extend((0..dim).map(|r| (0..m).map(|c| basis[r * m + c] * vectors[c * m + j]).sum::<f64>()));
    }
    Ok((out, order.iter().take(k).map(|&j| values[j]).collect()))
}

/// Modified Gram–Schmidt on the columns of a row-major [rows, cols] matrix (twice, for
/// orthogonality to rounding).
fn orthonormal_columns(mut a: Vec<f64>, rows: usize, cols: usize) -> Vec<f64> {
    for _ in 0..2 {
        for j in 0..cols {
            for p in 0..j {
                let d: f64 = (0..rows).map(|r| a[r * cols + j] * a[r * cols + p]).sum();
                for r in 0..rows {
                    a[r * cols + j] -= d * a[r * cols + p];
                }
            }
            let norm = (0..rows).map(|r| a[r * cols + j].powi(2)).sum::<f64>().sqrt();
            let inv = if norm > 1e-300 { 1.0 / norm } else { 0.0 };
            for r in 0..rows {
                a[r * cols + j] *= inv;
            }
        }
    }
    a
}

/// Eigen-decomposition of a small symmetric row-major [n, n] matrix by cyclic Jacobi
/// rotations: (eigenvalues, eigenvectors as the columns of a row-major [n, n]).
fn jacobi_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        let scale: f64 = (0..n).map(|i| a[i * n + i].powi(2)).sum::<f64>().max(1e-300);
        if off <= 1e-24 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_recovers_a_diagonalised_matrix() {
        // [[2, 1], [1, 2]]: eigenvalues 1 and 3.
        let (mut values, _) = jacobi_eigen(vec![2.0, 1.0, 1.0, 2.0], 2);
        values.sort_by(f64::total_cmp);
        assert!((values[0] - 1.0).abs() < 1e-12 && (values[1] - 3.0).abs() < 1e-12, "{values:?}");
    }

    #[test]
    fn auroc_of_separated_and_identical_scores() {
        assert_eq!(auroc(&[0.0, 1.0], &[2.0, 3.0]), 1.0);
        assert_eq!(auroc(&[2.0, 3.0], &[0.0, 1.0]), 0.0);
        assert_eq!(auroc(&[1.0, 1.0], &[1.0]), 0.5);
    }

    #[test]
    fn validation_rank_inverts_the_stored_quantile_grid() {
        let scores: Vec<f64> = (0..1000).map(|i| f64::from(i) * 0.5).collect();
        let summary = OodSummary {
            detector: Detector::Mahalanobis,
            components: 1,
            residual_variance: 1.0,
            mahalanobis_threshold: quantile(&scores, 0.95),
            energy_threshold: 0.0,
            fitted_on: "train".into(),
            fitted_samples: 0,
            threshold_on: "validation".into(),
            threshold_samples: 1000,
            threshold_quantile: 0.95,
            validation_quantiles: quantile_grid(&scores),
        };
        assert_eq!(summary.validation_quantiles.len(), VALIDATION_QUANTILES);
        // The threshold sits at rank 0.95 by construction.
        assert!((summary.validation_rank(summary.mahalanobis_threshold).unwrap() - 0.95).abs() < 1e-9);
        assert!((summary.validation_rank(249.75).unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(summary.validation_rank(-1.0), Some(0.0));
        assert_eq!(summary.validation_rank(1e9), Some(1.0));
        assert_eq!(summary.validation_rank(f64::NAN), None);
        let empty = OodSummary { validation_quantiles: Vec::new(), ..summary };
        assert_eq!(empty.validation_rank(3.0), None);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        // numpy.quantile([1, 2, 3, 4], 0.95) = 3.85
        assert!((quantile(&[4.0, 1.0, 3.0, 2.0], 0.95) - 3.85).abs() < 1e-12);
    }
}
