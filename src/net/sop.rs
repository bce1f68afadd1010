//! SOP classes and transfer syntaxes we propose or accept.

pub const VERIFICATION: &str = "1.2.840.10008.1.1";

pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
pub const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";

/// Uncompressed transfer syntaxes: a data set in one can be re-encoded into another by
/// rewriting element headers only.
pub const NATIVE: &[&str] = &[EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE];

/// Compressed transfer syntaxes we accept as they come (the store keeps the bytes the PACS
/// holds; the viewer decodes them), lossless ones first.
pub const COMPRESSED: &[&str] = &[
    "1.2.840.10008.1.2.4.90", // JPEG 2000 lossless
    "1.2.840.10008.1.2.4.70", // JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.57", // JPEG lossless
    "1.2.840.10008.1.2.4.80", // JPEG-LS lossless
    "1.2.840.10008.1.2.5",    // RLE lossless
    "1.2.840.10008.1.2.4.91", // JPEG 2000
    "1.2.840.10008.1.2.4.50", // JPEG baseline
    "1.2.840.10008.1.2.4.51", // JPEG extended
    "1.2.840.10008.1.2.4.81", // JPEG-LS near-lossless
    DEFLATED_LE,
];

/// Storage SOP classes proposed for C-GET (the peer can only send us what we propose, in
/// presentation contexts where we take the SCP role). At most 63: each gets two contexts
/// (uncompressed, compressed) and an association holds 128 at most.
pub const STORAGE: &[&str] = &[
    "1.2.840.10008.5.1.4.1.1.1",        // CR
    "1.2.840.10008.5.1.4.1.1.1.1",      // DX for presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",    // DX for processing
    "1.2.840.10008.5.1.4.1.1.1.2",      // mammography for presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",    // mammography for processing
    "1.2.840.10008.5.1.4.1.1.1.3",      // intra-oral for presentation
    "1.2.840.10008.5.1.4.1.1.2",        // CT
    "1.2.840.10008.5.1.4.1.1.2.1",      // enhanced CT
    "1.2.840.10008.5.1.4.1.1.2.2",      // legacy converted enhanced CT
    "1.2.840.10008.5.1.4.1.1.3.1",      // US multi-frame
    "1.2.840.10008.5.1.4.1.1.4",        // MR
    "1.2.840.10008.5.1.4.1.1.4.1",      // enhanced MR
    "1.2.840.10008.5.1.4.1.1.4.2",      // MR spectroscopy
    "1.2.840.10008.5.1.4.1.1.4.3",      // enhanced MR color
    "1.2.840.10008.5.1.4.1.1.4.4",      // legacy converted enhanced MR
    "1.2.840.10008.5.1.4.1.1.6.1",      // US
    "1.2.840.10008.5.1.4.1.1.6.2",      // enhanced US volume
    "1.2.840.10008.5.1.4.1.1.7",        // secondary capture
    "1.2.840.10008.5.1.4.1.1.7.1",      // multi-frame single bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",      // multi-frame grayscale byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",      // multi-frame grayscale word SC
    "1.2.840.10008.5.1.4.1.1.7.4",      // multi-frame true color SC
    "1.2.840.10008.5.1.4.1.1.9.1.1",    // 12-lead ECG
    "1.2.840.10008.5.1.4.1.1.9.1.2",    // general ECG
    "1.2.840.10008.5.1.4.1.1.11.1",     // grayscale softcopy presentation state
    "1.2.840.10008.5.1.4.1.1.11.2",     // color softcopy presentation state
    "1.2.840.10008.5.1.4.1.1.12.1",     // XA
    "1.2.840.10008.5.1.4.1.1.12.1.1",   // enhanced XA
    "1.2.840.10008.5.1.4.1.1.12.2",     // XRF
    "1.2.840.10008.5.1.4.1.1.13.1.1",   // X-ray 3D angiographic
    "1.2.840.10008.5.1.4.1.1.13.1.3",   // breast tomosynthesis
    "1.2.840.10008.5.1.4.1.1.20",       // NM
    "1.2.840.10008.5.1.4.1.1.30",       // parametric map
    "1.2.840.10008.5.1.4.1.1.66",       // raw data
    "1.2.840.10008.5.1.4.1.1.66.1",     // spatial registration
    "1.2.840.10008.5.1.4.1.1.66.4",     // segmentation
    "1.2.840.10008.5.1.4.1.1.67",       // real world value mapping
    "1.2.840.10008.5.1.4.1.1.77.1.1",   // VL endoscopic
    "1.2.840.10008.5.1.4.1.1.77.1.2",   // VL microscopic
    "1.2.840.10008.5.1.4.1.1.77.1.4",   // VL photographic
    "1.2.840.10008.5.1.4.1.1.77.1.5.1", // ophthalmic photography 8 bit
    "1.2.840.10008.5.1.4.1.1.77.1.5.4", // ophthalmic tomography
    "1.2.840.10008.5.1.4.1.1.77.1.6",   // VL whole slide microscopy
    "1.2.840.10008.5.1.4.1.1.88.11",    // basic text SR
    "1.2.840.10008.5.1.4.1.1.88.22",    // enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",    // comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",    // comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.59",    // key object selection
    "1.2.840.10008.5.1.4.1.1.88.67",    // X-ray radiation dose SR
    "1.2.840.10008.5.1.4.1.1.104.1",    // encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.128",      // PET
    "1.2.840.10008.5.1.4.1.1.128.1",    // legacy converted enhanced PET
    "1.2.840.10008.5.1.4.1.1.130",      // enhanced PET
    "1.2.840.10008.5.1.4.1.1.481.1",    // RT image
    "1.2.840.10008.5.1.4.1.1.481.2",    // RT dose
    "1.2.840.10008.5.1.4.1.1.481.3",    // RT structure set
    "1.2.840.10008.5.1.4.1.1.481.5",    // RT plan
    "1.2.840.10008.5.1.4.1.1.481.8",    // RT ion plan
    "1.2.840.10008.5.1.4.1.1.6",        // US (retired, still in archives)
    "1.2.840.10008.5.1.4.1.1.3",        // US multi-frame (retired)
];

/// Whether an SOP class is a storage class our SCP keeps: the standard storage branch, or a
/// private class (outside the standard's 1.2.840.10008 root).
pub fn is_storage_class(uid: &str) -> bool {
    uid.starts_with("1.2.840.10008.5.1.4.1.1.") || !uid.starts_with("1.2.840.10008.")
}

#[cfg(test)]
mod tests {
    #[test]
    fn storage_list_fits_one_association() {
        assert!(super::STORAGE.len() * 2 < 128);
        let mut seen = std::collections::HashSet::new();
        assert!(super::STORAGE.iter().all(|u| seen.insert(u)), "no duplicates");
    }
}
