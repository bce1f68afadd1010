//! Background loading: folder scans, thumbnails and series decoding run on worker threads and
//! report over one channel, so the window keeps repainting while a large series decodes.
//!
//! Each job has an id. Starting a new job of a kind supersedes the older one of that kind: the
//! old worker notices at its next step and stops, and anything it already sent is ignored by
//! the app (see [`Loader::is_current`]).

use std::collections::BTreeSet;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use egui::ColorImage;

use super::stack::{render_color_image, SliceStack};
use crate::display::default_voi;
use crate::image::{load_image, LoadOptions};
use crate::report::content::SrDocument;
use crate::series::{scan_folder, Series};

/// Longest side of a series thumbnail, in pixels.
pub const THUMBNAIL_SIDE: usize = 96;

pub type JobId = u64;

/// What a worker reports back to the UI thread.
pub enum LoaderEvent {
    /// The paths of an open job, grouped into series (thumbnails follow one by one).
    Scanned {
        job: JobId,
        series: Vec<Series>,
        /// The folder that was opened, if any (remembered for the next "Open folder…").
        folder: Option<PathBuf>,
        /// One line per path or file that could not be read.
        problems: Vec<String>,
    },
    Thumbnail {
        job: JobId,
        series_index: usize,
        image: ColorImage,
    },
    Progress {
        job: JobId,
        done: usize,
        total: usize,
    },
    /// A series decoded; `problems` lists files of it that could not be read.
    Loaded {
        job: JobId,
        series_index: usize,
        stack: SliceStack,
        problems: Vec<String>,
    },
    /// A series with no image but structured reports (an SR has no pixel data): their content,
    /// read for display.
    Documents {
        job: JobId,
        series_index: usize,
        documents: Vec<SrDocument>,
        problems: Vec<String>,
    },
    /// A job failed as a whole: nothing to show.
    Failed {
        job: JobId,
        message: String,
    },
    /// Always the last event of a job, however it ended.
    Finished {
        job: JobId,
    },
}

/// Tells a worker whether a newer job of its kind has replaced it.
#[derive(Clone)]
struct Superseded {
    latest: Arc<AtomicU64>,
    job: JobId,
}

impl Superseded {
    fn yes(&self) -> bool {
        self.latest.load(Ordering::Relaxed) != self.job
    }
}

/// Starts jobs on worker threads and collects their events.
pub struct Loader {
    sender: Sender<LoaderEvent>,
    receiver: Receiver<LoaderEvent>,
    next_job: JobId,
    latest_open: Arc<AtomicU64>,
    latest_series: Arc<AtomicU64>,
    /// Jobs started whose `Finished` has not been received yet.
    running: BTreeSet<JobId>,
}

impl Default for Loader {
    fn default() -> Self {
        let (sender, receiver) = channel();
        Self {
            sender,
            receiver,
            next_job: 1,
            latest_open: Arc::new(AtomicU64::new(0)),
            latest_series: Arc::new(AtomicU64::new(0)),
            running: BTreeSet::new(),
        }
    }
}

impl Loader {
    /// True while any job is still running.
    pub fn is_busy(&self) -> bool {
        !self.running.is_empty()
    }

    /// True if `job` is the newest open job or the newest series load (older ones are stale).
    pub fn is_current(&self, job: JobId) -> bool {
        job == self.latest_open.load(Ordering::Relaxed) || job == self.latest_series.load(Ordering::Relaxed)
    }

    /// Events received since the last call; bookkeeping of finished jobs is done here.
    pub fn poll(&mut self) -> Vec<LoaderEvent> {
        let events: Vec<LoaderEvent> = self.receiver.try_iter().collect();
        for event in &events {
            if let LoaderEvent::Finished { job } = event {
                self.running.remove(job);
            }
        }
        events
    }

    /// Scans `paths` (folders become series, files one series each), then renders thumbnails.
    /// Supersedes any running open job and series load.
    pub fn open(&mut self, paths: Vec<PathBuf>, ctx: &egui::Context) -> JobId {
        let job = self.start();
        self.latest_open.store(job, Ordering::Relaxed);
        // A new set of series: whatever series was decoding belongs to the old set.
        self.latest_series.store(job, Ordering::Relaxed);
        let superseded = Superseded { latest: self.latest_open.clone(), job };
        self.spawn(job, ctx, move |send| open_job(job, &paths, &superseded, send));
        job
    }

    /// Decodes every file of a series. Supersedes any running series load.
    pub fn load_series(&mut self, series_index: usize, series: Series, ctx: &egui::Context) -> JobId {
        let job = self.start();
        self.latest_series.store(job, Ordering::Relaxed);
        let superseded = Superseded { latest: self.latest_series.clone(), job };
        self.spawn(job, ctx, move |send| load_series_job(job, series_index, &series, &superseded, send));
        job
    }

    fn start(&mut self) -> JobId {
        let job = self.next_job;
        self.next_job += 1;
        self.running.insert(job);
        job
    }

    /// Runs `work` on a new thread. A panic inside a decoder becomes a `Failed` event, and
    /// `Finished` is always sent, so the app never waits forever on a dead job.
    fn spawn(&mut self, job: JobId, ctx: &egui::Context, work: impl FnOnce(&dyn Fn(LoaderEvent)) + Send + 'static) {
        // `Finished` always comes last, after a panic's `Failed` too.
        let spawned = super::worker::spawn_reporting(
            &format!("melo-loader-{job}"),
            ctx,
            self.sender.clone(),
            move |_, send| {
                send(LoaderEvent::Failed { job, message: "internal error while loading (see the terminal)".into() });
                send(LoaderEvent::Finished { job });
            },
            move |send| {
                work(send);
                send(LoaderEvent::Finished { job });
            },
        );
        if let Err(e) = spawned {
            let _ =
                self.sender.send(LoaderEvent::Failed { job, message: format!("cannot start a loader thread: {e}") });
            let _ = self.sender.send(LoaderEvent::Finished { job });
        }
    }
}

/// A short name for a path in messages: the file name (full paths can carry patient names in
/// folder names, and are long).
pub fn short_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn open_job(job: JobId, paths: &[PathBuf], superseded: &Superseded, send: &dyn Fn(LoaderEvent)) {
    let mut series = Vec::new();
    let mut problems = Vec::new();
    let mut folder = None;
    for path in paths {
        if path.is_dir() {
            match scan_folder(path) {
                Ok(scan) => {
                    series.extend(scan.series.into_iter().map(with_description));
                    // Folders hold READMEs and licences too: only files that could have been
                    // images, but are broken, are worth a warning.
                    problems.extend(
                        scan.skipped
                            .iter()
                            .filter(|s| !s.reason.starts_with(NOT_AN_IMAGE))
                            .map(|s| format!("skipped {}: {}", short_name(&s.path), one_line(&s.reason))),
                    );
                    folder = Some(path.clone());
                }
                Err(e) => problems.push(format!("cannot read folder {}: {e}", short_name(path))),
            }
        } else if path.is_file() {
            series.push(Series {
                uid: path.display().to_string(),
                description: short_name(path),
                modality: String::new(),
                files: vec![path.clone()],
            });
            folder = folder.or_else(|| path.parent().map(Path::to_path_buf));
        } else {
            problems.push(format!("not found: {}", path.display()));
        }
    }
    let for_thumbnails: Vec<Vec<PathBuf>> = series.iter().map(|s| s.files.clone()).collect();
    send(LoaderEvent::Scanned { job, series, folder, problems });
    for (series_index, files) in for_thumbnails.iter().enumerate() {
        if superseded.yes() {
            return;
        }
        if let Some(image) = thumbnail(files) {
            send(LoaderEvent::Thumbnail { job, series_index, image });
        }
    }
}

/// How `Error::NotDicom` reads: the file is not an image at all (rasters are recognised first).
const NOT_AN_IMAGE: &str = "not a DICOM file";

/// A series without a description is named after its first file, so the strip never shows a
/// blank entry.
fn with_description(mut series: Series) -> Series {
    if series.description.trim().is_empty() {
        series.description = series.files.first().map(|p| short_name(p)).unwrap_or_else(|| "Unnamed series".into());
    }
    series
}

/// The middle slice of a series, small. `None` if it cannot be read (the series load will
/// say why when the user opens it).
fn thumbnail(files: &[PathBuf]) -> Option<ColorImage> {
    let middle = files.get(files.len() / 2)?;
    let image = catch_unwind(|| load_image(middle, &LoadOptions::default())).ok()?.ok()?;
    let frame = image.frames / 2;
    render_color_image(&image, frame, &default_voi(&image, frame), THUMBNAIL_SIDE)
}

fn load_series_job(
    job: JobId,
    series_index: usize,
    series: &Series,
    superseded: &Superseded,
    send: &dyn Fn(LoaderEvent),
) {
    let total = series.files.len();
    let mut images = Vec::with_capacity(total);
    let mut problems = Vec::new();
    for (done, path) in series.files.iter().enumerate() {
        if superseded.yes() {
            return;
        }
        send(LoaderEvent::Progress { job, done, total });
        match catch_unwind(|| load_image(path, &LoadOptions::default())) {
            Ok(Ok(image)) => images.push(image),
            Ok(Err(e)) => problems.push(format!("cannot open {}: {}", short_name(path), one_line(&e.to_string()))),
            Err(_) => problems.push(format!("cannot open {}: the decoder failed", short_name(path))),
        }
    }
    let stack = SliceStack::new(job, series.description.clone(), images);
    if stack.is_empty() {
        // No pixels: structured reports are shown as their content, not as an error.
        let documents: Vec<SrDocument> = series
            .files
            .iter()
            .filter_map(|path| catch_unwind(|| crate::report::content::read(path)).ok().and_then(Result::ok))
            .collect();
        if !documents.is_empty() {
            // What failed for the reports themselves was only "no pixel data".
            let mut problems = problems;
            problems
                .retain(|p| !documents.iter().any(|d| p.starts_with(&format!("cannot open {}:", short_name(&d.path)))));
            send(LoaderEvent::Documents { job, series_index, documents, problems });
            return;
        }
        let message = match problems.first() {
            Some(first) if problems.len() == 1 => capitalise(first),
            Some(first) => format!("{} (and {} more files)", capitalise(first), problems.len() - 1),
            // Not the series description: messages are shown whatever "hide patient details" says,
            // and a description (or the file name it falls back to) can identify the patient.
            None => format!("{}: no displayable images", series.strip_label(series_index, true).replace('\n', " ")),
        };
        send(LoaderEvent::Failed { job, message });
    } else {
        send(LoaderEvent::Loaded { job, series_index, stack, problems });
    }
}

/// Error texts from decoders can span lines; a message row shows one.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| first.to_uppercase().chain(chars).collect())
}
