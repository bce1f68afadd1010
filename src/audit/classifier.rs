//! The membership classifier of learned attacks: features standardised on the training split
//! (mean / std of the training rows only, so nothing of the evaluation split leaks into it),
//! then L2-regularised logistic regression (linfa-logistic) or a small MLP (one tanh hidden
//! layer, full-batch Adam on the cross-entropy, seeded). Its score is P(member).

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// Which classifier a learned attack trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassifierKind {
    #[default]
    Logistic,
    Mlp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MlpOptions {
    pub hidden: usize,
    pub epochs: usize,
    pub learning_rate: f64,
    /// L2 penalty on the weights (added to the mean cross-entropy).
    pub l2: f64,
    pub seed: u64,
}

impl Default for MlpOptions {
    fn default() -> Self {
        Self { hidden: 16, epochs: 400, learning_rate: 0.01, l2: 1e-3, seed: 0 }
    }
}

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

/// A fitted standardiser + classifier.
pub struct MembershipClassifier {
    mean: Vec<f64>,
    std: Vec<f64>,
    model: Fitted,
}

enum Fitted {
    Logistic { model: linfa_logistic::FittedLogisticRegression<f64, bool>, member_is_positive: bool },
    Mlp(Mlp),
}

/// x → tanh(x W₁ + b₁) → σ(h w₂ + b₂).
struct Mlp {
    w1: Array2<f64>,
    b1: Array1<f64>,
    w2: Array1<f64>,
    b2: f64,
}

impl Mlp {
    fn forward(&self, x: &Array2<f64>) -> (Array2<f64>, Array1<f64>) {
        let h = (x.dot(&self.w1) + &self.b1).mapv(f64::tanh);
        let p = (h.dot(&self.w2) + self.b2).mapv(|z| 1.0 / (1.0 + (-z).exp()));
        (h, p)
    }

    fn fit(x: &Array2<f64>, y: &[bool], o: &MlpOptions) -> Result<Self> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        if o.hidden == 0 || o.epochs == 0 || !(o.learning_rate > 0.0) {
            return Err(Error::Classifier("MLP needs hidden units, epochs and a positive learning rate".into()));
        }
        let (n, d) = x.dim();
        let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed);
        // Glorot-normal initialisation
        let n1 =
            Normal::new(0.0, (2.0 / (d + o.hidden) as f64).sqrt()).map_err(|e| Error::Classifier(e.to_string()))?;
        let n2 =
            Normal::new(0.0, (2.0 / (o.hidden + 1) as f64).sqrt()).map_err(|e| Error::Classifier(e.to_string()))?;
        let mut m = Mlp {
            w1: Array2::from_shape_fn((d, o.hidden), |_| n1.sample(&mut rng)),
            b1: Array1::zeros(o.hidden),
            w2: Array1::from_shape_fn(o.hidden, |_| n2.sample(&mut rng)),
            b2: 0.0,
        };
        let t = Array1::from_iter(y.iter().map(|&b| if b { 1.0 } else { 0.0 }));
        // Adam state for (w1, b1, w2, b2)
        let (b1m, b2m, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
        let mut s = [
            Array2::<f64>::zeros((d, o.hidden)),
            Array2::zeros((1, o.hidden)),
            Array2::zeros((1, o.hidden)),
            Array2::zeros((1, 1)),
        ];
        let mut v = s.clone();
        for step in 1..=o.epochs {
            let (h, p) = m.forward(x);
            let dz = (&p - &t) / n as f64; // d(mean CE)/d logit
            let g_w2 = h.t().dot(&dz) + &m.w2 * o.l2;
            let g_b2 = dz.sum();
            let dh = dz.insert_axis(ndarray::Axis(1)).dot(&m.w2.view().insert_axis(ndarray::Axis(0)))
                * h.mapv(|a| 1.0 - a * a);
            let g_w1 = x.t().dot(&dh) + &m.w1 * o.l2;
            let g_b1 = dh.sum_axis(ndarray::Axis(0));
            let grads = [
                g_w1,
                g_b1.insert_axis(ndarray::Axis(0)),
                g_w2.insert_axis(ndarray::Axis(0)),
                Array2::from_elem((1, 1), g_b2),
            ];
            let lr_t = o.learning_rate * (1.0 - b2m.powi(step as i32)).sqrt() / (1.0 - b1m.powi(step as i32));
            let mut updates = Vec::with_capacity(4);
            for i in 0..4 {
                s[i] = &s[i] * b1m + &grads[i] * (1.0 - b1m);
                v[i] = &v[i] * b2m + grads[i].mapv(|g| g * g) * (1.0 - b2m);
                updates.push(Array2::from_shape_fn(s[i].dim(), |ix| lr_t * s[i][ix] / (v[i][ix].sqrt() + eps)));
            }
            m.w1 -= &updates[0];
            m.b1 -= &updates[1].row(0);
            m.w2 -= &updates[2].row(0);
            m.b2 -= updates[3][(0, 0)];
        }
        if m.w1.iter().chain(m.w2.iter()).any(|v| !v.is_finite()) {
            return Err(Error::Classifier("MLP training diverged (lower the learning rate)".into()));
        }
        Ok(m)
    }
}

fn to_array(rows: &[Vec<f64>], mean: &[f64], std: &[f64]) -> Array2<f64> {
    let d = mean.len();
    Array2::from_shape_fn((rows.len(), d), |(i, j)| (rows[i][j] - mean[j]) / std[j])
}

impl MembershipClassifier {
    /// Fits on `rows` (one feature vector per sample) with labels `is_member`.
    pub fn fit(rows: &[Vec<f64>], is_member: &[bool], options: &LogisticOptions) -> Result<Self> {
        Self::fit_kind(rows, is_member, ClassifierKind::Logistic, options, &MlpOptions::default())
    }

    pub fn fit_kind(
        rows: &[Vec<f64>],
        is_member: &[bool],
        kind: ClassifierKind,
        options: &LogisticOptions,
        mlp: &MlpOptions,
    ) -> Result<Self> {
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
                if v > 1e-24 {
                    v.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        let x = to_array(rows, &mean, &std);
        let model = match kind {
            ClassifierKind::Logistic => {
                let y = Array1::from_vec(is_member.to_vec());
                let dataset = Dataset::new(x, y);
                let model = LogisticRegression::default()
                    .alpha(options.l2)
                    .max_iterations(options.max_iterations)
                    .fit(&dataset)
                    .map_err(|e| Error::Classifier(format!("logistic regression did not fit ({e})")))?;
                let member_is_positive = model.labels().pos.class;
                Fitted::Logistic { model, member_is_positive }
            }
            ClassifierKind::Mlp => Fitted::Mlp(Mlp::fit(&x, is_member, mlp)?),
        };
        Ok(Self { mean, std, model })
    }

    /// P(member) for each row.
    pub fn predict(&self, rows: &[Vec<f64>]) -> Result<Vec<f64>> {
        if rows.iter().any(|r| r.len() != self.mean.len()) {
            return Err(Error::Classifier("feature rows differ in length from the training rows".into()));
        }
        let x = to_array(rows, &self.mean, &self.std);
        Ok(match &self.model {
            Fitted::Logistic { model, member_is_positive } => {
                let p = model.predict_probabilities(&x);
                p.iter().map(|&v| if *member_is_positive { v } else { 1.0 - v }).collect()
            }
            Fitted::Mlp(m) => m.forward(&x).1.to_vec(),
        })
    }
}
