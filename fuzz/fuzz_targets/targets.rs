//! The body of every fuzz target, one function per target. The libFuzzer binaries beside this
//! file call them, and so does `tests/fuzz_smoke.rs` (a short seeded smoke run inside
//! `cargo test` on stable Rust), so the smoke run exercises exactly what the fuzzers do.
use std::io::Write;

use melo::image::{LoadLimits, LoadOptions};
use melo::model::lora::ImportOptions;
use melo::model::Pooling;

/// Limits small enough that a lying header cannot make the fuzzer spend its time (or its 2 GiB
/// RSS budget) on one giant but legal allocation. 2^18 samples still admits a whole 512 × 512
/// CT slice; larger legal images only repeat the same code on more pixels (a profile of round 3
/// at 2^22 spent most of its time rendering and converting tiny PNGs that declared 2048²).
pub fn fuzz_options() -> LoadOptions {
    LoadOptions { limits: LoadLimits { max_samples: 1 << 18, max_frames: 64 } }
}

/// DICOM open + pixel decode (every transfer syntax we take) + convert to .npy / .png.
pub fn dicom_decode(data: &[u8]) {
    let _ = melo::image::parse_header_bytes(data);
    if let Ok(image) = melo::image::load_dicom_bytes(data, &fuzz_options()) {
        convert_in_memory(&image);
    }
}

/// PNG / JPEG through the window's entry point (anything else goes on to the DICOM path).
pub fn raster_decode(data: &[u8]) {
    if let Ok(image) = melo::image::load_image_bytes(data, &fuzz_options()) {
        convert_in_memory(&image);
    }
}

/// Adapter files from strangers, read from a file as the program does: the project's own
/// format (safetensors + metadata) and the MeLo layout (`w_a_XXX`, `w_b_XXX`, `fc_*`).
pub fn adapter_load(data: &[u8]) {
    let file = temp_file_with(data, ".safetensors");
    let _ = melo::model::Adapter::load(file.path());
    let _ = melo::model::Adapter::import_melo(file.path(), &melo_import_options());
}

/// diffusers `config.json` of a UNet or a scheduler, then the schedules built from it.
pub fn diffusers_config(data: &[u8]) {
    let file = temp_file_with(data, ".json");
    let _ = melo::diffusion::Config::from_file(file.path());
    if let Ok(config) = melo::diffusion::SchedulerConfig::from_file(file.path()) {
        let _ = melo::diffusion::NoiseSchedule::new(&config);
        let _ = melo::diffusion::DdimScheduler::new(config.clone());
        let _ = melo::diffusion::DdpmScheduler::new(config);
    }
}

/// MedMNIST `.npz`: training data (labels, splits, first images) and audit sample sets.
pub fn npz_load(data: &[u8]) {
    let file = temp_file_with(data, ".npz");
    let fractions = melo::train::data::SplitFractions::default();
    if let Ok(source) = melo::train::data::DataSource::open(file.path(), None, fractions) {
        for split in [melo::train::data::Split::Train, melo::train::data::Split::Test] {
            if source.len(split) > 0 {
                let _ = source.image(split, 0);
            }
        }
    }
    let _ = melo::audit::data::SampleSet::load(file.path(), Some(4));
}

/// What `melo convert` does after decoding: the `.npy` values and the `.png` display image.
fn convert_in_memory(image: &melo::image::MedicalImage) {
    let mut npy = Vec::new();
    let _ = melo::export::encode_npy(image, &mut npy);
    for frame in [0, image.frames.saturating_sub(1)] {
        let voi = melo::display::default_voi(image, frame);
        let _ = melo::export::encode_png(image, frame, &voi);
    }
}

/// The loaders under test read paths, as the program does; /dev/shm keeps that off the disk.
fn temp_file_with(data: &[u8], suffix: &str) -> tempfile::NamedTempFile {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let mut file = tempfile::Builder::new().suffix(suffix).tempfile_in(dir).expect("temporary file");
    file.write_all(data).expect("temporary file written");
    file
}

/// The shipped backbone's geometry, without loading 44 MB per process.
fn melo_import_options() -> ImportOptions {
    ImportOptions {
        task: "fuzz".into(),
        labels: None,
        alpha: Some(4.0),
        backbone_sha256: "0".repeat(64),
        input_size: 224,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        modality: String::new(),
        pooling: Pooling::Cls,
    }
}
