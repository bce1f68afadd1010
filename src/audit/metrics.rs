//! Membership-inference metrics (Carlini et al., "Membership inference attacks from first
//! principles"): ROC points, ROC AUC with a stratified bootstrap 95 % CI, TPR at low FPR and
//! balanced accuracy. Scores follow one convention everywhere: **higher = more likely a member**,
//! and a sample is called a member when its score is ≥ the threshold.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// One point of the ROC curve: the rates when every sample scoring ≥ `threshold` is called a
/// member. The first point (nothing called a member) has no threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    pub fpr: f64,
    pub tpr: f64,
    pub threshold: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct BootstrapOptions {
    /// Resamples for the confidence interval (0: no interval, it is reported as [auc, auc]).
    pub resamples: usize,
    pub seed: u64,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        Self { resamples: 2000, seed: 0 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metrics {
    pub auc: f64,
    /// Percentile 95 % interval of the AUC over stratified bootstrap resamples (members and
    /// non-members resampled separately, so each resample keeps the class sizes).
    pub auc_ci95: [f64; 2],
    pub tpr_at_1pct_fpr: f64,
    /// With fewer than 1000 non-members this means "no false positive at all" and rests on the
    /// single highest-scoring non-member.
    pub tpr_at_0_1pct_fpr: f64,
    /// Best (TPR + TNR) / 2 over all thresholds.
    pub balanced_accuracy: f64,
    pub n_members: usize,
    pub n_nonmembers: usize,
}

fn check(members: &[f64], nonmembers: &[f64]) -> Result<()> {
    if members.is_empty() || nonmembers.is_empty() {
        return Err(Error::Data(format!(
            "metrics need scores of both classes ({} member and {} non-member scores)",
            members.len(),
            nonmembers.len()
        )));
    }
    if let Some(i) = members.iter().position(|s| s.is_nan()) {
        return Err(Error::Data(format!("member score {i} is NaN")));
    }
    if let Some(i) = nonmembers.iter().position(|s| s.is_nan()) {
        return Err(Error::Data(format!("non-member score {i} is NaN")));
    }
    Ok(())
}

/// ROC AUC = P(member score > non-member score) + ½ P(equal) (Mann–Whitney U / (n₁ n₀)),
/// computed from average ranks so ties count one half.
pub fn auc(members: &[f64], nonmembers: &[f64]) -> Result<f64> {
    check(members, nonmembers)?;
    Ok(auc_unchecked(members, nonmembers, &mut Vec::new()))
}

fn auc_unchecked(members: &[f64], nonmembers: &[f64], buf: &mut Vec<(f64, bool)>) -> f64 {
    crate::stats::rank_auc_with(members, nonmembers, buf)
}

/// The ROC curve: (0, 0), then one point per distinct score from the highest down, ending at
/// (1, 1).
pub fn roc_points(members: &[f64], nonmembers: &[f64]) -> Result<Vec<RocPoint>> {
    check(members, nonmembers)?;
    let mut all: Vec<(f64, bool)> =
        members.iter().map(|&s| (s, true)).chain(nonmembers.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (n1, n0) = (members.len() as f64, nonmembers.len() as f64);
    let mut points = vec![RocPoint { fpr: 0.0, tpr: 0.0, threshold: None }];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < all.len() {
        let thr = all[i].0;
        while i < all.len() && all[i].0 == thr {
            if all[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        points.push(RocPoint { fpr: fp as f64 / n0, tpr: tp as f64 / n1, threshold: Some(thr) });
    }
    Ok(points)
}

/// Highest TPR among thresholds whose FPR is at most `max_fpr`.
pub fn tpr_at_fpr(points: &[RocPoint], max_fpr: f64) -> f64 {
    points.iter().filter(|p| p.fpr <= max_fpr + 1e-12).map(|p| p.tpr).fold(0.0, f64::max)
}

/// Best balanced accuracy (TPR + 1 − FPR) / 2 over the ROC's thresholds.
pub fn best_balanced_accuracy(points: &[RocPoint]) -> f64 {
    points.iter().map(|p| (p.tpr + 1.0 - p.fpr) / 2.0).fold(0.0, f64::max)
}

/// numpy's default (linear) percentile of sorted data.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Stratified bootstrap 95 % interval of the AUC, deterministic for a seed.
pub fn auc_bootstrap_ci(members: &[f64], nonmembers: &[f64], options: &BootstrapOptions) -> Result<[f64; 2]> {
    check(members, nonmembers)?;
    if options.resamples == 0 {
        let a = auc_unchecked(members, nonmembers, &mut Vec::new());
        return Ok([a, a]);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let mut buf = Vec::with_capacity(members.len() + nonmembers.len());
    let (mut m, mut n) = (vec![0.0; members.len()], vec![0.0; nonmembers.len()]);
    let mut aucs = Vec::with_capacity(options.resamples);
    for _ in 0..options.resamples {
        for v in m.iter_mut() {
            *v = members[rng.random_range(0..members.len())];
        }
        for v in n.iter_mut() {
            *v = nonmembers[rng.random_range(0..nonmembers.len())];
        }
        aucs.push(auc_unchecked(&m, &n, &mut buf));
    }
    aucs.sort_by(f64::total_cmp);
    Ok([percentile(&aucs, 2.5), percentile(&aucs, 97.5)])
}

/// Everything the report gives for one attack.
pub fn evaluate(members: &[f64], nonmembers: &[f64], bootstrap: &BootstrapOptions) -> Result<(Metrics, Vec<RocPoint>)> {
    let points = roc_points(members, nonmembers)?;
    let metrics = Metrics {
        auc: auc(members, nonmembers)?,
        auc_ci95: auc_bootstrap_ci(members, nonmembers, bootstrap)?,
        tpr_at_1pct_fpr: tpr_at_fpr(&points, 0.01),
        tpr_at_0_1pct_fpr: tpr_at_fpr(&points, 0.001),
        balanced_accuracy: best_balanced_accuracy(&points),
        n_members: members.len(),
        n_nonmembers: nonmembers.len(),
    };
    Ok((metrics, points))
}
