#![no_main]
//! MedMNIST-style `.npz` files: as training data (`melo train --data X.npz`, labels and splits)
//! and as audit member / non-member sets (`melo audit --members X.npz`).
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::Builder::new().suffix(".npz").tempfile_in("/dev/shm").unwrap();
    file.write_all(data).unwrap();
    let fractions = melo::train::data::SplitFractions::default();
    if let Ok(source) = melo::train::data::DataSource::open(file.path(), None, fractions) {
        for split in [melo::train::data::Split::Train, melo::train::data::Split::Test] {
            if source.len(split) > 0 {
                let _ = source.image(split, 0);
            }
        }
    }
    let _ = melo::audit::data::SampleSet::load(file.path(), Some(4));
});
