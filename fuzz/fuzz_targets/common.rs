// Shared by the image targets: limits small enough that a lying header cannot make the fuzzer
// spend its time (or its 2 GiB RSS budget) on one giant but legal allocation.
use melo::image::{LoadLimits, LoadOptions};

pub fn fuzz_options() -> LoadOptions {
    LoadOptions { limits: LoadLimits { max_samples: 1 << 22, max_frames: 64 } }
}

/// What `melo convert` does after decoding: the `.npy` values and the `.png` display image.
pub fn convert_in_memory(image: &melo::image::MedicalImage) {
    let mut npy = Vec::new();
    let _ = melo::export::encode_npy(image, &mut npy);
    for frame in [0, image.frames.saturating_sub(1)] {
        let voi = melo::display::default_voi(image, frame);
        let _ = melo::export::encode_png(image, frame, &voi);
    }
}
