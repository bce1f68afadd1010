//! The three component loaders (`UNet2DConditionModel`, `AutoencoderKL`, `ClipTextModel`) read
//! their weights through `diffusion::sd::weights`: sharded files with an index and the `.fp16`
//! variant give the outputs diffusers / transformers gave for the same weights (the reference
//! tensors of `tests/data/sd/*`, made by the scripts in `tools/sd/`), at the tolerances of the
//! single-file parity tests (`tests/sd_unet.rs`, `tests/sd_vae.rs`, `tests/sd_clip_text.rs`).
//! Shards and f16 copies are written here from the f32 fixtures, the way `save_pretrained`
//! names them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use melo::diffusion::sd::clip_text::ClipTextModel;
use melo::diffusion::sd::unet_cond::UNet2DConditionModel;
use melo::diffusion::sd::vae::{AutoencoderKL, Config as VaeConfig};
use melo::diffusion::sd::weights::Variant;

fn data(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sd").join(name);
    assert!(dir.is_dir(), "fixture {} missing: run the tools/sd/make_*_fixture.py script", dir.display());
    dir
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("fixture {} unreadable ({e})", path.display()))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Writes `tensors` as `n` shards plus the index, named as diffusers / transformers name them
/// (`<stem>[.fp16]-0000i-of-0000n.safetensors`, `<stem>.safetensors.index[.fp16].json`).
fn write_shards(dir: &Path, stem: &str, variant: Variant, tensors: &HashMap<String, Tensor>, n: usize) {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let infix = if variant == Variant::Fp16 { ".fp16" } else { "" };
    let mut weight_map = serde_json::Map::new();
    for i in 0..n {
        let shard = format!("{stem}{infix}-{:05}-of-{n:05}.safetensors", i + 1);
        let part: HashMap<String, Tensor> = names
            .iter()
            .enumerate()
            .filter(|(j, _)| j % n == i)
            .map(|(_, name)| ((*name).clone(), tensors[*name].clone()))
            .collect();
        for name in part.keys() {
            weight_map.insert(name.clone(), shard.clone().into());
        }
        candle_core::safetensors::save(&part, dir.join(&shard)).unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join(variant.index_name(stem)), index.to_string()).unwrap();
}

fn to_f16(tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors.iter().map(|(k, t)| (k.clone(), t.to_dtype(DType::F16).unwrap())).collect()
}

#[test]
fn sharded_unet_matches_diffusers_and_the_single_file() {
    let src = data("unet_sd2");
    let r = load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sd/unet_sd2_ref.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    write_shards(
        tmp.path(),
        "diffusion_pytorch_model",
        Variant::Default,
        &load(&src.join("diffusion_pytorch_model.safetensors")),
        3,
    );
    let sharded = UNet2DConditionModel::load(tmp.path(), &Device::Cpu).unwrap();
    let single = UNet2DConditionModel::load(&src, &Device::Cpu).unwrap();
    assert_eq!(sharded.num_params(), 83_188);
    let t = r["t"].to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let out = sharded.forward(&r["x"], &t, &r["enc77"]).unwrap();
    let d = max_abs_diff(&out, &r["eps_77"]);
    assert!(d <= 2e-5, "sharded UNet vs diffusers: max |diff| {d}");
    assert_eq!(max_abs_diff(&out, &single.forward(&r["x"], &t, &r["enc77"]).unwrap()), 0.0);
}

#[test]
fn fp16_only_vae_is_read_widened_and_the_default_variant_is_refused() {
    let src = data("vae_sd2");
    let r = load(&src.join("reference.safetensors"));
    let f16 = to_f16(&load(&src.join("diffusion_pytorch_model.safetensors")));
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    candle_core::safetensors::save(&f16, tmp.path().join("diffusion_pytorch_model.fp16.safetensors")).unwrap();
    // A folder saved with variant="fp16" alone: `load` takes that copy.
    let vae = AutoencoderKL::load(tmp.path(), &Device::Cpu).unwrap();
    let mean = vae.encode(&r["x"]).unwrap().mean;
    // The same f16 values widened by candle from an in-memory map give the same posterior.
    let config: VaeConfig = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let in_memory = AutoencoderKL::from_tensors(config, f16, &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&mean, &in_memory.encode(&r["x"]).unwrap().mean), 0.0);
    // f16 rounding of the weights moves diffusers' f32 posterior mean, but only by f16 rounding.
    let d = max_abs_diff(&mean, &r["mean"]);
    assert!(d > 0.0 && d < 1e-2, "fp16 VAE vs diffusers f32: max |diff| {d}");
    let e = AutoencoderKL::load_variant(tmp.path(), Variant::Default, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("only the fp16 variant"), "{e}");
}

#[test]
fn text_encoder_reads_the_full_copy_by_default_and_sharded_fp16_on_request() {
    let src = data("clip_text_sd2");
    let r = load(&src.join("reference.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    write_shards(tmp.path(), "model", Variant::Fp16, &load(&src.join("model.fp16.safetensors")), 2);
    let ids = &r["random.ids"];
    let full = ClipTextModel::load(tmp.path(), &Device::Cpu).unwrap().forward(ids, None).unwrap();
    let d = max_abs_diff(&full.last_hidden_state, &r["random.last_hidden_state"]);
    assert!(d < 2e-5, "f32 copy vs transformers: max |diff| {d}");
    let half = ClipTextModel::load_variant(tmp.path(), Variant::Fp16, &Device::Cpu).unwrap();
    let half = half.forward(&r["f16.random.ids"], None).unwrap();
    let d = max_abs_diff(&half.last_hidden_state, &r["f16.random.last_hidden_state"]);
    assert!(d < 2e-5, "sharded fp16 copy vs transformers on the fp16 file: max |diff| {d}");
    assert!(max_abs_diff(&half.last_hidden_state, &full.last_hidden_state) > 0.0, "the fp16 shards were not read");
}
