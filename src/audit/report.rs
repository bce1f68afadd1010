//! The audit report: parameters, per-attack metrics and ROC points, per-sample scores, timings.
//! Serialised as JSON (`--out`) and optionally as a CSV of scores (`--csv`), both written
//! atomically.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::Result;
use super::metrics::{Metrics, RocPoint};
use super::AuditConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampleScore {
    /// Position in the member (or non-member) set as loaded.
    pub index: usize,
    pub id: String,
    pub member: bool,
    /// Higher = more likely a member.
    pub score: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttackReport {
    pub name: String,
    pub description: String,
    pub queries_per_sample: usize,
    pub seconds: f64,
    /// "all samples" or the evaluation split of a learned attack.
    pub evaluated_on: String,
    pub notes: Vec<String>,
    pub metrics: Metrics,
    pub roc: Vec<RocPoint>,
    pub scores: Vec<SampleScore>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timings {
    pub load_seconds: f64,
    pub total_seconds: f64,
    /// Threads the tensor backend used.
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    pub dir: String,
    pub parameters: usize,
    pub sample_size: Option<usize>,
    pub num_train_timesteps: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub melo_version: String,
    pub score_convention: String,
    pub params: AuditConfig,
    pub target: TargetInfo,
    pub members: String,
    pub nonmembers: String,
    pub n_members: usize,
    pub n_nonmembers: usize,
    pub warnings: Vec<String>,
    pub attacks: Vec<AttackReport>,
    pub timings: Timings,
}

impl Report {
    pub fn attack(&self, name: &str) -> Option<&AttackReport> {
        self.attacks.iter().find(|a| a.name == name)
    }

    /// The `k` members an attack was most sure about (highest scores first) — the most exposed
    /// training images. Empty if the attack is not in the report.
    pub fn exposed(&self, attack: &str, k: usize) -> Vec<&SampleScore> {
        let Some(a) = self.attack(attack) else { return Vec::new() };
        let mut members: Vec<&SampleScore> = a.scores.iter().filter(|s| s.member).collect();
        members.sort_by(|x, y| y.score.total_cmp(&x.score));
        members.truncate(k);
        members
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        crate::atomic::write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, self).map_err(std::io::Error::other)?;
            w.write_all(b"\n")
        })?;
        Ok(())
    }

    /// One row per (attack, sample): `attack,set,index,id,score`.
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        crate::atomic::write_atomic(path, |w| {
            writeln!(w, "attack,set,index,id,score")?;
            for a in &self.attacks {
                for s in &a.scores {
                    let set = if s.member { "member" } else { "nonmember" };
                    let id = s.id.replace(['"', ',', '\n'], "_");
                    writeln!(w, "{},{set},{},{id},{}", a.name, s.index, s.score)?;
                }
            }
            Ok(())
        })?;
        Ok(())
    }
}
