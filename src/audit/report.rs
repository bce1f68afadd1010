//! The audit report: parameters, per-attack metrics and ROC points, per-sample scores, timings.
//! Serialised as JSON (`--out`) and optionally as a CSV of scores (`--csv`), both written
//! atomically.
//!
//! Written reports are made to be shared, so they carry no input path: the target model by
//! its folder's name, the sample sets by their kind and count, and every sample by a
//! pseudonym ([`super::pseudonym`]) unless `report_file_names` was asked for (see
//! [`Report::shareable`]). The report in memory keeps everything, for the window.

use std::path::{Path, PathBuf};

use crate::export::csv_field;
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
    /// The image's caption (captioned sets). Left out of written reports unless
    /// `report_file_names`: a caption can be a radiology report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
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
    /// What the folder holds: a pixel-space DDPM or a Stable Diffusion pipeline (with its
    /// prediction type, resolution and latent shape).
    #[serde(default)]
    pub kind: String,
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

    /// The report as it is written: input paths dropped (the target by its folder's name, the
    /// sets by their kind), and sample ids replaced by pseudonyms unless
    /// `params.report_file_names`.
    pub fn shareable(&self) -> Report {
        let mut r = self.clone();
        r.params.target = self.params.target.file_name().map(PathBuf::from).unwrap_or_default();
        r.target.dir = r.params.target.display().to_string();
        r.params.members = PathBuf::new();
        r.params.nonmembers = PathBuf::new();
        r.members = set_kind(&self.params.members).into();
        r.nonmembers = set_kind(&self.params.nonmembers).into();
        if !self.params.report_file_names {
            for a in &mut r.attacks {
                for s in &mut a.scores {
                    s.id = super::pseudonym(s.member, s.index);
                    s.caption = None;
                }
            }
        }
        r
    }

    /// Writes [`shareable`](Self::shareable) as JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let shared = self.shareable();
        crate::atomic::write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, &shared).map_err(std::io::Error::other)?;
            w.write_all(b"\n")
        })?;
        Ok(())
    }

    /// One row per (attack, sample) of [`shareable`](Self::shareable):
    /// `attack,set,index,id,score`, text fields escaped by [`csv_field`].
    pub fn write_csv(&self, path: &Path) -> Result<()> {
        let shared = self.shareable();
        crate::atomic::write_atomic(path, |w| {
            writeln!(w, "attack,set,index,id,score")?;
            for a in &shared.attacks {
                for s in &a.scores {
                    let set = if s.member { "member" } else { "nonmember" };
                    writeln!(w, "{},{set},{},{},{}", csv_field(&a.name), s.index, csv_field(&s.id), s.score)?;
                }
            }
            Ok(())
        })?;
        Ok(())
    }
}

/// How a sample set is stored, for a written report (its path stays out).
fn set_kind(path: &Path) -> &'static str {
    if path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("npz")) {
        "npz archive"
    } else {
        "image folder"
    }
}
