//! DCMTK (Debian package `dcmtk`) as the second, independent DICOM peer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::require_program;

/// A DCMTK tool's path; fails the test naming the package when DCMTK is missing.
pub fn program(name: &str) -> PathBuf {
    require_program(name, "dcmtk")
}

/// Runs a command to completion and returns its output (status not checked: callers assert
/// on success or on the refusal they expect).
pub fn run(mut command: Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// `storescu -aet CALLING -aec CALLED 127.0.0.1 PORT FILES…`: DCMTK pushes files into an SCP.
pub fn storescu(calling: &str, called: &str, port: u16, files: &[&Path]) -> Output {
    let mut command = Command::new(program("storescu"));
    // -R: propose only the SOP classes of the files; short timeouts so a hung peer fails fast.
    command.args(["-R", "-to", "20", "-ta", "20", "-td", "20", "-aet", calling, "-aec", called, "127.0.0.1"]);
    command.arg(port.to_string());
    command.args(files);
    run(command)
}

/// `echoscu`: DCMTK's C-ECHO against a peer.
pub fn echoscu(calling: &str, called: &str, port: u16) -> Output {
    let mut command = Command::new(program("echoscu"));
    command.args(["-to", "10", "-ta", "10", "-td", "10", "-aet", calling, "-aec", called, "127.0.0.1"]);
    command.arg(port.to_string());
    run(command)
}

/// Polls with `echoscu` until the SCP at `port` answers (up to 10 s); false if it never does.
pub fn wait_for_echo(calling: &str, called: &str, port: u16) -> bool {
    for _ in 0..100 {
        if echoscu(calling, called, port).status.success() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Both streams of a tool's output, for failure messages.
pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}
