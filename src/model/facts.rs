//! The numbers of the "Model facts" label ([`super::lora::ModelFacts`]): 95 % confidence
//! intervals of the test metrics from what an adapter records (its test confusion matrix and
//! macro AUC), and the default intended use and limitations of an adapter trained here.
//!
//! Intervals: Wilson score for proportions (accuracy, per-class sensitivity), which stays
//! inside 0..1 and keeps its coverage on small test sets where the normal approximation does
//! not (Newcombe 1998); Hanley & McNeil (1982) for a two-class AUC, from the AUC and the class
//! sizes alone. A multi-class macro AUC gets no interval here: that needs the per-image test
//! probabilities (a bootstrap), which adapters do not carry.

use std::collections::BTreeMap;

use super::lora::{AdapterMetadata, MetricInterval, ModelFacts};

/// The two-sided 95 % normal quantile.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Below this many test images of a class, its sensitivity is called out as uncertain.
pub const FEW_TEST_IMAGES: u64 = 30;

/// Wilson score interval of `successes` out of `n` at normal quantile `z`; `None` for n = 0.
pub fn wilson(successes: u64, n: u64, z: f64) -> Option<(f64, f64)> {
    if n == 0 || successes > n {
        return None;
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = z / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// Hanley & McNeil's (1982) standard error of an AUC from `positives` and `negatives` cases.
pub fn hanley_mcneil_se(auc: f64, positives: u64, negatives: u64) -> Option<f64> {
    if positives == 0 || negatives == 0 || !(0.0..=1.0).contains(&auc) {
        return None;
    }
    let (a, n1, n2) = (auc, positives as f64, negatives as f64);
    let q1 = a / (2.0 - a);
    let q2 = 2.0 * a * a / (1.0 + a);
    let variance = (a * (1.0 - a) + (n1 - 1.0) * (q1 - a * a) + (n2 - 1.0) * (q2 - a * a)) / (n1 * n2);
    Some(variance.max(0.0).sqrt())
}

/// Test accuracy and per-class sensitivity (Wilson) from the confusion matrix (rows = true
/// class, columns = predicted, in label order), and for two classes the AUC (Hanley-McNeil,
/// positive = the second label).
pub fn test_intervals(labels: &[String], confusion: &[Vec<u64>], macro_auc: Option<f64>) -> Vec<MetricInterval> {
    let mut out = Vec::new();
    if confusion.len() != labels.len() || confusion.iter().any(|row| row.len() != labels.len()) {
        return out;
    }
    let total: u64 = confusion.iter().flatten().sum();
    let correct: u64 = (0..labels.len()).map(|i| confusion[i][i]).sum();
    let proportion = |metric: String, x: u64, n: u64| {
        wilson(x, n, Z95).map(|(low, high)| MetricInterval {
            metric,
            value: x as f64 / n as f64,
            low,
            high,
            n,
            method: "Wilson score".into(),
        })
    };
    out.extend(proportion("accuracy".into(), correct, total));
    if let (Some(auc), [negatives, positives]) = (macro_auc, confusion) {
        let (n_neg, n_pos) = (negatives.iter().sum(), positives.iter().sum());
        if let Some(se) = hanley_mcneil_se(auc, n_pos, n_neg) {
            out.push(MetricInterval {
                metric: "auc".into(),
                value: auc,
                low: (auc - Z95 * se).max(0.0),
                high: (auc + Z95 * se).min(1.0),
                n: total,
                method: "Hanley-McNeil".into(),
            });
        }
    }
    for (i, label) in labels.iter().enumerate() {
        out.extend(proportion(format!("sensitivity.{label}"), confusion[i][i], confusion[i].iter().sum()));
    }
    out
}

/// The test confusion matrix recorded in `metrics` (`test_confusion.TRUE.PREDICTED`, as
/// `melo train` writes it); `None` when any cell is missing or not a count.
pub fn recorded_confusion(labels: &[String], metrics: &BTreeMap<String, f64>) -> Option<Vec<Vec<u64>>> {
    labels
        .iter()
        .map(|t| {
            labels
                .iter()
                .map(|p| {
                    let v = *metrics.get(&format!("test_confusion.{t}.{p}"))?;
                    (v >= 0.0 && v.fract() == 0.0 && v.is_finite()).then_some(v as u64)
                })
                .collect()
        })
        .collect()
}

/// The adapter's recorded intervals, or, for an adapter that records a confusion matrix but
/// no intervals (trained before issue 15), the ones computed from it.
pub fn intervals_of(meta: &AdapterMetadata) -> Vec<MetricInterval> {
    if !meta.facts.test_intervals.is_empty() {
        return meta.facts.test_intervals.clone();
    }
    recorded_confusion(&meta.labels, &meta.metrics)
        .map(|c| test_intervals(&meta.labels, &c, meta.metrics.get("test_macro_auc").copied()))
        .unwrap_or_default()
}

/// `0.879 (0.851–0.903)`.
pub fn interval_text(i: &MetricInterval) -> String {
    format!("{:.3} (95 % CI {:.3}–{:.3})", i.value, i.low, i.high)
}

/// The facts `melo train` records: the given intended use (else a research-use default
/// naming the task), the given limitations followed by the ones the run itself shows (one
/// data set, input size, classes with few test images), and the test intervals.
pub fn for_training(
    meta: &AdapterMetadata,
    intended_use: &str,
    limitations: &[String],
    confusion: &[Vec<u64>],
    macro_auc: Option<f64>,
) -> ModelFacts {
    let intended_use = match intended_use.trim() {
        "" => format!(
            "Research: sorts {} images into {} ({}), as a second reader in studies; not for diagnosis \
             or treatment decisions.",
            if meta.modality.trim().is_empty() { "medical" } else { meta.modality.trim() },
            meta.labels.join(", "),
            meta.task
        ),
        given => given.to_string(),
    };
    let mut all: Vec<String> = limitations.iter().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    let data = if meta.training.dataset.trim().is_empty() { "one data set" } else { meta.training.dataset.trim() };
    all.push(format!(
        "Trained and tested on {data} only: performance on other sites, devices and populations is unknown"
    ));
    all.push(format!("Sees each image at {0} × {0} px: detail finer than that is not used", meta.input_size));
    for (label, row) in meta.labels.iter().zip(confusion) {
        let n: u64 = row.iter().sum();
        if n < FEW_TEST_IMAGES {
            all.push(format!("Only {n} test images of '{label}': its sensitivity is uncertain (see its interval)"));
        }
    }
    ModelFacts {
        intended_use,
        limitations: all,
        research_use_only: true,
        test_intervals: test_intervals(&meta.labels, confusion, macro_auc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_newcombe_1998() {
        // Newcombe (1998), Stat. Med. 17:857, Table I, method 3 (score, no continuity correction).
        let (low, high) = wilson(81, 263, Z95).unwrap();
        assert!((low - 0.2553).abs() < 5e-5 && (high - 0.3662).abs() < 5e-5, "{low} {high}");
        let (low, high) = wilson(15, 148, Z95).unwrap();
        assert!((low - 0.0624).abs() < 5e-5 && (high - 0.1605).abs() < 5e-5, "{low} {high}");
        let (low, high) = wilson(0, 20, Z95).unwrap();
        assert!(low == 0.0 && (high - 0.1611).abs() < 5e-5, "{low} {high}");
        assert_eq!(wilson(1, 0, Z95), None);
        assert_eq!(wilson(3, 2, Z95), None);
    }

    #[test]
    fn hanley_mcneil_at_chance_is_the_mann_whitney_null_variance() {
        // At A = 0.5 the exponential model's Q1 = Q2 = 1/3, and the formula reduces to the
        // variance of the Mann-Whitney U statistic under H0 (no ties), (n1 + n2 + 1) / (12 n1 n2).
        for (n1, n2) in [(51u64, 58u64), (3, 200), (387, 234)] {
            let se = hanley_mcneil_se(0.5, n1, n2).unwrap();
            let (a, b) = (n1 as f64, n2 as f64);
            assert!((se - ((a + b + 1.0) / (12.0 * a * b)).sqrt()).abs() < 1e-12, "{n1} {n2}");
        }
        // A perfect AUC has no spread under the model; more cases, a narrower interval.
        assert_eq!(hanley_mcneil_se(1.0, 10, 10), Some(0.0));
        assert!(hanley_mcneil_se(0.9, 400, 400).unwrap() < hanley_mcneil_se(0.9, 40, 40).unwrap());
        assert_eq!(hanley_mcneil_se(0.9, 0, 5), None);
    }

    #[test]
    fn intervals_from_a_confusion_matrix() {
        let labels = vec!["normal".to_string(), "pneumonia".to_string()];
        let confusion = vec![vec![166, 68], vec![7, 380]];
        let intervals = test_intervals(&labels, &confusion, Some(0.9458));
        let names: Vec<&str> = intervals.iter().map(|i| i.metric.as_str()).collect();
        assert_eq!(names, ["accuracy", "auc", "sensitivity.normal", "sensitivity.pneumonia"]);
        assert_eq!(intervals[0].n, 621);
        assert!((intervals[0].value - 546.0 / 621.0).abs() < 1e-12);
        assert_eq!(intervals[2].n, 234);
        assert!(intervals.iter().all(|i| i.low <= i.value && i.value <= i.high));
        // A ragged matrix gives nothing rather than a wrong number.
        assert!(test_intervals(&labels, &[vec![1, 2]], None).is_empty());
    }

    #[test]
    fn confusion_is_read_back_from_recorded_metrics() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let mut metrics = BTreeMap::new();
        for (k, v) in [("a.a", 5.0), ("a.b", 1.0), ("b.a", 2.0), ("b.b", 7.0)] {
            metrics.insert(format!("test_confusion.{k}"), v);
        }
        assert_eq!(recorded_confusion(&labels, &metrics), Some(vec![vec![5, 1], vec![2, 7]]));
        metrics.insert("test_confusion.b.b".into(), 0.5);
        assert_eq!(recorded_confusion(&labels, &metrics), None);
    }

    #[test]
    fn training_facts_put_the_given_limitations_first_and_flag_small_classes() {
        let json = serde_json::json!({
            "task": "chest", "labels": ["normal", "pneumonia"], "rank": 4, "alpha": 4.0, "target": "q_v",
            "input_size": 56, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "modality": "CR",
            "backbone_sha256": "0".repeat(64), "training": {"dataset": "PneumoniaMNIST (MedMNIST v2)"}
        });
        let meta: AdapterMetadata = serde_json::from_value(json).unwrap();
        let confusion = vec![vec![20, 5], vec![3, 300]];
        let given = vec!["Adults only".to_string(), "  ".to_string()];
        let facts = for_training(&meta, "", &given, &confusion, Some(0.95));
        assert!(facts.research_use_only);
        assert!(facts.intended_use.starts_with("Research: sorts CR images into normal, pneumonia (chest)"));
        assert_eq!(facts.limitations[0], "Adults only", "given first, blank ones dropped");
        assert!(facts.limitations[1].contains("PneumoniaMNIST (MedMNIST v2) only"));
        assert!(facts.limitations[2].contains("56 × 56 px"));
        assert_eq!(
            facts.limitations[3],
            "Only 25 test images of 'normal': its sensitivity is uncertain (see its interval)"
        );
        assert_eq!(facts.limitations.len(), 4, "pneumonia has enough test images");
        assert_eq!(facts.test_intervals.len(), 4);
        let stated = for_training(&meta, "  Screening study X  ", &[], &confusion, None);
        assert_eq!(stated.intended_use, "Screening study X");
        assert!(!stated.test_intervals.iter().any(|i| i.metric == "auc"), "no AUC given, no interval");
    }
}
