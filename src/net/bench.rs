//! `melo net bench-retrieve`: how long a series takes from a PACS into the viewer, measured
//! along the path the Studies view takes (issue 14's acceptance figure, docs/benchmarks.md).
//!
//! One run: open an empty study store; C-GET the series into it (or C-MOVE it to our own SCP
//! started for the run); then do what the window does to open it: list the store's folder of
//! that series, group it into series (`crate::series::scan_folder`), decode every slice
//! (`crate::image::load_image`) and render the displayed one with its default window
//! (`crate::display`). The clock stops at three points: all instances stored, the first slice
//! rendered, every slice decoded. No egui here: the window's texture upload is left out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::{Error, Result};
use super::peer::Peer;
use super::query::{Level, Model, QueryKeys};
use super::scp::{ScpConfig, StoreScp};
use super::scu::{self, ScuOptions};
use crate::store::StudyStore;

/// How the series is brought over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Via {
    /// C-GET on one association (what the Studies view does).
    Get,
    /// C-MOVE to our SCP listening on this port for the run; the PACS must know our AE title
    /// at this port.
    Move { port: u16 },
}

/// One run's clock readings, all from the start of the run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RetrieveTimings {
    pub instances: usize,
    /// Every instance stored and indexed.
    pub retrieved_s: f64,
    /// The first slice decoded and rendered with its default window: what a viewer that
    /// shows slices as they decode would display.
    pub first_slice_s: f64,
    /// Every slice decoded: when the window shows the series (it opens a series once all of
    /// it is decoded).
    pub all_slices_s: f64,
}

/// Retrieves `series_uid` of `study_uid` from `peer` into a new store in `store_dir` and
/// loads it as the viewer does.
pub fn retrieve_into_viewer(
    peer: &Peer,
    options: &ScuOptions,
    study_uid: &str,
    series_uid: &str,
    via: Via,
    store_dir: &Path,
) -> Result<RetrieveTimings> {
    let start = Instant::now();
    let store = Arc::new(StudyStore::open(store_dir)?);
    let keys = QueryKeys {
        study_uid: Some(study_uid.to_string()),
        series_uid: Some(series_uid.to_string()),
        ..Default::default()
    };
    match via {
        Via::Get => {
            scu::get(peer, options, Model::StudyRoot, Level::Series, &keys, &store, &mut |_| true)?;
        }
        Via::Move { port } => {
            let config = ScpConfig {
                allowed_callers: Some(vec![peer.aet.clone()]),
                timeout: options.timeout,
                ..ScpConfig::new(&options.calling_aet)
            };
            let scp = StoreScp::bind(&format!("0.0.0.0:{port}"), config, store.clone())?;
            let handle = scp.spawn(Arc::new(|_| {}));
            let report =
                scu::move_to(peer, options, Model::StudyRoot, Level::Series, &keys, &options.calling_aet, &mut |_| {
                    true
                });
            // The PACS answers the last C-MOVE response after our SCP acknowledged (and so
            // stored) every instance.
            drop(handle);
            report?;
        }
    }
    let instances = store.instances(series_uid)?;
    if instances.is_empty() {
        return Err(Error::Invalid(format!("{peer} sent nothing of series {series_uid}")));
    }
    let retrieved = start.elapsed();

    // The Studies view opens the folders of the series' files; the loader groups them.
    let mut folders: Vec<PathBuf> = Vec::new();
    for folder in instances.iter().filter_map(|i| i.path.parent()) {
        if !folders.iter().any(|f| f == folder) {
            folders.push(folder.to_path_buf());
        }
    }
    let mut files = Vec::new();
    for folder in &folders {
        let scan = crate::series::scan_folder(folder).map_err(|e| Error::Invalid(e.to_string()))?;
        files.extend(scan.series.into_iter().flat_map(|s| s.files));
    }
    let mut first_slice = None;
    for file in &files {
        let image = crate::image::load_image(file, &crate::image::LoadOptions::default())
            .map_err(|e| Error::Invalid(format!("{}: {e}", file.display())))?;
        if first_slice.is_none() {
            let voi = crate::display::default_voi(&image, 0);
            let rgba = crate::display::render_rgba(&image, 0, &voi);
            std::hint::black_box(rgba);
            first_slice = Some(start.elapsed());
        }
        std::hint::black_box(&image);
    }
    let all = start.elapsed();
    Ok(RetrieveTimings {
        instances: files.len(),
        retrieved_s: secs(retrieved),
        first_slice_s: secs(first_slice.unwrap_or(all)),
        all_slices_s: secs(all),
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub use crate::stats::median;

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(super::median(&[]).is_nan());
    }
}
