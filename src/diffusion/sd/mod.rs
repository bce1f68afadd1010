//! Stable Diffusion 1.x / 2.x pipelines in the diffusers `StableDiffusionPipeline` folder
//! layout (issue 13): each component is read from its own sub-folder's `config.json` and
//! safetensors weights, with no built-in presets, and checked against diffusers /
//! transformers on tiny random pipelines (`tests/sd_*.rs`, fixtures in `tests/data/sd`).

pub mod clip_text;
pub mod pipeline;
pub mod stable_diffusion;
mod transformer2d;
pub mod unet_cond;
pub mod vae;
pub mod weights;
