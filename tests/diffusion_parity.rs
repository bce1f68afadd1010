//! The candle UNet2DModel and the DDPM / DDIM schedulers against diffusers (PyTorch, CPU, f32)
//! outputs saved in `tests/data/diffusion` (its README says how they were made and which quirks
//! each fixture exercises). Criterion: max |candle − diffusers| ≤ 1e-4.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use melo::diffusion::{
    Config, DdimScheduler, DdpmScheduler, DiffusionModel, Error, NoiseSchedule, SchedulerConfig, UNet2DModel,
};

const TOLERANCE: f32 = 1e-4;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/diffusion")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(data().join(name), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn timesteps(r: &HashMap<String, Tensor>) -> Vec<f64> {
    r["t"].to_vec1::<i64>().unwrap().into_iter().map(|t| t as f64).collect()
}

#[test]
fn tiny_unet_matches_diffusers() {
    let r = load("unet_ref.safetensors");
    let unet = UNet2DModel::load(&data().join("tiny_unet"), &Device::Cpu).unwrap();
    assert_eq!(unet.num_params(), 176_849);
    let t = timesteps(&r);
    let proj = unet.timestep_features(&t).unwrap();
    assert!(max_abs_diff(&proj, &r["dbg_t_proj"]) < 1e-5, "sinusoidal embedding");
    let eps = unet.forward(&r["x"], &t).unwrap();
    let d = max_abs_diff(&eps, &r["eps"]);
    assert!(d <= TOLERANCE, "tiny_unet max |diff| {d}");
}

#[test]
fn legacy_options_unet_matches_diffusers() {
    // flip_sin_to_cos false, freq_shift 1, downsample_padding 0, one attention head,
    // scale_shift ResNets and a mid attention without group norm.
    let r = load("unet_ref.safetensors");
    let unet = UNet2DModel::load(&data().join("tiny_unet_variant"), &Device::Cpu).unwrap();
    assert_eq!(unet.num_params(), 190_305);
    let eps = unet.forward(&r["x"], &timesteps(&r)).unwrap();
    let d = max_abs_diff(&eps, &r["variant_eps"]);
    assert!(d <= TOLERANCE, "tiny_unet_variant max |diff| {d}");
}

#[test]
fn one_timestep_per_sample_equals_separate_calls() {
    let r = load("unet_ref.safetensors");
    let unet = UNet2DModel::load(&data().join("tiny_unet"), &Device::Cpu).unwrap();
    let t = timesteps(&r);
    let batched = unet.forward(&r["x"], &t).unwrap();
    for i in 0..3 {
        let one = unet.forward(&r["x"].narrow(0, i, 1).unwrap(), &t[i..i + 1]).unwrap();
        assert!(max_abs_diff(&one, &batched.narrow(0, i, 1).unwrap()) < 1e-5);
    }
}

fn sched_config(name: &str) -> SchedulerConfig {
    SchedulerConfig::from_file(&data().join("schedulers").join(name).join("scheduler_config.json")).unwrap()
}

fn vec64(t: &Tensor) -> Vec<f64> {
    t.to_vec1::<f32>().unwrap().into_iter().map(|v| v as f64).collect()
}

#[test]
fn betas_and_alphas_cumprod_match_diffusers() {
    let r = load("scheduler_ref.safetensors");
    for b in ["linear", "squaredcos"] {
        let s = NoiseSchedule::new(&sched_config(&format!("ddpm_{b}"))).unwrap();
        for (what, got, want) in [
            ("betas", &s.betas, vec64(&r[&format!("{b}_betas")])),
            ("alphas_cumprod", &s.alphas_cumprod, vec64(&r[&format!("{b}_alphas_cumprod")])),
        ] {
            // within one f32 ulp (torch's vectorised linspace rounds some linear betas differently)
            let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs() / w.abs().max(1e-4)).fold(0.0, f64::max);
            assert!(worst < 2.5e-7, "{b} {what}: max relative diff {worst}");
        }
    }
}

#[test]
fn ddpm_steps_match_diffusers() {
    let r = load("scheduler_ref.safetensors");
    let (x, eps) = (&r["x_t"], &r["eps"]);
    for b in ["linear", "squaredcos"] {
        let mut s = DdpmScheduler::new(sched_config(&format!("ddpm_{b}"))).unwrap();
        for (case, t) in [("t500", 500), ("t0", 0)] {
            let out = s.step(eps, t, x, None).unwrap();
            let key = format!("ddpm_{b}_{case}");
            assert!(max_abs_diff(&out.pred_original_sample, &r[&format!("{key}_pred_x0")]) < 1e-5, "{key} x0");
            assert!(max_abs_diff(&out.prev_sample, &r[&format!("{key}_prev_mean")]) < 1e-5, "{key} mean");
            let var = r[&format!("{key}_variance")].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
            // β_t = 1 − ᾱ_t/ᾱ_{t−1} cancels: the 1-ulp differences of the linear betas (torch's
            // vectorised linspace rounds some entries differently) and diffusers' f32 arithmetic
            // show up here at ~1e-5 relative.
            assert!(
                (s.variance(t).unwrap() - var).abs() <= 5e-5 * var.max(1e-20),
                "{key} variance {} vs {var}",
                s.variance(t).unwrap()
            );
        }
        s.set_timesteps(50).unwrap();
        let want: Vec<i64> = r["ddpm_timesteps_50"].to_vec1::<i64>().unwrap();
        assert_eq!(s.timesteps(), &want[..]);
        let out = s.step(eps, 500, x, None).unwrap();
        let key = format!("ddpm_{b}_s50_t500");
        assert!(max_abs_diff(&out.prev_sample, &r[&format!("{key}_prev_mean")]) < 1e-5, "{key}");
        let var = r[&format!("{key}_variance")].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((s.variance(500).unwrap() - var).abs() <= 5e-5 * var, "{key} variance");
    }
}

#[test]
fn ddim_steps_and_moves_match_diffusers() {
    let r = load("scheduler_ref.safetensors");
    let (x, eps) = (&r["x_t"], &r["eps"]);
    for b in ["linear", "squaredcos"] {
        let mut s = DdimScheduler::new(sched_config(&format!("ddim_{b}"))).unwrap();
        s.set_timesteps(50).unwrap();
        assert_eq!(s.timesteps(), &r["ddim_timesteps_50"].to_vec1::<i64>().unwrap()[..]);
        for (case, t) in [("t500", 500), ("t0", 0)] {
            let out = s.step(eps, t, x).unwrap();
            let key = format!("ddim_{b}_s50_{case}");
            assert!(max_abs_diff(&out.prev_sample, &r[&format!("{key}_prev")]) < 1e-5, "{key}");
            assert!(max_abs_diff(&out.pred_original_sample, &r[&format!("{key}_pred_x0")]) < 1e-5, "{key} x0");
        }
        s.set_timesteps(10).unwrap();
        assert_eq!(s.timesteps(), &r["ddim_timesteps_10"].to_vec1::<i64>().unwrap()[..]);
        let out = s.step(eps, 900, x).unwrap();
        assert!(max_abs_diff(&out.prev_sample, &r[&format!("ddim_{b}_s10_t900_prev")]) < 1e-5);
        for (from, to) in [(100, 120), (480, 500)] {
            let moved = s.schedule.ddim_move(x, eps, from, to).unwrap();
            let d = max_abs_diff(&moved, &r[&format!("ddim_{b}_move_{from}_to_{to}")]);
            assert!(d < 1e-5, "{b} move {from}->{to}: {d}");
        }
    }
}

fn write_model(dir: &Path, config: &serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string(config).unwrap()).unwrap();
    std::fs::copy(
        data().join("tiny_unet/diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    std::fs::copy(data().join("schedulers/ddpm_linear/scheduler_config.json"), dir.join("scheduler_config.json"))
        .unwrap();
}

fn tiny_config() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(data().join("tiny_unet/config.json")).unwrap()).unwrap()
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("fourier", serde_json::json!({"time_embedding_type": "fourier"}), "time_embedding_type"),
        ("class", serde_json::json!({"num_class_embeds": 10}), "class-conditional"),
        ("unknown", serde_json::json!({"magic_option": 1}), "magic_option"),
        ("blocks", serde_json::json!({"block_out_channels": [16, 32, 64]}), "down blocks"),
        ("groups", serde_json::json!({"norm_num_groups": 5}), "norm_num_groups"),
        ("layers", serde_json::json!({"layers_per_block": 2}), "weights do not fit"),
        ("nomid", serde_json::json!({"mid_block_type": null}), "mid block"),
        // Weights with a mid attention the config says is absent: refused, not ignored.
        ("noattn", serde_json::json!({"add_attention": false}), "not used by the architecture"),
    ];
    for (name, patch, needle) in cases {
        let mut config = tiny_config();
        for (k, v) in patch.as_object().unwrap() {
            config[k] = v.clone();
        }
        let dir = tmp.path().join(name);
        write_model(&dir, &config);
        let msg = match DiffusionModel::load(&dir) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    // Not JSON at all; missing weights; missing scheduler config.
    let dir = tmp.path().join("garbage");
    write_model(&dir, &tiny_config());
    std::fs::write(dir.join("config.json"), "{ nope").unwrap();
    assert!(matches!(DiffusionModel::load(&dir), Err(Error::Json { .. })));
    let dir = tmp.path().join("noweights");
    write_model(&dir, &tiny_config());
    std::fs::remove_file(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    assert!(DiffusionModel::load(&dir).unwrap_err().to_string().contains("diffusion_pytorch_model.safetensors"));
    let dir = tmp.path().join("nosched");
    write_model(&dir, &tiny_config());
    std::fs::remove_file(dir.join("scheduler_config.json")).unwrap();
    assert!(DiffusionModel::load(&dir).unwrap_err().to_string().contains("scheduler_config.json"));
    // An unsupported scheduler option.
    let dir = tmp.path().join("vpred");
    write_model(&dir, &tiny_config());
    std::fs::write(dir.join("scheduler_config.json"), r#"{"prediction_type": "v_prediction"}"#).unwrap();
    assert!(DiffusionModel::load(&dir).unwrap_err().to_string().contains("v_prediction"));
}

#[test]
fn image_sizes_the_model_cannot_take_are_refused() {
    let unet = UNet2DModel::load(&data().join("tiny_unet"), &Device::Cpu).unwrap();
    let bad = [
        Tensor::zeros((1, 1, 15, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
        Tensor::zeros((1, 3, 16, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
        Tensor::zeros((16, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
    ];
    for x in &bad {
        assert!(matches!(unet.forward(x, &[10.0]), Err(Error::Input(_))), "{:?}", x.dims());
    }
    let x = Tensor::zeros((2, 1, 16, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(unet.forward(&x, &[1.0, 2.0, 3.0]), Err(Error::Input(_))));
    let _: &Config = unet.config();
}
