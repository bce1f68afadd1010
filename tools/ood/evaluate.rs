//! Acceptance numbers of issue 15 for the shipped adapters (docs/results.md): calibration
//! (from each adapter's metadata), OOD AUROC and alarm rates of both detectors, and predict
//! latency with and without calibration + OOD.
//!
//! cargo run --example ood_evaluate -- [--sweep-k TASK] FAR_DIR...
//!
//! - in-distribution: the adapter's own test split (split as for training: 0.1/0.2, seed 0);
//! - near OOD: the other shipped tasks' test splits (at most 200 images each, evenly spread),
//!   preprocessed as this adapter's input;
//! - far OOD: every file under the FAR_DIRs that the loader decodes (DICOM, PNG, JPEG).
//!
//! `--sweep-k TASK` also refits that adapter's Mahalanobis statistics for several k from the
//! same training features and prints the AUROCs per k (how k was chosen).

use std::path::{Path, PathBuf};
use std::time::Instant;

use melo::image::{load_image, LoadOptions};
use melo::model::engine::preprocess;
use melo::model::ood::{auroc, energy, quantile, Mahalanobis};
use melo::model::{Adapter, Engine, VisionTransformer};
use melo::train::calibrate::{features_and_logits, spread, DEFAULT_MAX_TRAIN};
use melo::train::data::{DataSource, Prepared, Split, SplitFractions};

/// (task, data under ../shared/data, labels as given to `melo train`).
const SHIPPED: [(&str, &str, Option<&str>); 4] = [
    ("blood_cell_type", "pbc", None),
    ("breast_malignancy", "medmnist/breastmnist.npz", Some("malignant,normal_or_benign")),
    ("pneumonia", "medmnist/pneumoniamnist.npz", Some("normal,pneumonia")),
    ("retina_dr_grade", "medmnist/retinamnist.npz", Some("grade_0,grade_1,grade_2,grade_3,grade_4")),
];

/// Test images per other task in the near-OOD set (evenly spread over its test split): bounds
/// the run time on a 2-core machine.
const NEAR_MAX: usize = 200;
/// Threshold rules compared: the share of validation images that pass.
const PASS_RATES: [f64; 4] = [0.95, 0.975, 0.99, 0.995];

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn source(repo: &Path, data: &str, labels: Option<&str>) -> Res<DataSource> {
    let labels: Option<Vec<String>> = labels.map(|l| l.split(',').map(String::from).collect());
    let path = repo.join("../shared/data").join(data);
    Ok(DataSource::open(&path, labels.as_deref(), SplitFractions { val: 0.1, test: 0.2, seed: 0 })?)
}

/// Mahalanobis and energy scores of prepared images.
fn scores(vit: &VisionTransformer, adapter: &Adapter, data: &Prepared, max: usize) -> Res<(Vec<f64>, Vec<f64>)> {
    let (f, l) = features_and_logits(vit, adapter, data, &spread(data.len(), max))?;
    let dim = adapter.head_weight().dims2()?.1;
    let stats = adapter.ood_stats().ok_or("adapter has no OOD statistics (run tools/ood/refit_shipped.sh)")?;
    Ok((
        f.chunks_exact(dim).map(|x| stats.score(x)).collect(),
        l.chunks_exact(adapter.labels().len()).map(energy).collect(),
    ))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn rate_above(scores: &[f64], threshold: f64) -> f64 {
    scores.iter().filter(|&&s| !(s <= threshold)).count() as f64 / scores.len().max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Res<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let sweep = match args.iter().position(|a| a == "--sweep-k") {
        Some(i) => {
            let task = args.get(i + 1).cloned().ok_or("--sweep-k TASK")?;
            args.drain(i..=i + 1);
            Some(task)
        }
        None => None,
    };
    let only = match args.iter().position(|a| a == "--only") {
        Some(i) => {
            let task = args.get(i + 1).cloned().ok_or("--only TASK")?;
            args.drain(i..=i + 1);
            Some(task)
        }
        None => None,
    };
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut engine = Engine::open(&repo.join("assets/backbone"))?;
    let rejected = engine.register_dir(&repo.join("adapters"))?;
    if !rejected.is_empty() {
        return Err(format!("rejected adapters: {rejected:?}").into());
    }
    let sources: Vec<DataSource> = SHIPPED.iter().map(|(_, d, l)| source(&repo, d, *l)).collect::<Res<_>>()?;

    // Far OOD: every decodable file of the given folders.
    let mut far_paths = Vec::new();
    for dir in &args {
        files(Path::new(dir), &mut far_paths);
    }
    let options = LoadOptions::default();
    let far_images: Vec<_> =
        far_paths.iter().filter_map(|p| load_image(p, &options).ok().map(|i| (p.clone(), i))).collect();
    eprintln!("far OOD: {} of {} files decode", far_images.len(), far_paths.len());

    println!("| adapter | T | ECE test before → after | Brier before → after | detector | AUROC near | AUROC far | in-dist. alarms (test) | near flagged | far flagged |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let (mut pass_rows, mut ece_rows) = (Vec::new(), Vec::new());
    let ci = |c: Option<[f64; 2]>| c.map_or("—".to_string(), |[a, b]| format!("[{a:.4}, {b:.4}]"));
    for (t, (task, _, _)) in SHIPPED.iter().enumerate() {
        if only.as_deref().is_some_and(|o| o != *task) {
            continue;
        }
        let adapter = engine.adapter(task)?.clone();
        let m = adapter.metadata();
        let vit = engine.backbone();
        let prep = |s: &DataSource| s.prepare(Split::Test, m.input_size, m.mean, m.std, None);
        let (in_m, in_e) = scores(vit, &adapter, &prep(&sources[t])?, usize::MAX)?;
        let (mut near_m, mut near_e) = (Vec::new(), Vec::new());
        for (o, s) in sources.iter().enumerate() {
            if o != t {
                let (a, b) = scores(vit, &adapter, &prep(s)?, NEAR_MAX)?;
                near_m.extend(a);
                near_e.extend(b);
            }
        }
        let (mut far_m, mut far_e) = (Vec::new(), Vec::new());
        let dim = adapter.head_weight().dims2()?.1;
        for (_, image) in &far_images {
            let Ok(px) = preprocess(image, 0, m.input_size, m.mean, m.std) else { continue };
            let out = vit.forward(&px, Some(adapter.lora()))?;
            let f = adapter.features(&out)?;
            let l = adapter.head_on(&f)?.flatten_all()?.to_vec1::<f32>()?;
            let f = f.flatten_all()?.to_vec1::<f32>()?;
            far_m.push(adapter.ood_stats().ok_or("no OOD statistics")?.score(&f[..dim]));
            far_e.push(energy(&l));
        }
        let ood = m.ood.as_ref().ok_or("no OOD summary")?;
        let cal = m.calibration.as_ref().ok_or("no calibration")?;
        for (name, inside, near, far, threshold) in [
            ("mahalanobis", &in_m, &near_m, &far_m, ood.mahalanobis_threshold),
            ("energy", &in_e, &near_e, &far_e, ood.energy_threshold),
        ] {
            println!(
                "| {task} | {:.3} | {:.4} → {:.4} | {:.4} → {:.4} | {name}{} | {:.4} | {:.4} | {:.1} % ({}) | {:.1} % ({}) | {:.1} % ({}) |",
                cal.temperature,
                cal.ece_before,
                cal.ece_after,
                cal.brier_before,
                cal.brier_after,
                if name == ood.detector.name() { " (used)" } else { "" },
                auroc(inside, near),
                auroc(inside, far),
                100.0 * rate_above(inside, threshold),
                inside.len(),
                100.0 * rate_above(near, threshold),
                near.len(),
                100.0 * rate_above(far, threshold),
                far.len(),
            );
        }

        // The threshold rule: other pass rates on the same validation scores (the threshold
        // is that quantile of the adapter's validation split, as `--ood-pass-rate` fits it).
        let val = sources[t].prepare(Split::Val, m.input_size, m.mean, m.std, None)?;
        let (val_m, _) = scores(vit, &adapter, &val, usize::MAX)?;
        for rate in PASS_RATES {
            let threshold = quantile(&val_m, rate);
            pass_rows.push(format!(
                "| {task} | {:.1} % | {threshold:.1} | {:.1} % ({}) | {:.1} % | {:.1} % |",
                100.0 * rate,
                100.0 * rate_above(&in_m, threshold),
                in_m.len(),
                100.0 * rate_above(&near_m, threshold),
                100.0 * rate_above(&far_m, threshold),
            ));
        }
        ece_rows.push(format!(
            "| {task} | {} | {} | {:.2} | {:.3} | {:.4} → {:.4} | {} |",
            cal.fitted_samples,
            cal.fitted_temperature.map_or("—".into(), |t| format!("{t:.3}")),
            cal.likelihood_ratio.unwrap_or(f64::NAN),
            cal.temperature,
            cal.ece_before,
            cal.ece_after,
            ci(cal.ece_change_ci),
        ));

        if sweep.as_deref() == Some(*task) {
            let train = sources[t].prepare(Split::Train, m.input_size, m.mean, m.std, None)?;
            let items = spread(train.len(), DEFAULT_MAX_TRAIN);
            let (tf, _) = features_and_logits(vit, &adapter, &train, &items)?;
            let labels: Vec<usize> = items.iter().map(|&i| train.labels[i]).collect();
            let feats = |p: &Prepared| -> Res<Vec<f32>> {
                Ok(features_and_logits(vit, &adapter, p, &(0..p.len()).collect::<Vec<_>>())?.0)
            };
            let inside_f = feats(&prep(&sources[t])?)?;
            let mut near_f = Vec::new();
            for (o, s) in sources.iter().enumerate() {
                if o != t {
                    near_f.extend(feats(&prep(s)?)?);
                }
            }
            let mut far_f = Vec::new();
            for (_, image) in &far_images {
                if let Ok(px) = preprocess(image, 0, m.input_size, m.mean, m.std) {
                    far_f.extend(
                        adapter.features(&vit.forward(&px, Some(adapter.lora()))?)?.flatten_all()?.to_vec1::<f32>()?,
                    );
                }
            }
            for k in [8, 16, 32, 64, 128, 256] {
                let stats = Mahalanobis::fit(&tf, &labels, adapter.labels().len(), dim, k)?;
                let s = |x: &[f32]| x.chunks_exact(dim).map(|f| stats.score(f)).collect::<Vec<_>>();
                let (i, n, f) = (s(&inside_f), s(&near_f), s(&far_f));
                let bytes = 4 * k * dim;
                // Relative Mahalanobis (Ren et al. 2021): minus the distance to one Gaussian of
                // all training features, for comparison.
                let global = Mahalanobis::fit(&tf, &vec![0; labels.len()], 1, dim, k)?;
                let r = |x: &[f32]| x.chunks_exact(dim).map(|f| stats.score(f) - global.score(f)).collect::<Vec<_>>();
                let (ri, rn, rf) = (r(&inside_f), r(&near_f), r(&far_f));
                println!(
                    "sweep {task}: k {k:>3} ({bytes} bytes of components)  AUROC near {:.4}  far {:.4}; relative: near {:.4}  far {:.4}",
                    auroc(&i, &n),
                    auroc(&i, &f),
                    auroc(&ri, &rn),
                    auroc(&ri, &rf)
                );
            }
        }
    }

    println!();
    println!("| adapter | pass rate (validation) | threshold | in-dist. alarms (test) | near flagged | far flagged |");
    println!("|---|---|---|---|---|---|");
    pass_rows.iter().for_each(|r| println!("{r}"));
    println!();
    println!("| adapter | validation n | fitted T | likelihood ratio | T used | ECE test before → after | change, paired bootstrap 95 % CI |");
    println!("|---|---|---|---|---|---|---|");
    ece_rows.iter().for_each(|r| println!("{r}"));
    if only.is_some() {
        return Ok(());
    }
    // Latency: predict_task on one image, the adapter as shipped vs without calibration/OOD.
    let image = &far_images.first().ok_or("no far image for the timing")?.1;
    let mut plain = Engine::open(&repo.join("assets/backbone"))?;
    for a in engine.adapters() {
        let mut a = a.clone();
        a.set_calibration(None, None)?;
        plain.register(a)?;
    }
    for (task, _, _) in SHIPPED {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for _ in 0..21 {
            let t0 = Instant::now();
            engine.predict_task(task, image, 0)?;
            with.push(t0.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            plain.predict_task(task, image, 0)?;
            without.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let (w, wo) = (median(with), median(without));
        println!(
            "latency {task}: {wo:.2} ms without, {w:.2} ms with calibration + OOD ({:+.1} %)",
            100.0 * (w / wo - 1.0)
        );
    }
    Ok(())
}
