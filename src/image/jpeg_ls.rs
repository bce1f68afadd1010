//! JPEG-LS (lossless .80 and near-lossless .81) frames, through the project's pure-Rust
//! decoder in `crate::codec` (dicom-rs only offers CharLS, which needs cmake and libclang).

use crate::error::{Error, Result};

/// Decodes one frame to samples interleaved by pixel, checking it against the header.
pub fn decode_frame(data: &[u8], rows: usize, cols: usize, samples: usize) -> Result<Vec<u32>> {
    let frame = crate::codec::decode_jpeg_ls(data).map_err(|e| Error::Decode(format!("JPEG-LS: {e}")))?;
    if frame.width as usize != cols || frame.height as usize != rows || usize::from(frame.components) != samples {
        return Err(Error::Decode(format!(
            "JPEG-LS frame is {}×{}×{}, header says {cols}×{rows}×{samples}",
            frame.width, frame.height, frame.components
        )));
    }
    Ok(frame.samples.into_iter().map(u32::from).collect())
}
