//! Pixel decoding: dicom-rs for most transfer syntaxes, our own JPEG, JPEG-LS and RLE paths,
//! frame splitting and planar / YBR 4:2:2 layouts.

use super::*;

const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
const JPEG_LS_NEAR_LOSSLESS: &str = "1.2.840.10008.1.2.4.81";

/// Decoded samples before any LUT: one f64 per sample, interleaved.
pub(super) struct Samples {
    pub(super) values: Vec<f64>,
    pub(super) channels: usize,
    /// Colour already converted to RGB by the codec (JPEG, JPEG 2000).
    pub(super) codec_converted_color: bool,
}

pub(super) fn decode(obj: &DefaultDicomObject, inferred: bool, options: &LoadOptions) -> Result<MedicalImage> {
    let meta = read_meta(obj, inferred);
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(Error::NoPixelData);
    }
    let rows = required_u16(obj, tags::ROWS, "Rows (0028,0010)")? as usize;
    let cols = required_u16(obj, tags::COLUMNS, "Columns (0028,0011)")? as usize;
    let spp = required_u16(obj, tags::SAMPLES_PER_PIXEL, "Samples per Pixel (0028,0002)").unwrap_or(1) as usize;
    let bits_allocated = required_u16(obj, tags::BITS_ALLOCATED, "Bits Allocated (0028,0100)")?;
    let bits_stored = int_of(obj, tags::BITS_STORED).map(|v| v as u16).unwrap_or(bits_allocated);
    let frames = int_of(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1) as usize;
    if rows == 0 || cols == 0 {
        return Err(Error::Invalid("image has zero rows or columns".into()));
    }
    if !matches!(spp, 1 | 3) {
        return Err(Error::Unsupported(format!("{spp} samples per pixel")));
    }
    if !matches!(bits_allocated, 1 | 8 | 16 | 32) || bits_stored == 0 || bits_stored > bits_allocated {
        return Err(Error::Unsupported(format!("Bits Allocated {bits_allocated} / Bits Stored {bits_stored}")));
    }
    options.limits.check(rows as u64, cols as u64, frames as u64, spp as u64)?;
    let photometric = meta.photometric_kind();
    let geometry = Geometry { rows, cols, spp, frames, bits_allocated, bits_stored };
    let samples = if let Some(codec) = OwnCodec::for_transfer_syntax(&meta.transfer_syntax) {
        decode_encapsulated(obj, codec, &geometry, &meta)?
    } else {
        decode_with_dicom_rs(obj, &geometry, &meta)?
    };
    let mut values = samples.values;
    let channels = samples.channels;
    let is_ybr = photometric.is_ybr_full();
    if channels == 3 && is_ybr && !samples.codec_converted_color {
        ybr_full_to_rgb(&mut values, bits_stored);
    }
    let (channels, values) = if photometric == Photometric::PaletteColor && channels == 1 {
        (3, apply_palette(obj, &values, meta.signed)?)
    } else if channels == 1 {
        (1, apply_modality_lut(obj, &meta, values))
    } else {
        (channels, values.into_iter().map(|v| v as f32).collect())
    };
    Ok(MedicalImage { meta, frames, rows, cols, channels, values })
}

pub(super) fn decode_with_dicom_rs(obj: &DefaultDicomObject, g: &Geometry, meta: &ImageMeta) -> Result<Samples> {
    let Geometry { rows, cols, spp, frames, bits_allocated, bits_stored } = *g;
    let fragments = match obj.element(tags::PIXEL_DATA).map(|e| e.value()) {
        Ok(DicomValue::PixelSequence(seq)) => Some(seq.fragments()),
        _ => None,
    };
    let encapsulated = fragments.is_some();
    for fragment in fragments.into_iter().flatten() {
        check_jpeg2000_size(fragment, g)?;
    }
    let decoded = obj.decode_pixel_data().map_err(|e| decode_error(&e.to_string(), meta))?;
    let data = decoded.data();
    let pixels = rows * cols;
    let ybr422 = meta.photometric_kind() == Photometric::YbrFull422 && !encapsulated && bits_allocated == 8;
    let bytes_per_sample = (bits_allocated as usize).div_ceil(8);
    let expected = if bits_allocated == 1 {
        pixels * spp * frames // dicom-rs expands 1-bit samples to one byte each
    } else if ybr422 {
        pixels * 2 * frames
    } else {
        pixels * spp * frames * bytes_per_sample
    };
    if data.len() < expected {
        return Err(Error::Decode(format!(
            "pixel data holds {} bytes, the header needs {expected} ({frames} frame(s) of {cols}×{rows}×{spp} at {bits_allocated} bits)",
            data.len()
        )));
    }
    let data = &data[..expected];
    let signed = meta.signed;
    let mut values: Vec<f64> = match bits_allocated {
        1 => data.iter().map(|&b| f64::from(b != 0)).collect(),
        8 => data.iter().map(|&b| sign_extend(u64::from(b), bits_stored, signed)).collect(),
        16 => data
            .chunks_exact(2)
            .map(|c| sign_extend(u64::from(u16::from_le_bytes([c[0], c[1]])), bits_stored, signed))
            .collect(),
        // Explicit VR big endian: dicom-rs swaps bytes per 16-bit word (OW), so the two words of
        // a 32-bit sample arrive in big-endian order.
        _ if meta.transfer_syntax == entries::EXPLICIT_VR_BIG_ENDIAN.uid() => data
            .chunks_exact(4)
            .map(|c| sign_extend(u64::from(u32::from_le_bytes([c[2], c[3], c[0], c[1]])), bits_stored, signed))
            .collect(),
        _ => data
            .chunks_exact(4)
            .map(|c| sign_extend(u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])), bits_stored, signed))
            .collect(),
    };
    // JPEG 2000 decoders undo the component transform (RCT/ICT) themselves.
    let codec_converted_color = encapsulated && spp == 3;
    if ybr422 {
        values = expand_ybr422(&values, rows, cols, frames)?;
    } else if spp == 3 && decoded.planar_configuration() == dicom_pixeldata::PlanarConfiguration::PixelFirst {
        values = interleave_planes(&values, pixels, frames);
    }
    Ok(Samples { values, channels: spp, codec_converted_color })
}

pub(super) fn decode_error(message: &str, meta: &ImageMeta) -> Error {
    if TransferSyntaxRegistry.get(&meta.transfer_syntax).is_none() {
        Error::Unsupported(format!("unknown transfer syntax {}", meta.transfer_syntax))
    } else {
        Error::Decode(format!("{} ({}): {message}", meta.transfer_syntax_name, meta.transfer_syntax))
    }
}

/// Samples wider than Bits Stored carry garbage in the high bits; for signed data the stored
/// sign bit is extended (as pydicom does). Unsigned data keeps its bits untouched.
pub(super) fn sign_extend(raw: u64, bits_stored: u16, signed: bool) -> f64 {
    if !signed {
        return raw as f64;
    }
    let shift = 64 - u32::from(bits_stored);
    (((raw << shift) as i64) >> shift) as f64
}

/// Transfer syntaxes decoded here rather than by dicom-rs: JPEG-LS (no pure-Rust codec
/// there), JPEG (dicom-rs converts colour in the codec, pydicom leaves it to the photometric
/// interpretation) and RLE (dicom-rs refuses 32-bit samples).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum OwnCodec {
    JpegLs,
    Jpeg,
    Rle,
}

impl OwnCodec {
    fn for_transfer_syntax(uid: &str) -> Option<OwnCodec> {
        match uid {
            JPEG_LS_LOSSLESS | JPEG_LS_NEAR_LOSSLESS => Some(OwnCodec::JpegLs),
            "1.2.840.10008.1.2.4.50"
            | "1.2.840.10008.1.2.4.51"
            | "1.2.840.10008.1.2.4.57"
            | "1.2.840.10008.1.2.4.70" => Some(OwnCodec::Jpeg),
            "1.2.840.10008.1.2.5" => Some(OwnCodec::Rle),
            _ => None,
        }
    }
}

/// dicom-rs 0.10.1's JPEG 2000 adapter copies each decoded component into a buffer sized
/// from Rows × Columns without a bounds check, and panics when the codestream is larger (found
/// by `fuzz/dicom_decode`). Reads the codestream's SIZ marker (ISO 15444-1 A.5.1: image and
/// offset sizes, component count; big endian, right after SOC) and refuses a frame larger
/// than the header's geometry before decoding.
pub(super) fn check_jpeg2000_size(fragment: &[u8], g: &Geometry) -> Result<()> {
    if fragment.len() < 42 || fragment[..4] != [0xFF, 0x4F, 0xFF, 0x51] {
        return Ok(()); // not a bare JPEG 2000 codestream
    }
    let u32_at = |p: usize| u32::from_be_bytes([fragment[p], fragment[p + 1], fragment[p + 2], fragment[p + 3]]);
    let width = u32_at(8).saturating_sub(u32_at(16)) as usize;
    let height = u32_at(12).saturating_sub(u32_at(20)) as usize;
    let components = u16::from_be_bytes([fragment[40], fragment[41]]) as usize;
    if width.saturating_mul(height) > g.rows * g.cols || components > g.spp {
        return Err(Error::Decode(format!(
            "JPEG 2000 frame is {width}×{height} with {components} component(s); the header says {}×{} with {}",
            g.cols, g.rows, g.spp
        )));
    }
    Ok(())
}

#[derive(Clone, Copy)]
pub(super) struct Geometry {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) spp: usize,
    pub(super) frames: usize,
    pub(super) bits_allocated: u16,
    pub(super) bits_stored: u16,
}

pub(super) fn decode_encapsulated(
    obj: &DefaultDicomObject,
    codec: OwnCodec,
    g: &Geometry,
    meta: &ImageMeta,
) -> Result<Samples> {
    let elem = obj.element(tags::PIXEL_DATA).map_err(|_| Error::NoPixelData)?;
    let DicomValue::PixelSequence(seq) = elem.value() else {
        return Err(Error::Decode(format!("{} pixel data is not encapsulated", meta.transfer_syntax_name)));
    };
    let fragments = seq.fragments();
    let frame_streams: Vec<Vec<u8>> = if fragments.len() == g.frames {
        fragments.iter().map(|f| f.to_vec()).collect()
    } else if g.frames == 1 {
        vec![fragments.iter().flatten().copied().collect()]
    } else {
        let offsets = seq.offset_table();
        if offsets.len() != g.frames {
            return Err(Error::Decode(format!(
                "{} fragments for {} frames and no usable offset table",
                fragments.len(),
                g.frames
            )));
        }
        split_by_offsets(fragments, offsets)?
    };
    let per_frame = g.rows * g.cols * g.spp;
    let mut values = Vec::with_capacity(per_frame * g.frames);
    for stream in &frame_streams {
        let frame: Vec<u32> = match codec {
            OwnCodec::JpegLs => jpeg_ls::decode_frame(stream, g.rows, g.cols, g.spp)?,
            OwnCodec::Jpeg => decode_jpeg_frame(stream, g, meta)?,
            OwnCodec::Rle => decode_rle_frame(stream, g)?,
        };
        if frame.len() != per_frame {
            return Err(Error::Decode(format!(
                "a decoded frame holds {} samples, the header needs {per_frame} ({}×{}×{})",
                frame.len(),
                g.cols,
                g.rows,
                g.spp
            )));
        }
        values.extend(frame.into_iter().map(|v| sign_extend(u64::from(v), g.bits_stored, meta.signed)));
    }
    // The JPEG codec converts YCbCr itself; RLE and JPEG-LS give the components as stored.
    Ok(Samples { values, channels: g.spp, codec_converted_color: codec == OwnCodec::Jpeg })
}

/// JPEG baseline / extended / lossless. Colour: the codec's usual rules (JFIF and Adobe
/// markers, component ids), except that a 3-component stream with neither marker whose header
/// says RGB is taken as RGB — libjpeg, pydicom's codec, does the same.
pub(super) fn decode_jpeg_frame(stream: &[u8], g: &Geometry, meta: &ImageMeta) -> Result<Vec<u32>> {
    let mut decoder = jpeg_decoder::Decoder::new(stream);
    // jpeg-decoder 0.3.2 handles "no colour transform" only for full-resolution components:
    // with a subsampled one it overruns its output row and panics (fuzz finding), so such a
    // stream keeps the codec's own rule (YCbCr), as libjpeg does for component ids other
    // than 'R', 'G', 'B'.
    let hints = jpeg_header_hints(stream);
    // A frame larger than the header's geometry would be decoded in full before the size
    // check below (a 2.5 KB file claiming 65023 × 64623 grew to 24 GB: fuzz finding).
    if let Some((width, height)) = hints.frame_size {
        check_jpeg_frame_size(width, height, g)?;
    }
    if meta.photometric_kind() == Photometric::Rgb && !hints.colour_marker && hints.full_resolution {
        decoder.set_color_transform(jpeg_decoder::ColorTransform::None);
    }
    let pixels = match decoder.decode() {
        Ok(p) => p,
        Err(jpeg_decoder::Error::Unsupported(jpeg_decoder::UnsupportedFeature::SamplePrecision(12))) => {
            return decode_jpeg12_frame(stream, g);
        }
        Err(e) => return Err(decode_error(&e.to_string(), meta)),
    };
    let info = decoder.info().ok_or_else(|| Error::Decode("JPEG stream without a frame header".into()))?;
    // Again after decoding: the look-ahead may not have reached the frame header.
    check_jpeg_frame_size(usize::from(info.width), usize::from(info.height), g)?;
    Ok(match info.pixel_format {
        jpeg_decoder::PixelFormat::L16 => {
            pixels.chunks_exact(2).map(|c| u32::from(u16::from_ne_bytes([c[0], c[1]]))).collect()
        }
        jpeg_decoder::PixelFormat::CMYK32 => return Err(Error::Unsupported("4-component JPEG".into())),
        _ => pixels.into_iter().map(u32::from).collect(),
    })
}

/// A JPEG frame must be exactly the DICOM header's Rows × Columns.
pub(super) fn check_jpeg_frame_size(width: usize, height: usize, g: &Geometry) -> Result<()> {
    if (width, height) != (g.cols, g.rows) {
        return Err(Error::Decode(format!("JPEG frame is {width}×{height}, header says {}×{}", g.cols, g.rows)));
    }
    Ok(())
}

/// 12-bit DCT JPEG (process 4) through the project's own decoder: components as coded.
pub(super) fn decode_jpeg12_frame(stream: &[u8], g: &Geometry) -> Result<Vec<u32>> {
    let frame = crate::codec::decode_jpeg_extended(stream).map_err(|e| Error::Decode(format!("JPEG Extended: {e}")))?;
    if frame.width as usize != g.cols || frame.height as usize != g.rows || usize::from(frame.components) != g.spp {
        return Err(Error::Decode(format!(
            "JPEG frame is {}×{}×{}, header says {}×{}×{}",
            frame.width, frame.height, frame.components, g.cols, g.rows, g.spp
        )));
    }
    if g.spp == 3 {
        return Err(Error::Unsupported("12-bit colour JPEG".into()));
    }
    Ok(frame.samples.into_iter().map(u32::from).collect())
}

/// What the JPEG stream's header says, read up to its first scan, before decoding.
pub(super) struct JpegHeaderHints {
    /// A JFIF (APP0) or Adobe (APP14) marker: the codec's own colour rules apply.
    pub(super) colour_marker: bool,
    /// The frame header (SOF) was reached and every component is sampled 1 × 1.
    pub(super) full_resolution: bool,
    /// Width and height of the frame header, if reached.
    pub(super) frame_size: Option<(usize, usize)>,
}

pub(super) fn jpeg_header_hints(stream: &[u8]) -> JpegHeaderHints {
    let mut hints = JpegHeaderHints { colour_marker: false, full_resolution: false, frame_size: None };
    let mut i = 2;
    while i + 4 <= stream.len() {
        // Bytes between segments and fill bytes are skipped, as the decoders do.
        if stream[i] != 0xFF || stream[i + 1] == 0xFF {
            i += 1;
            continue;
        }
        let marker = stream[i + 1];
        if marker == 0xDA {
            break;
        }
        let len = usize::from(u16::from_be_bytes([stream[i + 2], stream[i + 3]]));
        if len < 2 {
            // The length counts its own two bytes; anything less is malformed, and the
            // decoder, not this look-ahead, says so.
            break;
        }
        // A complete Adobe segment holds its transform flag at byte 11; a truncated one says nothing.
        let payload = &stream[(i + 4).min(stream.len())..(i + 2 + len).min(stream.len())];
        if (marker == 0xE0 && payload.starts_with(b"JFIF"))
            || (marker == 0xEE && payload.starts_with(b"Adobe") && payload.len() >= 12)
        {
            hints.colour_marker = true;
        }
        // SOF0…SOF15 but DHT (C4), JPG (C8) and DAC (CC): precision, height, width, component
        // count, then (id, HV sampling, table) per component.
        if (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) && payload.len() >= 6 {
            let count = usize::from(payload[5]);
            let components = payload[6..].chunks_exact(3).take(count);
            hints.full_resolution = components.len() == count && components.clone().all(|c| c[1] == 0x11);
            let height = usize::from(u16::from_be_bytes([payload[1], payload[2]]));
            let width = usize::from(u16::from_be_bytes([payload[3], payload[4]]));
            hints.frame_size = Some((width, height));
        }
        i += 2 + len;
    }
    hints
}

/// DICOM RLE (PS3.5 Annex G): up to 15 PackBits segments, one per byte plane, most
/// significant byte first, planes of one sample after another.
pub(super) fn decode_rle_frame(stream: &[u8], g: &Geometry) -> Result<Vec<u32>> {
    let bytes_per_sample = usize::from(g.bits_allocated).div_ceil(8);
    let segments_needed = bytes_per_sample * g.spp;
    if stream.len() < 64 {
        return Err(Error::Decode("RLE header truncated".into()));
    }
    let word = |i: usize| {
        u32::from_le_bytes([stream[4 * i], stream[4 * i + 1], stream[4 * i + 2], stream[4 * i + 3]]) as usize
    };
    let segments = word(0);
    if segments != segments_needed || segments > 15 {
        return Err(Error::Decode(format!("RLE frame has {segments} segments, expected {segments_needed}")));
    }
    let pixels = g.rows * g.cols;
    let mut out = vec![0u32; pixels * g.spp];
    for s in 0..segments {
        let start = word(1 + s);
        let end = if s + 1 < segments { word(2 + s) } else { stream.len() };
        if start < 64 || start > end || end > stream.len() {
            return Err(Error::Decode(format!("RLE segment {s} offsets out of range")));
        }
        let plane = unpack_bits(&stream[start..end], pixels);
        let sample = s / bytes_per_sample;
        let shift = 8 * (bytes_per_sample - 1 - s % bytes_per_sample);
        for (p, &b) in plane.iter().enumerate() {
            out[p * g.spp + sample] |= u32::from(b) << shift;
        }
    }
    Ok(out)
}

/// PackBits into exactly `len` bytes (short segments are zero-padded, as decoders do).
pub(super) fn unpack_bits(src: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0;
    while i < src.len() && out.len() < len {
        let n = src[i] as i8;
        i += 1;
        if n >= 0 {
            let count = (n as usize + 1).min(src.len() - i);
            out.extend_from_slice(&src[i..i + count]);
            i += count;
        } else if n != -128 {
            if let Some(&b) = src.get(i) {
                out.extend(std::iter::repeat_n(b, 1 + (-(n as isize)) as usize));
            }
            i += 1;
        }
    }
    out.resize(len, 0);
    out
}

pub(super) fn split_by_offsets(fragments: &[Vec<u8>], offsets: &[u32]) -> Result<Vec<Vec<u8>>> {
    // Offsets count bytes from the first fragment's item tag: 8 bytes of item header each.
    let mut starts = Vec::with_capacity(fragments.len());
    let mut pos = 0u64;
    for f in fragments {
        starts.push(pos);
        pos += 8 + f.len() as u64;
    }
    let mut frames = Vec::with_capacity(offsets.len());
    for (i, &start) in offsets.iter().enumerate() {
        let end = offsets.get(i + 1).map(|&e| u64::from(e)).unwrap_or(u64::MAX);
        let stream: Vec<u8> = fragments
            .iter()
            .zip(&starts)
            .filter(|(_, &s)| s >= u64::from(start) && s < end)
            .flat_map(|(f, _)| f.iter().copied())
            .collect();
        if stream.is_empty() {
            return Err(Error::Decode(format!("frame {i} has no fragments")));
        }
        frames.push(stream);
    }
    Ok(frames)
}

pub(super) fn interleave_planes(values: &[f64], pixels: usize, frames: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(values.len());
    for f in 0..frames {
        let frame = &values[f * pixels * 3..(f + 1) * pixels * 3];
        for p in 0..pixels {
            out.extend([frame[p], frame[pixels + p], frame[2 * pixels + p]]);
        }
    }
    out
}

/// YBR_FULL_422 stores Y1 Y2 Cb Cr per pair of pixels; expand to one Y Cb Cr per pixel.
pub(super) fn expand_ybr422(values: &[f64], rows: usize, cols: usize, frames: usize) -> Result<Vec<f64>> {
    if !cols.is_multiple_of(2) {
        return Err(Error::Unsupported("YBR_FULL_422 with an odd number of columns".into()));
    }
    let mut out = Vec::with_capacity(rows * cols * 3 * frames);
    for quad in values.chunks_exact(4) {
        let (y1, y2, cb, cr) = (quad[0], quad[1], quad[2], quad[3]);
        out.extend([y1, cb, cr, y2, cb, cr]);
    }
    Ok(out)
}
