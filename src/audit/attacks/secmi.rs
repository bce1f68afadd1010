//! SecMI (Duan et al., ICML 2023), the t-error: deterministic DDIM inversion of x₀ up to t in
//! steps of `interval`, one DDIM step down to t − interval and one inversion step back; members
//! come back closer. Score = −‖x̃_t − x_t‖² / D. Deterministic; t / interval + 2 model calls.

use serde::{Deserialize, Serialize};

use super::{check_timestep, per_sample_mse, Attack, AttackInput, AttackOutput, QueryRunner};
use crate::audit::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecmiParams {
    pub timestep: usize,
    pub interval: usize,
}

impl Default for SecmiParams {
    fn default() -> Self {
        Self { timestep: 100, interval: 10 }
    }
}

pub struct SecmiAttack {
    pub params: SecmiParams,
}

impl Attack for SecmiAttack {
    fn name(&self) -> &'static str {
        "secmi"
    }

    fn description(&self) -> String {
        format!(
            "SecMI t-error at t = {} (DDIM inversion in steps of {}), score = −MSE of the round trip",
            self.params.timestep, self.params.interval
        )
    }

    fn queries_per_sample(&self) -> usize {
        self.params.timestep / self.params.interval.max(1) + 2
    }

    fn run(&self, input: &AttackInput, runner: &mut QueryRunner) -> Result<AttackOutput> {
        let (t_sec, k) = (self.params.timestep, self.params.interval);
        if k == 0 || t_sec < k || t_sec % k != 0 {
            return Err(Error::Params(format!(
                "SecMI timestep {t_sec} must be a positive multiple of the interval {k}"
            )));
        }
        check_timestep(runner.model, t_sec, "SecMI timestep")?;
        let schedule = runner.model.schedule().clone();
        let mut x = input.images.clone();
        for t in (0..t_sec).step_by(k) {
            runner.label = format!("SecMI: inversion {t} → {}", t + k);
            let eps = runner.eps(&x, t)?;
            x = schedule.ddim_move(&x, &eps, t as i64, (t + k) as i64)?;
        }
        let down = t_sec - k;
        runner.label = format!("SecMI: step {t_sec} → {down} → {t_sec}");
        let eps = runner.eps(&x, t_sec)?;
        let x_prev = schedule.ddim_move(&x, &eps, t_sec as i64, down as i64)?;
        let eps = runner.eps(&x_prev, down)?;
        let x_back = schedule.ddim_move(&x_prev, &eps, down as i64, t_sec as i64)?;
        let scores = per_sample_mse(&x_back, &x)?.into_iter().map(|e| -e).collect();
        Ok(AttackOutput { evaluated: (0..input.is_member.len()).collect(), scores, notes: Vec::new() })
    }
}
