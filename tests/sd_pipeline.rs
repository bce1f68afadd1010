//! Reading a Stable Diffusion pipeline folder before any model is built: the weights of one
//! component (`diffusion::sd::weights`: single files, the fp16 variant, shards, headers that
//! lie) and the folder's `model_index.json` with its components (`diffusion::sd::pipeline`),
//! on small folders written here in temporary directories. Every refusal is one line that
//! names what was found.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use melo::diffusion::scheduler::{PredictionType, SchedulerKind};
use melo::diffusion::sd::pipeline::{self, PipelineClass, PipelineKind};
use melo::diffusion::sd::weights::{self, Variant, WeightFiles, Weights, DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS};
use melo::diffusion::Error;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn save(path: &Path, tensors: &[(&str, Tensor)]) {
    let map: HashMap<String, Tensor> = tensors.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

fn t(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn one_line(e: &Error) -> String {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "not one line: {msg}");
    msg
}

fn load_err(dir: &Path, stem: &str, variant: Variant) -> String {
    match Weights::load(dir, stem, variant) {
        Ok(w) => panic!("{}: accepted {w:?}", dir.display()),
        Err(e) => one_line(&e),
    }
}

// ---------------------------------------------------------------- weights

#[test]
fn single_file_weights_load_through_a_var_builder_and_unused_tensors_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = [1.0, -2.0, 3.5, 0.25, 8.0, -0.125];
    save(
        &tmp.path().join("diffusion_pytorch_model.safetensors"),
        &[("block.weight", t(&a, &[2, 3])), ("block.bias", t(&[4.0, 5.0], &[2]))],
    );
    let w = Weights::load(tmp.path(), DIFFUSERS_WEIGHTS, Variant::Default).unwrap();
    assert_eq!(w.len(), 2);
    assert_eq!(w.num_params(), 8);
    assert_eq!(w.names(), vec!["block.bias", "block.weight"]);
    let vb = w.var_builder(&Device::Cpu);
    let got = vb.pp("block").get((2, 3), "weight").unwrap();
    assert_eq!(got.dtype(), DType::F32);
    assert_eq!(values(&got), a);
    // A wrong shape is an error naming the tensor, not a silent reshape.
    let msg = vb.pp("block").get((3, 2), "weight").unwrap_err().to_string();
    assert!(msg.contains("block.weight") && msg.contains("shape"), "{msg}");
    // The bias was never asked for: the weights describe more than the architecture.
    let msg = one_line(&w.check_all_used("UNet2DConditionModel", |_| false).unwrap_err());
    assert!(msg.contains("block.bias") && msg.contains("not used"), "{msg}");
    w.check_all_used("UNet2DConditionModel", |n| n.ends_with(".bias")).unwrap();
    vb.pp("block").get(2, "bias").unwrap();
    w.check_all_used("UNet2DConditionModel", |_| false).unwrap();
}

#[test]
fn fp16_variant_is_chosen_explicitly_and_widened_to_f32() {
    let tmp = tempfile::tempdir().unwrap();
    // Values f16 holds exactly, so the widened tensor must equal them bit for bit.
    let half = [0.5f32, -1.25, 3.0, 1024.0];
    let h = t(&half, &[4]).to_dtype(DType::F16).unwrap();
    save(&tmp.path().join("model.fp16.safetensors"), &[("w", h)]);
    // Only the fp16 copy: the default variant is not silently replaced by it.
    let msg = load_err(tmp.path(), TRANSFORMERS_WEIGHTS, Variant::Default);
    assert!(msg.contains("model.safetensors") && msg.contains("fp16 variant"), "{msg}");
    let w = Weights::load(tmp.path(), TRANSFORMERS_WEIGHTS, Variant::Fp16).unwrap();
    assert_eq!(w.dtype_of("w"), Some(DType::F16));
    let got = w.var_builder(&Device::Cpu).get(4, "w").unwrap();
    assert_eq!(got.dtype(), DType::F32);
    assert_eq!(values(&got), half);
    // With both copies present each variant reads its own file.
    save(&tmp.path().join("model.safetensors"), &[("w", t(&[9.0, 9.0, 9.0, 9.0], &[4]))]);
    let w = Weights::load(tmp.path(), TRANSFORMERS_WEIGHTS, Variant::Default).unwrap();
    assert_eq!(values(&w.var_builder(&Device::Cpu).get(4, "w").unwrap()), [9.0; 4]);
    assert_eq!(weights::available_variants(tmp.path(), TRANSFORMERS_WEIGHTS), [Variant::Default, Variant::Fp16]);
}

#[test]
fn pickles_only_and_empty_folders_say_what_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = load_err(tmp.path(), DIFFUSERS_WEIGHTS, Variant::Default);
    assert!(msg.contains("no diffusion_pytorch_model.safetensors"), "{msg}");
    std::fs::write(tmp.path().join("diffusion_pytorch_model.bin"), b"PK").unwrap();
    let msg = load_err(tmp.path(), DIFFUSERS_WEIGHTS, Variant::Default);
    assert!(msg.contains(".bin") && msg.contains("not read"), "{msg}");
}

fn write_index(dir: &Path, name: &str, map: &[(&str, &str)]) {
    let weight_map: serde_json::Map<String, serde_json::Value> =
        map.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
    let json = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join(name), json.to_string()).unwrap();
}

const INDEX: &str = "diffusion_pytorch_model.safetensors.index.json";
const SHARD1: &str = "diffusion_pytorch_model-00001-of-00002.safetensors";
const SHARD2: &str = "diffusion_pytorch_model-00002-of-00002.safetensors";

fn sharded(dir: &Path) {
    save(&dir.join(SHARD1), &[("a", t(&[1.0, 2.0], &[2])), ("b", t(&[3.0], &[1]))]);
    save(&dir.join(SHARD2), &[("c", t(&[4.0, 5.0, 6.0], &[3]))]);
    write_index(dir, INDEX, &[("a", SHARD1), ("b", SHARD1), ("c", SHARD2)]);
}

#[test]
fn sharded_weights_load_from_their_index() {
    let tmp = tempfile::tempdir().unwrap();
    sharded(tmp.path());
    // A single file beside the index is ignored, as diffusers does.
    save(&tmp.path().join("diffusion_pytorch_model.safetensors"), &[("stale", t(&[0.0], &[1]))]);
    let files = weights::locate(tmp.path(), DIFFUSERS_WEIGHTS, Variant::Default).unwrap();
    assert!(matches!(&files, WeightFiles::Sharded { shards, .. } if shards.len() == 2), "{files:?}");
    let w = Weights::open(&files).unwrap();
    assert_eq!(w.names(), vec!["a", "b", "c"]);
    let vb = w.var_builder(&Device::Cpu);
    assert_eq!(values(&vb.get(3, "c").unwrap()), [4.0, 5.0, 6.0]);
    assert_eq!(values(&vb.get(2, "a").unwrap()), [1.0, 2.0]);
    // The fp16 index name is diffusers' `_add_variant` of the index name.
    std::fs::rename(tmp.path().join(INDEX), tmp.path().join("diffusion_pytorch_model.safetensors.index.fp16.json"))
        .unwrap();
    assert!(Weights::load(tmp.path(), DIFFUSERS_WEIGHTS, Variant::Fp16).is_ok());
}

/// Breaks a test folder in one way.
type Breaker = Box<dyn Fn(&Path)>;

#[test]
fn shard_indexes_that_lie_are_refused() {
    let cases: Vec<(&str, Breaker, &str)> = vec![
        ("missing shard", Box::new(|d: &Path| std::fs::remove_file(d.join(SHARD2)).unwrap()), SHARD2),
        (
            "parent path",
            Box::new(|d: &Path| write_index(d, INDEX, &[("a", "../outside.safetensors")])),
            "not a file name inside the folder",
        ),
        (
            "absolute path",
            Box::new(|d: &Path| write_index(d, INDEX, &[("a", "/etc/passwd.safetensors")])),
            "not a file name inside the folder",
        ),
        (
            "sub-folder",
            Box::new(|d: &Path| write_index(d, INDEX, &[("a", "sub/x.safetensors")])),
            "not a file name inside the folder",
        ),
        ("not safetensors", Box::new(|d: &Path| write_index(d, INDEX, &[("a", "weights.bin")])), "not a .safetensors"),
        (
            "duplicate tensor",
            Box::new(|d: &Path| save(&d.join(SHARD2), &[("c", t(&[4.0], &[1])), ("a", t(&[7.0, 7.0], &[2]))])),
            "tensor 'a' is also in",
        ),
        (
            "unlisted tensor",
            Box::new(|d: &Path| write_index(d, INDEX, &[("a", SHARD1), ("c", SHARD2)])),
            "does not list tensor 'b'",
        ),
        (
            "wrong shard",
            Box::new(|d: &Path| write_index(d, INDEX, &[("a", SHARD1), ("b", SHARD2), ("c", SHARD2)])),
            "places tensor 'b'",
        ),
        (
            "phantom tensor",
            Box::new(|d: &Path| write_index(d, INDEX, &[("a", SHARD1), ("b", SHARD1), ("c", SHARD2), ("z", SHARD2)])),
            "lists tensor 'z'",
        ),
        ("empty map", Box::new(|d: &Path| write_index(d, INDEX, &[])), "lists no tensors"),
        ("not JSON", Box::new(|d: &Path| std::fs::write(d.join(INDEX), "{").unwrap()), "shard index"),
    ];
    for (name, break_it, needle) in cases {
        let tmp = tempfile::tempdir().unwrap();
        sharded(tmp.path());
        break_it(tmp.path());
        let msg = load_err(tmp.path(), DIFFUSERS_WEIGHTS, Variant::Default);
        assert!(msg.contains(needle), "{name}: {msg}");
    }
}

/// A safetensors file from a header written by hand and `data_len` zero bytes.
fn raw_safetensors(header: &str, data_len: usize) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + data_len, 0);
    bytes
}

#[test]
fn safetensors_headers_that_lie_are_refused_in_one_line_and_left_unchanged() {
    let f32x2 = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut too_long = raw_safetensors(f32x2, 8);
    too_long[..8].copy_from_slice(&1_000_000u64.to_le_bytes());
    let mut huge = raw_safetensors(f32x2, 8);
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("header length beyond the file", too_long),
        ("header length of 2^64 - 1", huge),
        ("offsets beyond the data", raw_safetensors(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4096]}}"#, 8)),
        ("dtype size", raw_safetensors(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, 4)),
        (
            "overlapping tensors",
            raw_safetensors(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                12,
            ),
        ),
        (
            "shape overflow",
            raw_safetensors(r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#, 8),
        ),
        ("truncated data", raw_safetensors(f32x2, 5)),
        ("not JSON", raw_safetensors("{nope", 0)),
        ("empty file", Vec::new()),
    ];
    for (name, bytes) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("diffusion_pytorch_model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let msg = load_err(tmp.path(), DIFFUSERS_WEIGHTS, Variant::Default);
        assert!(
            msg.contains("not a valid safetensors file") && msg.contains("diffusion_pytorch_model"),
            "{name}: {msg}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name}: the file was modified");
    }
    // The same header with its 8 bytes is read. Its length (55) leaves the data unaligned in
    // the map, which the copy out of it must handle.
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = raw_safetensors(f32x2, 0);
    assert_ne!((bytes.len()) % 4, 0);
    bytes.extend(1.5f32.to_le_bytes().into_iter().chain((-2.0f32).to_le_bytes()));
    std::fs::write(tmp.path().join("diffusion_pytorch_model.safetensors"), bytes).unwrap();
    let w = Weights::load(tmp.path(), DIFFUSERS_WEIGHTS, Variant::Default).unwrap();
    assert_eq!(values(&w.var_builder(&Device::Cpu).get(2, "w").unwrap()), [1.5, -2.0]);
}

#[test]
fn non_finite_and_non_float_tensors_are_refused_when_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = Tensor::new(&[0i64, 1, 2], &Device::Cpu).unwrap();
    save(
        &tmp.path().join("model.safetensors"),
        &[
            ("ok", t(&[1.0], &[1])),
            ("nan", t(&[1.0, f32::NAN], &[2])),
            ("inf16", t(&[f32::INFINITY], &[1]).to_dtype(DType::F16).unwrap()),
            ("text_model.embeddings.position_ids", ids),
        ],
    );
    let w = Weights::load(tmp.path(), TRANSFORMERS_WEIGHTS, Variant::Default).unwrap();
    let vb = w.var_builder(&Device::Cpu);
    for name in ["nan", "inf16"] {
        let msg = vb.get(w.shape_of(name).unwrap().to_vec(), name).unwrap_err().to_string();
        assert!(msg.contains(name) && msg.contains("NaN or infinite"), "{msg}");
    }
    let msg = vb.get(3, "text_model.embeddings.position_ids").unwrap_err().to_string();
    assert!(msg.contains("float"), "{msg}");
    // The integer buffer older transformers saved beside CLIP can be let through by name.
    vb.get(1, "ok").unwrap();
    w.check_all_used("CLIPTextModel", |n| n.ends_with("position_ids") || n == "nan" || n == "inf16").unwrap();
}

// ---------------------------------------------------------------- pipeline folders

fn json(path: &Path, value: serde_json::Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

fn tiny_weights(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    save(path, &[("w", t(&[0.0], &[1]))]);
}

fn model_index(class: &str) -> serde_json::Value {
    serde_json::json!({
        "_class_name": class,
        "_diffusers_version": "0.42.1",
        "feature_extractor": [null, null],
        "image_encoder": [null, null],
        "requires_safety_checker": false,
        "safety_checker": [null, null],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]
    })
}

/// A pipeline folder as `save_pretrained` lays it out, with the tiny test components' configs
/// (only the keys the folder check reads) and placeholder weights.
fn write_pipeline(dir: &Path) {
    json(&dir.join("model_index.json"), model_index("StableDiffusionPipeline"));
    json(
        &dir.join("unet/config.json"),
        serde_json::json!({"_class_name": "UNet2DConditionModel", "sample_size": 32, "in_channels": 4,
            "out_channels": 4, "cross_attention_dim": 32, "block_out_channels": [4, 8]}),
    );
    tiny_weights(&dir.join("unet/diffusion_pytorch_model.safetensors"));
    json(
        &dir.join("vae/config.json"),
        serde_json::json!({"_class_name": "AutoencoderKL", "block_out_channels": [4, 8], "latent_channels": 4,
            "sample_size": 64}),
    );
    tiny_weights(&dir.join("vae/diffusion_pytorch_model.safetensors"));
    json(
        &dir.join("text_encoder/config.json"),
        serde_json::json!({"architectures": ["CLIPTextModel"], "hidden_size": 32}),
    );
    tiny_weights(&dir.join("text_encoder/model.safetensors"));
    json(&dir.join("tokenizer/vocab.json"), serde_json::json!({"!": 0}));
    std::fs::write(dir.join("tokenizer/merges.txt"), "#version: 0.2\n").unwrap();
    let sd15 = repo().join("tests/data/sd/schedulers/sd15_pndm/scheduler_config.json");
    assert!(sd15.is_file(), "{} is missing: run tools/sd/make_scheduler_fixture.py", sd15.display());
    std::fs::create_dir_all(dir.join("scheduler")).unwrap();
    std::fs::copy(sd15, dir.join("scheduler/scheduler_config.json")).unwrap();
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(value.as_object_mut().unwrap());
    json(path, value);
}

#[test]
fn a_stable_diffusion_pipeline_folder_is_recognised_without_loading_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sd1");
    write_pipeline(&dir);
    let index = pipeline::inspect(&dir).unwrap();
    assert_eq!(index.class, PipelineClass::StableDiffusion);
    assert_eq!(index.scheduler, SchedulerKind::Pndm);
    assert_eq!(index.prediction, PredictionType::Epsilon);
    assert!(!index.scheduler_config.set_alpha_to_one);
    assert_eq!((index.latent_size, index.vae_scale_factor, index.resolution), (32, 2, 64));
    assert_eq!(index.text_hidden_size, 32);
    assert_eq!(index.common_variants(), [Variant::Default]);
    assert_eq!(index.diffusers_version.as_deref(), Some("0.42.1"));
    assert!(matches!(pipeline::detect(&dir), PipelineKind::StableDiffusion(_)));

    // SD 2.1 style: img2img class, DDIM v-prediction, fp16 weights beside the full ones.
    let dir = tmp.path().join("sd2");
    write_pipeline(&dir);
    edit_json(&dir.join("model_index.json"), |m| {
        m.insert("_class_name".into(), "StableDiffusionImg2ImgPipeline".into());
        m.insert("scheduler".into(), serde_json::json!(["diffusers", "DDIMScheduler"]));
    });
    std::fs::copy(
        repo().join("tests/data/sd/schedulers/sd21_ddim_v/scheduler_config.json"),
        dir.join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    edit_json(&dir.join("unet/config.json"), |m| {
        m.insert("sample_size".into(), serde_json::json!([96, 96]));
    });
    for sub in ["unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model", "text_encoder/model"] {
        tiny_weights(&dir.join(format!("{sub}.fp16.safetensors")));
    }
    let index = pipeline::inspect(&dir).unwrap();
    assert_eq!(index.class, PipelineClass::StableDiffusionImg2Img);
    assert_eq!(index.scheduler, SchedulerKind::Ddim);
    assert_eq!(index.prediction, PredictionType::VPrediction);
    assert_eq!(index.resolution, 192);
    assert_eq!(index.common_variants(), [Variant::Default, Variant::Fp16]);
}

#[test]
fn the_pixel_space_model_folder_is_told_apart() {
    let demo = repo().join("assets/demo_ddpm");
    assert!(demo.join("config.json").is_file(), "{} is missing", demo.display());
    assert!(matches!(pipeline::detect(&demo), PipelineKind::PixelDdpm));
    let msg = one_line(&pipeline::inspect(&demo).unwrap_err());
    assert!(msg.contains("pixel-space model, audit it as before"), "{msg}");
}

/// A folder broken by `edit`, with the words its refusal must contain.
type Case = (&'static str, Breaker, &'static [&'static str]);

#[test]
fn other_families_and_broken_folders_get_a_one_line_reason() {
    let set_index = |edit: fn(&mut serde_json::Map<String, serde_json::Value>)| {
        Box::new(move |d: &Path| edit_json(&d.join("model_index.json"), edit)) as Breaker
    };
    let cases: Vec<Case> = vec![
        (
            "sdxl",
            set_index(|m| {
                m.insert("_class_name".into(), "StableDiffusionXLPipeline".into());
                m.insert("text_encoder_2".into(), serde_json::json!(["transformers", "CLIPTextModelWithProjection"]));
            }),
            &["SDXL", "StableDiffusionXLPipeline", "text_encoder_2"],
        ),
        (
            "sd3",
            set_index(|m| {
                m.insert("_class_name".into(), "StableDiffusion3Pipeline".into());
                m.remove("unet");
                m.insert("transformer".into(), serde_json::json!(["diffusers", "SD3Transformer2DModel"]));
            }),
            &["Stable Diffusion 3", "StableDiffusion3Pipeline", "transformer"],
        ),
        (
            "controlnet",
            set_index(|m| {
                m.insert("_class_name".into(), "StableDiffusionControlNetPipeline".into());
                m.insert("controlnet".into(), serde_json::json!(["diffusers", "ControlNetModel"]));
            }),
            &["ControlNet", "StableDiffusionControlNetPipeline"],
        ),
        (
            "lora only",
            Box::new(|d: &Path| {
                std::fs::remove_dir_all(d).unwrap();
                tiny_weights(&d.join("pytorch_lora_weights.safetensors"));
            }),
            &["LoRA", "pytorch_lora_weights.safetensors", "model_index.json"],
        ),
        (
            "lora beside the pipeline",
            Box::new(|d: &Path| tiny_weights(&d.join("pytorch_lora_weights.safetensors"))),
            &["LoRA", "pytorch_lora_weights.safetensors", "ignores"],
        ),
        (
            "ddpm pipeline",
            set_index(|m| {
                m.insert("_class_name".into(), "DDPMPipeline".into());
            }),
            &["pixel-space model, audit it as before", "DDPMPipeline"],
        ),
        (
            "inpainting class",
            set_index(|m| {
                m.insert("_class_name".into(), "StableDiffusionInpaintPipeline".into());
            }),
            &["StableDiffusionInpaintPipeline"],
        ),
        (
            "no vae folder",
            Box::new(|d: &Path| std::fs::remove_dir_all(d.join("vae")).unwrap()),
            &["missing component", "vae/"],
        ),
        (
            "vae not listed",
            set_index(|m| {
                m.remove("vae");
            }),
            &["missing component", "'vae'"],
        ),
        (
            "vae null",
            set_index(|m| {
                m.insert("vae".into(), serde_json::json!([null, null]));
            }),
            &["missing component", "'vae'"],
        ),
        (
            "no merges",
            Box::new(|d: &Path| std::fs::remove_file(d.join("tokenizer/merges.txt")).unwrap()),
            &["missing component", "tokenizer/merges.txt"],
        ),
        (
            "no unet config",
            Box::new(|d: &Path| std::fs::remove_file(d.join("unet/config.json")).unwrap()),
            &["missing component", "unet/config.json"],
        ),
        (
            "no scheduler config",
            Box::new(|d: &Path| std::fs::remove_file(d.join("scheduler/scheduler_config.json")).unwrap()),
            &["missing component", "scheduler/scheduler_config.json"],
        ),
        (
            "unet weights as pickles",
            Box::new(|d: &Path| {
                std::fs::remove_file(d.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
                std::fs::write(d.join("unet/diffusion_pytorch_model.bin"), b"PK").unwrap();
            }),
            &["missing component", "unet/", ".bin"],
        ),
        (
            "huge sample size",
            Box::new(|d: &Path| {
                edit_json(&d.join("unet/config.json"), |m| {
                    m.insert("sample_size".into(), serde_json::json!(4_000_000_000u64));
                })
            }),
            &["sample size", "4000000000"],
        ),
        (
            "unsupported scheduler",
            set_index(|m| {
                m.insert("scheduler".into(), serde_json::json!(["diffusers", "LMSDiscreteScheduler"]));
            }),
            &["LMSDiscreteScheduler"],
        ),
        (
            "other text encoder",
            set_index(|m| {
                m.insert("text_encoder".into(), serde_json::json!(["transformers", "T5EncoderModel"]));
            }),
            &["text_encoder", "T5EncoderModel"],
        ),
        (
            "unknown component",
            set_index(|m| {
                m.insert("motion_adapter".into(), serde_json::json!(["diffusers", "MotionAdapter"]));
            }),
            &["motion_adapter", "MotionAdapter"],
        ),
        (
            "inpainting unet",
            Box::new(|d: &Path| {
                edit_json(&d.join("unet/config.json"), |m| {
                    m.insert("in_channels".into(), 9.into());
                })
            }),
            &["9 input channels", "inpainting"],
        ),
        (
            "cross attention",
            Box::new(|d: &Path| {
                edit_json(&d.join("unet/config.json"), |m| {
                    m.insert("cross_attention_dim".into(), 1024.into());
                })
            }),
            &["cross_attention_dim 1024", "hidden_size 32"],
        ),
        (
            "scheduler class disagrees",
            Box::new(|d: &Path| {
                edit_json(&d.join("scheduler/scheduler_config.json"), |m| {
                    m.insert("_class_name".into(), "DDIMScheduler".into());
                })
            }),
            &["DDIMScheduler", "PNDMScheduler"],
        ),
        (
            "index not JSON",
            Box::new(|d: &Path| std::fs::write(d.join("model_index.json"), "{").unwrap()),
            &["model_index.json", "not a valid"],
        ),
        (
            "not a model folder",
            Box::new(|d: &Path| std::fs::remove_file(d.join("model_index.json")).unwrap()),
            &["not a model folder", "model_index.json"],
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (i, (name, break_it, needles)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        write_pipeline(&dir);
        break_it(&dir);
        let msg = match pipeline::inspect(&dir) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => one_line(&e),
        };
        for needle in needles {
            assert!(msg.contains(needle), "{name}: '{needle}' not in: {msg}");
        }
        match pipeline::detect(&dir) {
            PipelineKind::Unsupported(reason) => assert_eq!(reason, msg, "{name}"),
            other => panic!("{name}: detected as {other:?}"),
        }
    }
}
