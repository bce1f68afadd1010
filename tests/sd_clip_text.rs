//! The text encoder of SD pipelines (`CLIPTextModel`) against transformers 5.25.
//!
//! `tests/data/sd/clip_text_sd{1,2}/` are tiny random text encoders with diffusers' own test
//! configs (SD 1: quick_gelu, weights in the transformers 4.x `text_model.` layout with the old
//! `position_ids` buffer; SD 2: exact erf gelu, the transformers 5 layout), each with its fp16
//! variant and `reference.safetensors`: the outputs transformers gave for four id batches
//! (random ids; EOS in the middle then padding; the same with an attention mask; a model with
//! `eos_token_id` 9, which switches transformers to its other pooling rule), and for the fp16
//! weights run in float32. Made by `tools/sd/make_clip_text_fixture.py`.
//!
//! Tolerance: 2e-5 absolute on float32 outputs of size ~1 (layer-normed), i.e. float32 rounding
//! through 5 layers; measured max errors are printed by each test (about 2e-6 here).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use melo::diffusion::sd::clip_text::{Activation, ClipTextModel, Config, WEIGHTS_FILE, WEIGHTS_FILE_FP16};

const TOL: f32 = 2e-5;

fn folder(name: &str) -> PathBuf {
    let dir = common::repo().join("tests/data/sd").join(name);
    for f in ["config.json", WEIGHTS_FILE, WEIGHTS_FILE_FP16, "reference.safetensors"] {
        assert!(
            dir.join(f).is_file(),
            "{} is missing (made by tools/sd/make_clip_text_fixture.py)",
            dir.join(f).display()
        );
    }
    dir
}

fn reference(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Runs `case` (`ids`, optional `mask`) and compares every output the reference holds for it;
/// returns the largest difference.
fn check_case(model: &ClipTextModel, r: &HashMap<String, Tensor>, case: &str, tol: f32) -> f32 {
    let get = |k: &str| r.get(&format!("{case}.{k}"));
    let ids = get("ids").unwrap_or_else(|| panic!("reference has no {case}.ids"));
    assert_eq!(ids.dtype(), DType::I64);
    let out = model.forward(ids, get("mask")).unwrap();
    let n = out.hidden_states.len();
    assert_eq!(n, model.config().num_hidden_layers + 1);
    let mut worst = 0f32;
    let mut compare = |what: &str, got: &Tensor| {
        if let Some(want) = get(what) {
            let d = max_abs_diff(got, want);
            assert!(d < tol, "{case}.{what}: max |diff| {d:e} >= {tol:e}");
            worst = worst.max(d);
        }
    };
    compare("last_hidden_state", &out.last_hidden_state);
    compare("penultimate", &out.hidden_states[n - 2]);
    compare("embeddings", &out.hidden_states[0]);
    compare("pooled", &out.pooled);
    if get("clip_skip1").is_some() {
        compare("clip_skip1", &model.prompt_embeds(ids, 1).unwrap());
        let plain = model.prompt_embeds(ids, 0).unwrap();
        assert_eq!(max_abs_diff(&plain, &out.last_hidden_state), 0.0);
    }
    assert!(get("last_hidden_state").is_some() && get("pooled").is_some(), "{case}: incomplete reference");
    worst
}

fn check_fixture(name: &str) {
    let dir = folder(name);
    let r = reference(&dir);
    let model = ClipTextModel::load(&dir, &Device::Cpu).unwrap();
    let mut worst = 0f32;
    for case in ["random", "eos_mid", "masked"] {
        worst = worst.max(check_case(&model, &r, case, TOL));
    }
    // Same weights, eos_token_id 9: transformers pools at the first 9 (or position 0), not at
    // the largest id.
    let mut config = Config::from_file(&dir.join("config.json")).unwrap();
    config.eos_token_id = 9.into();
    let tensors = candle_core::safetensors::load(dir.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    let eos9 = ClipTextModel::from_tensors(config, tensors, &Device::Cpu).unwrap();
    worst = worst.max(check_case(&eos9, &r, "eos9", TOL));
    println!("{name}: max |diff| vs transformers {worst:e} (tolerance {TOL:e})");
}

#[test]
fn sd1_text_encoder_matches_transformers() {
    check_fixture("clip_text_sd1");
}

#[test]
fn sd2_text_encoder_matches_transformers() {
    check_fixture("clip_text_sd2");
}

/// fp16 weights are widened to float32 exactly, so the encoder must match transformers' model
/// loaded from the same fp16 file and run in float32 at the float32 tolerance; against the f32
/// weights it differs by f16 rounding (which also shows the f16 file is really the one read).
fn check_fp16(name: &str) {
    let dir = folder(name);
    let r = reference(&dir);
    let weights = dir.join(WEIGHTS_FILE_FP16);
    let types: Vec<DType> = candle_core::safetensors::load(&weights, &Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("position_ids"))
        .map(|(_, t)| t.dtype())
        .collect();
    assert!(types.iter().all(|&t| t == DType::F16), "{}: not all f16", weights.display());
    let model = ClipTextModel::load_files(&dir.join("config.json"), &weights, &Device::Cpu).unwrap();
    let mut worst = 0f32;
    for case in ["random", "eos_mid"] {
        worst = worst.max(check_case(&model, &r, &format!("f16.{case}"), TOL));
        let ids = &r[&format!("{case}.ids")];
        let vs_f32 = max_abs_diff(
            &model.forward(ids, None).unwrap().last_hidden_state,
            &r[&format!("{case}.last_hidden_state")],
        );
        assert!(vs_f32 > 1e-4 && vs_f32 < 2e-2, "{case}: fp16 weights vs f32 weights differ by {vs_f32:e}");
    }
    println!("{name} fp16: max |diff| vs transformers (fp16 weights, f32 compute) {worst:e} (tolerance {TOL:e})");
}

#[test]
fn sd1_fp16_weights_match_transformers() {
    check_fp16("clip_text_sd1");
}

#[test]
fn sd2_fp16_weights_match_transformers() {
    check_fp16("clip_text_sd2");
}

#[test]
fn fixtures_cover_both_weight_layouts_and_activations() {
    let names = |name: &str| {
        let t = candle_core::safetensors::load(folder(name).join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        t.into_keys().collect::<Vec<_>>()
    };
    let sd1 = names("clip_text_sd1");
    assert!(sd1.iter().all(|k| k.starts_with("text_model.")));
    assert!(sd1.iter().any(|k| k == "text_model.embeddings.position_ids"));
    let sd2 = names("clip_text_sd2");
    assert!(sd2.iter().all(|k| !k.starts_with("text_model.") && !k.ends_with("position_ids")));
    let act = |name: &str| Config::from_file(&folder(name).join("config.json")).unwrap().hidden_act;
    assert_eq!((act("clip_text_sd1").as_str(), act("clip_text_sd2").as_str()), ("quick_gelu", "gelu"));
}

/// The pooling rules on real-vocabulary rows (ids beyond the tiny fixture's vocabulary):
/// with eos_token_id 2 the first largest id (SD 1 pads with `<|endoftext|>` 49407, so the
/// first of them), otherwise the first eos_token_id or position 0.
#[test]
fn pooled_position_rules_are_transformers() {
    let dir = folder("clip_text_sd1");
    let legacy = ClipTextModel::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(legacy.config().eos_token_id, 2);
    let sd1_row = vec![49406, 320, 1125, 49407, 49407, 49407];
    let sd2_row = vec![49406, 320, 1125, 49407, 0, 0];
    assert_eq!(legacy.pooled_positions(&[sd1_row.clone(), sd2_row.clone()]), vec![3, 3]);
    let mut config = Config::from_file(&dir.join("config.json")).unwrap();
    config.eos_token_id = 320.into();
    let tensors = candle_core::safetensors::load(dir.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    let newer = ClipTextModel::from_tensors(config, tensors, &Device::Cpu).unwrap();
    assert_eq!(newer.pooled_positions(&[sd1_row, vec![5, 6, 320, 320], vec![5, 6, 7]]), vec![1, 2, 0]);
}

// ---- bad input ----------------------------------------------------------------------------

/// A copy of the SD 1 fixture folder whose `config.json` is edited by `edit`.
fn edited_folder(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = folder("clip_text_sd1");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join(WEIGHTS_FILE), dir.path().join(WEIGHTS_FILE)).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    let e = ClipTextModel::load(dir, &Device::Cpu).expect_err("must be refused").to_string();
    assert!(!e.contains('\n'), "error is not one line: {e}");
    e
}

#[test]
fn refuses_sdxl_encoder_other_activation_and_mismatched_weights() {
    let e =
        load_error(edited_folder(|c| c["architectures"] = serde_json::json!(["CLIPTextModelWithProjection"])).path());
    assert!(e.contains("CLIPTextModelWithProjection") && e.contains("SDXL"), "{e}");
    let e = load_error(edited_folder(|c| c["hidden_act"] = "gelu_new".into()).path());
    assert!(e.contains("hidden_act 'gelu_new'"), "{e}");
    let e = load_error(edited_folder(|c| c["num_hidden_layers"] = 4.into()).path());
    assert!(e.contains("not used") && e.contains("encoder.layers.4"), "{e}");
    let e = load_error(edited_folder(|c| c["num_hidden_layers"] = 6.into()).path());
    assert!(e.contains("encoder.layers.5"), "{e}");
    let e = load_error(edited_folder(|c| c["hidden_size"] = 64.into()).path());
    assert!(e.contains("do not fit config.json"), "{e}");
    let e = load_error(edited_folder(|c| c["num_attention_heads"] = 5.into()).path());
    assert!(e.contains("not divisible"), "{e}");
}

#[test]
fn refuses_missing_and_broken_files() {
    let empty = tempfile::tempdir().unwrap();
    let e = load_error(empty.path());
    assert!(e.contains(WEIGHTS_FILE), "{e}");
    let dir = edited_folder(|_| {});
    std::fs::write(dir.path().join(WEIGHTS_FILE), b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("safetensors"), "{e}");
    let dir = edited_folder(|_| {});
    std::fs::write(dir.path().join("config.json"), "{").unwrap();
    let e = load_error(dir.path());
    assert!(e.contains("CLIPTextModel config"), "{e}");
}

#[test]
fn refuses_bad_ids_and_masks() {
    let model = ClipTextModel::load(&folder("clip_text_sd1"), &Device::Cpu).unwrap();
    let dev = Device::Cpu;
    let too_big = Tensor::new(&[[0u32, 1000, 2]], &dev).unwrap();
    let e = model.forward(&too_big, None).unwrap_err().to_string();
    assert!(e.contains("token id 1000"), "{e}");
    let negative = Tensor::new(&[[0i64, -1, 2]], &dev).unwrap();
    assert!(model.forward(&negative, None).unwrap_err().to_string().contains("token id -1"));
    let too_long = Tensor::zeros((1, 78), DType::U32, &dev).unwrap();
    assert!(model.forward(&too_long, None).unwrap_err().to_string().contains("at most 77"));
    let flat = Tensor::zeros(5, DType::U32, &dev).unwrap();
    assert!(model.forward(&flat, None).is_err());
    let floats = Tensor::zeros((1, 5), DType::F32, &dev).unwrap();
    assert!(model.forward(&floats, None).unwrap_err().to_string().contains("integers"));
    let ids = Tensor::new(&[[0u32, 5, 2, 2]], &dev).unwrap();
    let left_pad = Tensor::new(&[[0u32, 1, 1, 1]], &dev).unwrap();
    assert!(model.forward(&ids, Some(&left_pad)).unwrap_err().to_string().contains("first token"));
    let not01 = Tensor::new(&[[1u32, 2, 1, 0]], &dev).unwrap();
    assert!(model.forward(&ids, Some(&not01)).unwrap_err().to_string().contains("0 or 1"));
    let wrong_shape = Tensor::new(&[[1u32, 1, 1]], &dev).unwrap();
    assert!(model.forward(&ids, Some(&wrong_shape)).unwrap_err().to_string().contains("shape"));
    assert!(model.prompt_embeds(&ids, 6).is_err());
    // A shorter sequence than 77 works (positions 0..L), and batch rows are independent.
    let out = model.forward(&ids, None).unwrap();
    assert_eq!(out.last_hidden_state.dims(), &[1, 4, 32]);
}

fn parse_config(json: &str) -> Result<Config, String> {
    let c: Config = serde_json::from_str(json).unwrap();
    c.validate().map(|_| c).map_err(|e| e.to_string())
}

#[test]
fn config_refuses_other_classes_activations_and_contradictions() {
    let e = parse_config(r#"{"architectures": ["CLIPTextModelWithProjection"]}"#).unwrap_err();
    assert!(e.contains("SDXL"), "{e}");
    let e = parse_config(r#"{"architectures": ["CLIPModel"]}"#).unwrap_err();
    assert!(e.contains("CLIPModel"), "{e}");
    let e = parse_config(r#"{"hidden_act": "gelu_new"}"#).unwrap_err();
    assert!(e.contains("hidden_act 'gelu_new'"), "{e}");
    let e = parse_config(r#"{"eos_token_id": [2, 3]}"#).unwrap_err();
    assert!(e.contains("eos_token_id"), "{e}");
    let e = parse_config(r#"{"eos_token_id": null}"#).unwrap_err();
    assert!(e.contains("eos_token_id"), "{e}");
    let e = parse_config(r#"{"hidden_size": 30, "num_attention_heads": 4}"#).unwrap_err();
    assert!(e.contains("not divisible"), "{e}");
    let e = parse_config(r#"{"model_type": "clip_vision_model"}"#).unwrap_err();
    assert!(e.contains("model_type"), "{e}");
    let e = parse_config(r#"{"layer_norm_eps": 0}"#).unwrap_err();
    assert!(e.contains("layer_norm_eps"), "{e}");
}

/// A config that leaves fields out gets transformers' `CLIPTextConfig` defaults (ViT-B/32 text
/// tower, quick_gelu, eos 49407), as transformers would load it.
#[test]
fn config_defaults_are_transformers_clip_text_config() {
    let c = parse_config("{}").unwrap();
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads),
        (49408, 512, 2048, 12, 8)
    );
    assert_eq!((c.max_position_embeddings, c.layer_norm_eps), (77, 1e-5));
    assert_eq!(c.activation().unwrap(), Activation::QuickGelu);
    assert_eq!(c.eos_token_id().unwrap(), 49407);
}
