//! CLiD, conditional likelihood discrepancy (Zhai et al., NeurIPS 2024): a text-to-image model
//! fine-tuned on (image, caption) pairs over-fits the *pairing*, so for a member the caption
//! helps denoising more than for a non-member. With the same noise ε at each t:
//! I(x, c) = ‖ε − ε_θ(x_t, t, ∅)‖² − ‖ε − ε_θ(x_t, t, c)‖² (per element), averaged over t and
//! noise draws; higher = more likely a member. Two model calls per (t, draw). The paper's
//! reduced-caption variants (captions with words dropped) and its combination with the loss are
//! not computed here; the report says so.

use serde::{Deserialize, Serialize};

use super::{check_timestep, gaussian_noise, per_sample_mse, Attack, AttackInput, AttackOutput, QueryRunner};
use crate::audit::error::{Error, Result};
use crate::audit::target::Conditioning;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClidParams {
    pub timesteps: Vec<usize>,
    /// Noise draws per timestep (each draw costs two model calls).
    pub draws: usize,
}

impl Default for ClidParams {
    fn default() -> Self {
        Self { timesteps: vec![100, 200, 300], draws: 4 }
    }
}

pub struct ClidAttack {
    pub params: ClidParams,
}

impl Attack for ClidAttack {
    fn name(&self) -> &'static str {
        "clid"
    }

    fn description(&self) -> String {
        format!(
            "CLiD at t = {:?}, {} noise draw(s) each; score = mean (‖ε − ε_θ(x_t, ∅)‖² − ‖ε − ε_θ(x_t, caption)‖²) / D",
            self.params.timesteps, self.params.draws
        )
    }

    fn queries_per_sample(&self) -> usize {
        2 * self.params.timesteps.len() * self.params.draws
    }

    fn run(&self, input: &AttackInput, runner: &mut QueryRunner) -> Result<AttackOutput> {
        let p = &self.params;
        if !runner.model.is_text_conditional() {
            return Err(Error::Params(
                "CLiD compares caption-conditioned and unconditional denoising: it needs a text-conditioned \
                 pipeline (Stable Diffusion), not a pixel-space DDPM"
                    .into(),
            ));
        }
        if p.timesteps.is_empty() || p.draws == 0 {
            return Err(Error::Params("CLiD needs at least one timestep and one draw".into()));
        }
        let n = input.is_member.len();
        let mut acc = vec![0.0f64; n];
        for (ti, &t) in p.timesteps.iter().enumerate() {
            check_timestep(runner.model, t, "CLiD timestep")?;
            for k in 0..p.draws {
                let noise = gaussian_noise(input.images.dims(), input.seed, 200_000 + 1_000 * ti as u64 + k as u64)?;
                let x_t = runner.model.schedule().add_noise(input.images, &noise, t)?;
                runner.label = format!("CLiD: t = {t}, draw {}/{}, with the captions", k + 1, p.draws);
                let cond = per_sample_mse(&runner.eps_with(&x_t, t, Conditioning::Caption)?, &noise)?;
                runner.label = format!("CLiD: t = {t}, draw {}/{}, with the empty caption", k + 1, p.draws);
                let uncond = per_sample_mse(&runner.eps_with(&x_t, t, Conditioning::Empty)?, &noise)?;
                for ((a, u), c) in acc.iter_mut().zip(uncond).zip(cond) {
                    *a += u - c;
                }
            }
        }
        let m = (p.timesteps.len() * p.draws) as f64;
        Ok(AttackOutput {
            evaluated: (0..n).collect(),
            scores: acc.iter().map(|a| a / m).collect(),
            notes: vec![
                "CLiD without the paper's reduced-caption variants: the full caption against the empty one".into()
            ],
        })
    }
}
