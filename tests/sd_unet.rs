//! The candle `UNet2DConditionModel` (src/diffusion/sd/unet_cond.rs) against diffusers 0.42.1
//! (PyTorch 2.15, CPU, f32, plain `AttnProcessor`) on two tiny random UNets saved by
//! `tools/sd/make_unet_fixture.py` in `tests/data/sd/unet_sd{1,2}` (its docstring lists what
//! each exercises), with the reference outputs in `tests/data/sd/unet_sd{1,2}_ref.safetensors`.
//!
//! Criterion: max |candle − diffusers| ≤ 2e-5 on outputs of standard deviation ≈ 0.45, i.e. a
//! few units of f32 rounding accumulated over ~30 layers (diffusers itself differs by up to
//! 4e-6 between its batched forward and one sample at a time). Measured (x86-64, 2 threads):
//! SD 1 fixture 1.2e-6, SD 2 fixture 3.6e-6. The
//! tanh-approximated GELU of candle-transformers' port gives 1.1e-4 (SD 1) and 5.3e-4 (SD 2):
//! 5× and 25× over the criterion.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use melo::diffusion::sd::unet_cond::{Config, UNet2DConditionModel};
use melo::diffusion::Error;

const TOLERANCE: f32 = 2e-5;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sd")
}

fn reference(name: &str) -> HashMap<String, Tensor> {
    let path = data().join(format!("unet_{name}_ref.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| {
        panic!("fixture {} missing or unreadable ({e}): run tools/sd/make_unet_fixture.py", path.display())
    })
}

fn model(name: &str) -> UNet2DConditionModel {
    let dir = data().join(format!("unet_{name}"));
    UNet2DConditionModel::load(&dir, &Device::Cpu).unwrap_or_else(|e| {
        panic!("fixture {} missing or unreadable ({e}): run tools/sd/make_unet_fixture.py", dir.display())
    })
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

/// Runs the three reference cases of one fixture: per-sample integer timesteps with 77 text
/// tokens, the same with 5 tokens, and fractional timesteps; returns the worst difference.
fn check(name: &str, num_params: usize) -> f32 {
    let r = reference(name);
    let unet = model(name);
    assert_eq!(unet.num_params(), num_params, "{name}: parameter count");
    let t = f64s(&r["t"]);
    assert_eq!(t, [10.0, 981.0]);
    let mut worst = 0f32;
    for (eps, ts, text) in [("eps_77", &t, "enc77"), ("eps_5", &t, "enc5"), ("eps_frac", &f64s(&r["t_frac"]), "enc77")]
    {
        let out = unet.forward(&r["x"], ts, &r[text]).unwrap();
        let d = max_abs_diff(&out, &r[eps]);
        eprintln!("{name} {eps}: max |diff| {d:e}");
        assert!(d <= TOLERANCE, "{name} {eps}: max |diff| {d}");
        worst = worst.max(d);
    }
    worst
}

#[test]
fn sd1_unet_matches_diffusers() {
    // SD 1 dummy of diffusers' tests: 8 heads of 1 dim (attention_head_dim 8 = heads), 1×1 conv
    // projections. Measured max |diff| 1.2e-6.
    let d = check("sd1", 18_464);
    eprintln!("sd1 max |diff| {d:e}");
}

#[test]
fn sd2_unet_matches_diffusers() {
    // SD 2 style: heads (2, 4) per block, Linear projections, transformer_layers_per_block
    // [2, 1], upcast_attention. Measured max |diff| 3.6e-6.
    let d = check("sd2", 83_188);
    eprintln!("sd2 max |diff| {d:e}");
}

#[test]
fn one_timestep_for_the_batch_equals_it_repeated() {
    let r = reference("sd1");
    let unet = model("sd1");
    let one = unet.forward(&r["x"], &[981.0], &r["enc77"]).unwrap();
    let each = unet.forward(&r["x"], &[981.0, 981.0], &r["enc77"]).unwrap();
    assert_eq!(max_abs_diff(&one, &each), 0.0);
    // and the timestep matters: sample 0 was computed at t = 10 in the reference
    let d = max_abs_diff(&one, &r["eps_77"]);
    assert!(d > 1e-2, "timestep had no effect ({d})");
}

fn sd1_config() -> serde_json::Value {
    let path = data().join("unet_sd1/config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("fixture {} missing ({e}): run tools/sd/make_unet_fixture.py", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn write_unet(dir: &Path, config: &serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string(config).unwrap()).unwrap();
    std::fs::copy(
        data().join("unet_sd1/diffusion_pytorch_model.safetensors"),
        dir.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
}

#[test]
fn configs_this_port_cannot_compute_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "sdxl",
            serde_json::json!({"addition_embed_type": "text_time", "addition_time_embed_dim": 256}),
            "Stable Diffusion XL",
        ),
        ("heads", serde_json::json!({"num_attention_heads": 8}), "num_attention_heads"),
        ("class", serde_json::json!({"class_embed_type": "timestep"}), "class-conditional"),
        ("lcm", serde_json::json!({"time_cond_proj_dim": 256}), "time_cond_proj_dim"),
        ("unknown", serde_json::json!({"magic_option": 1}), "magic_option"),
        ("only_cross", serde_json::json!({"only_cross_attention": true}), "only_cross_attention"),
        ("act", serde_json::json!({"act_fn": "gelu"}), "act_fn"),
        ("block", serde_json::json!({"down_block_types": ["DownBlock2D", "AttnDownBlock2D"]}), "AttnDownBlock2D"),
        ("mid", serde_json::json!({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}), "mid_block_type"),
        ("headlist", serde_json::json!({"attention_head_dim": [2, 4, 8]}), "3 entries for 2 blocks"),
        ("groups", serde_json::json!({"norm_num_groups": 3}), "norm_num_groups"),
        ("xdims", serde_json::json!({"cross_attention_dim": [32, 64]}), "differs between blocks"),
        ("xdims_len", serde_json::json!({"cross_attention_dim": [32, 32, 32]}), "3 entries for 2 blocks"),
        // The SD 1 weights have 1×1-conv projections: a config claiming Linear ones does not fit.
        ("linear", serde_json::json!({"use_linear_projection": true}), "weights do not fit"),
        // Weights of a transformer block the config does not have: refused, not ignored.
        ("more", serde_json::json!({"transformer_layers_per_block": 2}), "weights do not fit"),
        ("fewer", serde_json::json!({"down_block_types": ["DownBlock2D", "DownBlock2D"]}), "not used"),
    ];
    for (name, patch, needle) in cases {
        let mut config = sd1_config();
        for (k, v) in patch.as_object().unwrap() {
            config[k] = v.clone();
        }
        let dir = tmp.path().join(name);
        write_unet(&dir, &config);
        let msg = match UNet2DConditionModel::load(&dir, &Device::Cpu) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    let dir = tmp.path().join("garbage");
    write_unet(&dir, &sd1_config());
    std::fs::write(dir.join("config.json"), "{ nope").unwrap();
    assert!(matches!(UNet2DConditionModel::load(&dir, &Device::Cpu), Err(Error::Json { .. })));
    let dir = tmp.path().join("noweights");
    write_unet(&dir, &sd1_config());
    std::fs::remove_file(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    let msg = UNet2DConditionModel::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
    // A weights file whose header promises more bytes than the file holds.
    let dir = tmp.path().join("truncated");
    write_unet(&dir, &sd1_config());
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let msg = UNet2DConditionModel::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
    // A config that parses is also usable on its own.
    let config: Config = serde_json::from_value(sd1_config()).unwrap();
    assert_eq!(config.heads().unwrap(), [8, 8]);
}

#[test]
fn inputs_the_unet_cannot_take_are_refused() {
    let unet = model("sd1");
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    let text = zeros(&[2, 77, 32]);
    let cases = [
        (zeros(&[2, 4, 31, 32]), text.clone()),        // not a multiple of 2
        (zeros(&[2, 3, 32, 32]), text.clone()),        // wrong latent channels
        (zeros(&[4, 32, 32]), text.clone()),           // not a batch
        (zeros(&[2, 4, 32, 32]), zeros(&[2, 77, 16])), // text width ≠ cross_attention_dim
        (zeros(&[2, 4, 32, 32]), zeros(&[1, 77, 32])), // text batch ≠ latent batch
        (zeros(&[2, 4, 32, 32]), zeros(&[2, 0, 32])),  // no tokens
    ];
    for (x, text) in &cases {
        let r = unet.forward(x, &[10.0, 20.0], text);
        assert!(matches!(r, Err(Error::Input(_))), "{:?} {:?}", x.dims(), text.dims());
    }
    let x = zeros(&[2, 4, 32, 32]);
    assert!(matches!(unet.forward(&x, &[1.0, 2.0, 3.0], &text), Err(Error::Input(_))));
    assert!(matches!(unet.forward(&x, &[f64::NAN], &text), Err(Error::Input(_))));
}
