//! `melo`: with no subcommand, opens the workstation window.

#![forbid(unsafe_code)]

use clap::Parser;
use melo::cli::{run, Cli};

/// How long candle's binary-op worker spins for the next op before it sleeps, unless the user
/// set it. candle's default (25 000 spins after every op) keeps that worker busy between the
/// few candle ops left in the UNet and ViT, and it takes a core from the rayon workers that do
/// the real work: the quick demo audit ran 36.3 / 38.1 s with 100 spins against 39.6 / 40.1 s
/// with the default (alternating, 2026-12-08), 1–8 s less user CPU.
const CANDLE_SPIN_LIMIT: &str = "100";

fn main() {
    // Before anything starts a thread (candle reads it when its pool starts).
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_SPIN_LIMIT);
    }
    let cli = Cli::parse();
    let code = match cli.command {
        Some(command) => run(command),
        None => match melo::gui::run_native(cli.paths) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("melo: cannot open the window: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}
