//! What a viewer shows about an image besides its pixels, and which of it identifies a patient.

use std::path::PathBuf;

use serde::Serialize;

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
    /// Identifies the patient (hidden when patient details are hidden).
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

impl ImageMeta {
    pub fn is_monochrome1(&self) -> bool {
        self.photometric == "MONOCHROME1"
    }

    /// Patient-identifying fields set to empty, tag rows marked PHI dropped.
    pub fn without_phi(&self) -> ImageMeta {
        let mut m = self.clone();
        for field in [
            &mut m.patient_name,
            &mut m.patient_id,
            &mut m.patient_birth_date,
            &mut m.patient_sex,
            &mut m.patient_age,
            &mut m.institution,
            &mut m.study_date,
            &mut m.accession_number,
        ] {
            field.clear();
        }
        m.tags.retain(|t| !t.phi);
        m.source = m.source.as_ref().and_then(|p| p.file_name().map(PathBuf::from));
        m
    }
}

/// Tags that identify a patient or could be used to (DICOM PS3.15 Annex E, the basic profile,
/// restricted to what appears in viewer overlays and headers). All of group 0010 counts too.
const PHI_TAGS: &[(u16, u16)] = &[
    (0x0008, 0x0020), // Study Date
    (0x0008, 0x0021), // Series Date
    (0x0008, 0x0022), // Acquisition Date
    (0x0008, 0x0023), // Content Date
    (0x0008, 0x0030), // Study Time
    (0x0008, 0x0031),
    (0x0008, 0x0032),
    (0x0008, 0x0033),
    (0x0008, 0x002A), // Acquisition DateTime
    (0x0008, 0x0050), // Accession Number
    (0x0008, 0x0080), // Institution Name
    (0x0008, 0x0081), // Institution Address
    (0x0008, 0x0090), // Referring Physician
    (0x0008, 0x0092),
    (0x0008, 0x0094),
    (0x0008, 0x1010), // Station Name
    (0x0008, 0x1040), // Institutional Department
    (0x0008, 0x1048), // Physician(s) of Record
    (0x0008, 0x1050), // Performing Physician
    (0x0008, 0x1060), // Reading Physician
    (0x0008, 0x1070), // Operators' Name
    (0x0018, 0x1000), // Device Serial Number
    (0x0020, 0x0010), // Study ID
    (0x0032, 0x1032), // Requesting Physician
    (0x0038, 0x0010), // Admission ID
    (0x0040, 0x0006), // Scheduled Performing Physician
    (0x0040, 0x0244), // Performed Procedure Step Start Date
    (0x0040, 0x0253), // Performed Procedure Step ID
    (0x4008, 0x0114), // Physician Approving Interpretation
];

pub fn is_phi_tag(group: u16, element: u16) -> bool {
    group == 0x0010 || PHI_TAGS.contains(&(group, element))
}
