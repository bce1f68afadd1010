//! Loss threshold attack (Matsumoto et al. 2023): members are denoised better. Score
//! = −mean over t and noise draws of ‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t)‖² / D.

use serde::{Deserialize, Serialize};

use super::{check_timestep, gaussian_noise, per_sample_mse, Attack, AttackInput, AttackOutput, QueryRunner};
use crate::audit::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossParams {
    /// Timesteps to noise to (intermediate t, 50–300 of 1000, leak most).
    pub timesteps: Vec<usize>,
    /// Noise draws per timestep.
    pub draws: usize,
}

impl Default for LossParams {
    fn default() -> Self {
        Self { timesteps: vec![50, 100, 200], draws: 4 }
    }
}

pub struct LossAttack {
    pub params: LossParams,
}

impl Attack for LossAttack {
    fn name(&self) -> &'static str {
        "loss"
    }

    fn description(&self) -> String {
        format!(
            "denoising loss at t = {:?}, {} noise draw(s) each; score = −mean MSE(ε, ε_θ)",
            self.params.timesteps, self.params.draws
        )
    }

    fn queries_per_sample(&self) -> usize {
        self.params.timesteps.len() * self.params.draws
    }

    fn run(&self, input: &AttackInput, runner: &mut QueryRunner) -> Result<AttackOutput> {
        let p = &self.params;
        if p.timesteps.is_empty() || p.draws == 0 {
            return Err(Error::Params("the loss attack needs at least one timestep and one draw".into()));
        }
        let n = input.is_member.len();
        let mut acc = vec![0.0f64; n];
        for (ti, &t) in p.timesteps.iter().enumerate() {
            check_timestep(runner.model, t, "loss timestep")?;
            for k in 0..p.draws {
                runner.label = format!("loss: t = {t}, draw {}/{}", k + 1, p.draws);
                let noise = gaussian_noise(input.images.dims(), input.seed, 1_000 * ti as u64 + k as u64)?;
                let x_t = runner.model.schedule().add_noise(input.images, &noise, t)?;
                let eps = runner.eps(&x_t, t)?;
                for (a, l) in acc.iter_mut().zip(per_sample_mse(&eps, &noise)?) {
                    *a += l;
                }
            }
        }
        let m = (p.timesteps.len() * p.draws) as f64;
        Ok(AttackOutput {
            evaluated: (0..n).collect(),
            scores: acc.iter().map(|a| -a / m).collect(),
            notes: Vec::new(),
        })
    }
}
