//! Membership inference on a diagnosis adapter (issue 19): can someone holding an adapter tell
//! whether an image was in its training set?
//!
//! - **loss** (Yeom et al. 2018): the target's log-probability of the true label, log p_y
//!   (higher = more likely a member). Needs nothing but the adapter.
//! - **LiRA** (Carlini et al., "Membership Inference Attacks From First Principles", 2022): K
//!   *shadow adapters* are trained by the target's own recipe (its `melo train` options, read
//!   from the report beside it) on random halves of a pool (members ∪ non-members ∪ the optional
//!   population), so each audited image is IN for about half of them and OUT for the rest.
//!   Per image and query (the image and its horizontal flip), the logit-scaled confidence
//!   φ = z_y − log Σ_{j≠y} e^{z_j} of each shadow gives Gaussians N(μ_in, σ_in²) and
//!   N(μ_out, σ_out²). *Online*: score = mean over queries of log N(φ; μ_in, σ_in²) −
//!   log N(φ; μ_out, σ_out²). *Offline* (OUT shadows only): score = mean over queries of
//!   (φ − μ_out)/σ_out, the one-sided test of the paper (a monotone function of Φ). With few
//!   shadows the per-image variances are too noisy, so — as the paper recommends below 64
//!   shadows — one *fixed* variance per query and side is used: the pooled within-image
//!   variance of the shadows' φ. From 64 shadows on, each image's own IN and OUT variances
//!   are used (the pooled one where a side has fewer than two shadows). An image no shadow
//!   holds IN (likely only with K < 8) is scored by its OUT term alone; the report counts
//!   such images.
//!
//! Shadows are cached in `--shadow-dir`, one JSON per shadow (membership mask over the pool,
//! the shadow's φ for every audited image and query, and a fingerprint of recipe, backbone,
//! pool and seed) beside the shadow adapter itself; a repeated audit reuses every shadow whose
//! fingerprint matches, and an interrupted one resumes from the shadows already written.
//!
//! - **RMIA** (Zarifzadeh et al., ICML 2024) on the same shadows: see [`rmia_scores`].
//!
//! `tools/lira/check_scores.py` re-implements the scoring in numpy from the cached files;
//! `tests/adapter_audit.rs` compares.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{Error, Result};
use super::metrics::{evaluate, BootstrapOptions, Metrics};
use super::report::{AttackReport, SampleScore};
use crate::model::{Adapter, Engine};
use crate::train::calibrate::features_and_logits;
use crate::train::data::{DataSource, Prepared, Split, SplitFractions};
use crate::train::trainer::{train_prepared, DataSetInfo, Splits, TrainOptions};

/// Attacks on an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterAttack {
    Loss,
    LiraOnline,
    LiraOffline,
    RmiaOnline,
    RmiaOffline,
}

impl AdapterAttack {
    pub fn name(self) -> &'static str {
        match self {
            AdapterAttack::Loss => "loss",
            AdapterAttack::LiraOnline => "lira_online",
            AdapterAttack::LiraOffline => "lira_offline",
            AdapterAttack::RmiaOnline => "rmia_online",
            AdapterAttack::RmiaOffline => "rmia_offline",
        }
    }

    /// Every attack, in report order.
    pub const ALL: [AdapterAttack; 5] = [
        AdapterAttack::Loss,
        AdapterAttack::LiraOnline,
        AdapterAttack::LiraOffline,
        AdapterAttack::RmiaOnline,
        AdapterAttack::RmiaOffline,
    ];

    /// `loss`, `lira` / `rmia` (both variants), `lira_online`, `lira_offline`, `rmia_online`,
    /// `rmia_offline`, `all`.
    pub fn parse_list(names: &[String]) -> Result<Vec<AdapterAttack>> {
        let mut out = Vec::new();
        for name in names {
            let add: &[AdapterAttack] = match name.trim() {
                "all" => &AdapterAttack::ALL,
                "loss" => &[AdapterAttack::Loss],
                "lira" => &[AdapterAttack::LiraOnline, AdapterAttack::LiraOffline],
                "lira_online" => &[AdapterAttack::LiraOnline],
                "lira_offline" => &[AdapterAttack::LiraOffline],
                "rmia" => &[AdapterAttack::RmiaOnline, AdapterAttack::RmiaOffline],
                "rmia_online" => &[AdapterAttack::RmiaOnline],
                "rmia_offline" => &[AdapterAttack::RmiaOffline],
                other => {
                    return Err(Error::Params(format!(
                        "unknown attack '{other}' for an adapter target (loss, lira, lira_online, lira_offline, rmia, rmia_online, rmia_offline, all)"
                    )))
                }
            };
            for a in add {
                if !out.contains(a) {
                    out.push(*a);
                }
            }
        }
        Ok(out)
    }

    fn needs_shadows(self) -> bool {
        self != AdapterAttack::Loss
    }
}

/// A set of images: a `.npz` or ImageFolder directory as `melo train` reads it, optionally
/// restricted to one split (`PATH:train`, `PATH:val`, `PATH:test`), split with the target's
/// own fractions and seed, so that `DATA:train` is exactly the target's training split.
#[derive(Debug, Clone, PartialEq)]
pub struct SetSpec {
    pub path: PathBuf,
    pub split: Option<Split>,
}

impl SetSpec {
    pub fn parse(text: &str) -> Self {
        for (suffix, split) in [(":train", Split::Train), (":val", Split::Val), (":test", Split::Test)] {
            if let Some(path) = text.strip_suffix(suffix) {
                return Self { path: PathBuf::from(path), split: Some(split) };
            }
        }
        Self { path: PathBuf::from(text), split: None }
    }

    /// "breastmnist.npz:train" without folders: what a shared report may say of the set.
    fn shareable(&self) -> String {
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match self.split {
            Some(s) => format!("{name}:{}", s.name()),
            None => name,
        }
    }
}

/// What an adapter audit needs.
#[derive(Debug, Clone)]
pub struct AdapterAuditConfig {
    pub adapter: PathBuf,
    /// The `melo train` report holding the target's options (default: beside the adapter).
    pub recipe: Option<PathBuf>,
    pub members: SetSpec,
    pub nonmembers: SetSpec,
    pub population: Option<SetSpec>,
    pub attacks: Vec<AdapterAttack>,
    pub shadows: usize,
    pub shadow_dir: PathBuf,
    /// At most this many images of each set (the first ones).
    pub limit: Option<usize>,
    pub seed: u64,
    pub bootstrap: BootstrapOptions,
    pub backbone: PathBuf,
}

/// Progress of a running audit.
#[derive(Debug, Clone)]
pub struct Progress {
    pub message: String,
    pub done: usize,
    pub total: usize,
}

/// Leakage within one class: members and non-members of that true label only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassLeakage {
    pub class: String,
    pub attack: String,
    pub metrics: Metrics,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowSummary {
    pub count: usize,
    pub trained_now: usize,
    pub reused_from_cache: usize,
    pub train_size: usize,
    pub pool_size: usize,
    pub seconds_training: f64,
    /// Audited images that no shadow held IN (scored by the OUT term alone).
    pub images_never_in: usize,
    pub images_never_out: usize,
}

/// The report of an adapter audit (written as JSON; no input paths).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterAuditReport {
    pub melo_version: String,
    pub score_convention: String,
    pub target_task: String,
    pub target_labels: Vec<String>,
    pub recipe: serde_json::Value,
    pub members: String,
    pub nonmembers: String,
    pub population: Option<String>,
    pub n_members: usize,
    pub n_nonmembers: usize,
    pub queries: Vec<String>,
    pub shadows: Option<ShadowSummary>,
    pub attacks: Vec<AttackReport>,
    pub per_class: Vec<ClassLeakage>,
    pub warnings: Vec<String>,
    pub seconds: f64,
    /// The training images the strongest attack (highest AUC) scores highest, with their
    /// pixels for the window's gallery. Not written to the JSON report: it carries pseudonyms
    /// and scores, never patients' pixels.
    #[serde(skip)]
    pub most_exposed: Vec<ExposedImage>,
}

/// How many of the most exposed training images the report keeps for the gallery.
pub const MOST_EXPOSED: usize = 8;

/// A training image and its membership score, as the gallery shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExposedImage {
    pub attack: String,
    pub id: String,
    /// Index in the members set.
    pub index: usize,
    pub score: f64,
    pub label: String,
    /// RGB, `side` × `side`, row-major: the image as the adapter sees it (its input size).
    pub side: usize,
    pub rgb: Vec<u8>,
}

impl AdapterAuditReport {
    pub fn write_json(&self, path: &Path) -> Result<()> {
        crate::atomic::write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, self).map_err(std::io::Error::other)?;
            w.write_all(b"\n")
        })?;
        Ok(())
    }
}

/// Queries per image: the image and its horizontal flip (the augmentation every shipped recipe
/// trains with), as LiRA's "augmented queries".
pub const QUERIES: [&str; 2] = ["identity", "hflip"];

/// One cached shadow: which pool images it trained on and its φ for the audited images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowRecord {
    pub fingerprint: String,
    pub index: usize,
    /// Over the pool (members, then non-members, then population).
    pub in_mask: Vec<bool>,
    /// [audited image][query], audited = members then non-members.
    pub phi: Vec<Vec<f64>>,
    pub train_seconds: f64,
}

/// φ = z_y − log Σ_{j≠y} e^{z_j} (Carlini et al.'s logit scaling of the true-label
/// probability, computed from the logits without forming p).
pub fn logit_scaled_confidence(logits: &[f32], label: usize) -> f64 {
    let zy = f64::from(logits[label]);
    let others: Vec<f64> = logits.iter().enumerate().filter(|&(j, _)| j != label).map(|(_, &z)| f64::from(z)).collect();
    let max = others.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    zy - (max + others.iter().map(|z| (z - max).exp()).sum::<f64>().ln())
}

/// log p_y of the softmax of `logits`.
pub fn log_probability(logits: &[f32], label: usize) -> f64 {
    let max = logits.iter().map(|&z| f64::from(z)).fold(f64::NEG_INFINITY, f64::max);
    f64::from(logits[label]) - (max + logits.iter().map(|&z| (f64::from(z) - max).exp()).sum::<f64>().ln())
}

fn log_normal_pdf(x: f64, mean: f64, sd: f64) -> f64 {
    let z = (x - mean) / sd;
    -0.5 * z * z - sd.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
}

/// From this many shadows on, LiRA uses each image's own IN / OUT variance; below it one
/// pooled variance per query and side, as Carlini et al. advise for fewer than 64 shadows.
pub const LIRA_PER_EXAMPLE_VARIANCE: usize = 64;

/// LiRA scores from the target's φ [n][q], the shadows' φ [k][n][q] and their IN masks
/// [k][n] (over the audited images). Returns (online, offline, images never IN, never OUT).
pub fn lira_scores(
    target: &[Vec<f64>],
    shadow_phi: &[Vec<Vec<f64>>],
    shadow_in: &[Vec<bool>],
) -> Result<(Vec<f64>, Vec<f64>, usize, usize)> {
    let n = target.len();
    let q = target.first().map_or(0, Vec::len);
    if shadow_phi.len() < 2 || shadow_phi.len() != shadow_in.len() {
        return Err(Error::Params(format!("LiRA needs at least 2 shadows, got {}", shadow_phi.len())));
    }
    // Per image and query: IN / OUT means, and the pooled within-image variances.
    let mut mean_in = vec![vec![f64::NAN; q]; n];
    let mut mean_out = vec![vec![f64::NAN; q]; n];
    let (mut ss_in, mut df_in, mut ss_out, mut df_out) = (vec![0.0; q], vec![0usize; q], vec![0.0; q], vec![0usize; q]);
    let (mut never_in, mut never_out) = (0, 0);
    for i in 0..n {
        let ins: Vec<usize> = (0..shadow_phi.len()).filter(|&k| shadow_in[k][i]).collect();
        let outs: Vec<usize> = (0..shadow_phi.len()).filter(|&k| !shadow_in[k][i]).collect();
        never_in += usize::from(ins.is_empty());
        never_out += usize::from(outs.is_empty());
        for j in 0..q {
            for (side, mean, ss, df) in
                [(&ins, &mut mean_in, &mut ss_in, &mut df_in), (&outs, &mut mean_out, &mut ss_out, &mut df_out)]
            {
                if side.is_empty() {
                    continue;
                }
                let m = side.iter().map(|&k| shadow_phi[k][i][j]).sum::<f64>() / side.len() as f64;
                mean[i][j] = m;
                ss[j] += side.iter().map(|&k| (shadow_phi[k][i][j] - m).powi(2)).sum::<f64>();
                df[j] += side.len() - 1;
            }
        }
    }
    // A floor keeps a degenerate (all-equal) shadow set from dividing by zero.
    let sd = |ss: f64, df: usize| (ss / df.max(1) as f64).sqrt().max(1e-6);
    let sd_in: Vec<f64> = (0..q).map(|j| sd(ss_in[j], df_in[j])).collect();
    let sd_out: Vec<f64> = (0..q).map(|j| sd(ss_out[j], df_out[j])).collect();
    // From LIRA_PER_EXAMPLE_VARIANCE shadows on, each image's own IN / OUT variance (the
    // paper's full attack); the pooled one where a side has fewer than two shadows.
    let per_example = shadow_phi.len() >= LIRA_PER_EXAMPLE_VARIANCE;
    let own_sd = |i: usize, j: usize, inside: bool, mean: f64, pooled: f64| -> f64 {
        let values: Vec<f64> =
            (0..shadow_phi.len()).filter(|&k| shadow_in[k][i] == inside).map(|k| shadow_phi[k][i][j]).collect();
        if !per_example || values.len() < 2 {
            return pooled;
        }
        let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
        sd(ss, values.len() - 1)
    };
    let (mut online, mut offline) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let (mut on, mut off) = (0.0, 0.0);
        for j in 0..q {
            let x = target[i][j];
            let (m_in, m_out) = (mean_in[i][j], mean_out[i][j]);
            let s_out = if m_out.is_nan() { sd_out[j] } else { own_sd(i, j, false, m_out, sd_out[j]) };
            let s_in = if m_in.is_nan() { sd_in[j] } else { own_sd(i, j, true, m_in, sd_in[j]) };
            let out = if m_out.is_nan() { 0.0 } else { log_normal_pdf(x, m_out, s_out) };
            let inside = if m_in.is_nan() { 0.0 } else { log_normal_pdf(x, m_in, s_in) };
            on += inside - out;
            off += if m_out.is_nan() { 0.0 } else { (x - m_out) / s_out };
        }
        online.push(on / q as f64);
        offline.push(off / q as f64);
    }
    Ok((online, offline, never_in, never_out))
}

/// RMIA's γ: x counts as dominating a reference image z when its likelihood ratio is above
/// z's. The paper tunes γ ≥ 1 for a decision threshold; for a ROC, which sweeps every
/// threshold of the score, γ = 1 keeps the score a plain rank (its order is the same for any γ
/// up to ties).
pub const RMIA_GAMMA: f64 = 1.0;

/// The grid of offline RMIA's `a` (Pr(x) ≈ ½((1 + a)·Pr_OUT(x) + 1 − a)), tuned on the shadows.
const RMIA_A_GRID: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// RMIA scores of every audited image (Zarifzadeh et al., "Low-Cost High-Power Membership
/// Inference Attacks", ICML 2024), from the same cached shadow confidences as LiRA.
#[derive(Debug, Clone, PartialEq)]
pub struct RmiaScores {
    /// Pr(x) = mean over all shadows (IN and OUT) of p_y(x).
    pub online: Vec<f64>,
    /// Pr(x) from the OUT shadows alone, scaled with `offline_a`.
    pub offline: Vec<f64>,
    /// The `a` of the offline approximation that best separated each shadow's own members when
    /// that shadow played the target (mean AUC over the shadows).
    pub offline_a: f64,
    /// That mean AUC.
    pub offline_a_auc: f64,
}

/// RMIA: the likelihood ratio LR(x) = p_y(x | target) / Pr(x), where Pr(x) is p_y(x) averaged
/// over reference models (the shadows), compared with the same ratio of every other audited
/// image z: score(x) = fraction of z with LR(x) / LR(z) > γ, averaged over the queries. The
/// z are the other audited images: the attacker knows them as data, not their membership.
/// p_y = sigmoid(φ) since φ = z_y − log Σ_{j≠y} e^{z_j}. Offline, Pr(x) = ½((1 + a)·Pr_OUT(x) +
/// 1 − a), the paper's linear correction for references that never saw x; `a` is tuned by
/// letting each shadow play the target against the others (the paper's recipe). An image no
/// shadow holds OUT uses the mean of all shadows offline too.
pub fn rmia_scores(target: &[Vec<f64>], shadow_phi: &[Vec<Vec<f64>>], shadow_in: &[Vec<bool>]) -> Result<RmiaScores> {
    let k = shadow_phi.len();
    if k < 2 || k != shadow_in.len() {
        return Err(Error::Params(format!("RMIA needs at least 2 shadows, got {k}")));
    }
    // p_y = sigmoid(φ), once per image, query and model.
    let probabilities = |phi: &[Vec<f64>]| -> Vec<Vec<f64>> {
        phi.iter().map(|row| row.iter().map(|&f| 1.0 / (1.0 + (-f).exp())).collect()).collect()
    };
    let p_shadow: Vec<Vec<Vec<f64>>> = shadow_phi.iter().map(|phi| probabilities(phi)).collect();
    // Per image and query: p_y averaged over the references (all / OUT only), leaving out one
    // shadow when it plays the target.
    let reference_means = |skip: Option<usize>| -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let n = target.len();
        let q = target.first().map_or(0, Vec::len);
        let (mut all, mut out) = (vec![vec![0.0; q]; n], vec![vec![0.0; q]; n]);
        for i in 0..n {
            let refs: Vec<usize> = (0..k).filter(|&r| Some(r) != skip).collect();
            let outs: Vec<usize> = refs.iter().copied().filter(|&r| !shadow_in[r][i]).collect();
            for j in 0..q {
                let mean = |set: &[usize]| set.iter().map(|&r| p_shadow[r][i][j]).sum::<f64>() / set.len() as f64;
                all[i][j] = mean(&refs);
                out[i][j] = if outs.is_empty() { all[i][j] } else { mean(&outs) };
            }
        }
        (all, out)
    };
    let (all, out) = reference_means(None);
    let offline_pr = |out: &[Vec<f64>], a: f64| -> Vec<Vec<f64>> {
        out.iter().map(|row| row.iter().map(|&p| 0.5 * ((1.0 + a) * p + 1.0 - a)).collect()).collect()
    };
    let (mut best_a, mut best_auc) = (RMIA_A_GRID[0], f64::NEG_INFINITY);
    // Only the OUT means are needed when a shadow plays the target (offline RMIA).
    let pseudo_out: Vec<Vec<Vec<f64>>> = (0..k).map(|s| reference_means(Some(s)).1).collect();
    for &a in &RMIA_A_GRID {
        let mut auc_sum = 0.0;
        for (s, out_s) in pseudo_out.iter().enumerate() {
            let scores = rmia_dominance(&p_shadow[s], &offline_pr(out_s, a), RMIA_GAMMA);
            let (mut pos, mut neg) = (Vec::new(), Vec::new());
            for (i, &score) in scores.iter().enumerate() {
                if shadow_in[s][i] {
                    pos.push(score)
                } else {
                    neg.push(score)
                }
            }
            let auc = crate::stats::rank_auc(&pos, &neg);
            auc_sum += if auc.is_nan() { 0.5 } else { auc };
        }
        let auc = auc_sum / k as f64;
        if auc > best_auc + 1e-12 {
            (best_a, best_auc) = (a, auc);
        }
    }
    let p_target = probabilities(target);
    Ok(RmiaScores {
        online: rmia_dominance(&p_target, &all, RMIA_GAMMA),
        offline: rmia_dominance(&p_target, &offline_pr(&out, best_a), RMIA_GAMMA),
        offline_a: best_a,
        offline_a_auc: best_auc,
    })
}

/// score(x) = mean over queries of the fraction of other images z with LR(x) > γ·LR(z),
/// LR = p / Pr; by sorting and binary search, O(n log n) per query.
fn rmia_dominance(p: &[Vec<f64>], pr: &[Vec<f64>], gamma: f64) -> Vec<f64> {
    let n = p.len();
    let q = p.first().map_or(0, Vec::len);
    let mut scores = vec![0.0; n];
    if n < 2 {
        return scores;
    }
    for j in 0..q {
        let ratios: Vec<f64> = (0..n).map(|i| p[i][j] / pr[i][j].max(f64::MIN_POSITIVE)).collect();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        for i in 0..n {
            let bound = ratios[i] / gamma;
            let mut below = sorted.partition_point(|&r| r < bound);
            if ratios[i] < bound {
                below -= 1; // x itself is not one of its references
            }
            scores[i] += below as f64 / (n - 1) as f64 / q as f64;
        }
    }
    scores
}

/// Pixels [n, 3, s, s] mirrored left-right.
fn hflip(p: &Prepared) -> Prepared {
    let s = p.size;
    let mut pixels = p.pixels.clone();
    for row in pixels.chunks_exact_mut(s) {
        row.reverse();
    }
    Prepared { pixels, labels: p.labels.clone(), size: s, skipped: Vec::new() }
}

fn concat(parts: &[&Prepared]) -> Prepared {
    let size = parts.first().map_or(0, |p| p.size);
    let mut out = Prepared { pixels: Vec::new(), labels: Vec::new(), size, skipped: Vec::new() };
    for p in parts {
        out.pixels.extend_from_slice(&p.pixels);
        out.labels.extend_from_slice(&p.labels);
    }
    out
}

fn subset(p: &Prepared, items: &[usize]) -> Prepared {
    let mut out = Prepared { pixels: Vec::new(), labels: Vec::new(), size: p.size, skipped: Vec::new() };
    for &i in items {
        out.pixels.extend_from_slice(p.item(i));
        out.labels.push(p.labels[i]);
    }
    out
}

/// φ per image and query [n][q] of `adapter` on `images` (identity, hflip).
fn phi_of(engine: &Engine, adapter: &Adapter, images: &Prepared) -> Result<(Vec<Vec<f64>>, Vec<f64>)> {
    let c = adapter.labels().len();
    let all: Vec<usize> = (0..images.len()).collect();
    let mut phi = vec![Vec::with_capacity(QUERIES.len()); images.len()];
    let mut log_p = Vec::new();
    let mirrored = hflip(images);
    for (q, view) in [images, &mirrored].into_iter().enumerate() {
        let (_, logits) = features_and_logits(engine.backbone(), adapter, view, &all).map_err(train_error)?;
        for (i, row) in logits.chunks_exact(c).enumerate() {
            phi[i].push(logit_scaled_confidence(row, images.labels[i]));
            if q == 0 {
                log_p.push(log_probability(row, images.labels[i]));
            }
        }
    }
    Ok((phi, log_p))
}

fn train_error(e: crate::train::Error) -> Error {
    Error::Data(e.to_string())
}

fn model_error(e: crate::model::Error) -> Error {
    Error::Data(e.to_string())
}

/// sha256 over the pool's pixels and labels (the cache must not mix pools).
fn pool_digest(pool: &Prepared) -> String {
    let mut h = Sha256::new();
    for v in &pool.pixels {
        h.update(v.to_le_bytes());
    }
    for &l in &pool.labels {
        h.update((l as u64).to_le_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads a set at the adapter's input size, checking its classes against the adapter's labels.
fn load_set(
    spec: &SetSpec,
    adapter: &Adapter,
    split: SplitFractions,
    limit: Option<usize>,
    what: &str,
) -> Result<Prepared> {
    let labels = adapter.labels().to_vec();
    let source = DataSource::open(&spec.path, None, split).map_err(|e| Error::Data(format!("{what}: {e}")))?;
    // An npz numbers its classes (class_0 …, in the adapter's label order); a folder names
    // them by its class folders, which must be among the adapter's labels.
    let is_npz = !spec.path.is_dir();
    if is_npz {
        if source.classes.len() != labels.len() {
            return Err(Error::Data(format!(
                "{what}: the data has {} classes, the adapter {} ({})",
                source.classes.len(),
                labels.len(),
                labels.join(", ")
            )));
        }
    } else if let Some(stray) = source.classes.iter().find(|c| !labels.contains(c)) {
        return Err(Error::Data(format!(
            "{what}: class '{stray}' is not one of the adapter's labels ({})",
            labels.join(", ")
        )));
    }
    let m = adapter.metadata();
    let splits: Vec<Split> = match spec.split {
        Some(s) => vec![s],
        None => vec![Split::Train, Split::Val, Split::Test],
    };
    let mut parts = Vec::new();
    for s in splits {
        let mut p =
            source.prepare(s, m.input_size, m.mean, m.std, None).map_err(|e| Error::Data(format!("{what}: {e}")))?;
        if !is_npz {
            // Folder classes are sorted names; map them onto the adapter's label order.
            p.labels =
                p.labels.iter().map(|&l| labels.iter().position(|x| *x == source.classes[l]).unwrap_or(0)).collect();
        }
        parts.push(p);
    }
    let mut set = concat(&parts.iter().collect::<Vec<_>>());
    if let Some(n) = limit {
        let keep: Vec<usize> = (0..set.len().min(n)).collect();
        set = subset(&set, &keep);
    }
    if set.is_empty() {
        return Err(Error::Data(format!("{what}: no readable images")));
    }
    Ok(set)
}

/// Runs the audit. `progress` is called as work advances; `cancel` stops between shadows and
/// batches (cached shadows stay for a resume).
pub fn run(
    config: &AdapterAuditConfig,
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<AdapterAuditReport> {
    let t0 = Instant::now();
    let attacks = if config.attacks.is_empty() {
        vec![AdapterAttack::Loss, AdapterAttack::LiraOnline, AdapterAttack::LiraOffline]
    } else {
        config.attacks.clone()
    };
    let need_shadows = attacks.iter().any(|a| a.needs_shadows());
    if need_shadows && config.shadows < 2 {
        return Err(Error::Params(format!(
            "LiRA needs at least 2 shadow adapters (--shadows), got {}",
            config.shadows
        )));
    }
    let mut engine = Engine::open(&config.backbone).map_err(model_error)?;
    let adapter = Adapter::load(&config.adapter).map_err(model_error)?;
    engine.register(adapter).map_err(|e| Error::Data(format!("{}: {e}", config.adapter.display())))?;
    let task = engine.adapters()[0].task().to_string();
    let adapter = engine.adapter(&task).map_err(model_error)?.clone();

    // The recipe: the target's `melo train` options.
    let recipe_path = config.recipe.clone().unwrap_or_else(|| crate::train::trainer::report_path(&config.adapter));
    let recipe_text = std::fs::read_to_string(&recipe_path).map_err(|e| {
        Error::Data(format!(
            "the target's training recipe {} cannot be read ({e}); give --recipe REPORT.json (the `melo train` report)",
            recipe_path.display()
        ))
    })?;
    let recipe_json: serde_json::Value =
        serde_json::from_str(&recipe_text).map_err(|e| Error::Data(format!("{}: {e}", recipe_path.display())))?;
    let mut recipe: TrainOptions = serde_json::from_value(recipe_json.get("options").cloned().unwrap_or_default())
        .map_err(|e| Error::Data(format!("{}: no usable `options` ({e})", recipe_path.display())))?;
    if recipe.size != adapter.metadata().input_size {
        return Err(Error::Data(format!(
            "the recipe trains at {} px, the adapter takes {} px: not this adapter's report",
            recipe.size,
            adapter.metadata().input_size
        )));
    }

    progress(Progress { message: "loading images".into(), done: 0, total: 1 });
    let members = load_set(&config.members, &adapter, recipe.split, config.limit, "members")?;
    let nonmembers = load_set(&config.nonmembers, &adapter, recipe.split, config.limit, "non-members")?;
    let population = match &config.population {
        Some(p) => Some(load_set(p, &adapter, recipe.split, None, "population")?),
        None => None,
    };
    let mut warnings = Vec::new();
    let audited = concat(&[&members, &nonmembers]);
    let (target_phi, log_p) = phi_of(&engine, &adapter, &audited)?;
    let (nm, nn) = (members.len(), nonmembers.len());
    let is_member = |i: usize| i < nm;
    let bootstrap = &config.bootstrap;

    let mut reports = Vec::new();
    let mut add_attack = |name: &str,
                          description: &str,
                          queries: usize,
                          seconds: f64,
                          scores: &[f64],
                          notes: Vec<String>|
     -> Result<()> {
        let (metrics, roc) = evaluate(&scores[..nm], &scores[nm..], bootstrap)?;
        reports.push(AttackReport {
            name: name.into(),
            description: description.into(),
            queries_per_sample: queries,
            seconds,
            evaluated_on: "all samples".into(),
            notes,
            metrics,
            roc,
            scores: scores
                .iter()
                .enumerate()
                .map(|(i, &score)| {
                    let (member, index) = if is_member(i) { (true, i) } else { (false, i - nm) };
                    SampleScore { index, id: super::pseudonym(member, index), member, score, caption: None }
                })
                .collect(),
        });
        Ok(())
    };
    if attacks.contains(&AdapterAttack::Loss) {
        add_attack(
            "loss",
            "log-probability of the true label under the target (Yeom et al. 2018)",
            1,
            0.0,
            &log_p,
            Vec::new(),
        )?;
    }

    let mut shadow_summary = None;
    if need_shadows {
        let pool = match &population {
            Some(p) => concat(&[&members, &nonmembers, p]),
            None => concat(&[&members, &nonmembers]),
        };
        let train_size = pool.len() / 2;
        // The shadows pick their epoch on a validation split as large, relative to their
        // training half, as the target's was: a smaller one makes the early stopping noisier
        // and the shadows less like the target (a tenth, the earlier rule, gave BreastMNIST
        // shadows 39 validation images where the target had 78 for 546).
        let shadow_val_fraction = {
            let count = |key: &str| recipe_json.get(key).and_then(|v| v.as_f64()).filter(|v| *v > 0.0);
            match (count("val_samples"), count("train_samples")) {
                (Some(val), Some(train)) => (val / train).clamp(0.02, 1.0),
                _ => 0.1,
            }
        };
        let fingerprint_base = {
            let mut r = recipe.clone();
            r.data = PathBuf::new();
            r.out = PathBuf::new();
            r.progress = false;
            let mut h = Sha256::new();
            h.update(serde_json::to_string(&r).unwrap_or_default().as_bytes());
            h.update(engine.backbone().sha256().as_bytes());
            h.update(pool_digest(&pool).as_bytes());
            h.update(nm.to_le_bytes());
            h.update(config.seed.to_le_bytes());
            // The rule that sizes the shadows' validation split (below); a new rule must not
            // reuse shadows trained under the old one.
            h.update(format!("val-fraction {shadow_val_fraction:.6}").as_bytes());
            hex(&h.finalize())
        };
        std::fs::create_dir_all(&config.shadow_dir).map_err(|e| Error::io(&config.shadow_dir, e))?;
        // The target's own φ beside the shadows': what an independent re-scoring
        // (tools/lira/check_scores.py) needs.
        let target_record =
            serde_json::json!({ "n_members": nm, "n_nonmembers": nn, "queries": QUERIES, "phi": target_phi });
        crate::atomic::write_bytes_atomic(
            &config.shadow_dir.join("target_phi.json"),
            target_record.to_string().as_bytes(),
        )?;
        let (mut records, mut trained_now, mut seconds_training) = (Vec::new(), 0, 0.0);
        for k in 0..config.shadows {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let record_path = config.shadow_dir.join(format!("shadow_{k:03}.json"));
            let fingerprint = format!("{fingerprint_base}-{k}");
            if let Some(record) = read_record(&record_path).filter(|r| r.fingerprint == fingerprint) {
                records.push(record);
                continue;
            }
            progress(Progress {
                message: format!("training shadow adapter {} of {}", k + 1, config.shadows),
                done: k,
                total: config.shadows,
            });
            let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed.wrapping_mul(1_000_003).wrapping_add(k as u64));
            let mut order: Vec<usize> = (0..pool.len()).collect();
            order.shuffle(&mut rng);
            let (inside, outside) = order.split_at(train_size);
            // The recipe picks its epoch on a validation split drawn from the OUT half, never
            // trained on (also its test split, which the shadow's calibration needs).
            let val_count = ((train_size as f64 * shadow_val_fraction).round() as usize).clamp(2, outside.len());
            let val_items: Vec<usize> = outside.iter().copied().take(val_count).collect();
            let mut in_mask = vec![false; pool.len()];
            for &i in inside {
                in_mask[i] = true;
            }
            let splits = Splits {
                train: subset(&pool, inside),
                val: subset(&pool, &val_items),
                test: subset(&pool, &val_items),
            };
            let out = config.shadow_dir.join(format!("shadow_{k:03}.safetensors"));
            recipe.out = out.clone();
            recipe.progress = false;
            recipe.resume = false;
            recipe.stop_after = None;
            recipe.seed = config.seed.wrapping_add(k as u64 + 1);
            let t = Instant::now();
            let info = DataSetInfo { name: "membership-audit shadow".into(), licence: String::new() };
            train_prepared(&recipe, &info, &engine, adapter.labels(), &splits).map_err(train_error)?;
            let shadow = Adapter::load(&out).map_err(model_error)?;
            let (phi, _) = phi_of(&engine, &shadow, &audited)?;
            let record = ShadowRecord { fingerprint, index: k, in_mask, phi, train_seconds: t.elapsed().as_secs_f64() };
            seconds_training += record.train_seconds;
            trained_now += 1;
            let text = serde_json::to_string(&record).map_err(|e| Error::Data(e.to_string()))?;
            crate::atomic::write_bytes_atomic(&record_path, text.as_bytes())?;
            records.push(record);
        }
        let n_audited = nm + nn;
        let shadow_phi: Vec<Vec<Vec<f64>>> = records.iter().map(|r| r.phi.clone()).collect();
        let shadow_in: Vec<Vec<bool>> = records.iter().map(|r| r.in_mask[..n_audited].to_vec()).collect();
        let t = Instant::now();
        let (online, offline, never_in, never_out) = lira_scores(&target_phi, &shadow_phi, &shadow_in)?;
        let variance = if shadow_phi.len() >= LIRA_PER_EXAMPLE_VARIANCE {
            "per-image variance"
        } else {
            "fixed (pooled) variance"
        };
        let seconds = t.elapsed().as_secs_f64();
        if never_in > 0 {
            warnings.push(format!("{never_in} audited images were IN no shadow (scored by the OUT term alone)"));
        }
        let k = records.len();
        let note = vec![format!(
            "{k} shadow adapters trained by the target's recipe on random halves of a pool of {}",
            pool.len()
        )];
        if attacks.contains(&AdapterAttack::LiraOnline) {
            add_attack(
                "lira_online",
                &format!("LiRA online (Carlini et al. 2022): Gaussian likelihood ratio of the logit-scaled confidence, IN vs OUT shadows, {variance}, 2 queries"),
                2,
                seconds,
                &online,
                note.clone(),
            )?;
        }
        if attacks.contains(&AdapterAttack::LiraOffline) {
            add_attack(
                "lira_offline",
                &format!("LiRA offline (Carlini et al. 2022): one-sided test against the OUT shadows' Gaussian, {variance}, 2 queries"),
                2,
                seconds,
                &offline,
                note.clone(),
            )?;
        }
        if attacks.contains(&AdapterAttack::RmiaOnline) || attacks.contains(&AdapterAttack::RmiaOffline) {
            let t = Instant::now();
            let rmia = rmia_scores(&target_phi, &shadow_phi, &shadow_in)?;
            let seconds = t.elapsed().as_secs_f64();
            if attacks.contains(&AdapterAttack::RmiaOnline) {
                add_attack(
                    "rmia_online",
                    "RMIA online (Zarifzadeh et al. 2024): p_y under the target over its mean under all shadows, ranked against the other audited images, 2 queries",
                    2,
                    seconds,
                    &rmia.online,
                    note.clone(),
                )?;
            }
            if attacks.contains(&AdapterAttack::RmiaOffline) {
                let mut notes = note;
                notes.push(format!(
                    "offline a = {:.1}, tuned with each shadow as the target against the others (mean AUC {:.3})",
                    rmia.offline_a, rmia.offline_a_auc
                ));
                add_attack(
                    "rmia_offline",
                    "RMIA offline (Zarifzadeh et al. 2024): p_y under the target over ½((1+a)·Pr_OUT + 1 − a) from the OUT shadows, ranked against the other audited images, 2 queries",
                    2,
                    seconds,
                    &rmia.offline,
                    notes,
                )?;
            }
        }
        shadow_summary = Some(ShadowSummary {
            count: k,
            trained_now,
            reused_from_cache: k - trained_now,
            train_size,
            pool_size: pool.len(),
            seconds_training,
            images_never_in: never_in,
            images_never_out: never_out,
        });
    }

    // Leakage per true class.
    let mut per_class = Vec::new();
    for (c, class) in adapter.labels().iter().enumerate() {
        for a in &reports {
            let pick = |member: bool| -> Vec<f64> {
                a.scores
                    .iter()
                    .filter(|s| s.member == member)
                    .filter(|s| audited.labels[if s.member { s.index } else { nm + s.index }] == c)
                    .map(|s| s.score)
                    .collect()
            };
            let (m, n) = (pick(true), pick(false));
            if m.is_empty() || n.is_empty() {
                continue;
            }
            let (metrics, _) = evaluate(&m, &n, bootstrap)?;
            per_class.push(ClassLeakage { class: class.clone(), attack: a.name.clone(), metrics });
        }
    }
    let most_exposed = most_exposed(&reports, &members, adapter.labels(), adapter.metadata());
    let mut shared_recipe = recipe_json.get("options").cloned().unwrap_or_default();
    if let Some(o) = shared_recipe.as_object_mut() {
        o.remove("out");
        o.remove("data");
        o.remove("backbone");
    }
    Ok(AdapterAuditReport {
        melo_version: env!("CARGO_PKG_VERSION").into(),
        score_convention: "higher = more likely a member".into(),
        target_task: task,
        target_labels: adapter.labels().to_vec(),
        recipe: shared_recipe,
        members: config.members.shareable(),
        nonmembers: config.nonmembers.shareable(),
        population: config.population.as_ref().map(SetSpec::shareable),
        n_members: nm,
        n_nonmembers: nn,
        queries: QUERIES.iter().map(|q| q.to_string()).collect(),
        shadows: shadow_summary,
        attacks: reports,
        per_class,
        warnings,
        seconds: t0.elapsed().as_secs_f64(),
        most_exposed,
    })
}

/// The [`MOST_EXPOSED`] members the strongest attack scores highest, un-normalised back to
/// 8-bit RGB with the adapter's mean and standard deviation.
fn most_exposed(
    reports: &[AttackReport],
    members: &Prepared,
    labels: &[String],
    meta: &crate::model::lora::AdapterMetadata,
) -> Vec<ExposedImage> {
    let Some(strongest) = reports.iter().max_by(|a, b| a.metrics.auc.total_cmp(&b.metrics.auc)) else {
        return Vec::new();
    };
    let mut ranked: Vec<&SampleScore> = strongest.scores.iter().filter(|s| s.member).collect();
    ranked.sort_by(|x, y| y.score.total_cmp(&x.score));
    let side = members.size;
    let plane = side * side;
    ranked
        .into_iter()
        .take(MOST_EXPOSED)
        .filter(|s| s.index < members.len())
        .map(|s| {
            let pixels = &members.pixels[s.index * 3 * plane..(s.index + 1) * 3 * plane];
            let mut rgb = vec![0u8; 3 * plane];
            for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                for c in 0..3 {
                    let unit = pixels[c * plane + i] * meta.std[c] + meta.mean[c];
                    px[c] = (unit.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
            ExposedImage {
                attack: strongest.name.clone(),
                id: s.id.clone(),
                index: s.index,
                score: s.score,
                label: labels.get(members.labels[s.index]).cloned().unwrap_or_default(),
                side,
                rgb,
            }
        })
        .collect()
}

fn read_record(path: &Path) -> Option<ShadowRecord> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_scaling_matches_the_probability_form() {
        let z = [2.0f32, -1.0, 0.5];
        let p: Vec<f64> = {
            let e: Vec<f64> = z.iter().map(|&v| f64::from(v).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        for (y, &py) in p.iter().enumerate() {
            assert!((logit_scaled_confidence(&z, y) - (py / (1.0 - py)).ln()).abs() < 1e-12);
            assert!((log_probability(&z, y) - py.ln()).abs() < 1e-12);
        }
    }

    #[test]
    fn set_specs_name_their_split() {
        assert_eq!(SetSpec::parse("d/b.npz:train").split, Some(Split::Train));
        assert_eq!(SetSpec::parse("d/b.npz").split, None);
        assert_eq!(SetSpec::parse("d/b.npz:test").shareable(), "b.npz:test");
    }

    #[test]
    fn lira_separates_images_the_shadows_show_are_memorised() {
        // Two images, one query; IN shadows see φ ≈ 5, OUT ≈ 0. The target gives image 0
        // φ = 5 (looks IN) and image 1 φ = 0 (looks OUT).
        let masks = vec![vec![true, false], vec![false, true], vec![true, true], vec![false, false]];
        let phi: Vec<Vec<Vec<f64>>> = masks
            .iter()
            .enumerate()
            .map(|(k, m)| m.iter().map(|&inside| vec![if inside { 5.0 } else { 0.0 } + 0.1 * k as f64]).collect())
            .collect();
        let (on, off, never_in, never_out) = lira_scores(&[vec![5.0], vec![0.0]], &phi, &masks).unwrap();
        assert!(on[0] > 0.0 && on[1] < 0.0, "{on:?}");
        assert!(off[0] > off[1]);
        assert_eq!((never_in, never_out), (0, 0));
        assert!(lira_scores(&[vec![5.0]], &phi[..1], &masks[..1]).is_err());
    }
}
