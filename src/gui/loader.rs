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
use std::time::{Duration, Instant};

use egui::ColorImage;

use super::stack::{is_displayable, render_color_image};
use crate::display::default_voi;
use crate::image::{load_image, LoadOptions, MedicalImage};
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
    /// The next decoded files of the series being loaded, in series order. The first of these
    /// events of a job carries the first displayable file, sent as soon as it is decoded so
    /// the viewer can show it while the rest decode; the others batch what was decoded since.
    /// `done` of `total` files have been read (decoded or failed).
    Slices {
        job: JobId,
        series_index: usize,
        description: String,
        images: Vec<MedicalImage>,
        done: usize,
        total: usize,
    },
    /// Every file of the series has been read: the stack sent as [`LoaderEvent::Slices`] is
    /// complete (and, say, MPR may build its volume). `problems` lists the files of it that
    /// could not be read.
    Loaded {
        job: JobId,
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

/// After the first slice, decoded files are sent at most this often: each event wakes the
/// window for a frame, and frames take CPU from the decoding.
const SLICE_BATCH_INTERVAL: Duration = Duration::from_millis(50);

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

    /// True until `job`'s `Finished` has been received.
    pub fn is_running(&self, job: JobId) -> bool {
        self.running.contains(&job)
    }

    /// True if `job` is the newest open job or the newest series load (older ones are stale).
    pub fn is_current(&self, job: JobId) -> bool {
        job == self.latest_open.load(Ordering::Relaxed) || job == self.latest_series.load(Ordering::Relaxed)
    }

    /// True if `job` is the newest series load: an open job decoding its first series, until
    /// another series is picked.
    pub fn is_current_series(&self, job: JobId) -> bool {
        job == self.latest_series.load(Ordering::Relaxed)
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

    /// Scans `paths` (folders become series, files one series each), decodes the first series
    /// (as [`Loader::load_series`] would, under this job's id), then renders thumbnails.
    /// Supersedes any running open job and series load.
    pub fn open(&mut self, paths: Vec<PathBuf>, ctx: &egui::Context) -> JobId {
        let job = self.start();
        self.latest_open.store(job, Ordering::Relaxed);
        // A new set of series: whatever series was decoding belongs to the old set.
        self.latest_series.store(job, Ordering::Relaxed);
        let superseded = Superseded { latest: self.latest_open.clone(), job };
        // Picking another series while the first one decodes stops that decoding only.
        let series_superseded = Superseded { latest: self.latest_series.clone(), job };
        self.spawn(job, ctx, move |send| open_job(job, &paths, &superseded, &series_superseded, send));
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

fn open_job(
    job: JobId,
    paths: &[PathBuf],
    superseded: &Superseded,
    series_superseded: &Superseded,
    send: &dyn Fn(LoaderEvent),
) {
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
    let first = series.first().cloned();
    send(LoaderEvent::Scanned { job, series, folder, problems });
    // The first series is shown at once: decoding it here, not in a job the window starts
    // when it sees `Scanned`, saves waiting for a frame (the first one of a window takes
    // hundreds of milliseconds to paint). Its slices come before any thumbnail.
    if let Some(first) = first {
        load_series_job(job, 0, &first, series_superseded, send);
    }
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
    let mut batch: Vec<MedicalImage> = Vec::new();
    let mut any_displayable = false;
    let mut last_sent: Option<Instant> = None;
    let mut problems = Vec::new();
    for (index, path) in series.files.iter().enumerate() {
        if superseded.yes() {
            return;
        }
        match catch_unwind(|| load_image(path, &LoadOptions::default())) {
            // Files whose pixels cannot be sliced are left out here, as `SliceStack::new` would:
            // the stack on screen only ever grows at its end, so slice numbers never shift.
            Ok(Ok(image)) if is_displayable(&image) => batch.push(image),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => problems.push(format!("cannot open {}: {}", short_name(path), one_line(&e.to_string()))),
            Err(_) => problems.push(format!("cannot open {}: the decoder failed", short_name(path))),
        }
        let done = index + 1;
        // The first slice goes at once (it is what the user waits for); later ones in batches.
        let due = match last_sent {
            None => !batch.is_empty(),
            Some(at) => at.elapsed() >= SLICE_BATCH_INTERVAL,
        };
        if due || done == total {
            any_displayable |= !batch.is_empty();
            let images = std::mem::take(&mut batch);
            send(LoaderEvent::Slices {
                job,
                series_index,
                description: series.description.clone(),
                images,
                done,
                total,
            });
            last_sent = Some(Instant::now());
        }
    }
    if superseded.yes() {
        return;
    }
    if any_displayable {
        send(LoaderEvent::Loaded { job, problems });
        return;
    }
    // No pixels: structured reports are shown as their content, not as an error.
    let documents: Vec<SrDocument> = series
        .files
        .iter()
        .filter_map(|path| catch_unwind(|| crate::report::content::read(path)).ok().and_then(Result::ok))
        .collect();
    if !documents.is_empty() {
        // What failed for the reports themselves was only "no pixel data".
        problems.retain(|p| !documents.iter().any(|d| p.starts_with(&format!("cannot open {}:", short_name(&d.path)))));
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
}

/// Error texts from decoders can span lines; a message row shows one.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| first.to_uppercase().chain(chars).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped 20-slice MR series.
    fn mr_series() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/mr_brain_series")
    }

    /// Every event of `job`, up to its `Finished`.
    fn events_of(loader: &mut Loader, job: JobId) -> Vec<LoaderEvent> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut events = Vec::new();
        while loader.is_running(job) {
            assert!(Instant::now() < deadline, "job {job} did not finish in time");
            events.extend(loader.poll());
            std::thread::sleep(Duration::from_millis(2));
        }
        events
    }

    fn kind(event: &LoaderEvent) -> &'static str {
        match event {
            LoaderEvent::Scanned { .. } => "scanned",
            LoaderEvent::Thumbnail { .. } => "thumbnail",
            LoaderEvent::Slices { .. } => "slices",
            LoaderEvent::Loaded { .. } => "loaded",
            LoaderEvent::Documents { .. } => "documents",
            LoaderEvent::Failed { .. } => "failed",
            LoaderEvent::Finished { .. } => "finished",
        }
    }

    /// The decoded files of the `Slices` events, in order, each with (done, total) of its event.
    fn slices(events: &[LoaderEvent]) -> Vec<(Vec<Option<PathBuf>>, usize, usize)> {
        events
            .iter()
            .filter_map(|event| match event {
                LoaderEvent::Slices { images, done, total, .. } => {
                    Some((images.iter().map(|i| i.meta.source.clone()).collect(), *done, *total))
                }
                _ => None,
            })
            .collect()
    }

    /// What makes the window show a series before all of it is decoded: the first decoded file
    /// travels alone, right after the scan, and the rest follow in order; `Loaded` (the
    /// stack is complete) only after the last one.
    #[test]
    fn opening_a_series_sends_its_first_slice_alone_then_the_rest_in_order() {
        let mut loader = Loader::default();
        let job = loader.open(vec![mr_series()], &egui::Context::default());
        let events = events_of(&mut loader, job);
        let kinds: Vec<&str> = events.iter().map(kind).collect();
        let LoaderEvent::Scanned { series, .. } = &events[0] else { panic!("scan first: {kinds:?}") };
        assert_eq!(series.len(), 1, "{kinds:?}");
        let files = &series[0].files;
        assert_eq!(files.len(), 20);

        let batches = slices(&events);
        let (first, done, total) = &batches[0];
        assert_eq!(kinds[1], "slices", "{kinds:?}");
        assert_eq!((first.len(), *done, *total), (1, 1, 20), "the first slice is sent on its own");
        assert_eq!(first[0].as_ref(), Some(&files[0]));
        // Every file once, in series order; the counts only grow.
        let sent: Vec<PathBuf> = batches.iter().flat_map(|(paths, _, _)| paths.iter().flatten().cloned()).collect();
        assert_eq!(&sent, files);
        assert!(batches.windows(2).all(|w| w[0].1 < w[1].1), "done grows");
        assert_eq!(batches.last().map(|b| b.1), Some(20));

        let loaded = kinds.iter().position(|k| *k == "loaded").expect("a loaded event");
        let last_slices = kinds.iter().rposition(|k| *k == "slices").expect("slices");
        assert!(last_slices < loaded, "the stack completes after its last slice: {kinds:?}");
        assert!(matches!(&events[loaded], LoaderEvent::Loaded { problems, .. } if problems.is_empty()));
        // The thumbnail waits for the series on screen; `Finished` ends the job.
        let thumbnail = kinds.iter().position(|k| *k == "thumbnail").expect("a thumbnail");
        assert!(thumbnail > loaded, "{kinds:?}");
        assert_eq!(kinds.last(), Some(&"finished"));
    }

    /// Picking a series (after the open job) streams it the same way.
    #[test]
    fn a_series_load_sends_its_first_slice_alone() {
        let series = scan_folder(&mr_series()).expect("scan").series.remove(0);
        let mut loader = Loader::default();
        let job = loader.load_series(0, series.clone(), &egui::Context::default());
        let events = events_of(&mut loader, job);
        let kinds: Vec<&str> = events.iter().map(kind).collect();
        assert_eq!(kinds.first(), Some(&"slices"), "{kinds:?}");
        let batches = slices(&events);
        assert_eq!(batches[0].0.len(), 1);
        assert_eq!(batches.iter().map(|b| b.0.len()).sum::<usize>(), series.files.len());
        assert_eq!(&kinds[kinds.len() - 2..], ["loaded", "finished"]);
    }

    /// A newer series load makes the open job stop decoding its first series: nothing of it
    /// counts as current, and it sends no `Loaded` once it noticed.
    #[test]
    fn picking_another_series_supersedes_the_open_jobs_decoding() {
        let mut loader = Loader::default();
        let ctx = egui::Context::default();
        let open = loader.open(vec![mr_series()], &ctx);
        let series = scan_folder(&mr_series()).expect("scan").series.remove(0);
        let picked = loader.load_series(0, series, &ctx);
        assert!(!loader.is_current_series(open));
        assert!(loader.is_current(open), "its scan and thumbnails still count");
        assert!(loader.is_current_series(picked));
        let events = events_of(&mut loader, picked);
        assert!(events.iter().any(|e| matches!(e, LoaderEvent::Loaded { job, .. } if *job == picked)));
    }
}
