//! Classification metrics on predicted probabilities: accuracy, macro F1, one-vs-rest macro AUC,
//! per-class sensitivity / specificity, confusion matrix.
//!
//! Conventions (those of scikit-learn, so figures compare with published ones):
//! - AUC of class c is the Mann–Whitney statistic of its probability, positives = class c:
//!   P(score⁺ > score⁻) + ½ P(score⁺ = score⁻). A class with no positive or no negative
//!   example has no AUC; the macro AUC averages the classes that have one and says which not.
//! - Macro F1 averages the classes present in the truth or the predictions; a class never
//!   predicted and absent has no F1 and is left out.
//! - Sensitivity of c = TP / (TP + FN) (None when c is absent); specificity = TN / (TN + FP).

use serde::{Deserialize, Serialize};

/// Metrics of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    pub support: usize,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    pub precision: Option<f64>,
    pub f1: Option<f64>,
    pub auc: Option<f64>,
}

/// Everything measured on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub samples: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// None when no class has both positives and negatives.
    pub macro_auc: Option<f64>,
    /// Classes left out of the macro AUC (no positive or no negative example).
    pub auc_undefined_for: Vec<String>,
    /// Mean cross-entropy of the probabilities (no smoothing).
    pub loss: f64,
    pub per_class: Vec<ClassMetrics>,
    /// confusion[true][predicted].
    pub confusion: Vec<Vec<usize>>,
}

/// Index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// ROC AUC of `scores` for `positive` (true = positive), ties counted half; None without both
/// classes. Ranks with average ranks for ties, O(n log n).
pub fn binary_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), positive.len(), "one score per label");
    let side = |want: bool| -> Vec<f64> {
        scores.iter().zip(positive).filter(|&(_, &p)| p == want).map(|(&s, _)| f64::from(s)).collect()
    };
    let (pos, neg) = (side(true), side(false));
    (!pos.is_empty() && !neg.is_empty()).then(|| crate::stats::rank_auc(&pos, &neg))
}

/// Evaluates probabilities `probs` [n × classes] (rows sum to 1) against `labels`.
pub fn evaluate(probs: &[f32], labels: &[usize], class_names: &[String]) -> Evaluation {
    let c = class_names.len();
    let n = labels.len();
    assert_eq!(probs.len(), n * c, "probabilities must be [n, classes]");
    let mut confusion = vec![vec![0usize; c]; c];
    let mut loss = 0.0f64;
    for (i, &y) in labels.iter().enumerate() {
        let row = &probs[i * c..(i + 1) * c];
        confusion[y][argmax(row)] += 1;
        loss -= f64::from(row[y].max(1e-12)).ln();
    }
    let correct: usize = (0..c).map(|k| confusion[k][k]).sum();
    let mut per_class = Vec::with_capacity(c);
    let mut f1s = Vec::new();
    let mut aucs = Vec::new();
    let mut auc_undefined_for = Vec::new();
    for k in 0..c {
        let tp = confusion[k][k];
        let support: usize = confusion[k].iter().sum();
        let predicted: usize = (0..c).map(|t| confusion[t][k]).sum();
        let fn_ = support - tp;
        let fp = predicted - tp;
        let tn = n - tp - fn_ - fp;
        let ratio = |a: usize, b: usize| if b == 0 { None } else { Some(a as f64 / b as f64) };
        let f1 = if support + predicted == 0 { None } else { Some(2.0 * tp as f64 / (2 * tp + fp + fn_) as f64) };
        if let Some(f) = f1 {
            f1s.push(f);
        }
        let scores: Vec<f32> = (0..n).map(|i| probs[i * c + k]).collect();
        let positive: Vec<bool> = labels.iter().map(|&y| y == k).collect();
        let auc = binary_auc(&scores, &positive);
        match auc {
            Some(a) => aucs.push(a),
            None => auc_undefined_for.push(class_names[k].clone()),
        }
        per_class.push(ClassMetrics {
            label: class_names[k].clone(),
            support,
            sensitivity: ratio(tp, tp + fn_),
            specificity: ratio(tn, tn + fp),
            precision: ratio(tp, tp + fp),
            f1,
            auc,
        });
    }
    let mean = |v: &[f64]| if v.is_empty() { None } else { Some(v.iter().sum::<f64>() / v.len() as f64) };
    Evaluation {
        samples: n,
        accuracy: if n == 0 { 0.0 } else { correct as f64 / n as f64 },
        macro_f1: mean(&f1s).unwrap_or(0.0),
        macro_auc: mean(&aucs),
        auc_undefined_for,
        loss: if n == 0 { 0.0 } else { loss / n as f64 },
        per_class,
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[0.2, 0.4, 0.4]), 1);
    }
}
