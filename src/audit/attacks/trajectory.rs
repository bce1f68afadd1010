//! The black-box generation-trajectory attack (Cilloni, Fleming, Walter 2023, "Privacy Threats
//! in Stable Diffusion Models"): start generation from the candidate itself — noise it to a
//! strength t₀ and generate back with DDIM — and watch what the model makes of it on the way.
//! At every DDIM step the intermediate x_t gives the model's current estimate of the clean image
//! x̂₀ (derivable from consecutive intermediates, so still black-box); its distances to the
//! candidate (MSE, L1, SSIM) and their trends over the steps are the features. A classifier
//! (standardised logistic regression) is trained on a labelled, class-stratified split of
//! members / non-members and scores the disjoint evaluation split only.
//!
//! The paper's exact features and strengths are not public here; these are configurable and the
//! report says which were used.

use candle_core::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{check_timestep, gaussian_noise, rows, Attack, AttackInput, AttackOutput, QueryRunner};
use crate::audit::classifier::{ClassifierKind, LogisticOptions, MembershipClassifier, MlpOptions};
use crate::audit::data::Image2d;
use crate::audit::error::{Error, Result};
use crate::audit::features::{l1, mse, slope, ssim, SsimOptions};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrajectoryParams {
    /// Starting timesteps t₀ (noise strength t₀ / T) to generate back from.
    pub strengths: Vec<usize>,
    /// DDIM steps from t₀ down to the clean image; each is one model call and one recorded
    /// intermediate.
    pub steps: usize,
    /// Noise draws per strength (features averaged over draws).
    pub draws: usize,
    /// Fraction of each class used to train the classifier; the rest is evaluated.
    pub train_fraction: f64,
    #[serde(default)]
    pub classifier: ClassifierKind,
    pub logistic: LogisticOptions,
    #[serde(default)]
    pub mlp: MlpOptions,
}

impl Default for TrajectoryParams {
    fn default() -> Self {
        Self {
            strengths: vec![100, 250],
            steps: 5,
            draws: 2,
            train_fraction: 0.5,
            classifier: ClassifierKind::Logistic,
            logistic: LogisticOptions::default(),
            mlp: MlpOptions::default(),
        }
    }
}

pub struct TrajectoryAttack {
    pub params: TrajectoryParams,
}

/// The DDIM timesteps from `t_start` down: t₀, …, evenly spaced, `steps` of them.
pub fn trajectory_timesteps(t_start: usize, steps: usize) -> Vec<usize> {
    (0..steps).map(|k| ((t_start * (steps - k)) as f64 / steps as f64).round() as usize).collect()
}

/// Noises `x0` to `t_start` with `noise` and runs DDIM back down; returns x̂₀ after every step
/// (the last is the final reconstruction).
pub fn generate_back(
    runner: &mut QueryRunner,
    x0: &Tensor,
    noise: &Tensor,
    t_start: usize,
    steps: usize,
) -> Result<Vec<Tensor>> {
    let schedule = runner.model.schedule().clone();
    let ts = trajectory_timesteps(t_start, steps);
    let mut x = schedule.add_noise(x0, noise, t_start)?;
    let mut estimates = Vec::with_capacity(steps);
    for (k, &t) in ts.iter().enumerate() {
        let eps = runner.eps(&x, t)?;
        estimates.push(schedule.predict_x0(&x, &eps, t as i64)?);
        let next = ts.get(k + 1).map_or(-1, |&n| n as i64);
        x = schedule.ddim_move(&x, &eps, t as i64, next)?;
    }
    Ok(estimates)
}

/// Class-stratified split, deterministic for a seed: (training indices, evaluation indices).
pub fn stratified_split(is_member: &[bool], train_fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(train_fraction > 0.0 && train_fraction < 1.0) {
        return Err(Error::Params(format!("train_fraction {train_fraction} must be in (0, 1)")));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5EED_5EED);
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for class in [true, false] {
        let mut idx: Vec<usize> = (0..is_member.len()).filter(|&i| is_member[i] == class).collect();
        if idx.len() < 2 {
            return Err(Error::Params(format!(
                "the trajectory attack needs at least 2 {} to split into training and evaluation",
                if class { "members" } else { "non-members" }
            )));
        }
        idx.shuffle(&mut rng);
        let n_train = ((idx.len() as f64 * train_fraction).round() as usize).clamp(1, idx.len() - 1);
        train.extend_from_slice(&idx[..n_train]);
        eval.extend_from_slice(&idx[n_train..]);
    }
    train.sort_unstable();
    eval.sort_unstable();
    Ok((train, eval))
}

impl TrajectoryAttack {
    /// Feature vector per sample: for each strength, per step MSE, L1 and SSIM of x̂₀ against
    /// the candidate, then the slope of each over the steps (averaged over the draws).
    pub fn features(&self, input: &AttackInput, runner: &mut QueryRunner) -> Result<Vec<Vec<f64>>> {
        let p = &self.params;
        // Compared in pixels: a latent pipeline's estimates are decoded, as its img2img output is.
        let reference = input.pixels.unwrap_or(input.images);
        let (_, c, h, w) = reference.dims4()?;
        let originals = rows(reference)?;
        let n = originals.len();
        let per_strength = 3 * p.steps + 3;
        let mut feats = vec![vec![0.0f64; per_strength * p.strengths.len()]; n];
        let ssim_opts = SsimOptions::default();
        for (si, &t0) in p.strengths.iter().enumerate() {
            for d in 0..p.draws {
                runner.label = format!("trajectory: strength t₀ = {t0}, draw {}/{}", d + 1, p.draws);
                let noise = gaussian_noise(input.images.dims(), input.seed, 100_000 + 1_000 * si as u64 + d as u64)?;
                let estimates = generate_back(runner, input.images, &noise, t0, p.steps)?;
                let mut series = vec![[Vec::new(), Vec::new(), Vec::new()]; n];
                for est in &estimates {
                    let est = runner.to_pixels(est)?;
                    for (i, r) in rows(&est)?.iter().enumerate() {
                        series[i][0].push(mse(r, &originals[i]));
                        series[i][1].push(l1(r, &originals[i]));
                        series[i][2].push(ssim(r, &originals[i], c, h, w, &ssim_opts));
                    }
                }
                for (i, s) in series.iter().enumerate() {
                    let f = &mut feats[i][si * per_strength..(si + 1) * per_strength];
                    for k in 0..p.steps {
                        for m in 0..3 {
                            f[3 * k + m] += s[m][k] / p.draws as f64;
                        }
                    }
                    for m in 0..3 {
                        f[3 * p.steps + m] += slope(&s[m]) / p.draws as f64;
                    }
                }
            }
        }
        Ok(feats)
    }
}

impl Attack for TrajectoryAttack {
    fn name(&self) -> &'static str {
        "trajectory"
    }

    fn description(&self) -> String {
        let p = &self.params;
        format!(
            "Cilloni-style trajectory: noise to t₀ ∈ {:?}, {} DDIM steps back, {} draw(s); per-step MSE/L1/SSIM of x̂₀ \
             to the candidate and their slopes; {} trained on {:.0} % of each class, scored on the rest",
            p.strengths,
            p.steps,
            p.draws,
            match p.classifier {
                ClassifierKind::Logistic => format!("logistic regression (L2 {})", p.logistic.l2),
                ClassifierKind::Mlp => format!("MLP ({} tanh units, {} Adam epochs)", p.mlp.hidden, p.mlp.epochs),
            },
            p.train_fraction * 100.0
        )
    }

    fn queries_per_sample(&self) -> usize {
        self.params.strengths.len() * self.params.steps * self.params.draws
    }

    fn run(&self, input: &AttackInput, runner: &mut QueryRunner) -> Result<AttackOutput> {
        let p = &self.params;
        if p.strengths.is_empty() || p.steps == 0 || p.draws == 0 {
            return Err(Error::Params("the trajectory attack needs a strength, a step and a draw".into()));
        }
        for &t in &p.strengths {
            check_timestep(runner.model, t, "trajectory strength")?;
            if t < p.steps {
                return Err(Error::Params(format!(
                    "trajectory strength t₀ = {t} is smaller than its {} steps",
                    p.steps
                )));
            }
        }
        // Split first: a bad split should fail before any model call.
        let (train, eval) = stratified_split(input.is_member, p.train_fraction, input.seed)?;
        let feats = self.features(input, runner)?;
        let pick = |idx: &[usize]| -> Vec<Vec<f64>> { idx.iter().map(|&i| feats[i].clone()).collect() };
        let labels: Vec<bool> = train.iter().map(|&i| input.is_member[i]).collect();
        let mlp = MlpOptions { seed: input.seed, ..p.mlp.clone() };
        let classifier = MembershipClassifier::fit_kind(&pick(&train), &labels, p.classifier, &p.logistic, &mlp)?;
        let scores = classifier.predict(&pick(&eval))?;
        let notes = vec![format!(
            "classifier trained on {} samples ({} members), evaluated on the disjoint {} ({} members); {} features",
            train.len(),
            labels.iter().filter(|&&m| m).count(),
            eval.len(),
            eval.iter().filter(|&&i| input.is_member[i]).count(),
            feats.first().map_or(0, Vec::len)
        )];
        Ok(AttackOutput { evaluated: eval, scores, notes })
    }
}

/// What the model makes of one image when generation starts from it: x̂₀ after each DDIM step
/// from `t_start` (the last is the reconstruction). For the GUI's gallery of exposed samples.
pub fn reconstruction(
    model: &crate::diffusion::DiffusionModel,
    pixels: &[f32],
    shape: (usize, usize, usize),
    t_start: usize,
    steps: usize,
    seed: u64,
) -> Result<Vec<Image2d>> {
    let (c, h, w) = shape;
    if pixels.len() != c * h * w || steps == 0 || t_start < steps {
        return Err(Error::Params("reconstruction: image shape or steps do not fit".into()));
    }
    check_timestep(model, t_start, "reconstruction strength")?;
    let x0 = Tensor::from_slice(pixels, (1, c, h, w), model.unet.device())?;
    let noise = gaussian_noise(&[1, c, h, w], seed, 100_000)?;
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let mut ignore = |_: crate::audit::Progress| {};
    let mut runner = QueryRunner::new(model, 1, &cancel, &mut ignore, steps);
    let estimates = generate_back(&mut runner, &x0, &noise, t_start, steps)?;
    estimates.iter().map(|e| Ok(Image2d::from_chw(&rows(e)?[0], c, h, w))).collect()
}
