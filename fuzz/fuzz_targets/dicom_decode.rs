#![no_main]
//! DICOM open + pixel decode (every transfer syntax we take) + convert to .npy / .png.
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let _ = melo::image::parse_header_bytes(data);
    if let Ok(image) = melo::image::load_dicom_bytes(data, &common::fuzz_options()) {
        common::convert_in_memory(&image);
    }
});
