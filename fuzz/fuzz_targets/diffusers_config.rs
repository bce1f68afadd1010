#![no_main]
//! diffusers model folders from strangers: `config.json` (UNet2DModel) and
//! `scheduler_config.json` (DDPM / DDIM), read and validated as `melo audit` does, then the
//! noise schedule built from the scheduler config.
use libfuzzer_sys::fuzz_target;
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile::Builder::new().suffix(".json").tempfile_in("/dev/shm").unwrap();
    file.write_all(data).unwrap();
    let _ = melo::diffusion::Config::from_file(file.path());
    if let Ok(config) = melo::diffusion::SchedulerConfig::from_file(file.path()) {
        let _ = melo::diffusion::NoiseSchedule::new(&config);
        let _ = melo::diffusion::DdimScheduler::new(config.clone());
        let _ = melo::diffusion::DdpmScheduler::new(config);
    }
});
