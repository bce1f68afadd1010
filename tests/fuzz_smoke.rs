//! A short fuzz smoke run inside `cargo test`, on stable Rust: every fuzz target's body
//! (`fuzz/fuzz_targets/targets.rs`, the same functions the libFuzzer binaries call) on a few
//! thousand seeded byte mutations of the committed fixtures. It is not coverage-guided and is
//! no substitute for `cargo fuzz` (docs/reliability.md); it catches a change that brings back
//! a panic on the kind of input the fuzzers found, in seconds, on every CI run.
//!
//! A panicking input is written to `tests/out/fuzz_smoke/` so it can be replayed with
//! `cargo fuzz run TARGET FILE` and kept as a regression file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

#[path = "../fuzz/fuzz_targets/targets.rs"]
#[allow(dead_code)]
mod targets;

/// Inputs per target, spread evenly over its seeds: a few thousand keeps the whole file at
/// seconds even with the crate itself unoptimised.
const INPUTS_PER_TARGET: usize = 3000;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Files under `tests/data/<dir>` whose name ends in one of `suffixes`, at most `max_bytes`
/// each (big seeds make every mutation slow without reaching more code).
fn seeds(dirs: &[&str], suffixes: &[&str], max_bytes: u64) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in dirs {
        let mut stack = vec![data_dir().join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let small = path.metadata().map(|m| m.len() <= max_bytes).unwrap_or(false);
                if small && suffixes.iter().any(|s| name.ends_with(s)) {
                    out.push((name, std::fs::read(&path).unwrap()));
                }
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no seeds under {dirs:?} with {suffixes:?}");
    out
}

/// libFuzzer-style byte mutations: bit flips, random bytes, "interesting" 16/32-bit values
/// (lengths and counts are where parsers go wrong), truncation, erased and duplicated runs.
/// Written here because no stable-Rust crate offers byte-level mutation without a fuzzing
/// runtime; one to four mutations stacked per input, as libFuzzer does.
fn mutate(seed: &[u8], rng: &mut impl Rng) -> Vec<u8> {
    const INTERESTING_32: [u32; 8] = [0, 1, 0x7F, 0xFFFF, 0x1_0000, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF];
    const INTERESTING_16: [u16; 6] = [0, 1, 0x7F, 0x80, 0x7FFF, 0xFFFF];
    let mut data = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if data.is_empty() {
            data.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..data.len());
        let room = data.len() - at;
        match rng.random_range(0..7) {
            0 => data[at] ^= 1 << rng.random_range(0..8),
            1 => data[at] = rng.random(),
            2 => {
                let v = INTERESTING_32.choose(rng).unwrap();
                let bytes = if rng.random_bool(0.5) { v.to_le_bytes() } else { v.to_be_bytes() };
                let n = room.min(4);
                data[at..at + n].copy_from_slice(&bytes[..n]);
            }
            3 => {
                let bytes = INTERESTING_16.choose(rng).unwrap().to_le_bytes();
                let n = room.min(2);
                data[at..at + n].copy_from_slice(&bytes[..n]);
            }
            4 => data.truncate(at),
            5 => {
                let n = rng.random_range(1..=room.min(64));
                data.drain(at..at + n);
            }
            _ => {
                let n = rng.random_range(1..=room.min(64));
                let run = data[at..at + n].to_vec();
                let to = rng.random_range(0..=data.len());
                data.splice(to..to, run);
            }
        }
    }
    data
}

/// Panics seen anywhere in the process, counted by a hook: under libFuzzer any panic aborts,
/// even one the loaders catch and turn into an error (`catch_unwind` around third-party
/// decoders), so the smoke run counts those as findings too.
static PANICS: AtomicUsize = AtomicUsize::new(0);
/// The targets run one at a time, so a panic is charged to the input that caused it (decoders
/// may panic on a worker thread).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let print = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            print(info);
        }));
    });
}

/// Runs `target` on every seed and on mutations of each, `INPUTS_PER_TARGET` in all. An input that
/// panics, whether or not the panic is caught inside the program, fails the test with the seed
/// and input named; the input is kept in `tests/out/fuzz_smoke/`.
fn smoke(name: &str, target: fn(&[u8]), seeds: Vec<(String, Vec<u8>)>) {
    count_panics();
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED ^ name.len() as u64);
    let mut failures = Vec::new();
    let mut runs = 0;
    let mutations_per_seed = INPUTS_PER_TARGET / seeds.len() - 1;
    for (seed_name, seed) in &seeds {
        let inputs = std::iter::once(seed.clone()).chain((0..mutations_per_seed).map(|_| mutate(seed, &mut rng)));
        for (k, input) in inputs.enumerate() {
            runs += 1;
            let before = PANICS.load(Ordering::SeqCst);
            let unwound = std::panic::catch_unwind(|| target(&input)).is_err();
            if unwound || PANICS.load(Ordering::SeqCst) != before {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/out/fuzz_smoke");
                std::fs::create_dir_all(&dir).unwrap();
                let file = dir.join(format!("{name}-{seed_name}-{k}.bin"));
                std::fs::write(&file, &input).unwrap();
                failures.push(file.display().to_string());
            }
        }
    }
    eprintln!("{name}: {runs} inputs from {} seeds", seeds.len());
    assert!(failures.is_empty(), "{name}: {} panicking inputs, kept as {failures:#?}", failures.len());
}

#[test]
fn dicom_decode_survives_mutated_dicom_files() {
    smoke("dicom_decode", targets::dicom_decode, seeds(&["dicom", "fuzz"], &[".dcm"], 40_000));
}

#[test]
fn raster_decode_survives_mutated_png_and_jpeg_files() {
    let mut seeds = seeds(&["codec", "fuzz"], &[".jpg", ".png"], 40_000);
    // No PNG is committed as a fixture: encode two with the `image` crate (8-bit grey with a
    // gradient, 16-bit RGB), the two PNG kinds the loader handles differently.
    for (name, img) in [
        (
            "grey8.png",
            image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(24, 17, |x, y| {
                image::Luma([(x * 10 + y) as u8])
            })),
        ),
        (
            "rgb16.png",
            image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(9, 12, |x, y| {
                image::Rgb([(x * 7000) as u16, (y * 5000) as u16, 40_000])
            })),
        ),
    ] {
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        seeds.push((name.into(), png));
    }
    smoke("raster_decode", targets::raster_decode, seeds);
}

#[test]
fn adapter_load_survives_mutated_adapters() {
    smoke(
        "adapter_load",
        targets::adapter_load,
        seeds(&["vit"], &["adapter.safetensors", "adapter_model.safetensors"], 40_000),
    );
}

#[test]
fn diffusers_config_survives_mutated_configs() {
    smoke("diffusers_config", targets::diffusers_config, seeds(&["diffusion", "fuzz"], &[".json"], 40_000));
}

#[test]
fn npz_load_survives_mutated_archives() {
    smoke("npz_load", targets::npz_load, seeds(&["fuzz"], &[".npz"], 40_000));
}

/// The mutator must actually change inputs, in every way it claims, or the smoke run tests
/// only the seeds.
#[test]
fn mutations_change_inputs_and_vary_their_length() {
    let seed: Vec<u8> = (0..=255).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let outs: Vec<Vec<u8>> = (0..500).map(|_| mutate(&seed, &mut rng)).collect();
    let changed = outs.iter().filter(|o| **o != seed).count();
    assert!(changed > 450, "only {changed} of 500 mutations changed the seed");
    assert!(outs.iter().any(|o| o.len() < seed.len()) && outs.iter().any(|o| o.len() > seed.len()));
    assert!(outs.iter().any(|o| o.len() == seed.len() && *o != seed));
}
