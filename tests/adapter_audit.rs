//! Issue 19: membership inference on a diagnosis adapter — LiRA scoring against numpy, the
//! whole audit on a tiny target with cached shadows, and bad input.

mod common;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use melo::audit::adapter::{lira_scores, rmia_scores, run, AdapterAttack, AdapterAuditConfig, SetSpec};
use melo::audit::metrics::BootstrapOptions;
use serde_json::Value;

fn breastmnist() -> PathBuf {
    let p = common::require_shared_data("the adapter audit").join("medmnist/breastmnist.npz");
    assert!(p.is_file(), "{} is missing (see ../shared/data/README.md)", p.display());
    p
}

/// A fixture of tools/lira/make_fixture.py in tests/data: the whole JSON, the target's φ
/// [image][query], the shadows' φ [shadow][image][query] and their IN masks [shadow][image].
#[allow(clippy::type_complexity)]
fn lira_fixture(name: &str) -> (Value, Vec<Vec<f64>>, Vec<Vec<Vec<f64>>>, Vec<Vec<bool>>) {
    let text = std::fs::read_to_string(common::repo().join("tests/data").join(name)).unwrap();
    let f: Value = serde_json::from_str(&text).unwrap();
    let rows = |v: &Value| -> Vec<Vec<f64>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
            .collect()
    };
    let target = rows(&f["target"]);
    let phi: Vec<Vec<Vec<f64>>> = f["phi"].as_array().unwrap().iter().map(rows).collect();
    let inside: Vec<Vec<bool>> = f["inside"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_bool().unwrap()).collect())
        .collect();
    (f, target, phi, inside)
}

/// 9 shadows (one pooled variance per query and side) and 64 (each image's own variances).
#[test]
fn lira_scores_match_numpy() {
    for fixture in ["lira_fixture.json", "lira_fixture_64.json"] {
        let (f, target, phi, inside) = lira_fixture(fixture);
        let (online, offline, never_in, never_out) = lira_scores(&target, &phi, &inside).unwrap();
        assert_eq!((never_in, never_out), (1, 1), "{fixture}: one image always IN and one never IN");
        for (name, ours, theirs) in [("online", &online, &f["online"]), ("offline", &offline, &f["offline"])] {
            for (i, (a, b)) in ours.iter().zip(theirs.as_array().unwrap()).enumerate() {
                let b = b.as_f64().unwrap();
                assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                    "{fixture}: {name} score of image {i}: {a} here, {b} by numpy"
                );
            }
        }
    }
}

#[test]
fn rmia_scores_match_numpy() {
    let (f, target, phi, inside) = lira_fixture("lira_fixture.json");
    let rmia = rmia_scores(&target, &phi, &inside).unwrap();
    assert_eq!(rmia.offline_a, f["rmia_a"].as_f64().unwrap(), "tuned a");
    assert!((rmia.offline_a_auc - f["rmia_a_auc"].as_f64().unwrap()).abs() < 1e-12);
    for (name, ours, theirs) in
        [("online", &rmia.online, &f["rmia_online"]), ("offline", &rmia.offline, &f["rmia_offline"])]
    {
        let theirs = theirs.as_array().unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
            let b = b.as_f64().unwrap();
            assert!((a - b).abs() <= 1e-12, "RMIA {name} score of image {i}: {a} here, {b} by numpy");
        }
    }
    // The fixture has memorised and unmemorised images: both ends of the scale are used.
    assert!(rmia.online.iter().any(|&s| s > 0.5) && rmia.online.iter().any(|&s| s < 0.5));
}

fn config(adapter: PathBuf, shadow_dir: PathBuf, shadows: usize) -> AdapterAuditConfig {
    let data = breastmnist().display().to_string();
    AdapterAuditConfig {
        adapter,
        recipe: None,
        members: SetSpec::parse(&format!("{data}:train")),
        nonmembers: SetSpec::parse(&format!("{data}:test")),
        population: None,
        attacks: AdapterAttack::ALL.to_vec(),
        shadows,
        shadow_dir,
        limit: Some(16),
        seed: 0,
        bootstrap: BootstrapOptions { resamples: 100, seed: 0 },
        backbone: common::repo().join("assets/backbone"),
    }
}

#[test]
fn an_adapter_audit_trains_caches_and_reuses_its_shadows() {
    let dir = tempfile::tempdir().unwrap();
    let target = common::tiny_breast_adapter(dir.path());
    let shadow_dir = dir.path().join("shadows");
    let cancel = AtomicBool::new(false);
    let first = run(&config(target.clone(), shadow_dir.clone(), 3), &mut |_| {}, &cancel).unwrap();
    let names: Vec<&str> = first.attacks.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["loss", "lira_online", "lira_offline", "rmia_online", "rmia_offline"]);
    for a in &first.attacks {
        assert_eq!((a.metrics.n_members, a.metrics.n_nonmembers), (16, 16), "{}", a.name);
        assert!((0.0..=1.0).contains(&a.metrics.auc), "{}: {}", a.name, a.metrics.auc);
        assert!(a.scores.iter().all(|s| s.score.is_finite()), "{}", a.name);
    }
    // The gallery: the strongest attack's top-scored members, best first, with their pixels.
    let strongest = first.attacks.iter().max_by(|a, b| a.metrics.auc.total_cmp(&b.metrics.auc)).unwrap();
    let mut top: Vec<_> = strongest.scores.iter().filter(|s| s.member).collect();
    top.sort_by(|x, y| y.score.total_cmp(&x.score));
    assert_eq!(first.most_exposed.len(), 8);
    for (e, s) in first.most_exposed.iter().zip(&top) {
        assert_eq!((&e.attack, &e.id, e.score), (&strongest.name, &s.id, s.score));
        assert_eq!(e.rgb.len(), 3 * e.side * e.side);
        assert!(e.rgb.iter().any(|&v| v > 0), "{} is black", e.id);
    }
    assert!(!serde_json::to_string(&first).unwrap().contains("rgb"), "pixels travelled into the JSON report");
    let shadows = first.shadows.as_ref().unwrap();
    assert_eq!((shadows.count, shadows.trained_now, shadows.pool_size, shadows.train_size), (3, 3, 32, 16));
    // Per-class leakage for both labels and every attack.
    assert_eq!(first.per_class.len(), 2 * 5, "{:?}", first.per_class);
    // The report names sets by file name and split, never by folder.
    assert_eq!(first.members, "breastmnist.npz:train");
    let text = serde_json::to_string(&first).unwrap();
    assert!(!text.contains(&*common::repo().to_string_lossy()), "a path travelled into the report");
    for k in 0..3 {
        assert!(shadow_dir.join(format!("shadow_{k:03}.json")).is_file());
        assert!(shadow_dir.join(format!("shadow_{k:03}.safetensors")).is_file());
    }

    // Again: every shadow from the cache, the same scores (to the last bits a JSON round trip
    // of the cached confidences may change).
    let second = run(&config(target.clone(), shadow_dir.clone(), 3), &mut |_| {}, &cancel).unwrap();
    let s2 = second.shadows.as_ref().unwrap();
    assert_eq!((s2.trained_now, s2.reused_from_cache), (0, 3));
    for (a, b) in first.attacks.iter().zip(&second.attacks) {
        let (x, y): (Vec<f64>, Vec<f64>) =
            (a.scores.iter().map(|s| s.score).collect(), b.scores.iter().map(|s| s.score).collect());
        assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() <= 1e-12 * p.abs().max(1.0)), "{}: {x:?} {y:?}", a.name);
    }
    // A different seed is a different shadow set: nothing reused.
    let mut other = config(target, shadow_dir, 2);
    other.seed = 7;
    other.attacks = vec![AdapterAttack::LiraOffline];
    let third = run(&other, &mut |_| {}, &cancel).unwrap();
    assert_eq!(third.shadows.unwrap().reused_from_cache, 0);
}

#[test]
fn bad_input_gets_a_one_line_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = AtomicBool::new(false);
    let shipped = common::repo().join("adapters/breast_malignancy.safetensors");
    let err = |c: AdapterAuditConfig| run(&c, &mut |_| {}, &cancel).unwrap_err().to_string();

    // K < 2.
    let message = err(config(shipped.clone(), dir.path().join("s"), 1));
    assert!(message.contains("at least 2 shadow"), "{message}");
    assert!(!message.contains('\n'));

    // Members whose classes are not the adapter's labels.
    let folder = dir.path().join("images");
    for class in ["malignant", "cat"] {
        std::fs::create_dir_all(folder.join(class)).unwrap();
        image::GrayImage::from_pixel(28, 28, image::Luma([90])).save(folder.join(class).join("a.png")).unwrap();
    }
    let mut c = config(shipped.clone(), dir.path().join("s"), 2);
    c.members = SetSpec::parse(&folder.display().to_string());
    let message = err(c);
    assert!(message.contains("class 'cat' is not one of the adapter's labels"), "{message}");

    // An adapter for another backbone.
    let engine = melo::model::Engine::open(&common::repo().join("assets/backbone")).unwrap();
    let labels = vec!["malignant".to_string(), "normal_or_benign".to_string()];
    let mut meta = melo::model::AdapterMetadata::for_backbone("foreign", labels, engine.backbone());
    meta.backbone_sha256 = "ab".repeat(32);
    let adapter = melo::model::Adapter::synthetic(meta, engine.backbone(), 1).unwrap();
    let foreign = dir.path().join("foreign.safetensors");
    adapter.save(&foreign).unwrap();
    let message = err(config(foreign, dir.path().join("s"), 2));
    assert!(message.contains("ab".repeat(32).as_str()), "{message}");
    assert!(!message.contains('\n'), "{message}");
}
