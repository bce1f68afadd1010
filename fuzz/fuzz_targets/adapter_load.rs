#![no_main]
//! Adapter files from strangers, read from a file as the program does: the project's own format
//! (safetensors + metadata) and the MeLo layout (`w_a_XXX`, `w_b_XXX`, `fc_*`).
use libfuzzer_sys::fuzz_target;
use melo::model::lora::ImportOptions;
use melo::model::Pooling;
use std::io::Write;

fn melo_options() -> ImportOptions {
    // The shipped backbone's geometry, without loading 44 MB per process.
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

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::Builder::new().suffix(".safetensors").tempfile_in("/dev/shm").unwrap();
    file.write_all(data).unwrap();
    let _ = melo::model::Adapter::load(file.path());
    let _ = melo::model::Adapter::import_melo(file.path(), &melo_options());
});
