//! Frame timing for measurements (`MELO_FRAME_LOG=FILE`): one CSV line per frame with the time
//! the UI code took, the time since the previous frame, and whether an audit or a prediction
//! was running. `tools/frame_time.sh` drives the real window and summarises the file.
//!
//! The file is appended to, never truncated: a mistyped `MELO_FRAME_LOG` naming an existing
//! file adds lines at its end instead of destroying it. Each run starts with a `# run` line
//! (and the column header when the file is new), so runs can be told apart.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

pub struct FrameLog {
    out: BufWriter<File>,
    started: Instant,
    last_frame: Option<Instant>,
}

impl FrameLog {
    /// From `MELO_FRAME_LOG`, if set (a file that cannot be created is reported once on stderr).
    pub fn from_env() -> Option<Self> {
        let path = std::env::var_os("MELO_FRAME_LOG")?;
        match Self::create(Path::new(&path)) {
            Ok(log) => Some(log),
            Err(e) => {
                eprintln!("melo: cannot write the frame log {}: {e}", Path::new(&path).display());
                None
            }
        }
    }

    fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
        let new = file.metadata()?.len() == 0;
        let mut out = BufWriter::new(file);
        if new {
            writeln!(out, "t_s,ui_ms,interval_ms,audit_running,diagnosis_busy")?;
        }
        writeln!(out, "# run")?;
        out.flush()?;
        Ok(Self { out, started: Instant::now(), last_frame: None })
    }

    /// A line that is not a frame (starts with `#`), e.g. how long a cancel took.
    pub fn note(&mut self, text: &str) {
        let _ = writeln!(self.out, "# {text}");
        let _ = self.out.flush();
    }

    /// Records one frame that started at `start` and has just finished.
    pub fn record(&mut self, start: Instant, audit_running: bool, diagnosis_busy: bool) {
        let ui_ms = start.elapsed().as_secs_f64() * 1e3;
        let interval_ms = self.last_frame.map_or(0.0, |last| start.duration_since(last).as_secs_f64() * 1e3);
        self.last_frame = Some(start);
        let t = start.duration_since(self.started).as_secs_f64();
        // A measurement aid: a failed write only loses measurements.
        let _ = writeln!(
            self.out,
            "{t:.4},{ui_ms:.3},{interval_ms:.3},{},{}",
            u8::from(audit_running),
            u8::from(diagnosis_busy)
        );
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_file_is_appended_to_never_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.csv");
        std::fs::write(&path, "keep me\n").unwrap();
        let mut log = FrameLog::create(&path).unwrap();
        log.record(Instant::now(), false, true);
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["keep me", "# run"], "{text}");
        assert!(lines[2].ends_with(",0,1"), "{text}");

        // A new file gets the column header first.
        let fresh = dir.path().join("frames.csv");
        FrameLog::create(&fresh).unwrap();
        let text = std::fs::read_to_string(&fresh).unwrap();
        assert!(text.starts_with("t_s,ui_ms,interval_ms,audit_running,diagnosis_busy\n# run\n"), "{text}");
    }
}
