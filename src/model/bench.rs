//! `melo bench`: the diagnosis engine's costs on this machine, in one run — backbone load,
//! ViT forward at the backbone's input size (batch 1 and 8, with and without an adapter),
//! adapter switch latency, and resident memory with the backbone alone and with N adapters.
//! The Python peers (`benches/torch_vit.py`, `benches/ort_vit.py`) measure the same things.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;

use super::engine::Engine;
use super::error::{Error, Result};
use super::lora::{Adapter, AdapterMetadata};

#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub runs: usize,
    pub median_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    /// Process CPU time (all threads) per run: separates our cost from waiting for cores
    /// that other programs hold. Includes the thread pools' spin-waiting.
    pub cpu_ms: f64,
}

impl Timing {
    fn from_ms(mut samples: Vec<f64>, cpu_ms: f64) -> Self {
        samples.sort_by(f64::total_cmp);
        let n = samples.len().max(1);
        Self {
            runs: samples.len(),
            median_ms: percentile(&samples, 0.5),
            mean_ms: samples.iter().sum::<f64>() / n as f64,
            min_ms: samples.first().copied().unwrap_or(f64::NAN),
            cpu_ms,
        }
    }
}

/// CPU time of this process so far (user + system, all threads), in ms; NaN off Linux.
pub fn process_cpu_ms() -> f64 {
    // /proc/self/stat fields 14 and 15 (utime, stime) in clock ticks of 10 ms.
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks * 10.0)
        })
        .unwrap_or(f64::NAN)
}

/// The 1-minute load average (other programs competing for the cores skew wall times).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

#[derive(Debug, Clone, Serialize)]
pub struct SwitchTiming {
    pub switches: usize,
    pub adapters: usize,
    pub median_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// VmRSS before the backbone is loaded (the program itself).
    pub rss_start_mib: f64,
    /// VmRSS with the backbone loaded.
    pub rss_backbone_mib: f64,
    /// VmRSS with the backbone and the adapters.
    pub rss_backbone_adapters_mib: f64,
    /// rss_backbone_adapters / rss_backbone.
    pub ratio: f64,
    /// Bytes of the adapters' tensors (f32).
    pub adapter_tensor_bytes: usize,
    /// VmHWM at the end of the run (peak, including forward activations at batch 8).
    pub peak_rss_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub threads: usize,
    /// 1-minute load average at the start and the end of the run.
    pub load_average: [f64; 2],
    pub backbone_sha256: String,
    pub input_size: usize,
    pub load_ms: f64,
    /// Reading, checking and registering one adapter file (median).
    pub adapter_load_ms: f64,
    pub forward_batch1: Timing,
    pub forward_batch1_with_adapter: Timing,
    pub forward_batch8: Timing,
    pub forward_batch8_per_image_ms: f64,
    pub switch: SwitchTiming,
    pub memory: Memory,
}

impl BenchReport {
    pub fn print(&self) {
        println!(
            "melo bench — {} thread(s), backbone {}…, {} px, load average {:.2} → {:.2}",
            self.threads,
            self.backbone_sha256.get(..12).unwrap_or(""),
            self.input_size,
            self.load_average[0],
            self.load_average[1]
        );
        println!("backbone load (read, sha256, f16→f32)   {:>9.1} ms", self.load_ms);
        println!("adapter load + register (median)         {:>9.2} ms", self.adapter_load_ms);
        let t = |name: &str, t: &Timing| {
            println!(
                "{name:<40} {:>9.1} ms median ({:.1} mean, {:.1} min, {} runs; {:.0} ms CPU per run)",
                t.median_ms, t.mean_ms, t.min_ms, t.runs, t.cpu_ms
            )
        };
        t("forward batch 1", &self.forward_batch1);
        t("forward batch 1, LoRA adapter active", &self.forward_batch1_with_adapter);
        t("forward batch 8", &self.forward_batch8);
        println!("forward batch 8, per image                {:>9.1} ms", self.forward_batch8_per_image_ms);
        let s = &self.switch;
        println!(
            "adapter switch ({} switches, {} adapters) {:>6.3} µs median, {:.3} µs p99, {:.3} µs max",
            s.switches, s.adapters, s.median_us, s.p99_us, s.max_us
        );
        let m = &self.memory;
        println!("RSS at start                             {:>9.1} MiB", m.rss_start_mib);
        println!("RSS backbone                             {:>9.1} MiB", m.rss_backbone_mib);
        println!(
            "RSS backbone + {:<2} adapters              {:>9.1} MiB  ({:.4}× backbone; adapter tensors {:.2} MiB)",
            s.adapters,
            m.rss_backbone_adapters_mib,
            m.ratio,
            m.adapter_tensor_bytes as f64 / (1 << 20) as f64
        );
        println!("peak RSS (after batch-8 forwards)        {:>9.1} MiB", m.peak_rss_mib);
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank: the smallest value with at least q of the samples at or below it.
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A line of /proc/self/status in MiB (Linux); NaN elsewhere.
pub fn proc_status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn time_forward(engine: &Engine, pixels: &Tensor, adapter: Option<&Adapter>, runs: usize) -> Result<Timing> {
    let vit = engine.backbone();
    let lora = adapter.map(Adapter::lora);
    for _ in 0..2 {
        vit.forward(pixels, lora)?;
    }
    let mut samples = Vec::with_capacity(runs);
    let cpu0 = process_cpu_ms();
    for _ in 0..runs {
        let t0 = Instant::now();
        let out = vit.forward(pixels, lora)?;
        std::hint::black_box(&out);
        samples.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let cpu = (process_cpu_ms() - cpu0) / runs as f64;
    Ok(Timing::from_ms(samples, cpu))
}

/// A fixed, image-like input: smooth gradients per channel (values in about −2..2).
fn test_input(batch: usize, size: usize) -> Result<Tensor> {
    let plane = size * size;
    let mut data = Vec::with_capacity(batch * 3 * plane);
    for b in 0..batch {
        for c in 0..3 {
            for i in 0..plane {
                let (y, x) = ((i / size) as f32 / size as f32, (i % size) as f32 / size as f32);
                data.push(((x * 6.0 + c as f32).sin() + (y * 4.0 + b as f32).cos()) * 0.9);
            }
        }
    }
    Ok(Tensor::from_vec(data, (batch, 3, size, size), &Device::Cpu)?)
}

pub fn run(backbone_dir: &Path, runs: usize, switches: usize, adapters: usize) -> Result<BenchReport> {
    let runs = runs.max(1);
    let adapters = adapters.max(4);
    let load_start = load_average();
    let rss_start = proc_status_mib("VmRSS:");
    let t0 = Instant::now();
    let mut engine = Engine::open(backbone_dir)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rss_backbone = proc_status_mib("VmRSS:");

    // N random adapters of real size (no trained ones exist yet) are written to a temporary
    // folder and dropped, then loaded from their files as the application does. Transient
    // allocations of the writing step stay counted in the second RSS, so the ratio errs high.
    let folder = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let mut adapter_bytes = 0;
    let mut paths = Vec::with_capacity(adapters);
    for i in 0..adapters {
        let labels = (0..4).map(|c| format!("class_{c}")).collect();
        let meta = AdapterMetadata::for_backbone(&format!("task_{i:02}"), labels, engine.backbone());
        let adapter = Adapter::synthetic(meta, engine.backbone(), 1000 + i as u64)?;
        adapter_bytes += adapter.parameter_count() * 4;
        let path = folder.path().join(format!("task_{i:02}.safetensors"));
        adapter.save(&path)?;
        paths.push(path);
    }
    let mut adapter_times = Vec::with_capacity(adapters);
    for path in &paths {
        let t = Instant::now();
        engine.register(Adapter::load(path)?)?;
        adapter_times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    adapter_times.sort_by(f64::total_cmp);
    let adapter_load_ms = percentile(&adapter_times, 0.5);
    let rss_adapters = proc_status_mib("VmRSS:");

    // Switches in a fixed pseudo-random order, each timed on its own.
    let tasks: Vec<String> = engine.tasks().map(str::to_string).collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut samples = Vec::with_capacity(switches);
    for _ in 0..switches.max(1) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let task = &tasks[(state % tasks.len() as u64) as usize];
        let t = Instant::now();
        engine.switch(std::hint::black_box(task))?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let switch = SwitchTiming {
        switches: samples.len(),
        adapters: tasks.len(),
        median_us: percentile(&samples, 0.5),
        p99_us: percentile(&samples, 0.99),
        max_us: samples.last().copied().unwrap_or(f64::NAN),
    };

    let size = engine.backbone().config().image_size;
    let x1 = test_input(1, size)?;
    let x8 = test_input(8, size)?;
    let forward_batch1 = time_forward(&engine, &x1, None, runs)?;
    let adapter = engine.adapters()[0].clone();
    let forward_batch1_with_adapter = time_forward(&engine, &x1, Some(&adapter), runs)?;
    let forward_batch8 = time_forward(&engine, &x8, None, (runs / 4).max(3))?;

    Ok(BenchReport {
        threads: candle_core::utils::get_num_threads(),
        load_average: [load_start, load_average()],
        backbone_sha256: engine.backbone().sha256().to_string(),
        input_size: size,
        load_ms,
        adapter_load_ms,
        forward_batch8_per_image_ms: forward_batch8.median_ms / 8.0,
        forward_batch1,
        forward_batch1_with_adapter,
        forward_batch8,
        switch,
        memory: Memory {
            rss_start_mib: rss_start,
            rss_backbone_mib: rss_backbone,
            rss_backbone_adapters_mib: rss_adapters,
            ratio: rss_adapters / rss_backbone,
            adapter_tensor_bytes: adapter_bytes,
            peak_rss_mib: proc_status_mib("VmHWM:"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
    }
}
