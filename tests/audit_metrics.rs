//! Audit metrics and features against hand-computed cases and against the PyTorch/numpy
//! reference (`assets/demo_ddpm/leakage_pytorch.json`: per-sample PIA / SecMI / loss scores
//! with the AUC, TPR@FPR and balanced accuracy numpy computed from them).

use std::path::PathBuf;

use melo::audit::classifier::{LogisticOptions, MembershipClassifier};
use melo::audit::features::{l1, mse, slope, ssim, SsimOptions};
use melo::audit::metrics::{
    auc, auc_bootstrap_ci, best_balanced_accuracy, evaluate, roc_points, tpr_at_fpr, BootstrapOptions, RocPoint,
};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

fn pts(roc: &[RocPoint]) -> Vec<(f64, f64)> {
    roc.iter().map(|p| (p.fpr, p.tpr)).collect()
}

#[test]
fn perfect_separation() {
    let (m, n) = ([3.0, 2.0], [1.0, 0.0]);
    assert_eq!(auc(&m, &n).unwrap(), 1.0);
    let roc = roc_points(&m, &n).unwrap();
    assert_eq!(pts(&roc), vec![(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]);
    assert_eq!(roc[0].threshold, None);
    assert_eq!(roc[2].threshold, Some(2.0));
    assert_eq!(tpr_at_fpr(&roc, 0.01), 1.0);
    assert_eq!(best_balanced_accuracy(&roc), 1.0);
    // Every resample is perfectly separated too.
    assert_eq!(auc_bootstrap_ci(&m, &n, &BootstrapOptions { resamples: 200, seed: 3 }).unwrap(), [1.0, 1.0]);
    // Reversed scores: AUC 0, and the best threshold is "call everything a member".
    assert_eq!(auc(&n, &m).unwrap(), 0.0);
    assert_eq!(best_balanced_accuracy(&roc_points(&n, &m).unwrap()), 0.5);
}

#[test]
fn ties_count_one_half() {
    // pairs (m, n): (1,1) ½, (1,0) 1, (0,1) 0, (0,0) ½ → 2/4
    assert_eq!(auc(&[1.0, 0.0], &[1.0, 0.0]).unwrap(), 0.5);
    // Hand count: 0.8 beats all 4; 0.6 beats 0.5 and 0.3 and ties 0.6 (½); 0.4 beats 0.3 → 7.5 / 12
    let (m, n) = ([0.8, 0.6, 0.4], [0.7, 0.5, 0.3, 0.6]);
    assert!(close(auc(&m, &n).unwrap(), 0.625, 1e-12));
    let roc = roc_points(&m, &n).unwrap();
    let want =
        [(0.0, 0.0), (0.0, 1.0 / 3.0), (0.25, 1.0 / 3.0), (0.5, 2.0 / 3.0), (0.75, 2.0 / 3.0), (0.75, 1.0), (1.0, 1.0)];
    assert_eq!(roc.len(), want.len());
    for (p, w) in roc.iter().zip(want) {
        assert!(close(p.fpr, w.0, 1e-12) && close(p.tpr, w.1, 1e-12), "{p:?} vs {w:?}");
    }
    assert!(close(tpr_at_fpr(&roc, 0.01), 1.0 / 3.0, 1e-12));
    assert!(close(tpr_at_fpr(&roc, 0.5), 2.0 / 3.0, 1e-12));
    // best of (tpr + 1 − fpr) / 2: at (0, 1/3) → 2/3
    assert!(close(best_balanced_accuracy(&roc), 2.0 / 3.0, 1e-12));
}

#[test]
fn all_equal_scores_are_chance() {
    let (m, n) = ([0.3; 5], [0.3; 7]);
    let (metrics, roc) = evaluate(&m, &n, &BootstrapOptions { resamples: 100, seed: 0 }).unwrap();
    assert_eq!(metrics.auc, 0.5);
    assert_eq!(metrics.auc_ci95, [0.5, 0.5]);
    assert_eq!(pts(&roc), vec![(0.0, 0.0), (1.0, 1.0)]);
    assert_eq!(metrics.tpr_at_1pct_fpr, 0.0);
    assert_eq!(metrics.balanced_accuracy, 0.5);
    assert_eq!((metrics.n_members, metrics.n_nonmembers), (5, 7));
}

#[test]
fn degenerate_inputs_are_errors_not_panics() {
    let says = |r: Result<f64, melo::audit::Error>, text: &str| {
        let e = r.unwrap_err().to_string();
        assert!(e.contains(text), "{e:?} does not say {text:?}");
    };
    says(auc(&[], &[1.0]), "(0 member and 1 non-member scores)");
    says(auc(&[1.0], &[]), "(1 member and 0 non-member scores)");
    says(roc_points(&[f64::NAN, 1.0], &[0.0]).map(|_| 0.0), "member score 0 is NaN");
    says(evaluate(&[1.0], &[f64::NAN], &BootstrapOptions::default()).map(|_| 0.0), "non-member score 0 is NaN");
    // One sample per class works (and infinities are ordinary scores).
    assert_eq!(auc(&[f64::INFINITY], &[f64::NEG_INFINITY]).unwrap(), 1.0);
}

#[test]
fn bootstrap_is_seeded_and_brackets_the_auc() {
    let m: Vec<f64> = (0..60).map(|i| (i as f64 * 0.37).sin() + 0.4).collect();
    let n: Vec<f64> = (0..50).map(|i| (i as f64 * 0.91).cos()).collect();
    let a = auc(&m, &n).unwrap();
    let opts = BootstrapOptions { resamples: 500, seed: 7 };
    let ci = auc_bootstrap_ci(&m, &n, &opts).unwrap();
    assert_eq!(ci, auc_bootstrap_ci(&m, &n, &opts).unwrap());
    assert_ne!(ci, auc_bootstrap_ci(&m, &n, &BootstrapOptions { resamples: 500, seed: 8 }).unwrap());
    assert!(ci[0] < a && a < ci[1], "{ci:?} around {a}");
}

/// TPR at a low FPR on a hand-made case with a known non-zero answer: 2000 non-members score
/// 0..1999, so FPR ≤ 0.1 % allows at most 2 of them above the threshold (lowest threshold
/// 1998) and FPR ≤ 1 % at most 20 (lowest threshold 1980). Of 100 members, 25 score above every
/// non-member, 15 sit between 1998 and 1999, 10 at 1996.5 (counted only at 1 %: at 0.1 % a
/// threshold that low lets 3 non-members through) and 50 far below.
#[test]
fn tpr_at_low_fpr_hand_case() {
    let nonmembers: Vec<f64> = (0..2000).map(f64::from).collect();
    let mut members = vec![2500.0; 25];
    members.extend([1998.5; 15]);
    members.extend([1996.5; 10]);
    members.extend([10.0; 50]);
    let (metrics, roc) = evaluate(&members, &nonmembers, &BootstrapOptions { resamples: 10, seed: 0 }).unwrap();
    assert!(close(metrics.tpr_at_0_1pct_fpr, 0.40, 1e-12), "TPR@0.1% {}", metrics.tpr_at_0_1pct_fpr);
    assert!(close(metrics.tpr_at_1pct_fpr, 0.50, 1e-12), "TPR@1% {}", metrics.tpr_at_1pct_fpr);
    assert!(close(tpr_at_fpr(&roc, 0.0), 0.25, 1e-12), "TPR at FPR 0");
}

fn reference() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/demo_ddpm/leakage_pytorch.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn scores(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// numpy's metrics on the PyTorch per-sample scores (rounded there to 6 significant digits, so
/// a few near-ties may order differently: tolerances of a few samples' weight).
#[test]
fn metrics_match_numpy_on_the_reference_scores() {
    let r = reference();
    for attack in ["pia", "secmi", "loss_mean"] {
        let s = &r["per_sample_scores"][attack];
        let (m, n) = (scores(&s["members"]), scores(&s["nonmembers"]));
        let (metrics, _) = evaluate(&m, &n, &BootstrapOptions { resamples: 2000, seed: 0 }).unwrap();
        let want = &r["metrics"][attack];
        let w = |k: &str| want[k].as_f64().unwrap();
        assert!(close(metrics.auc, w("auc"), 2e-4), "{attack} AUC {} vs {}", metrics.auc, w("auc"));
        assert!(close(metrics.tpr_at_1pct_fpr, w("tpr_at_1pct_fpr"), 4.1e-3), "{attack} TPR@1%");
        // With 500 non-members FPR ≤ 0.1 % allows none: the members above the highest
        // non-member (0, 2 and 2 of 500 here, no near-tie at the top), so it must be exact.
        assert!(
            close(metrics.tpr_at_0_1pct_fpr, w("tpr_at_0_1pct_fpr"), 1e-9),
            "{attack} TPR@0.1% {} vs {}",
            metrics.tpr_at_0_1pct_fpr,
            w("tpr_at_0_1pct_fpr")
        );
        assert!(close(metrics.balanced_accuracy, w("balanced_accuracy"), 3e-3), "{attack} bal acc");
        // Different generators (numpy's PCG64 vs StdRng): the interval agrees to Monte-Carlo error.
        let ci = want["auc_ci95"].as_array().unwrap();
        assert!(
            close(metrics.auc_ci95[0], ci[0].as_f64().unwrap(), 0.006),
            "{attack} CI {:?} vs {ci:?}",
            metrics.auc_ci95
        );
        assert!(
            close(metrics.auc_ci95[1], ci[1].as_f64().unwrap(), 0.006),
            "{attack} CI {:?} vs {ci:?}",
            metrics.auc_ci95
        );
    }
}

#[test]
fn distances_and_trends() {
    let a = [0.0f32, 1.0, -1.0, 0.5];
    let b = [0.5f32, 1.0, 1.0, 0.0];
    assert!(close(mse(&a, &b), (0.25 + 0.0 + 4.0 + 0.25) / 4.0, 1e-12));
    assert!(close(l1(&a, &b), (0.5 + 0.0 + 2.0 + 0.5) / 4.0, 1e-12));
    assert!(close(slope(&[1.0, 3.0, 5.0]), 2.0, 1e-12));
    assert!(close(slope(&[4.0, 1.0]), -3.0, 1e-12));
    assert_eq!(slope(&[7.0]), 0.0);
}

#[test]
fn ssim_hand_values() {
    let opts = SsimOptions::default();
    let x: Vec<f32> = (0..64).map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.5).collect();
    assert!(close(ssim(&x, &x, 1, 8, 8, &opts), 1.0, 1e-12));
    // Constant images: no variance, so SSIM = luminance term (2ab + C1) / (a² + b² + C1).
    let (a, b) = (0.2f32, -0.4f32);
    let c1 = (0.01f64 * 2.0).powi(2);
    let want = (2.0 * a as f64 * b as f64 + c1) / ((a as f64).powi(2) + (b as f64).powi(2) + c1);
    assert!(close(ssim(&[a; 100], &[b; 100], 1, 10, 10, &opts), want, 1e-9));
    // Symmetric, and well below 1 for a negated pattern.
    let neg: Vec<f32> = x.iter().map(|v| -v).collect();
    let s = ssim(&x, &neg, 1, 8, 8, &opts);
    assert!(close(s, ssim(&neg, &x, 1, 8, 8, &opts), 1e-12));
    assert!(s < 0.8, "{s}");
}

#[test]
fn logistic_classifier_separates_a_separable_feature_and_refuses_one_class() {
    let rows: Vec<Vec<f64>> =
        (0..40).map(|i| vec![if i < 20 { 1.0 + i as f64 * 0.01 } else { -1.0 - i as f64 * 0.01 }, 5.0]).collect();
    let labels: Vec<bool> = (0..40).map(|i| i < 20).collect();
    let c = MembershipClassifier::fit(&rows, &labels, &LogisticOptions::default()).unwrap();
    let p = c.predict(&[vec![2.0, 5.0], vec![-2.0, 5.0]]).unwrap();
    assert!(p[0] > 0.9 && p[1] < 0.1, "{p:?}");
    let Err(one_class) = MembershipClassifier::fit(&rows[..20], &labels[..20], &LogisticOptions::default()) else {
        panic!("a classifier was fitted on members only")
    };
    assert!(one_class.to_string().contains("needs members and non-members (20 and 0)"), "{one_class}");
    let short_row = c.predict(&[vec![1.0]]).unwrap_err();
    assert!(short_row.to_string().contains("differ in length from the training rows"), "{short_row}");
}

#[test]
fn mlp_learns_a_boundary_logistic_regression_cannot() {
    use melo::audit::classifier::{ClassifierKind, MlpOptions};
    // Members inside the unit circle, non-members on a ring around it: not linearly separable.
    let point = |i: usize, r: f64| {
        let a = i as f64 * 2.399963; // golden angle: spread around the circle
        vec![r * a.cos(), r * a.sin()]
    };
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for i in 0..60 {
        rows.push(point(i, 0.2 + 0.7 * (i as f64 / 60.0)));
        labels.push(true);
        rows.push(point(i + 1000, 1.6 + 0.6 * (i as f64 / 60.0)));
        labels.push(false);
    }
    let held_out: Vec<Vec<f64>> = (0..40).map(|i| point(i + 5000, if i % 2 == 0 { 0.5 } else { 1.9 })).collect();
    let held_labels: Vec<bool> = (0..40).map(|i| i % 2 == 0).collect();
    let split = |p: &[f64]| {
        type Scored = Vec<(f64, bool)>;
        let (m, n): (Scored, Scored) = p.iter().copied().zip(held_labels.iter().copied()).partition(|x| x.1);
        (m.into_iter().map(|x| x.0).collect::<Vec<_>>(), n.into_iter().map(|x| x.0).collect::<Vec<_>>())
    };
    let logistic = MembershipClassifier::fit(&rows, &labels, &LogisticOptions::default()).unwrap();
    let (m, n) = split(&logistic.predict(&held_out).unwrap());
    assert!(auc(&m, &n).unwrap() < 0.75, "logistic should not separate a ring");
    let opts = MlpOptions { epochs: 600, learning_rate: 0.05, ..MlpOptions::default() };
    let mlp = MembershipClassifier::fit_kind(&rows, &labels, ClassifierKind::Mlp, &LogisticOptions::default(), &opts)
        .unwrap();
    let (m, n) = split(&mlp.predict(&held_out).unwrap());
    assert_eq!(auc(&m, &n).unwrap(), 1.0, "the MLP separates the held-out ring");
    // Seeded: the same fit twice gives the same scores.
    let again = MembershipClassifier::fit_kind(&rows, &labels, ClassifierKind::Mlp, &LogisticOptions::default(), &opts)
        .unwrap();
    assert_eq!(mlp.predict(&held_out).unwrap(), again.predict(&held_out).unwrap());
}
