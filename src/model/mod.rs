//! The diagnosis engine: one frozen Vision Transformer kept in memory, many small LoRA task
//! adapters (MeLo, Zhu et al., ISBI 2024) switched by index.
//!
//! - [`core`]: the ViT's primitives (LayerNorm, linear map with low-rank updates, attention,
//!   GELU MLP) on plain `f32` buffers, each with a forward and a backward pass: inference runs
//!   the forward without keeping activations, training (`crate::train`) keeps them and runs the
//!   backward for the tensors its method trains;
//! - [`vit`]: the ViT itself (DINOv2 ViT-S/14, timm ViT-B/16, any timm-named ViT), written for
//!   candle so that attention can take a low-rank update without touching frozen weights;
//! - [`lora`]: task adapters — file format, metadata, importers for MeLo and HF PEFT files;
//! - [`engine`]: backbone + registered adapters, preprocessing, prediction, explanation;
//! - [`cli`]: the `melo predict`, `melo adapters` and `melo bench` handlers.
//!
//! Nothing here depends on egui.

pub mod bench;
pub mod calibration;
pub mod cli;
pub mod core;
pub mod engine;
mod error;
pub mod facts;
pub mod kernels;
pub mod lora;
pub mod ood;
pub(crate) mod safetensors_io;
pub mod vit;

pub use engine::{Engine, Heatmap, OodCheck, Prediction};
pub use error::{Error, Result};
pub use lora::{Adapter, AdapterMetadata};
pub use vit::{Config, Pooling, VisionTransformer};
