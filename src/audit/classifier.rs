//! The membership classifier of learned attacks: features standardised on the training split
//! (mean / std of the training rows only, so nothing of the evaluation split leaks into it),
//! then L2-regularised logistic regression (linfa-logistic). Its score is P(member).

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogisticOptions {
    /// L2 penalty on the weights (linfa's `alpha`).
    pub l2: f64,
    pub max_iterations: u64,
}

impl Default for LogisticOptions {
    fn default() -> Self {
        Self { l2: 1.0, max_iterations: 200 }
    }
}

/// A fitted standardiser + logistic regression.
pub struct MembershipClassifier {
    mean: Vec<f64>,
    std: Vec<f64>,
    model: linfa_logistic::FittedLogisticRegression<f64, bool>,
    member_is_positive: bool,
}

fn to_array(rows: &[Vec<f64>], mean: &[f64], std: &[f64]) -> Array2<f64> {
    let d = mean.len();
    Array2::from_shape_fn((rows.len(), d), |(i, j)| (rows[i][j] - mean[j]) / std[j])
}

impl MembershipClassifier {
    /// Fits on `rows` (one feature vector per sample) with labels `is_member`.
    pub fn fit(rows: &[Vec<f64>], is_member: &[bool], options: &LogisticOptions) -> Result<Self> {
        let n = rows.len();
        if n != is_member.len() || n == 0 {
            return Err(Error::Classifier(format!("{n} feature rows for {} labels", is_member.len())));
        }
        let (pos, neg) = (is_member.iter().filter(|&&m| m).count(), is_member.iter().filter(|&&m| !m).count());
        if pos == 0 || neg == 0 {
            return Err(Error::Classifier(format!(
                "the training split needs members and non-members ({pos} and {neg})"
            )));
        }
        let d = rows[0].len();
        if d == 0 || rows.iter().any(|r| r.len() != d) {
            return Err(Error::Classifier("feature rows differ in length".into()));
        }
        if let Some(i) = rows.iter().position(|r| r.iter().any(|v| !v.is_finite())) {
            return Err(Error::Classifier(format!("feature row {i} is not finite")));
        }
        let mean: Vec<f64> = (0..d).map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n as f64).collect();
        let std: Vec<f64> = (0..d)
            .map(|j| {
                let v = rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n as f64;
                // A constant feature carries nothing; dividing by 1 keeps it at 0.
                if v > 1e-24 { v.sqrt() } else { 1.0 }
            })
            .collect();
        let x = to_array(rows, &mean, &std);
        let y = Array1::from_vec(is_member.to_vec());
        let dataset = Dataset::new(x, y);
        let model = LogisticRegression::default()
            .alpha(options.l2)
            .max_iterations(options.max_iterations)
            .fit(&dataset)
            .map_err(|e| Error::Classifier(format!("logistic regression did not fit ({e})")))?;
        let member_is_positive = model.labels().pos.class;
        Ok(Self { mean, std, model, member_is_positive })
    }

    /// P(member) for each row.
    pub fn predict(&self, rows: &[Vec<f64>]) -> Result<Vec<f64>> {
        if rows.iter().any(|r| r.len() != self.mean.len()) {
            return Err(Error::Classifier("feature rows differ in length from the training rows".into()));
        }
        let p = self.model.predict_probabilities(&to_array(rows, &self.mean, &self.std));
        Ok(p.iter().map(|&v| if self.member_is_positive { v } else { 1.0 - v }).collect())
    }
}
