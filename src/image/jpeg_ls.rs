//! JPEG-LS (lossless .80 and near-lossless .81) frames, through a pure-Rust decoder, since
//! dicom-rs only offers CharLS (which needs cmake and libclang to build).

use crate::error::{Error, Result};

/// One decoded JPEG-LS frame: little-endian samples, interleaved by pixel.
pub struct JlsFrame {
    pub bytes: Vec<u8>,
    pub bits_per_sample: u8,
}

pub fn decode_frame(data: &[u8], rows: usize, cols: usize, samples: usize) -> Result<JlsFrame> {
    // The decoder trusts its markers; a panic inside it must not take the viewer down.
    let decoded = std::panic::catch_unwind(|| dicom_toolkit_codec::jpeg_ls::decoder::decode_jpeg_ls(data))
        .map_err(|_| Error::Decode("JPEG-LS decoder failed on malformed data".into()))?
        .map_err(|e| Error::Decode(format!("JPEG-LS: {e}")))?;
    if decoded.width as usize != cols || decoded.height as usize != rows || decoded.components as usize != samples {
        return Err(Error::Decode(format!(
            "JPEG-LS frame is {}×{}×{}, header says {cols}×{rows}×{samples}",
            decoded.width, decoded.height, decoded.components
        )));
    }
    Ok(JlsFrame {
        bytes: decoded.pixels,
        bits_per_sample: decoded.bits_per_sample,
    })
}
