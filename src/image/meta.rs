//! What a viewer shows about an image besides its pixels, and which of it identifies a patient.

use std::path::PathBuf;

use serde::Serialize;

use super::deidentify::{basic_profile_action, element_action, replacement_uid, session_salt, Action};

/// A VOI window from the header (or a preset): centre/width in modality units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Window {
    pub center: f64,
    pub width: f64,
}

/// A VOI LUT from the VOI LUT Sequence (0028,3010).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VoiLut {
    pub first_mapped: f64,
    pub bits: u16,
    pub data: Vec<u16>,
    pub explanation: String,
}

/// One row of the tag browser.
#[derive(Debug, Clone, Serialize)]
pub struct TagEntry {
    pub group: u16,
    pub element: u16,
    pub name: String,
    pub vr: String,
    pub value: String,
    /// Nesting depth inside sequences (0 = top level).
    pub depth: usize,
    /// The basic confidentiality profile changes the value, here or in a sequence holding it
    /// (hidden, or a UID replaced, when patient details are hidden).
    pub phi: bool,
}

impl TagEntry {
    pub fn tag_string(&self) -> String {
        format!("({:04X},{:04X})", self.group, self.element)
    }
}

/// Metadata of one image file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageMeta {
    pub source: Option<PathBuf>,
    pub modality: String,
    pub photometric: String,
    /// Transfer syntax UID for DICOM, the container format for rasters.
    pub transfer_syntax: String,
    pub transfer_syntax_name: String,
    /// The file had no usable file meta: its encoding was inferred from the data set.
    pub inferred_encoding: bool,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
    /// "HU" for CT with a rescale, else the Rescale Type or empty.
    pub units: String,
    pub windows: Vec<Window>,
    pub voi_luts: Vec<VoiLut>,
    /// Row spacing, column spacing in mm.
    pub pixel_spacing: Option<[f64; 2]>,
    /// Imager Pixel Spacing (0018,1164): row, column spacing in mm at the detector, not in the
    /// patient (projection images magnify); used for measurements only when Pixel Spacing is absent.
    pub imager_pixel_spacing: Option<[f64; 2]>,
    /// Frame Time (0018,1063) in ms, for cine.
    pub frame_time_ms: Option<f64>,
    /// Cine Rate (0018,0040), frames per second.
    pub cine_rate: Option<f64>,
    /// Recommended Display Frame Rate (0008,2144), frames per second.
    pub recommended_frame_rate: Option<f64>,
    pub image_orientation: Option<[f64; 6]>,
    pub image_position: Option<[f64; 3]>,
    pub slice_location: Option<f64>,
    pub instance_number: Option<i64>,
    pub series_uid: String,
    pub study_uid: String,
    pub series_description: String,
    pub study_description: String,
    pub series_number: Option<i64>,
    pub body_part: String,
    // Patient-identifying fields: hidden in every overlay, panel and export on request.
    pub patient_name: String,
    pub patient_id: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub patient_age: String,
    pub institution: String,
    pub study_date: String,
    pub accession_number: String,
    pub tags: Vec<TagEntry>,
}

/// Photometric Interpretation (0028,0004), as the decoder acts on it. The metadata keeps the
/// attribute's text for display; code that branches on it matches on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Photometric {
    Monochrome1,
    Monochrome2,
    PaletteColor,
    Rgb,
    /// YBR_FULL: Y Cb Cr, one triple per pixel.
    YbrFull,
    /// YBR_FULL_422: Y1 Y2 Cb Cr per pair of pixels when not compressed.
    YbrFull422,
    /// Anything else (YBR_ICT, YBR_RCT, … are converted by their codecs), or missing.
    Other,
}

impl Photometric {
    pub fn parse(text: &str) -> Self {
        match text.trim_end_matches(['\0', ' ']) {
            "MONOCHROME1" => Photometric::Monochrome1,
            "MONOCHROME2" => Photometric::Monochrome2,
            "PALETTE COLOR" => Photometric::PaletteColor,
            "RGB" => Photometric::Rgb,
            "YBR_FULL" => Photometric::YbrFull,
            "YBR_FULL_422" => Photometric::YbrFull422,
            _ => Photometric::Other,
        }
    }

    /// YBR_FULL or YBR_FULL_422: full-range YCbCr, converted to RGB after decoding.
    pub fn is_ybr_full(self) -> bool {
        matches!(self, Photometric::YbrFull | Photometric::YbrFull422)
    }
}

impl ImageMeta {
    pub fn photometric_kind(&self) -> Photometric {
        Photometric::parse(&self.photometric)
    }

    pub fn is_monochrome1(&self) -> bool {
        self.photometric_kind() == Photometric::Monochrome1
    }

    /// What may be shown with patient details hidden: every field and tag row the basic
    /// profile of DICOM PS3.15 (see [`deidentify`](super::deidentify)) does not keep is
    /// hidden, UIDs replaced by session-salted stand-ins, and the source reduced to its file
    /// name. Rows nested in a hidden sequence go with it.
    pub fn without_phi(&self) -> ImageMeta {
        self.without_phi_salted(session_salt())
    }

    /// [`without_phi`](Self::without_phi) with the UID replacements under `salt`.
    pub fn without_phi_salted(&self, salt: &[u8]) -> ImageMeta {
        let mut m = self.clone();
        for (field, (group, element)) in m.text_fields_mut() {
            match basic_profile_action(group, element) {
                None => {}
                Some(Action::ReplaceUid) => *field = replacement_uid(field, salt),
                Some(_) => field.clear(),
            }
        }
        m.tags = tags_without_phi(&self.tags, salt);
        m.source = m.source.as_ref().and_then(|p| p.file_name().map(PathBuf::from));
        m
    }

    /// The text fields read from one attribute each, with that attribute's tag: the fields
    /// `without_phi` decides on through the profile's list, like the tag rows.
    fn text_fields_mut(&mut self) -> [(&mut String, (u16, u16)); 17] {
        [
            (&mut self.modality, (0x0008, 0x0060)),
            (&mut self.photometric, (0x0028, 0x0004)),
            (&mut self.transfer_syntax, (0x0002, 0x0010)),
            (&mut self.units, (0x0028, 0x1054)),
            (&mut self.series_uid, (0x0020, 0x000E)),
            (&mut self.study_uid, (0x0020, 0x000D)),
            (&mut self.series_description, (0x0008, 0x103E)),
            (&mut self.study_description, (0x0008, 0x1030)),
            (&mut self.body_part, (0x0018, 0x0015)),
            (&mut self.patient_name, (0x0010, 0x0010)),
            (&mut self.patient_id, (0x0010, 0x0020)),
            (&mut self.patient_birth_date, (0x0010, 0x0030)),
            (&mut self.patient_sex, (0x0010, 0x0040)),
            (&mut self.patient_age, (0x0010, 0x1010)),
            (&mut self.institution, (0x0008, 0x0080)),
            (&mut self.study_date, (0x0008, 0x0020)),
            (&mut self.accession_number, (0x0008, 0x0050)),
        ]
    }
}

/// Tag rows (pre-order, with depths) as they may be shown: rows the profile replaces with a
/// UID keep their place with the replacement, every other listed row is dropped with all
/// rows nested under it, and so is a row the reader marked (inside a hidden sequence).
fn tags_without_phi(rows: &[TagEntry], salt: &[u8]) -> Vec<TagEntry> {
    let mut kept = Vec::with_capacity(rows.len());
    // Depth of the hidden row whose nested rows are being skipped.
    let mut hidden_at: Option<usize> = None;
    for row in rows {
        match hidden_at {
            Some(depth) if row.depth > depth => continue,
            _ => hidden_at = None,
        }
        match element_action(row.group, row.element, &row.vr) {
            Some(Action::ReplaceUid) => {
                let value = row.value.split('\\').map(|uid| replacement_uid(uid, salt)).collect::<Vec<_>>().join("\\");
                kept.push(TagEntry { value, ..row.clone() });
            }
            Some(_) => hidden_at = Some(row.depth),
            None if row.phi => hidden_at = Some(row.depth),
            None => kept.push(row.clone()),
        }
    }
    kept
}

/// Whether the basic profile changes this attribute's value (removes, empties, replaces it),
/// wherever it is nested. The reader marks such rows; [`ImageMeta::without_phi`] hides them.
pub fn is_phi_tag(group: u16, element: u16) -> bool {
    basic_profile_action(group, element).is_some()
}
