//! Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") and the
//! measures that show whether it helped: expected calibration error (15 equal-width bins of
//! the top-class confidence, Guo et al.'s definition), Brier score and the reliability bins.
//!
//! One scalar T > 0 divides the logits before the softmax; it is fitted by minimising the
//! negative log-likelihood of the validation split. NLL is convex in β = 1/T (a log-sum-exp of
//! functions linear in β minus a linear term), so a golden-section search on log β finds the
//! global minimum; argmax and therefore accuracy do not change.
//!
//! A small validation split fits T poorly (BreastMNIST has 78 images), so the fitted T is
//! used only when it improves the validation likelihood significantly: a likelihood-ratio test
//! of T = 1 against the fitted T (2·n·ΔNLL against χ²₁ at 5 %, [`LIKELIHOOD_RATIO_CRITICAL`]);
//! otherwise T stays 1 and the adapter says why. The change of the test split's ECE gets a
//! paired bootstrap 95 % interval, because ECE on a few hundred images moves by several points
//! between resamples and a reader must see whether a change is real. (ECE itself gets none:
//! binned ECE is biased upwards on small samples, and on BreastMNIST's 156 test images the
//! percentile interval of the resampled ECE lay entirely above the estimate.)

use serde::{Deserialize, Serialize};

/// Equal-width confidence bins of the reliability diagram and ECE (Guo et al. use 15).
pub const RELIABILITY_BINS: usize = 15;
/// Search interval of the temperature: beyond it a model is not "miscalibrated" but broken.
pub const MIN_TEMPERATURE: f64 = 0.05;
pub const MAX_TEMPERATURE: f64 = 20.0;
/// χ²₁ at the 95 % level: the fitted temperature replaces T = 1 only when
/// 2·n·(NLL(1) − NLL(T̂)) on the validation split exceeds it.
pub const LIKELIHOOD_RATIO_CRITICAL: f64 = 3.841_458_820_694_124;
/// Bootstrap resamples of the test split for the ECE intervals (seeded, paired before/after).
pub const ECE_BOOTSTRAP_RESAMPLES: usize = 1000;

/// One bin of a reliability diagram: predictions whose top-class confidence lies in
/// (i/B, (i+1)/B] (the first bin also holds 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub count: u64,
    /// Mean top-class probability of its predictions (0 for an empty bin).
    pub confidence: f64,
    /// Fraction of its predictions that were right (0 for an empty bin).
    pub accuracy: f64,
}

/// A fitted temperature and its effect on the test split, stored in the adapter's metadata
/// and in the training report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Logits are divided by this before the softmax: `fitted_temperature` when the
    /// likelihood-ratio test accepts it, else 1.
    pub temperature: f64,
    /// The NLL minimiser on the fit split (equal to `temperature` in adapters written before
    /// the test existed).
    #[serde(default)]
    pub fitted_temperature: Option<f64>,
    /// 2·n·(NLL(1) − NLL(fitted)) on the fit split; compared with [`LIKELIHOOD_RATIO_CRITICAL`].
    #[serde(default)]
    pub likelihood_ratio: Option<f64>,
    /// The split T was fitted on ("validation").
    pub fitted_on: String,
    pub fitted_samples: u64,
    /// The split the numbers below were measured on ("test").
    pub evaluated_on: String,
    pub evaluated_samples: u64,
    pub ece_before: f64,
    pub ece_after: f64,
    /// Paired bootstrap 95 % interval (percentile) of ECE after − before on the test split.
    #[serde(default)]
    pub ece_change_ci: Option<[f64; 2]>,
    pub brier_before: f64,
    pub brier_after: f64,
    pub nll_before: f64,
    pub nll_after: f64,
    pub reliability_before: Vec<ReliabilityBin>,
    pub reliability_after: Vec<ReliabilityBin>,
}

impl Calibration {
    /// Fits T on `fit` (logits, labels) and measures before/after on `eval`. Logits are
    /// row-major [n, classes].
    pub fn fit(
        classes: usize,
        fit_logits: &[f32],
        fit_labels: &[usize],
        eval_logits: &[f32],
        eval_labels: &[usize],
    ) -> Self {
        let fitted = fit_temperature(fit_logits, fit_labels, classes);
        let n_fit = fit_labels.len() as f64;
        let likelihood_ratio =
            2.0 * n_fit * (nll(fit_logits, fit_labels, classes, 1.0) - nll(fit_logits, fit_labels, classes, fitted));
        let temperature = if likelihood_ratio > LIKELIHOOD_RATIO_CRITICAL { fitted } else { 1.0 };
        let before = softmax_rows(eval_logits, classes, 1.0);
        let after = softmax_rows(eval_logits, classes, temperature);
        let ece_change_ci = ece_change_bootstrap(&before, &after, eval_labels, classes, ECE_BOOTSTRAP_RESAMPLES);
        Self {
            temperature,
            fitted_temperature: Some(fitted),
            likelihood_ratio: Some(likelihood_ratio.max(0.0)),
            fitted_on: "validation".into(),
            fitted_samples: fit_labels.len() as u64,
            evaluated_on: "test".into(),
            evaluated_samples: eval_labels.len() as u64,
            ece_before: ece(&before, eval_labels, classes, RELIABILITY_BINS),
            ece_after: ece(&after, eval_labels, classes, RELIABILITY_BINS),
            ece_change_ci,
            brier_before: brier(&before, eval_labels, classes),
            brier_after: brier(&after, eval_labels, classes),
            nll_before: nll(eval_logits, eval_labels, classes, 1.0),
            nll_after: nll(eval_logits, eval_labels, classes, temperature),
            reliability_before: reliability(&before, eval_labels, classes, RELIABILITY_BINS),
            reliability_after: reliability(&after, eval_labels, classes, RELIABILITY_BINS),
        }
    }
}

/// Paired percentile-bootstrap 95 % interval of ECE(after) − ECE(before): the same resampled
/// images for both, from a fixed seed (splitmix64), so reruns agree. `None` for fewer than 2
/// images.
pub fn ece_change_bootstrap(
    before: &[f64],
    after: &[f64],
    labels: &[usize],
    classes: usize,
    resamples: usize,
) -> Option<[f64; 2]> {
    let n = labels.len();
    if n < 2 || resamples == 0 {
        return None;
    }
    let mut state = 0x5eed_ca11_b0a7_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut changes = Vec::with_capacity(resamples);
    let (mut pb, mut pa, mut ys) =
        (Vec::with_capacity(n * classes), Vec::with_capacity(n * classes), Vec::with_capacity(n));
    for _ in 0..resamples {
        pb.clear();
        pa.clear();
        ys.clear();
        for _ in 0..n {
            let i = (next() % n as u64) as usize;
            pb.extend_from_slice(&before[i * classes..(i + 1) * classes]);
            pa.extend_from_slice(&after[i * classes..(i + 1) * classes]);
            ys.push(labels[i]);
        }
        changes.push(ece(&pa, &ys, classes, RELIABILITY_BINS) - ece(&pb, &ys, classes, RELIABILITY_BINS));
    }
    Some([crate::model::ood::quantile(&changes, 0.025), crate::model::ood::quantile(&changes, 0.975)])
}

/// Softmax of each row of `logits / temperature` (row-major [n, classes]), in f64.
pub fn softmax_rows(logits: &[f32], classes: usize, temperature: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let scaled: Vec<f64> = row.iter().map(|&z| f64::from(z) / temperature).collect();
        let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = scaled.iter().map(|z| (z - max).exp()).sum();
        out.extend(scaled.iter().map(|z| (z - max).exp() / sum));
    }
    out
}

/// Mean negative log-likelihood of the labels under softmax(logits / temperature).
pub fn nll(logits: &[f32], labels: &[usize], classes: usize, temperature: f64) -> f64 {
    let mut total = 0.0;
    for (row, &y) in logits.chunks_exact(classes).zip(labels) {
        let scaled: Vec<f64> = row.iter().map(|&z| f64::from(z) / temperature).collect();
        let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + scaled.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
        total += lse - scaled[y];
    }
    total / labels.len().max(1) as f64
}

/// The temperature minimising [`nll`], searched in [MIN_TEMPERATURE, MAX_TEMPERATURE]
/// (golden section on log T to 1e-6 relative; T = 1 when there is nothing to fit).
pub fn fit_temperature(logits: &[f32], labels: &[usize], classes: usize) -> f64 {
    if labels.is_empty() || classes < 2 {
        return 1.0;
    }
    let f = |log_t: f64| nll(logits, labels, classes, log_t.exp());
    let (mut a, mut b) = (MIN_TEMPERATURE.ln(), MAX_TEMPERATURE.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    while b - a > 1e-6 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// Top-class confidence and whether it was right, per row of `probabilities`.
fn top<'a>(probabilities: &'a [f64], labels: &'a [usize], classes: usize) -> impl Iterator<Item = (f64, bool)> + 'a {
    probabilities.chunks_exact(classes).zip(labels).map(|(row, &y)| {
        let (i, p) = row.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, &p)| if p > b.1 { (i, p) } else { b });
        (p, i == y)
    })
}

/// Reliability bins of the top-class confidence (equal width, `bins` of them).
pub fn reliability(probabilities: &[f64], labels: &[usize], classes: usize, bins: usize) -> Vec<ReliabilityBin> {
    let mut sums = vec![(0u64, 0.0f64, 0.0f64); bins];
    for (p, right) in top(probabilities, labels, classes) {
        // (i/B, (i+1)/B]: a confidence exactly on an edge belongs to the bin below it.
        let i = ((p * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        sums[i].0 += 1;
        sums[i].1 += p;
        sums[i].2 += f64::from(u8::from(right));
    }
    sums.into_iter()
        .map(|(n, conf, acc)| {
            let n_f = (n as f64).max(1.0);
            ReliabilityBin { count: n, confidence: conf / n_f, accuracy: acc / n_f }
        })
        .collect()
}

/// Expected calibration error: Σ_bins (n_b / n) · |accuracy_b − confidence_b|.
pub fn ece(probabilities: &[f64], labels: &[usize], classes: usize, bins: usize) -> f64 {
    let n = labels.len().max(1) as f64;
    reliability(probabilities, labels, classes, bins)
        .iter()
        .map(|b| b.count as f64 / n * (b.accuracy - b.confidence).abs())
        .sum()
}

/// Brier score: mean over images of Σ_classes (p − onehot)² (0 best, 2 worst).
pub fn brier(probabilities: &[f64], labels: &[usize], classes: usize) -> f64 {
    let total: f64 = probabilities
        .chunks_exact(classes)
        .zip(labels)
        .map(|(row, &y)| row.iter().enumerate().map(|(k, &p)| (p - f64::from(u8::from(k == y))).powi(2)).sum::<f64>())
        .sum();
    total / labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perfectly_confident_right_model_has_zero_ece_and_brier() {
        let p = [1.0, 0.0, 0.0, 1.0];
        assert_eq!(ece(&p, &[0, 1], 2, 15), 0.0);
        assert_eq!(brier(&p, &[0, 1], 2), 0.0);
        assert_eq!(brier(&p, &[1, 0], 2), 2.0);
    }

    #[test]
    fn a_temperature_the_validation_split_cannot_support_is_not_used() {
        // Four images, mildly over-confident: the NLL optimum is not 1, but four images
        // cannot tell it from 1 at the 5 % level.
        let logits = [2.0f32, 0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 2.0];
        let c = Calibration::fit(2, &logits, &[0, 1, 1, 1], &logits, &[0, 1, 1, 1]);
        assert!(c.fitted_temperature.unwrap() > 1.5, "{c:?}");
        assert!(c.likelihood_ratio.unwrap() < LIKELIHOOD_RATIO_CRITICAL);
        assert_eq!(c.temperature, 1.0);
        // The same pattern 50 times over is evidence enough.
        let (many, labels): (Vec<f32>, Vec<usize>) = (
            logits.iter().copied().cycle().take(8 * 50).collect(),
            [0, 1, 1, 1].iter().copied().cycle().take(4 * 50).collect(),
        );
        let c = Calibration::fit(2, &many, &labels, &logits, &[0, 1, 1, 1]);
        assert!(c.likelihood_ratio.unwrap() > LIKELIHOOD_RATIO_CRITICAL);
        assert_eq!(Some(c.temperature), c.fitted_temperature);
    }

    #[test]
    fn ece_change_interval_is_zero_when_nothing_changes_and_signed_when_it_does() {
        let before = [0.9, 0.1, 0.2, 0.8, 0.7, 0.3, 0.4, 0.6];
        assert_eq!(ece_change_bootstrap(&before, &before, &[0, 1, 1, 1], 2, 200), Some([0.0, 0.0]));
        // Every prediction right: pushing confidences to 1 lowers ECE in every resample.
        let labels = [0, 1, 1, 0];
        let sharp = [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0];
        let [lo, hi] = ece_change_bootstrap(&before[..], &sharp, &labels, 2, 200).unwrap();
        assert!(lo <= hi && hi <= 0.0, "[{lo}, {hi}]");
        assert!(ece_change_bootstrap(&sharp[..2], &sharp[..2], &[0], 2, 100).is_none());
    }

    #[test]
    fn confidence_on_a_bin_edge_goes_to_the_lower_bin() {
        let bins = reliability(&[0.6, 0.4], &[0], 2, 5);
        assert_eq!(bins[2].count, 1);
    }
}
