//! MeLo Workstation library: everything the `melo` binary does, free of any GUI toolkit
//! except the `gui` module, which is the egui shell over the rest.

// Unsafe code is confined to the two kernel modules (`model::kernels`, `model::core`),
// where raw-pointer gemm calls write disjoint blocks from parallel tasks; each opts in with
// its own `#![allow(unsafe_code)]` and a SAFETY comment per block.
#![deny(unsafe_code)]

pub mod atomic;
pub mod audit;
pub mod cine;
pub mod cli;
pub mod codec;
pub mod deid;
pub mod diffusion;
pub mod display;
pub mod error;
pub mod export;
pub mod gui;
pub mod image;
pub mod measure;
pub mod model;
pub mod net;
pub mod report;
pub mod series;
pub mod stats;
pub mod store;
pub mod train;
pub mod volume;

pub use error::{Error, Result};
