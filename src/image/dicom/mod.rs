//! DICOM files: parsing (with or without preamble and file meta), pixel decoding for every
//! transfer syntax the corpus holds, colour conversion and the modality LUT — matching what
//! pydicom's `pixel_array` + `apply_modality_lut` / `apply_color_lut` give.
//!
//! One concern per file: `parse` (bytes to data set), `attributes` (data set to metadata
//! and tag listing), `pixels` (pixel decoding), `lut` (colour and LUTs), `lengths`
//! (length checks before dicom-rs reads).

use dicom_core::dictionary::DataDictionaryEntry;
use dicom_core::header::Header;
use dicom_core::value::Value as DicomValue;
use dicom_core::{DataDictionary, Tag, VR};
use dicom_dictionary_std::{tags, StandardDataDictionary};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::{entries, TransferSyntaxRegistry};

// The submodules share these imports through `use super::*`.
use super::meta::{is_phi_tag, ImageMeta, Photometric, TagEntry, VoiLut, Window};
use super::{jpeg_ls, LoadOptions, MedicalImage};
use crate::error::{Error, Result};

mod attributes;
mod lengths;
mod lut;
mod parse;
mod pixels;

use attributes::*;
use lengths::*;
use lut::*;
use pixels::*;

pub(crate) use parse::{parse, without_trailing_padding};

/// Opens and decodes a DICOM file (read-only).
pub fn load_dicom(path: &std::path::Path, options: &LoadOptions) -> Result<MedicalImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut image = load_dicom_bytes(&bytes, options)?;
    image.meta.source = Some(path.to_path_buf());
    Ok(image)
}

/// Decodes a DICOM file held in memory.
pub fn load_dicom_bytes(bytes: &[u8], options: &LoadOptions) -> Result<MedicalImage> {
    let (obj, inferred) = parse(bytes)?;
    // Decoders of third-party codecs may panic on hostile data: contain it to this file.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(&obj, inferred, options)))
        .map_err(|_| Error::Decode("decoder crashed on malformed pixel data".into()))?
}

/// Reads only the header (no pixel decoding): what folder scans and `melo info` need.
pub fn parse_header(bytes: &[u8]) -> Result<ImageMeta> {
    let (obj, inferred) = parse(bytes)?;
    Ok(read_meta(&obj, inferred))
}
