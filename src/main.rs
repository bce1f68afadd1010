//! `melo`: with no subcommand, opens the workstation window.

#![forbid(unsafe_code)]

use clap::Parser;
use melo::cli::{run, Cli};

fn main() {
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
