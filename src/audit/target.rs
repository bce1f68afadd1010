//! What the attacks query: a noise predictor over the candidates, whatever the model kind.
//!
//! - a pixel-space `UNet2DModel` ([`DiffusionModel`]): the candidates are the images themselves,
//!   and there is no conditioning;
//! - a Stable Diffusion pipeline ([`LatentTarget`]): the candidates are their VAE latents
//!   (posterior mean × scaling factor, as the training scripts and img2img encode), each queried
//!   with its own caption's text states, or with the empty caption ("" — what classifier-free
//!   guidance and CLiD use as the unconditional prediction).
//!
//! The loss, PIA and SecMI attacks run unchanged on both: they noise, denoise and invert in
//! whatever space the model works in. The trajectory attack compares its reconstructions with
//! the candidate in pixels, so a latent target decodes them ([`AuditTarget::decode`]).

use std::ops::Range;

use candle_core::Tensor;

use super::error::{Error, Result};
use crate::diffusion::sd::stable_diffusion::StableDiffusion;
use crate::diffusion::{DiffusionModel, NoiseSchedule};

/// Which text a conditional model is queried with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditioning {
    /// The candidate's own caption.
    Caption,
    /// The empty caption "" (the unconditional prediction).
    Empty,
}

/// `Sync`: the query runner evaluates two batches at once (see `QueryRunner::eps_with`).
pub trait AuditTarget: Sync {
    fn schedule(&self) -> &NoiseSchedule;
    /// ε̂ for `x`, whose rows are candidates `rows` (in the audit's order: members, then
    /// non-members), at timestep `t`.
    fn predict_noise(&self, x: &Tensor, t: usize, rows: Range<usize>, conditioning: Conditioning) -> Result<Tensor>;
    /// Whether the model takes a caption (CLiD needs one).
    fn is_text_conditional(&self) -> bool;
    /// Pixels of model-space tensors (`None` where the model works in pixels already).
    fn decode(&self, x: &Tensor) -> Result<Option<Tensor>>;
}

impl AuditTarget for DiffusionModel {
    fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn predict_noise(&self, x: &Tensor, t: usize, _rows: Range<usize>, _c: Conditioning) -> Result<Tensor> {
        Ok(DiffusionModel::predict_noise(self, x, t)?)
    }

    fn is_text_conditional(&self) -> bool {
        false
    }

    fn decode(&self, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// A Stable Diffusion pipeline with the text states of the candidates' captions.
pub struct LatentTarget<'a> {
    pub pipeline: &'a StableDiffusion,
    /// `[N, 77, D]`, row i = candidate i's caption.
    captions: Tensor,
    /// `[1, 77, D]`, the empty caption.
    empty: Tensor,
}

impl<'a> LatentTarget<'a> {
    /// Encodes each candidate's caption once (`captions[i]` belongs to candidate i).
    pub fn new(pipeline: &'a StableDiffusion, captions: &[String]) -> Result<Self> {
        let states = pipeline.encode_prompts(captions)?;
        let empty = pipeline.encode_prompts(&[String::new()])?;
        Ok(Self { pipeline, captions: states, empty })
    }

    pub fn len(&self) -> usize {
        self.captions.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl AuditTarget for LatentTarget<'_> {
    fn schedule(&self) -> &NoiseSchedule {
        &self.pipeline.schedule
    }

    fn predict_noise(&self, x: &Tensor, t: usize, rows: Range<usize>, conditioning: Conditioning) -> Result<Tensor> {
        let b = x.dim(0)?;
        if rows.len() != b || rows.end > self.len() {
            return Err(Error::Params(format!(
                "internal: a batch of {b} latents for candidates {rows:?} of {}",
                self.len()
            )));
        }
        let text = match conditioning {
            Conditioning::Caption => self.captions.narrow(0, rows.start, b)?,
            Conditioning::Empty => self.empty.repeat((b, 1, 1))?,
        };
        Ok(self.pipeline.predict_noise(x, t, &text)?)
    }

    fn is_text_conditional(&self) -> bool {
        true
    }

    fn decode(&self, x: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.pipeline.decode_latents(x)?))
    }
}
