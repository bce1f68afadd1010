//! PIA, proximal initialisation attack (Kong et al., ICLR 2024): ε₀ = ε_θ(x₀, 0) stands in for
//! the noise the model "expects"; x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε₀; score = −‖ε₀ − ε_θ(x_t, t)‖_p over
//! the flattened image. Deterministic, two model calls per sample.

use serde::{Deserialize, Serialize};

use super::{check_timestep, rows, Attack, AttackInput, AttackOutput, QueryRunner};
use crate::audit::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PiaParams {
    pub timestep: usize,
    /// Norm of the ε difference (the paper uses 4).
    pub p: f64,
}

impl Default for PiaParams {
    fn default() -> Self {
        Self { timestep: 200, p: 4.0 }
    }
}

pub struct PiaAttack {
    pub params: PiaParams,
}

impl Attack for PiaAttack {
    fn name(&self) -> &'static str {
        "pia"
    }

    fn description(&self) -> String {
        format!("PIA at t = {}, score = −‖ε₀ − ε_θ(x_t, t)‖_{}", self.params.timestep, self.params.p)
    }

    fn queries_per_sample(&self) -> usize {
        2
    }

    fn run(&self, input: &AttackInput, runner: &mut QueryRunner) -> Result<AttackOutput> {
        let (t, p) = (self.params.timestep, self.params.p);
        check_timestep(runner.model, t, "PIA timestep")?;
        if !(p >= 1.0 && p.is_finite()) {
            return Err(Error::Params(format!("PIA norm p = {p} (need a finite p ≥ 1)")));
        }
        runner.label = "PIA: ε_θ(x₀, 0)".into();
        let eps0 = runner.eps(input.images, 0)?;
        let x_t = runner.model.schedule().add_noise(input.images, &eps0, t)?;
        runner.label = format!("PIA: ε_θ(x_t, {t})");
        let eps_t = runner.eps(&x_t, t)?;
        let diff = rows(&(eps0 - eps_t)?)?;
        let scores =
            diff.iter().map(|r| -r.iter().map(|&v| (v as f64).abs().powf(p)).sum::<f64>().powf(1.0 / p)).collect();
        Ok(AttackOutput { evaluated: (0..input.is_member.len()).collect(), scores, notes: Vec::new() })
    }
}
