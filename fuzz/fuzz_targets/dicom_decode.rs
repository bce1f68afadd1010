#![no_main]
//! cargo-fuzz target; the body is `targets::dicom_decode`, shared with `tests/fuzz_smoke.rs`.
use libfuzzer_sys::fuzz_target;

#[path = "targets.rs"]
#[allow(dead_code)]
mod targets;

fuzz_target!(|data: &[u8]| targets::dicom_decode(data));
