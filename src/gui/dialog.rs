//! The window's way to ask the user for a path: the system dialog (rfd) runs off the UI thread
//! (it blocks until the user answers) and its answer comes back as a [`Command`] through a
//! channel the app drains each frame, so the window keeps repainting meanwhile. One dialog at a
//! time: a second click while one is open does nothing. macOS requires dialogs on the main
//! thread, so there they run in place.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use super::Command;

/// What to ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum PathDialog {
    /// Existing files (one or more).
    OpenFiles { title: String },
    /// One existing file, with a filter on `extension`.
    OpenFile { title: String, filter: String, extension: String },
    /// An existing folder (or one the dialog creates).
    Folder { title: String },
    /// A file to write, proposed under `file_name`, with a filter on `extension`.
    Save { title: String, file_name: String, filter: String, extension: String },
}

/// Runs path dialogs and collects their answers.
pub struct Dialogs {
    open: Arc<AtomicBool>,
    answers: (Sender<Command>, Receiver<Command>),
}

impl Default for Dialogs {
    fn default() -> Self {
        Dialogs { open: Arc::new(AtomicBool::new(false)), answers: channel() }
    }
}

impl Dialogs {
    /// True while a dialog is open.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// Shows `dialog` (starting in `start` when it is a folder); when the user picks paths,
    /// `then` turns them into the command to run. Cancelling runs nothing.
    pub fn ask(
        &self,
        ctx: &egui::Context,
        dialog: PathDialog,
        start: Option<PathBuf>,
        then: impl FnOnce(Vec<PathBuf>) -> Option<Command> + Send + 'static,
    ) -> Result<(), String> {
        if self.open.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let open = self.open.clone();
        let sender = self.answers.0.clone();
        let ctx = ctx.clone();
        let pick = move || {
            let mut rfd_dialog = rfd::FileDialog::new();
            if let Some(dir) = start.filter(|d| d.is_dir()) {
                rfd_dialog = rfd_dialog.set_directory(dir);
            }
            // A dialog backend that panics must not leave the buttons disabled for good.
            let picked = std::panic::catch_unwind(move || match dialog {
                PathDialog::OpenFiles { title } => rfd_dialog.set_title(title).pick_files(),
                PathDialog::OpenFile { title, filter, extension } => {
                    rfd_dialog.set_title(title).add_filter(filter, &[extension.as_str()]).pick_file().map(|p| vec![p])
                }
                PathDialog::Folder { title } => rfd_dialog.set_title(title).pick_folder().map(|p| vec![p]),
                PathDialog::Save { title, file_name, filter, extension } => rfd_dialog
                    .set_title(title)
                    .set_file_name(file_name)
                    .add_filter(filter, &[extension.as_str()])
                    .save_file()
                    .map(|p| vec![p]),
            })
            .ok()
            .flatten();
            open.store(false, Ordering::SeqCst);
            if let Some(command) = picked.and_then(then) {
                let _ = sender.send(command);
            }
            ctx.request_repaint();
        };
        if cfg!(target_os = "macos") {
            pick();
            Ok(())
        } else {
            std::thread::Builder::new().name("melo-file-dialog".into()).spawn(pick).map(|_| ()).map_err(|e| {
                self.open.store(false, Ordering::SeqCst);
                format!("Cannot open the file dialog: {e}")
            })
        }
    }

    /// The commands of the dialogs answered since the last call.
    pub fn answers(&self) -> Vec<Command> {
        self.answers.1.try_iter().collect()
    }
}
