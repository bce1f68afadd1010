//! The privacy tab's library side for both target kinds (`melo::audit::gallery`): a member's
//! reconstruction when generation starts from it — on a Stable Diffusion pipeline img2img in
//! latent space, checked against diffusers (`tools/sd/gallery_reference.py` wrote
//! `tests/data/sd/pipeline_tiny/gallery_reference.json`) — and the cost estimate, whose call
//! count must be the total the audit itself then reports.

mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use melo::audit::gallery::{estimate, MemberGallery};
use melo::audit::{self, AttackKind, AuditConfig, Preset};
use serde_json::Value;

fn pipeline() -> PathBuf {
    common::repo().join("tests/data/sd/pipeline_tiny")
}

fn pipeline_config(attacks: &[AttackKind]) -> AuditConfig {
    let dir = pipeline();
    let mut c = AuditConfig::new(&dir, dir.join("members"), dir.join("nonmembers"), Preset::Quick);
    c.attacks = attacks.to_vec();
    c.seed = 3;
    c.batch_size = 3;
    c.bootstrap_resamples = 20;
    c.trajectory.strengths = vec![300];
    c.trajectory.steps = 2;
    c
}

fn pixel_config(attacks: &[AttackKind]) -> AuditConfig {
    let mut c = AuditConfig::demo(Preset::Quick);
    c.attacks = attacks.to_vec();
    c.max_per_set = Some(4);
    c.batch_size = 3;
    c.bootstrap_resamples = 20;
    c.loss.draws = 1;
    c
}

#[test]
fn pipeline_reconstruction_is_img2img_as_diffusers_computes_it() {
    let path = pipeline().join("gallery_reference.json");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("gallery_reference.json")).expect("valid JSON");
    let (t0, steps, seed) =
        (r["t0"].as_u64().unwrap() as usize, r["steps"].as_u64().unwrap() as usize, r["seed"].as_u64().unwrap());
    let gallery = MemberGallery::load(&pipeline_config(&[AttackKind::Pia])).expect("the tiny pipeline loads");
    assert_eq!(gallery.len(), 4);
    let resolution = r["resolution"].as_u64().unwrap() as usize;
    for (i, expected) in r["members"].as_object().unwrap() {
        let i: usize = i.parse().unwrap();
        assert_eq!(gallery.caption(i), expected["caption"].as_str(), "member {i}'s caption");
        let image = gallery.reconstruction(i, t0, steps, seed).expect("reconstruction");
        // the member images are larger than the pipeline's 32 px: the reconstruction is at 32 px
        assert_eq!((image.width, image.height), (resolution, resolution));
        let want: Vec<f64> = expected["grey"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(image.data.len(), want.len());
        let worst = image.data.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        eprintln!("member {i}: max |ours − diffusers| = {worst:e}");
        // measured 8.9e-7: f32 UNet / VAE arithmetic in another order than PyTorch's
        assert!(worst < 1e-4, "member {i}: max difference {worst:e}");
        let original = gallery.original(i).unwrap();
        assert_eq!((original.width, original.height), (resolution, resolution));
    }
}

#[test]
fn pipeline_reconstruction_is_deterministic_for_a_seed() {
    let gallery = MemberGallery::load(&pipeline_config(&[AttackKind::Pia])).unwrap();
    let a = gallery.reconstruction(1, 200, 2, 7).unwrap();
    let b = gallery.reconstruction(1, 200, 2, 7).unwrap();
    assert_eq!(a, b, "same seed, same image to the bit");
    let c = gallery.reconstruction(1, 200, 2, 8).unwrap();
    assert_ne!(a.data, c.data, "another seed draws other noise");
    assert!(a.data.iter().all(|v| v.is_finite()));
}

#[test]
fn gallery_refuses_bad_requests_with_a_reason() {
    let gallery = MemberGallery::load(&pipeline_config(&[AttackKind::Pia])).unwrap();
    let e = gallery.reconstruction(9, 200, 2, 0).unwrap_err().to_string();
    assert!(e.contains("outside the 4 loaded members"), "{e}");
    let e = gallery.reconstruction(0, 1, 2, 0).unwrap_err().to_string();
    assert!(e.contains("2 steps from t₀ = 1"), "{e}");
    let e = gallery.reconstruction(0, 5000, 2, 0).unwrap_err().to_string();
    assert!(e.contains("outside the model's"), "{e}");
    let mut bad = pipeline_config(&[AttackKind::Pia]);
    bad.target = pipeline().join("members");
    let e = MemberGallery::load(&bad).err().expect("not a model folder").to_string();
    assert!(e.contains("not a model folder") && !e.contains('\n'), "{e}");
}

#[test]
fn pixel_gallery_has_the_demo_members_without_captions() {
    let gallery = MemberGallery::load(&pixel_config(&[AttackKind::Loss])).unwrap();
    assert_eq!(gallery.len(), 4);
    assert_eq!(gallery.caption(0), None);
    let image = gallery.reconstruction(0, 100, 4, 0).unwrap();
    // the same pixel-space path the gallery used before: `audit::reconstruction`'s last step
    let model = melo::diffusion::DiffusionModel::load(&audit::demo_dir()).unwrap();
    let m = &gallery.members;
    let steps = audit::reconstruction(&model, m.image(0), (m.channels, m.height, m.width), 100, 4, 0).unwrap();
    assert_eq!(&image, steps.last().unwrap());
    assert_eq!((image.width, image.height), (m.width, m.height));
}

/// The `total` of the audit's last progress event: the per-sample model calls it made.
fn audited_total(config: &AuditConfig) -> usize {
    let mut total = None;
    audit::run(config, &mut |p| total = Some(p.total), &AtomicBool::new(false)).expect("audit runs");
    total.expect("progress reported")
}

#[test]
fn estimate_counts_the_calls_the_pipeline_audit_makes() {
    let config = pipeline_config(&[AttackKind::Pia, AttackKind::Clid, AttackKind::Trajectory]);
    let e = estimate(&config, &AtomicBool::new(false)).expect("estimate");
    assert_eq!(e.samples, 8);
    // PIA 2, CLiD 2 × 2 timesteps × 1 draw (quick preset), trajectory 1 strength × 2 steps
    assert_eq!(e.calls_per_sample, 2 + 4 + 2);
    assert_eq!(e.model_calls, audited_total(&config));
    assert_eq!(e.vae_encodes, 8);
    assert_eq!(e.vae_decodes, 8 * 2);
    assert!(e.seconds_per_call > 0.0 && e.seconds_per_encode > 0.0 && e.seconds_per_decode > 0.0, "{e:?}");
    let sum = e.model_calls as f64 * e.seconds_per_call
        + e.vae_encodes as f64 * e.seconds_per_encode
        + e.vae_decodes as f64 * e.seconds_per_decode;
    assert!((e.projected_seconds - sum).abs() <= 1e-12 * sum, "{e:?}");
}

#[test]
fn estimate_counts_the_calls_the_pixel_audit_makes() {
    let config = pixel_config(&[AttackKind::Loss, AttackKind::Pia, AttackKind::Secmi]);
    let e = estimate(&config, &AtomicBool::new(false)).expect("estimate");
    assert_eq!(e.samples, 8);
    assert_eq!(e.model_calls, audited_total(&config));
    assert_eq!((e.vae_encodes, e.vae_decodes, e.seconds_per_encode), (0, 0, 0.0));
    assert!(e.seconds_per_call > 0.0);
}

#[test]
fn estimate_refuses_what_the_audit_refuses() {
    let mut c = pixel_config(&[AttackKind::Loss]);
    c.target = PathBuf::from("/definitely/not/a/model");
    let e = estimate(&c, &AtomicBool::new(false)).unwrap_err().to_string();
    assert!(e.contains("not a model folder"), "{e}");
    c = pixel_config(&[]);
    assert!(estimate(&c, &AtomicBool::new(false)).unwrap_err().to_string().contains("no attack"));
    let cancelled = AtomicBool::new(true);
    assert!(matches!(estimate(&pixel_config(&[AttackKind::Loss]), &cancelled), Err(audit::Error::Cancelled)));
}
