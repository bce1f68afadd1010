//! The latent (Stable Diffusion) audit end to end against diffusers: `tests/data/sd/pipeline_tiny`
//! is a whole tiny pipeline (v-prediction scheduler) with 4 + 4 captioned PBC crops that are not
//! at the pipeline's resolution; `reference.json` holds the per-sample loss, PIA, SecMI and CLiD
//! scores that `tools/sd/audit_reference.py` (diffusers + transformers + numpy) computes for them,
//! with the seeded noise re-implemented from its specification.

mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use melo::audit::{self, AttackKind, AuditConfig, Checkpoint, ClidParams, LossParams, PiaParams, Preset, SecmiParams};
use serde_json::Value;

fn fixture() -> PathBuf {
    common::repo().join("tests/data/sd/pipeline_tiny")
}

fn reference() -> Value {
    let path = fixture().join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("reference.json")).expect("valid JSON")
}

/// The parameters `tools/sd/make_pipeline_fixture.py` gave the reference.
fn config(attacks: &[AttackKind]) -> AuditConfig {
    let dir = fixture();
    let mut c = AuditConfig::new(&dir, dir.join("members"), dir.join("nonmembers"), Preset::Full);
    c.attacks = attacks.to_vec();
    c.loss = LossParams { timesteps: vec![50, 300], draws: 2 };
    c.pia = PiaParams { timestep: 200, p: 4.0 };
    c.secmi = SecmiParams { timestep: 100, interval: 20 };
    c.clid = ClidParams { timesteps: vec![100, 400], draws: 1 };
    c.seed = 3;
    c.batch_size = 3; // batches that cut across members and non-members
    c.bootstrap_resamples = 200;
    c
}

fn run(c: &AuditConfig) -> audit::Result<audit::Report> {
    audit::run(c, &mut |_| {}, &AtomicBool::new(false))
}

#[test]
fn seeded_noise_follows_its_specification() {
    let r = reference();
    for (key, values) in r["noise"].as_object().expect("noise") {
        let (seed, stream) = key.split_once(',').expect("seed,stream");
        let (seed, stream): (u64, u64) = (seed.parse().unwrap(), stream.parse().unwrap());
        let ours = audit::attacks::gaussian_noise(&[8], seed, stream).unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in ours.iter().zip(values.as_array().unwrap()) {
            let b = b.as_f64().unwrap() as f32;
            // numpy's and Rust's f64 log / cos may differ in the last bit before rounding to f32
            assert!((a - b).abs() <= 2.0 * f32::EPSILON * b.abs().max(1.0), "noise {key}: {a} vs {b}");
        }
    }
}

#[test]
fn latent_attacks_match_diffusers_per_sample() {
    let r = reference();
    let report =
        run(&config(&[AttackKind::Loss, AttackKind::Pia, AttackKind::Secmi, AttackKind::Clid])).expect("audit runs");
    assert_eq!((report.n_members, report.n_nonmembers), (4, 4));
    assert!(report.target.kind.contains("v_prediction"), "{}", report.target.kind);
    assert!(report.target.kind.contains("32 px"), "{}", report.target.kind);
    let n_m = 4;
    for attack in &report.attacks {
        let expected =
            r["scores"][&attack.name].as_array().unwrap_or_else(|| panic!("no reference for {}", attack.name));
        assert_eq!(attack.scores.len(), 8);
        let (mut worst, mut worst_abs) = (0.0f64, 0.0f64);
        for s in &attack.scores {
            let want = expected[s.index + if s.member { 0 } else { n_m }].as_f64().unwrap();
            worst_abs = worst_abs.max((s.score - want).abs());
            worst = worst.max((s.score - want).abs() / want.abs().max(1e-12));
        }
        eprintln!("{}: max relative difference {worst:e}, absolute {worst_abs:e}", attack.name);
        if attack.name == "clid" {
            // CLiD is a difference of two losses of ≈ 0.7 that agree to ≈ 1e-5, so its relative
            // error is large by construction: bound it against the losses it subtracts
            // (measured 2.4e-8 absolute, 4.5e-4 relative).
            assert!(worst_abs < 2e-7, "clid: max absolute difference {worst_abs:e}");
        } else {
            // Measured: loss 3.6e-8, PIA 3.8e-7, SecMI 2.4e-6 relative; the acceptance bound is 1e-3.
            assert!(worst < 1e-5, "{}: max relative difference {worst:e}", attack.name);
        }
        let auc = r["auc"][&attack.name].as_f64().unwrap();
        assert!((attack.metrics.auc - auc).abs() < 1e-9, "{}: AUC {} vs {auc}", attack.name, attack.metrics.auc);
    }
    // captions ride along with the scores in memory, not in a written report
    let s = &report.attacks[0].scores[0];
    assert_eq!(s.caption.as_deref(), Some("a smear showing a basophil"));
    assert!(report.shareable().attacks[0].scores.iter().all(|s| s.caption.is_none()));
}

#[test]
fn trajectory_attack_runs_through_img2img_in_pixels() {
    let mut c = config(&[AttackKind::Trajectory]);
    c.trajectory.strengths = vec![300];
    c.trajectory.steps = 3;
    c.trajectory.draws = 1;
    let report = run(&c).expect("trajectory on a latent pipeline");
    let a = &report.attacks[0];
    assert_eq!(a.scores.len(), 4, "half of each set is evaluated");
    assert!(a.notes[0].contains("12 features"), "{:?}", a.notes);
    assert!(a.scores.iter().all(|s| s.score.is_finite()));
}

#[test]
fn all_means_every_attack_that_applies() {
    let dir = fixture();
    let c = AuditConfig::new(&dir, dir.join("members"), dir.join("nonmembers"), Preset::Quick);
    assert_eq!(c.attacks, AttackKind::ALL.to_vec());
    let pixel = AuditConfig::demo(Preset::Quick);
    assert!(!pixel.attacks.contains(&AttackKind::Clid), "CLiD needs captions: not for the pixel DDPM");
}

#[test]
fn clid_on_a_pixel_model_is_refused() {
    let mut c = AuditConfig::demo(Preset::Quick);
    c.attacks = vec![AttackKind::Clid];
    c.max_per_set = Some(4);
    let e = run(&c).expect_err("CLiD needs a caption-conditioned model").to_string();
    assert!(e.contains("text-conditioned pipeline"), "{e}");
}

#[test]
fn uncaptioned_sets_cannot_run_clid_and_other_folders_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // the same images without metadata.jsonl, already at the pipeline's 32 px
    for set in ["members", "nonmembers"] {
        let d = tmp.path().join(set);
        std::fs::create_dir(&d).unwrap();
        for i in 0..3 {
            image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, (i * 60) as u8]))
                .save(d.join(format!("{i}.png")))
                .unwrap();
        }
    }
    let mut c = config(&[AttackKind::Clid]);
    c.members = tmp.path().join("members");
    c.nonmembers = tmp.path().join("nonmembers");
    let e = run(&c).expect_err("no captions").to_string();
    assert!(e.contains("CLiD needs the images' captions"), "{e}");
    c.attacks = vec![AttackKind::Pia];
    let report = run(&c).expect("PIA with the empty caption");
    assert!(report.warnings.iter().any(|w| w.contains("empty caption")), "{:?}", report.warnings);

    // an SDXL folder: one line, nothing written
    let sdxl = tmp.path().join("sdxl");
    std::fs::create_dir(&sdxl).unwrap();
    std::fs::write(
        sdxl.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}"#,
    )
    .unwrap();
    c.target = sdxl.clone();
    let e = run(&c).expect_err("SDXL").to_string();
    assert!(e.contains("SDXL") && !e.contains('\n'), "{e}");
    assert_eq!(std::fs::read_dir(&sdxl).unwrap().count(), 1);
}

#[test]
fn a_checkpoint_resumes_with_the_finished_attacks_and_refuses_other_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("report.json.partial.json");
    let mut first = config(&[AttackKind::Pia]);
    first.checkpoint = Some(Checkpoint { path: path.clone(), resume: false });
    let r1 = run(&first).unwrap();
    assert!(path.is_file(), "written after the attack");

    // the same audit with one more attack: PIA is taken from the file (same timing to the bit)
    let mut second = config(&[AttackKind::Pia, AttackKind::Loss]);
    second.checkpoint = Some(Checkpoint { path: path.clone(), resume: true });
    second.attacks = vec![AttackKind::Pia];
    let mut calls = 0usize;
    let r2 = audit::run(
        &second,
        &mut |p| {
            if p.message.starts_with("PIA:") {
                calls += 1
            }
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(calls, 0, "no PIA model call on resume");
    assert_eq!(r2.attacks[0].seconds.to_bits(), r1.attacks[0].seconds.to_bits());
    assert_eq!(r2.attacks[0].metrics.auc, r1.attacks[0].metrics.auc);

    let mut other = second.clone();
    other.pia.timestep = 150;
    let e = run(&other).expect_err("other parameters").to_string();
    assert!(e.contains("other parameters"), "{e}");
}

/// Lines of a `metadata.jsonl`, parsed.
fn metadata(folder: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(folder.join("metadata.jsonl"))
        .expect("metadata.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The shipped latent demo (`assets/demo_sd`): its sets are what its README says, and the loss
/// and PIA scores of `melo audit --preset full` agree per sample with the independent diffusers
/// run shipped beside it (`leakage_diffusers.json`, `tools/sd/audit_reference.py`).
#[test]
fn the_latent_demo_scores_as_diffusers_scores_it() {
    let dir = common::repo().join("assets/demo_sd");
    let members = metadata(&dir.join("members"));
    let nonmembers = metadata(&dir.join("nonmembers"));
    assert_eq!((members.len(), nonmembers.len()), (200, 200));
    let sources = |rows: &[Value]| -> std::collections::BTreeSet<String> {
        rows.iter().map(|r| r["source"].as_str().expect("source").to_string()).collect()
    };
    assert_eq!(sources(&members).len(), 200, "a member listed twice");
    assert!(sources(&members).is_disjoint(&sources(&nonmembers)), "a member is also a non-member");
    let class_counts = |rows: &[Value]| -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for r in rows {
            *counts.entry(r["text"].as_str().unwrap().to_string()).or_insert(0) += 1;
        }
        counts
    };
    assert_eq!(class_counts(&members), class_counts(&nonmembers), "the sets are not matched by class");

    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("leakage_diffusers.json")).expect("leakage_diffusers.json"),
    )
    .expect("valid JSON");
    assert_eq!(reference["n_members"].as_u64(), Some(200));
    let mut c = AuditConfig::new(&dir, dir.join("members"), dir.join("nonmembers"), Preset::Full);
    c.attacks = vec![AttackKind::Loss, AttackKind::Pia];
    c.max_per_set = Some(5);
    c.seed = reference["params"]["seed"].as_u64().expect("seed");
    c.bootstrap_resamples = 100;
    let report = run(&c).expect("the demo audits");
    assert!(report.target.kind.contains("epsilon"), "{}", report.target.kind);
    for attack in &report.attacks {
        let expected = reference["scores"][&attack.name].as_array().expect("reference scores");
        assert_eq!(expected.len(), 400);
        assert_eq!(attack.scores.len(), 10);
        for s in &attack.scores {
            // The loss attack's seeded noise is drawn for the whole stack of candidates (members
            // first), so a non-member's noise depends on how many members precede it: with 5 of
            // each here and 200 in the reference, only the members draw the same noise.
            if attack.name == "loss" && !s.member {
                continue;
            }
            let want = expected[s.index + if s.member { 0 } else { 200 }].as_f64().unwrap();
            let rel = (s.score - want).abs() / want.abs().max(1e-12);
            // the acceptance bound is 1e-3 relative; the whole 400 agree far closer (results.md)
            assert!(
                rel < 1e-4,
                "{} sample {} (member {}): {} vs diffusers {want}",
                attack.name,
                s.index,
                s.member,
                s.score
            );
        }
    }
}
