//! The schedulers of Stable Diffusion pipelines (DDPM, DDIM and its inverse, PNDM, Euler
//! discrete) against diffusers: `tests/data/sd/scheduler_ref.safetensors` and the configs in
//! `tests/data/sd/schedulers/`, made by `tools/sd/make_scheduler_fixture.py` (the SD 1.5 and SD
//! 2.1 configs are the public files, by value). Timestep lists must be identical; ᾱ within
//! one f32 ulp; Euler's σ within 2 f32 ulps; single steps within 2e-6 of the output's scale,
//! whole 10-step PNDM / Euler loops within 1e-5 (measured: 2.3e-7 and 3.0e-7, f32 rounding of
//! the steps' multiply-adds, whose coefficients are computed in f64 here and in f32 by torch).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use melo::diffusion::scheduler::{EulerDiscreteScheduler, PndmScheduler, PredictionType, SchedulerKind};
use melo::diffusion::{DdimScheduler, DdpmScheduler, Error, NoiseSchedule, SchedulerConfig};

const CONFIGS: [&str; 10] = [
    "sd15_pndm",
    "pndm_v",
    "sd21_ddim_v",
    "sd15_ddim",
    "ddim_sample_trailing",
    "ddpm_cosine_v_linspace",
    "ddpm_trained_betas",
    "pndm_prk_linear",
    "euler_sd",
    "euler_leading_v",
];
const STEP_COUNTS: [usize; 6] = [1, 7, 10, 16, 25, 50];
/// Step outputs: max |ours − diffusers| ≤ this × max(1, max |diffusers|).
const STEP_TOLERANCE: f32 = 2e-6;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sd")
}

fn reference() -> HashMap<String, Tensor> {
    let path = data().join("scheduler_ref.safetensors");
    assert!(path.is_file(), "{} is missing: run tools/sd/make_scheduler_fixture.py", path.display());
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap()
}

fn config(name: &str) -> SchedulerConfig {
    SchedulerConfig::from_file(&data().join("schedulers").join(name).join("scheduler_config.json")).unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// max |a − b| relative to max(1, max |b|).
fn scaled_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (f32s(a), f32s(b));
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

#[test]
fn alphas_cumprod_match_diffusers() {
    let r = reference();
    for name in CONFIGS {
        let s = NoiseSchedule::new(&config(name)).unwrap();
        let want = f32s(&r[&format!("{name}.alphas_cumprod")]);
        assert_eq!(s.alphas_cumprod.len(), want.len(), "{name}");
        // within one f32 ulp (torch's vectorised linspace rounds some betas differently)
        let worst = s
            .alphas_cumprod
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - *w as f64).abs() / (*w as f64).abs().max(1e-4))
            .fold(0.0, f64::max);
        assert!(worst < 2.5e-7, "{name}: max relative diff {worst}");
    }
}

#[test]
fn timestep_lists_match_diffusers() {
    let r = reference();
    let mut compared = 0;
    for name in CONFIGS {
        let c = config(name);
        let s = NoiseSchedule::new(&c).unwrap();
        for n in STEP_COUNTS {
            let Some(want) = r.get(&format!("{name}.timesteps_{n}")) else { continue };
            let want: Vec<f64> = match c.kind() {
                Some(SchedulerKind::EulerDiscrete) => f32s(want).into_iter().map(f64::from).collect(),
                _ => want.to_vec1::<i64>().unwrap().into_iter().map(|t| t as f64).collect(),
            };
            assert_eq!(s.scheduler_timesteps(&c, n).unwrap(), want, "{name} n={n}");
            if matches!(c.kind(), Some(SchedulerKind::Ddim | SchedulerKind::Ddpm)) {
                let mut ddim = DdimScheduler::new(c.clone()).unwrap();
                ddim.set_timesteps(n).unwrap();
                let ints: Vec<f64> = ddim.timesteps().iter().map(|&t| t as f64).collect();
                assert_eq!(ints, want, "{name} DdimScheduler n={n}");
            }
            compared += 1;
        }
    }
    // Every config has its lists in the fixture (PNDM with Runge–Kutta steps needs n ≥ 4).
    assert_eq!(compared, CONFIGS.len() * STEP_COUNTS.len() - 1);
}

#[test]
fn euler_sigmas_match_diffusers() {
    let r = reference();
    for name in ["euler_sd", "euler_leading_v"] {
        let c = config(name);
        let s = NoiseSchedule::new(&c).unwrap();
        for n in STEP_COUNTS {
            let want = f32s(&r[&format!("{name}.sigmas_{n}")]);
            let got = s.euler_sigmas(&c, n).unwrap();
            assert_eq!(got.len(), n + 1);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - *w as f64).abs() <= 2.5e-7 * (*w as f64).max(1e-3), "{name} n={n}: σ {g} vs {w}");
            }
        }
    }
}

#[test]
fn ddim_steps_and_inversion_match_diffusers() {
    let r = reference();
    let (x, output) = (&r["x"], &r["output"]);
    let mut worst = 0.0f32;
    for name in ["sd15_ddim", "sd21_ddim_v", "ddim_sample_trailing"] {
        let mut s = DdimScheduler::new(config(name)).unwrap();
        s.set_timesteps(10).unwrap();
        let mut steps = 0;
        for (key, want) in &r {
            let Some(rest) = key.strip_prefix(&format!("{name}.")) else { continue };
            let Some((kind, case)) = rest.split_once(".t") else { continue };
            let (t, field) = case.split_once('.').unwrap();
            let t: i64 = t.parse().unwrap();
            let out = match kind {
                "ddim" => s.step(output, t, x).unwrap(),
                "inv" => s.inverse_step(output, t, x).unwrap(),
                _ => continue,
            };
            let got = if field == "prev" { &out.prev_sample } else { &out.pred_original_sample };
            let d = scaled_diff(got, want);
            worst = worst.max(d);
            assert!(d <= STEP_TOLERANCE, "{key}: {d}");
            steps += 1;
        }
        assert_eq!(steps, 12, "{name}: 3 steps and 3 inversion steps, prev and x0 each");
    }
    eprintln!("DDIM steps: max scaled |diff| {worst:e}");
}

#[test]
fn ddim_moves_agree_with_the_steps_for_v_prediction() {
    // The move the attacks use, with v read as (x0, ε), lands where DDIMScheduler.step and
    // DDIMInverseScheduler.step land (SD 2.1's config: no clipping).
    let r = reference();
    let (x, output) = (&r["x"], &r["output"]);
    let s = DdimScheduler::new(config("sd21_ddim_v")).unwrap();
    let down = s.schedule.ddim_move_prediction(PredictionType::VPrediction, x, output, 401, 301).unwrap();
    assert!(scaled_diff(&down, &r["sd21_ddim_v.ddim.t401.prev"]) <= STEP_TOLERANCE);
    let up = s.schedule.ddim_move_prediction(PredictionType::VPrediction, x, output, 401, 501).unwrap();
    assert!(scaled_diff(&up, &r["sd21_ddim_v.inv.t501.prev"]) <= STEP_TOLERANCE);
}

#[test]
fn ddpm_steps_match_diffusers() {
    let r = reference();
    let (x, output, noise) = (&r["x"], &r["output"], &r["noise"]);
    for name in ["ddpm_cosine_v_linspace", "ddpm_trained_betas"] {
        let mut s = DdpmScheduler::new(config(name)).unwrap();
        s.set_timesteps(10).unwrap();
        let mut steps = 0;
        for (key, want) in &r {
            let Some(rest) = key.strip_prefix(&format!("{name}.ddpm.t")) else { continue };
            let (t, field) = rest.split_once('.').unwrap();
            let out = s.step(output, t.parse().unwrap(), x, Some(noise)).unwrap();
            let got = if field == "prev" { &out.prev_sample } else { &out.pred_original_sample };
            let d = scaled_diff(got, want);
            assert!(d <= 1e-5, "{key}: {d}");
            steps += 1;
        }
        assert_eq!(steps, 6, "{name}");
    }
}

/// The fixture's stand-in for the UNet: 0.3 · input + 0.05 · t / 1000.
fn stand_in_model(input: &Tensor, t: f64) -> Tensor {
    ((input * 0.3).unwrap() + 0.05 * (t / 1000.0)).unwrap()
}

fn check_loop(name: &str, got: &[Tensor], r: &HashMap<String, Tensor>) -> f32 {
    let want = &r[&format!("{name}.loop_10")];
    assert_eq!(got.len(), want.dim(0).unwrap(), "{name}: steps");
    let mut worst = 0.0f32;
    for (i, g) in got.iter().enumerate() {
        let d = scaled_diff(g, &want.get(i).unwrap());
        assert!(d <= 1e-5, "{name} after step {i}: {d}");
        worst = worst.max(d);
    }
    worst
}

#[test]
fn pndm_and_euler_sampling_loops_match_diffusers() {
    let r = reference();
    let x = &r["x"];
    let mut worst = 0.0f32;
    for name in ["sd15_pndm", "pndm_v"] {
        let mut s = PndmScheduler::new(config(name)).unwrap();
        s.set_timesteps(10).unwrap();
        let mut latents = vec![x.clone()];
        for &t in &s.timesteps().to_vec() {
            let x_t = latents.last().unwrap().clone();
            latents.push(s.step(&stand_in_model(&x_t, t as f64), t, &x_t).unwrap());
        }
        worst = worst.max(check_loop(name, &latents, &r));
    }
    for name in ["euler_sd", "euler_leading_v"] {
        let mut s = EulerDiscreteScheduler::new(config(name)).unwrap();
        s.set_timesteps(10).unwrap();
        let mut latents = vec![(x * s.init_noise_sigma()).unwrap()];
        for (i, &t) in s.timesteps().to_vec().iter().enumerate() {
            let x_t = latents.last().unwrap().clone();
            let out = stand_in_model(&s.scale_model_input(&x_t, i).unwrap(), t);
            latents.push(s.step(&out, i, &x_t).unwrap().prev_sample);
        }
        worst = worst.max(check_loop(name, &latents, &r));
    }
    eprintln!("PNDM / Euler loops: max scaled |diff| {worst:e}");
    // Without skip_prk_steps the warm-up is not ported: refused, not approximated.
    let mut s = PndmScheduler::new(config("pndm_prk_linear")).unwrap();
    s.set_timesteps(10).unwrap();
    assert!(matches!(s.step(x, s.timesteps()[0], x), Err(Error::Unsupported(_))));
}

#[test]
fn v_targets_split_back_into_x0_and_noise() {
    let r = reference();
    let (x0, noise) = (&r["x"], &r["noise"]);
    let s = NoiseSchedule::new(&config("sd21_ddim_v")).unwrap();
    for t in [0usize, 250, 999] {
        let x_t = s.add_noise(x0, noise, t).unwrap();
        let v = s.target(PredictionType::VPrediction, x0, noise, t).unwrap();
        let (x0_back, eps_back) = s.split_prediction(PredictionType::VPrediction, &x_t, &v, t as i64).unwrap();
        assert!(scaled_diff(&x0_back, x0) < 1e-5, "t={t} x0");
        assert!(scaled_diff(&eps_back, noise) < 1e-5, "t={t} ε");
    }
}

#[test]
fn absent_keys_take_the_class_defaults() {
    // SD 1.5's file without _class_name and set_alpha_to_one, read as the PNDMScheduler that
    // model_index.json names: PNDM's defaults (set_alpha_to_one false, leading) apply.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scheduler_config.json");
    let mut json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data().join("schedulers/sd15_pndm/scheduler_config.json")).unwrap(),
    )
    .unwrap();
    let map = json.as_object_mut().unwrap();
    map.remove("_class_name");
    map.remove("set_alpha_to_one");
    std::fs::write(&path, json.to_string()).unwrap();
    let c = SchedulerConfig::from_file_as(&path, SchedulerKind::Pndm).unwrap();
    assert_eq!(c.kind(), Some(SchedulerKind::Pndm));
    assert!(!c.set_alpha_to_one);
    let want: Vec<f64> =
        reference()["sd15_pndm.timesteps_7"].to_vec1::<i64>().unwrap().into_iter().map(|t| t as f64).collect();
    assert_eq!(NoiseSchedule::new(&c).unwrap().scheduler_timesteps(&c, 7).unwrap(), want);
    // The same file as DDIM: DDIM's default set_alpha_to_one is true.
    let c = SchedulerConfig::from_file_as(&path, SchedulerKind::Ddim).unwrap();
    assert!(c.set_alpha_to_one);
    assert_eq!(c.timestep_spacing, "leading");
    let c = SchedulerConfig::from_file_as(&path, SchedulerKind::EulerDiscrete).unwrap();
    assert_eq!(c.timestep_spacing, "linspace");
}

#[test]
fn unsupported_scheduler_options_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (r#"{"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": true}"#, "use_karras_sigmas"),
        (r#"{"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"}"#, "timestep_type"),
        (r#"{"_class_name": "EulerDiscreteScheduler", "interpolation_type": "log_linear"}"#, "interpolation_type"),
        (r#"{"_class_name": "DDIMScheduler", "prediction_type": "flow"}"#, "prediction_type 'flow'"),
        (r#"{"_class_name": "DDIMScheduler", "timestep_spacing": "karras"}"#, "timestep_spacing"),
        (r#"{"_class_name": "DDIMScheduler", "thresholding": true}"#, "thresholding"),
        (r#"{"_class_name": "DDIMScheduler", "beta_schedule": "sigmoid"}"#, "beta_schedule"),
        (r#"{"_class_name": "PNDMScheduler", "trained_betas": [0.1, 0.2]}"#, "trained_betas"),
    ];
    for (i, (json, needle)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("{i}.json"));
        std::fs::write(&path, json).unwrap();
        let msg = SchedulerConfig::from_file(&path).unwrap_err().to_string();
        assert!(msg.contains(needle), "{json}: {msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
    // PNDM with Runge–Kutta warm-up steps needs 4 spaced steps.
    let c = config("pndm_prk_linear");
    let s = NoiseSchedule::new(&c).unwrap();
    assert!(matches!(s.scheduler_timesteps(&c, 3), Err(Error::Input(_))));
    assert!(matches!(s.scheduler_timesteps(&c, 0), Err(Error::Input(_))));
}
