#![no_main]
//! PNG / JPEG load (the same entry point the window and `melo convert` use) + convert.
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = melo::image::load_image_bytes(data, &common::fuzz_options()) {
        common::convert_in_memory(&image);
    }
});
