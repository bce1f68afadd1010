//! Training diagnosis adapters (`melo train`): a LoRA adapter (MeLo: rank-r updates of q and v
//! — or of qkv and the MLP — in every block, plus a head), a linear probe (head only) or full fine-tuning of the shipped
//! backbone, from an ImageFolder directory or a MedMNIST `.npz`.
//!
//! - [`data`]: the loaders (ImageFolder with train/val/test or one folder split by seed; npz);
//!   every image goes through the engine's own preprocessing, so what is trained is what
//!   `melo predict` sees;
//! - [`metrics`]: accuracy, macro F1, one-vs-rest macro AUC (ties as half), per-class
//!   sensitivity / specificity, confusion matrix;
//! - [`augment`]: flips and the small random affine transform of training images;
//! - [`trainer`]: the training pass of `model::core` for LoRA and full fine-tuning, AdamW,
//!   cosine schedule, label smoothing, class weights, augmentation,
//!   per-epoch validation, best-epoch selection, checkpoints for `--resume`, atomic saves;
//! - [`cli`]: the `melo train` arguments.
//!
//! Nothing here depends on egui.

pub mod augment;
pub mod calibrate;
pub mod cli;
pub mod data;
pub mod metrics;
pub mod trainer;

use std::path::PathBuf;

/// Why training could not start or finish. Every bad input ends here with a sentence a user can
/// act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] crate::error::IoError),
    /// The data set is unusable (layout, labels, class counts).
    #[error("data set {path}: {reason}")]
    Data { path: PathBuf, reason: String },
    /// Options that contradict each other or the data.
    #[error("invalid training options: {0}")]
    Options(String),
    /// A checkpoint that does not belong to this run.
    #[error("cannot resume from {path}: {reason}")]
    Resume { path: PathBuf, reason: String },
    /// `--stop-after` reached: the checkpoint holds the finished epochs, no adapter written.
    #[error("stopped after epoch {epochs_done} as asked; continue with --resume (checkpoint {})", checkpoint.display())]
    Stopped { epochs_done: usize, checkpoint: PathBuf },
    #[error(transparent)]
    Model(#[from] crate::model::Error),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Melo(#[from] crate::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io(crate::error::IoError { path: path.into(), source })
    }

    pub(crate) fn data(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Data { path: path.into(), reason: reason.into() }
    }
}

/// The CLI reports every failure through the library error type (model errors by the model's
/// own conversion).
impl From<Error> for crate::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Model(inner) => inner.into(),
            Error::Melo(inner) => inner,
            Error::Io(e) => crate::Error::Io(e),
            other => crate::Error::Invalid(other.to_string()),
        }
    }
}
