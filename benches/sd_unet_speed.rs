//! One call of each Stable Diffusion component (src/diffusion/sd/) for issue 13 point 7: the
//! `UNet2DConditionModel`, the `AutoencoderKL` encoder (posterior mean) and decoder, and the
//! `CLIPTextModel` (77 tokens). The peer is `benches/torch_sd_scale.py` (diffusers / transformers), which also
//! writes the random SD 2.1-base-shaped pipeline (UNet 865 M, VAE 84 M, OpenCLIP-H text 340 M)
//! both time:
//!
//!   python benches/torch_sd_scale.py --make /tmp/sd21_random
//!   RAYON_NUM_THREADS=2 cargo bench --bench sd_unet_speed -- unet /tmp/sd21_random 512 3
//!   python benches/torch_sd_scale.py --pipeline /tmp/sd21_random --component unet --px 512 --threads 2
//!
//! Arguments: COMPONENT (unet | vae | decode | text) PIPELINE_DIR PX [REPS [BATCH]]: one component at one
//! resolution per process, so that the peak resident memory (VmHWM) printed is that of loading
//! it plus its calls. Prints one JSON line: median ms per call over REPS calls after one warm-up.
//! The older form UNET_DIR [LATENT_SIZES [BATCH [REPS]]] (`benches/torch_sd_unet.py`) still works.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use melo::diffusion::sd::clip_text::ClipTextModel;
use melo::diffusion::sd::unet_cond::UNet2DConditionModel;
use melo::diffusion::sd::vae::AutoencoderKL;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Seconds of one warm-up call then `reps` timed ones, sorted.
fn time_calls(reps: usize, mut call: impl FnMut()) -> Vec<f64> {
    call();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            call();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

fn component(comp: &str, root: &Path, px: usize, reps: usize, batch: usize) {
    let cpu = Device::Cpu;
    let t0 = Instant::now();
    let times = match comp {
        "unet" => {
            let unet = UNet2DConditionModel::load(&root.join("unet"), &cpu).expect("load unet/");
            let load_s = t0.elapsed().as_secs_f64();
            let s = px / 8;
            let x = Tensor::randn(0f32, 1.0, (batch, 4, s, s), &cpu).expect("latents");
            let dim = unet.config().text_dim().expect("config");
            let text = Tensor::randn(0f32, 1.0, (batch, 77, dim), &cpu).expect("text");
            let t: Vec<f64> = (0..batch).map(|i| ((i * 37 + 500) % 1000) as f64).collect();
            (load_s, time_calls(reps, || drop(unet.forward(&x, &t, &text).expect("call"))))
        }
        "vae" => {
            let vae = AutoencoderKL::load(&root.join("vae"), &cpu).expect("load vae/");
            let load_s = t0.elapsed().as_secs_f64();
            let x = Tensor::rand(-1f32, 1.0, (batch, 3, px, px), &cpu).expect("image");
            (load_s, time_calls(reps, || drop(vae.encode(&x).expect("call").mode().clone())))
        }
        "decode" => {
            let vae = AutoencoderKL::load(&root.join("vae"), &cpu).expect("load vae/");
            let load_s = t0.elapsed().as_secs_f64();
            let s = px / 8;
            let z = Tensor::randn(0f32, 1.0, (batch, vae.config().latent_channels, s, s), &cpu).expect("latents");
            (load_s, time_calls(reps, || drop(vae.decode(&z).expect("call"))))
        }
        "text" => {
            let clip = ClipTextModel::load(&root.join("text_encoder"), &cpu).expect("load text_encoder/");
            let load_s = t0.elapsed().as_secs_f64();
            let vocab = clip.config().vocab_size as f32;
            let ids = (Tensor::rand(0f32, vocab - 1.0, (batch, 77), &cpu).expect("ids"))
                .floor()
                .and_then(|t| t.to_dtype(DType::I64))
                .expect("ids");
            (load_s, time_calls(reps, || drop(clip.forward(&ids, None).expect("call").last_hidden_state)))
        }
        other => panic!("unknown component {other} (unet | vae | decode | text)"),
    };
    let (load_s, times) = times;
    let ms: Vec<String> = times.iter().map(|t| format!("{:.1}", 1000.0 * t)).collect();
    println!(
        "{{\"impl\": \"melo\", \"component\": \"{comp}\", \"px\": {px}, \"batch\": {batch}, \"threads\": {}, \"reps\": {reps}, \"ms_per_call\": {:.1}, \"ms_all\": [{}], \"load_s\": {load_s:.1}, \"peak_rss_mb\": {:.0}}}",
        rayon::current_num_threads(),
        1000.0 * times[times.len() / 2],
        ms.join(", "),
        peak_rss_mb()
    );
}

/// The UNet-only form kept for `benches/torch_sd_unet.py`: several latent sizes in one process.
fn unet_only(args: &[String]) {
    let dir = PathBuf::from(&args[0]);
    let sizes: Vec<usize> =
        args.get(1).map_or("32", String::as_str).split(',').map(|s| s.parse().expect("latent size")).collect();
    let batch: usize = args.get(2).map_or(1, |s| s.parse().expect("batch"));
    let reps: usize = args.get(3).map_or(3, |s| s.parse().expect("reps"));
    let t0 = Instant::now();
    let unet = UNet2DConditionModel::load(&dir, &Device::Cpu).expect("load the UNet folder");
    eprintln!(
        "loaded {} parameters in {:.1} s, peak RSS so far {:.0} MB",
        unet.num_params(),
        t0.elapsed().as_secs_f64(),
        peak_rss_mb()
    );
    let text_dim = unet.config().text_dim().expect("config");
    let threads = rayon::current_num_threads();
    for s in sizes {
        let x = Tensor::randn(0f32, 1.0, (batch, 4, s, s), &Device::Cpu).expect("latents");
        let text = Tensor::randn(0f32, 1.0, (batch, 77, text_dim), &Device::Cpu).expect("text");
        let t: Vec<f64> = (0..batch).map(|i| ((i * 37 + 500) % 1000) as f64).collect();
        let times = time_calls(reps, || drop(unet.forward(&x, &t, &text).expect("call")));
        println!(
            "{{\"impl\": \"melo\", \"latent\": {s}, \"batch\": {batch}, \"threads\": {threads}, \"ms_per_call\": {:.1}, \"peak_rss_mb\": {:.0}}}",
            1000.0 * times[times.len() / 2],
            peak_rss_mb()
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench` to harness-less benches: keep only our arguments.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    match args.first().map(String::as_str) {
        // `cargo test --all-targets` runs every bench binary without arguments: nothing to time.
        None => eprintln!("usage: sd_unet_speed COMPONENT PIPELINE_DIR PX [REPS [BATCH]] (see the file's doc comment)"),
        Some(comp @ ("unet" | "vae" | "decode" | "text")) => {
            let root = PathBuf::from(args.get(1).expect("PIPELINE_DIR"));
            let px: usize = args.get(2).map_or(512, |s| s.parse().expect("px"));
            let reps: usize = args.get(3).map_or(3, |s| s.parse().expect("reps"));
            let batch: usize = args.get(4).map_or(1, |s| s.parse().expect("batch"));
            component(comp, &root, px, reps, batch);
        }
        Some(_) => unet_only(&args),
    }
}
