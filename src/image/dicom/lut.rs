//! Colour and look-up tables: YBR to RGB, palette colour (segmented LUTs included) and the
//! modality LUT.

use super::*;

/// YCbCr (full range) to RGB, pydicom's `convert_color_space` rounding.
pub(super) fn ybr_full_to_rgb(values: &mut [f64], bits_stored: u16) {
    let max = ((1u64 << bits_stored.min(16)) - 1) as f64;
    let offset = ((1u64 << (bits_stored.min(16) - 1)) as f64).max(1.0);
    for px in values.chunks_exact_mut(3) {
        let y = px[0];
        let cb = px[1] - offset;
        let cr = px[2] - offset;
        let r = y + 1.402 * cr;
        let g = y - (0.114 * 1.772 / 0.587) * cb - (0.299 * 1.402 / 0.587) * cr;
        let b = y + 1.772 * cb;
        for (dst, v) in px.iter_mut().zip([r, g, b]) {
            *dst = (v + 0.5).floor().clamp(0.0, max);
        }
    }
}

pub(super) fn apply_palette(obj: &DefaultDicomObject, values: &[f64], signed: bool) -> Result<Vec<f32>> {
    let little_endian = encoding_of(obj.meta().transfer_syntax()).1;
    let channel = |desc: Tag, data: Tag, name: &'static str| -> Result<(usize, f64, Vec<u16>)> {
        let (entries, first, bits) = lut_descriptor(obj, desc, signed).ok_or(Error::MissingAttribute(name))?;
        // Segmented LUT Data (0028,122x) sits 0x20 after the LUT Data (0028,120x).
        let segmented = Tag(data.group(), data.element() + 0x0020);
        let mut words = match lut_words(obj, data) {
            Some(words) => words,
            None => {
                let encoded = lut_words(obj, segmented).ok_or(Error::MissingAttribute(name))?;
                expand_segmented_lut(&encoded, bits, little_endian)
                    .map_err(|e| Error::Invalid(format!("{name}: segmented LUT: {e}")))?
            }
        };
        if bits == 8 && words.len() * 2 == entries {
            // 8-bit entries packed two per word.
            words = words.iter().flat_map(|w| [w & 0xFF, w >> 8]).collect();
        }
        if words.len() < entries {
            return Err(Error::Invalid(format!("{name}: {} entries, descriptor says {entries}", words.len())));
        }
        words.truncate(entries);
        Ok((entries, first, words))
    };
    let red = channel(
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        "Red Palette LUT",
    )?;
    let green = channel(
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        "Green Palette LUT",
    )?;
    let blue = channel(
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
        tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        "Blue Palette LUT",
    )?;
    let lookup = |(entries, first, data): &(usize, f64, Vec<u16>), v: f64| -> f32 {
        let index = (v - first).clamp(0.0, (*entries - 1) as f64) as usize;
        f32::from(data[index])
    };
    Ok(values.iter().flat_map(|&v| [lookup(&red, v), lookup(&green, v), lookup(&blue, v)]).collect())
}

/// Segmented Palette Color LUT Data (PS3.3 C.7.9.2) expanded as pydicom's
/// `_expand_segmented_lut` does: discrete, linear (numpy's `linspace` and round-half-to-even)
/// and indirect segments. `words` are the element's 16-bit words; with 8-bit entries (the
/// descriptor's third value) the segments are read byte by byte in file order.
pub(crate) fn expand_segmented_lut(
    words: &[u16],
    bits: u16,
    little_endian: bool,
) -> std::result::Result<Vec<u16>, String> {
    let eight_bit = bits == 8;
    let data: Vec<u32> = if eight_bit {
        words
            .iter()
            .flat_map(|w| if little_endian { w.to_le_bytes() } else { w.to_be_bytes() })
            .map(u32::from)
            .collect()
    } else {
        words.iter().map(|&w| u32::from(w)).collect()
    };
    let mut lut = Vec::new();
    expand_segments(&data, eight_bit, little_endian, None, None, &mut lut, 0)?;
    Ok(lut.into_iter().map(|v| v as u16).collect())
}

/// Expanded entries of a segmented LUT may not exceed this (a 16-bit LUT has at most 65536;
/// indirect segments could otherwise repeat one another without bound).
pub(super) const MAX_SEGMENTED_ENTRIES: usize = 1 << 20;

pub(super) fn expand_segments(
    data: &[u32],
    eight_bit: bool,
    little_endian: bool,
    nr_segments: Option<usize>,
    last_value: Option<u32>,
    lut: &mut Vec<u32>,
    depth: usize,
) -> std::result::Result<(), String> {
    if depth > 8 {
        return Err("indirect segments nested more than 8 deep".into());
    }
    let start_len = lut.len();
    let mut offset = 0usize;
    let mut segments_read = 0usize;
    let at = |i: usize| data.get(i).copied().ok_or_else(|| "segment runs past the end of the data".to_string());
    // `offset + 1`: a trailing pad value after the last segment is not a segment.
    while offset + 1 < data.len() {
        let (opcode, length) = (data[offset], data[offset + 1] as usize);
        offset += 2;
        match opcode {
            0 => {
                let segment = data.get(offset..offset + length).ok_or("discrete segment runs past the end")?;
                lut.extend_from_slice(segment);
                offset += length;
            }
            1 => {
                // pydicom's nested call starts its own list: only this call's entries count.
                let y0 = if lut.len() > start_len {
                    lut[lut.len() - 1]
                } else {
                    match last_value.filter(|&v| v != 0) {
                        Some(v) => v,
                        None => return Err("the first segment cannot be a linear segment".into()),
                    }
                };
                let y1 = at(offset)?;
                offset += 1;
                if y0 == y1 {
                    lut.extend(std::iter::repeat_n(y1, length));
                } else {
                    // np.around(np.linspace(y0 + step, y1, length)), step = (y1 - y0) / length
                    let (y0f, y1f) = (f64::from(y0), f64::from(y1));
                    let step = (y1f - y0f) / length as f64;
                    let start = y0f + step;
                    let delta = y1f - start;
                    let div = length.saturating_sub(1) as f64;
                    for i in 0..length {
                        let v = if i + 1 == length && length > 1 {
                            y1f
                        } else if div > 0.0 {
                            i as f64 * (delta / div) + start
                        } else {
                            start
                        };
                        lut.push(v.round_ties_even().max(0.0) as u32);
                    }
                }
            }
            2 => {
                if lut.len() == start_len {
                    return Err("the first segment cannot be an indirect segment".into());
                }
                let byte_offset = if eight_bit {
                    let order: [usize; 4] = if little_endian { [3, 2, 1, 0] } else { [2, 3, 0, 1] };
                    let ii = order.map(|v| data.get(offset + v).copied().unwrap_or(0));
                    offset += 4;
                    ((ii[0] << 8 | ii[1]) << 16) | (ii[2] << 8 | ii[3])
                } else {
                    let v = (at(offset + 1)? << 16) | at(offset)?;
                    offset += 2;
                    v
                } as usize;
                let rest = data.get(byte_offset..).ok_or("indirect segment points past the end")?;
                let last = lut.last().copied();
                expand_segments(rest, eight_bit, little_endian, Some(length), last, lut, depth + 1)?;
            }
            other => return Err(format!("unknown segment type {other}")),
        }
        if lut.len() > MAX_SEGMENTED_ENTRIES {
            return Err(format!("expands past {MAX_SEGMENTED_ENTRIES} entries"));
        }
        segments_read += 1;
        if Some(segments_read) == nr_segments {
            return Ok(());
        }
    }
    Ok(())
}

/// Rescale slope/intercept, or the Modality LUT Sequence when present (it takes precedence).
pub(super) fn apply_modality_lut(obj: &DefaultDicomObject, meta: &ImageMeta, values: Vec<f64>) -> Vec<f32> {
    if let Some(lut) = modality_lut_sequence(obj, meta.signed) {
        let (entries, first, data) = lut;
        return values
            .into_iter()
            .map(|v| f32::from(data[(v - first).clamp(0.0, (entries - 1) as f64) as usize]))
            .collect();
    }
    let (slope, intercept) = (meta.rescale_slope, meta.rescale_intercept);
    if slope == 1.0 && intercept == 0.0 {
        values.into_iter().map(|v| v as f32).collect()
    } else {
        values.into_iter().map(|v| (v * slope + intercept) as f32).collect()
    }
}

pub(super) fn modality_lut_sequence(obj: &DefaultDicomObject, signed: bool) -> Option<(usize, f64, Vec<u16>)> {
    let elem = obj.element_opt(tags::MODALITY_LUT_SEQUENCE).ok()??;
    let item = elem.value().items()?.first()?;
    let (entries, first, _) = lut_descriptor(item, tags::LUT_DESCRIPTOR, signed)?;
    let mut data = lut_words(item, tags::LUT_DATA)?;
    if data.len() < entries || entries == 0 {
        return None;
    }
    data.truncate(entries);
    Some((entries, first, data))
}

#[cfg(test)]
mod tests {
    use super::expand_segmented_lut;

    /// Expected values printed by pydicom 3.0.2's `_expand_segmented_lut` for the same data.
    #[test]
    fn segmented_lut_expands_as_pydicom() {
        let words = [0, 3, 10, 20, 30, 1, 5, 33, 1, 4, 1000, 2, 2, 0, 0, 1, 3, 7];
        assert_eq!(
            expand_segmented_lut(&words, 16, true).unwrap(),
            [10, 20, 30, 31, 31, 32, 32, 33, 275, 516, 758, 1000, 10, 20, 30, 31, 31, 32, 32, 33, 24, 16, 7]
        );
        // 8-bit entries, two per word in file order; 104.5 rounds to even.
        let bytes: [u8; 16] = [0, 2, 5, 9, 1, 3, 0, 2, 1, 0, 0, 0, 0, 1, 2, 200];
        let want = [5, 9, 6, 3, 0, 5, 9, 104, 200];
        let le: Vec<u16> = bytes.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let be: Vec<u16> = bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        assert_eq!(expand_segmented_lut(&le, 8, true).unwrap(), want);
        assert_eq!(expand_segmented_lut(&be, 8, false).unwrap(), want);
    }

    #[test]
    fn malformed_segmented_luts_are_errors() {
        assert!(expand_segmented_lut(&[1, 4, 10], 16, true).unwrap_err().contains("first segment"));
        assert!(expand_segmented_lut(&[0, 9, 1, 2], 16, true).unwrap_err().contains("past the end"));
        assert!(expand_segmented_lut(&[7, 1, 1], 16, true).unwrap_err().contains("unknown segment type 7"));
        // An indirect segment that points at itself recurses until the depth limit.
        assert!(expand_segmented_lut(&[0, 1, 5, 2, 9, 0, 0], 16, true).is_err());
    }
}
