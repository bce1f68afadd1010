//! One `UNet2DConditionModel` call (src/diffusion/sd/unet_cond.rs) on a Stable Diffusion UNet
//! folder, for issue 13 point 7; the peer is `benches/torch_sd_unet.py`, which also writes the
//! random SD 2.1-shaped UNet (865 M parameters) both time:
//!
//!   python benches/torch_sd_unet.py --make /tmp/sd21_unet
//!   RAYON_NUM_THREADS=2 cargo bench --bench sd_unet_speed -- /tmp/sd21_unet 32,64 1 3
//!   python benches/torch_sd_unet.py --unet /tmp/sd21_unet --latent 32,64 --batch 1 --threads 2
//!
//! Arguments: UNET_DIR [LATENT_SIZES [BATCH [REPS]]]. Prints one JSON line per latent size:
//! median ms per call after one warm-up, and the process's peak resident memory (VmHWM).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use melo::diffusion::sd::unet_cond::UNet2DConditionModel;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    // `cargo bench` passes `--bench` to harness-less benches: keep only our arguments.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        // `cargo test --all-targets` runs every bench binary without arguments: nothing to time.
        eprintln!("usage: sd_unet_speed UNET_DIR [LATENT_SIZES [BATCH [REPS]]] (see the file's doc comment)");
        return;
    };
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
        unet.forward(&x, &t, &text).expect("warm-up call");
        let mut times: Vec<f64> = (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                unet.forward(&x, &t, &text).expect("call");
                t0.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "{{\"impl\": \"melo\", \"latent\": {s}, \"batch\": {batch}, \"threads\": {threads}, \"ms_per_call\": {:.1}, \"peak_rss_mb\": {:.0}}}",
            1000.0 * times[times.len() / 2],
            peak_rss_mb()
        );
    }
}
