//! The Stable Diffusion VAE (`AutoencoderKL`, src/diffusion/sd/vae.rs) against diffusers 0.42.1
//! (PyTorch 2.15, CPU, float32). `tests/data/sd/vae_{sd1,sd2,plain}/` are `vae/` folders as
//! `save_pretrained` writes them, each with `reference.safetensors` (inputs and diffusers'
//! outputs), made by `tools/sd/make_vae_fixture.py`; `tests/data/sd/README_vae.md` lists what
//! each variant exercises.
//!
//! Criterion: max |ours − diffusers| / max(1, |diffusers|) ≤ 3e-5, i.e. the absolute error on
//! outputs of magnitude ≤ 1 and the relative error above (outputs reach ~5, and posterior
//! samples e^10 · noise where the log-variance is clamped at 20). Measured: ≤ 4.7e-6 (each
//! test's comment has its own), a few float32 ulps of values ~5 summed in another order.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use melo::diffusion::sd::vae::{AutoencoderKL, Config, SampleSize};
use melo::diffusion::Error;

const TOLERANCE: f32 = 3e-5;

fn folder(variant: &str) -> PathBuf {
    common::repo().join("tests/data/sd").join(format!("vae_{variant}"))
}

fn reference(variant: &str) -> HashMap<String, Tensor> {
    let path = folder(variant).join("reference.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e} (made by tools/sd/make_vae_fixture.py)", path.display()))
}

fn vae(variant: &str) -> AutoencoderKL {
    AutoencoderKL::load(&folder(variant), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e} (fixture made by tools/sd/make_vae_fixture.py)"))
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// max |a − b| / max(1, |b|): the absolute error for values up to 1, relative above.
fn max_err(what: &str, ours: &Tensor, theirs: &Tensor) -> f32 {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shape");
    let (a, b) = (values(ours), values(theirs));
    let e = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0.0, f32::max);
    assert!(e.is_finite(), "{what}: non-finite values");
    e
}

/// Runs every comparison of one fixture and returns the largest error seen.
fn check_variant(variant: &str) -> f32 {
    let r = reference(variant);
    let vae = vae(variant);
    let mut worst = 0.0f32;
    let mut check = |what: &str, ours: &Tensor, theirs: &Tensor| {
        let e = max_err(&format!("{variant} {what}"), ours, theirs);
        assert!(e <= TOLERANCE, "{variant} {what}: max error {e} > {TOLERANCE}");
        worst = worst.max(e);
    };
    for prefix in ["", "wide_"] {
        let x = &r[if prefix.is_empty() { "x" } else { "x_wide" }];
        let post = vae.encode(x).unwrap();
        check(&format!("{prefix}mean"), &post.mean, &r[&format!("{prefix}mean")]);
        check(&format!("{prefix}logvar"), &post.logvar, &r[&format!("{prefix}logvar")]);
        let sample = post.sample(&r[&format!("{prefix}noise")]).unwrap();
        check(&format!("{prefix}sample"), &sample, &r[&format!("{prefix}sample")]);
        let z = &r[if prefix.is_empty() { "z" } else { "wide_z" }];
        check(&format!("{prefix}decoded"), &vae.decode(z).unwrap(), &r[&format!("{prefix}decoded")]);
    }
    let odd = vae.encode(&r["x_odd"]).unwrap();
    check("odd-size mean", &odd.mean, &r["odd_mean"]);
    check("odd-size logvar", &odd.logvar, &r["odd_logvar"]);
    check("latents", &vae.encode_latents(&r["x"], None).unwrap(), &r["latents"]);
    let sf = vae.scaling_factor();
    let sampled = vae.encode_latents(&r["x"], Some(&r["noise"])).unwrap();
    check("sampled latents", &sampled, &(&r["sample"] * sf).unwrap());
    check("latents_decoded", &vae.decode_latents(&r["latents"]).unwrap(), &r["latents_decoded"]);
    worst
}

#[test]
fn sd1_dummy_vae_matches_diffusers() {
    // diffusers' StableDiffusionPipeline test VAE: 2 blocks [4, 8], 2 groups, one ResNet each.
    // Measured max error 3.9e-6.
    let vae = vae("sd1");
    assert_eq!(vae.num_params(), 11_827);
    assert_eq!(vae.config().downsample_factor(), 2);
    assert_eq!(vae.scaling_factor(), 0.18215, "the diffusers default, the file leaves it at that");
    let e = check_variant("sd1");
    eprintln!("sd1 max error {e:e}");
}

#[test]
fn sd2_style_vae_matches_diffusers_including_logvar_clamp() {
    // 3 blocks [8, 8, 16], 4 groups, two ResNets per block (three in the decoder), sample_size
    // 64, scaling_factor 0.13025. Measured max error 4.7e-6.
    let vae = vae("sd2");
    assert_eq!(vae.num_params(), 62_687);
    assert_eq!(vae.config().downsample_factor(), 4);
    assert_eq!(vae.config().sample_size, SampleSize::Square(64));
    assert_eq!(vae.scaling_factor(), 0.13025);
    let e = check_variant("sd2");
    eprintln!("sd2 max error {e:e}");
    // The fixture pushes the first log-variance channel above 20 and the second below -30:
    // both must sit exactly at diffusers' clamp bounds.
    let post = vae.encode(&reference("sd2")["x"]).unwrap();
    let lv = |c: usize| values(&post.logvar.narrow(1, c, 1).unwrap());
    assert!(lv(0).iter().all(|&v| v == 20.0), "logvar channel 0 clamps at 20");
    assert!(lv(1).iter().all(|&v| v == -30.0), "logvar channel 1 clamps at -30");
}

#[test]
fn vae_without_quant_convs_and_mid_attention_matches_diffusers() {
    // use_quant_conv / use_post_quant_conv false, mid_block_add_attention false.
    // Measured max error 2.9e-6.
    let vae = vae("plain");
    assert_eq!(vae.num_params(), 11_127);
    let e = check_variant("plain");
    eprintln!("plain max error {e:e}");
}

#[test]
fn batch_items_are_independent() {
    let r = reference("sd1");
    let vae = vae("sd1");
    let both = vae.encode(&r["x"]).unwrap();
    let second = vae.encode(&r["x"].narrow(0, 1, 1).unwrap()).unwrap();
    assert!(max_err("second image", &second.mean, &both.mean.narrow(0, 1, 1).unwrap()) < 1e-6);
}

/// A copy of a fixture folder whose config.json has `key` set to `value`.
fn edited(variant: &str, key: &str, value: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = folder(variant);
    let text = std::fs::read_to_string(src.join("config.json"))
        .unwrap_or_else(|e| panic!("{}: {e} (made by tools/sd/make_vae_fixture.py)", src.display()));
    let mut cfg: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    cfg.insert(key.into(), value);
    std::fs::write(dir.path().join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    std::fs::copy(
        src.join("diffusion_pytorch_model.safetensors"),
        dir.path().join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    dir
}

fn load_err(dir: &Path) -> Error {
    match AutoencoderKL::load(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded, expected a refusal", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn unsupported_configs_are_refused_with_the_reason() {
    use serde_json::json;
    let three_down = json!(["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"]);
    let cases = [
        ("act_fn 'gelu'", "act_fn", json!("gelu")),
        (
            "down block type 'AttnDownEncoderBlock2D'",
            "down_block_types",
            json!(["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]),
        ),
        ("up block type 'AttnUpDecoderBlock2D'", "up_block_types", json!(["UpDecoderBlock2D", "AttnUpDecoderBlock2D"])),
        ("shift_factor", "shift_factor", json!(0.0609)),
        ("latents_mean", "latents_mean", json!([0.0, 0.0, 0.0, 0.0])),
        ("config key 'norm_type'", "norm_type", json!("spatial")),
        ("class 'AutoencoderTiny'", "_class_name", json!("AutoencoderTiny")),
        ("does not divide", "norm_num_groups", json!(3)),
        ("3 down blocks and 2 up blocks", "down_block_types", three_down),
        ("scaling_factor", "scaling_factor", json!(0.0)),
    ];
    for (expected, key, value) in cases {
        let dir = edited("sd1", key, value);
        let msg = load_err(dir.path()).to_string();
        assert!(msg.contains(expected), "expected '{expected}' in: {msg}");
        assert!(!msg.contains('\n'), "one-line reason: {msg}");
    }
}

#[test]
fn weights_that_do_not_fit_the_config_are_refused() {
    use serde_json::json;
    // The config says no quant convs / no mid attention, the weights have them: not silently ignored.
    let dir = edited("sd1", "use_quant_conv", json!(false));
    let msg = load_err(dir.path()).to_string();
    assert!(msg.contains("not used") && msg.contains("quant_conv"), "{msg}");
    let dir = edited("sd1", "mid_block_add_attention", json!(false));
    assert!(load_err(dir.path()).to_string().contains("attentions.0"));
    // The config wants weights the file lacks.
    let dir = edited("plain", "use_quant_conv", json!(true));
    let msg = load_err(dir.path()).to_string();
    assert!(matches!(load_err(dir.path()), Error::Weights { .. }) && msg.contains("quant_conv"), "{msg}");
    // Wrong widths.
    let dir = edited("sd1", "block_out_channels", json!([4, 16]));
    assert!(matches!(load_err(dir.path()), Error::Weights { .. }));
    // No weights file at all.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(folder("sd1").join("config.json"), dir.path().join("config.json")).unwrap();
    let msg = load_err(dir.path()).to_string();
    assert!(msg.contains("diffusion_pytorch_model.safetensors"), "{msg}");
}

#[test]
fn missing_keys_take_diffusers_defaults() {
    let cfg: Config = serde_json::from_str(r#"{"_class_name": "AutoencoderKL", "sample_size": [64, 96]}"#).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.block_out_channels, vec![64]);
    assert_eq!(cfg.layers_per_block, 1);
    assert_eq!(cfg.norm_num_groups, 32);
    assert_eq!(cfg.latent_channels, 4);
    assert_eq!(cfg.scaling_factor, 0.18215);
    assert!(cfg.use_quant_conv && cfg.use_post_quant_conv && cfg.mid_block_add_attention && cfg.force_upcast);
    assert_eq!(cfg.sample_size.height_width(), (64, 96));
}

fn err<T>(r: Result<T, Error>) -> String {
    match r {
        Ok(_) => panic!("bad input accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_inputs_get_an_error_not_a_panic() {
    let vae = vae("sd1");
    let dev = Device::Cpu;
    let four = Tensor::zeros((1, 4, 8, 8), DType::F32, &dev).unwrap();
    assert!(err(vae.encode(&four)).contains("3 channel"));
    let three_d = Tensor::zeros((3, 8, 8), DType::F32, &dev).unwrap();
    assert!(err(vae.encode(&three_d)).contains("[B, C, H, W]"));
    let empty = Tensor::zeros((0, 3, 8, 8), DType::F32, &dev).unwrap();
    assert!(err(vae.encode(&empty)).contains("empty"));
    let tiny = Tensor::zeros((1, 3, 1, 8), DType::F32, &dev).unwrap();
    assert!(err(vae.encode(&tiny)).contains("too small"));
    let rgb = Tensor::zeros((1, 3, 8, 8), DType::F32, &dev).unwrap();
    assert!(err(vae.decode(&rgb)).contains("4 channel"));
    let post = vae.encode(&rgb).unwrap();
    let wrong_noise = Tensor::zeros((1, 4, 2, 2), DType::F32, &dev).unwrap();
    assert!(err(post.sample(&wrong_noise)).contains("noise"));
    // A resolution whose mid-block attention would need more than 4 GiB of scores is refused
    // before any computation (the check looks at the shape only).
    let huge = Tensor::zeros((1, 4, 256, 256), DType::F32, &dev).unwrap();
    assert!(err(vae.decode(&huge)).contains("too large"));
}

#[test]
fn f16_weights_are_widened_to_f32_at_load() {
    // An fp16 checkpoint's values, widened once at load: the VAE built from f16 tensors must
    // equal the one built from the same values already in f32 (computation stays f32), and stay
    // near diffusers' f32 output (f16 rounding of the weights only, ~1e-3 relative).
    let r = reference("sd1");
    let path = folder("sd1").join("diffusion_pytorch_model.safetensors");
    let f32_tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let half: HashMap<String, Tensor> =
        f32_tensors.iter().map(|(k, v)| (k.clone(), v.to_dtype(DType::F16).unwrap())).collect();
    let widened: HashMap<String, Tensor> =
        half.iter().map(|(k, v)| (k.clone(), v.to_dtype(DType::F32).unwrap())).collect();
    let config = Config::from_file(&folder("sd1").join("config.json")).unwrap();
    let from_half = AutoencoderKL::from_tensors(config.clone(), half, &Device::Cpu).unwrap();
    let from_widened = AutoencoderKL::from_tensors(config, widened, &Device::Cpu).unwrap();
    let a = from_half.decode(&r["z"]).unwrap();
    assert_eq!(values(&a), values(&from_widened.decode(&r["z"]).unwrap()));
    assert_eq!(a.dtype(), DType::F32);
    let e = max_err("f16 decode", &a, &r["decoded"]);
    assert!(e > 0.0 && e < 2e-2, "f16-rounded weights: error {e}");
}
