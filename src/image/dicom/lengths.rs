//! Length checks run before dicom-rs reads a file: element headers that claim more bytes than
//! the file has left are refused instead of making dicom-rs zero-fill huge buffers.

use super::*;

/// Explicit VR: whether the header has 2 reserved bytes and a 32-bit length (12 bytes in all)
/// rather than a 16-bit length (8 bytes), as PS3.5 7.1.2 and dicom-rs's decoder read it.
pub(super) fn has_long_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    )
}

/// Text values: dicom-rs sizes their buffer from the header and zero-fills it before reading.
pub(super) fn is_text_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::ST
            | VR::TM
            | VR::UC
            | VR::UI
            | VR::UR
            | VR::UT
    )
}

/// Bytes dicom-rs consumes for a value of `len` bytes: numeric values are read as whole numbers,
/// so a length that is not a multiple of the number size leaves the rest unread (and the reader
/// one to seven bytes behind the header's end). The walk must follow the same path.
pub(super) fn consumed_by_dicom_rs(vr: VR, len: usize) -> usize {
    match vr {
        VR::SS | VR::US | VR::OW => len & !1,
        VR::AT | VR::FL | VR::UL | VR::SL | VR::OF | VR::OL => len & !3,
        VR::FD | VR::OD | VR::UV | VR::SV | VR::OV => len & !7,
        _ => len,
    }
}

/// dicom-object reads the file meta group with its own reader (not the patched dicom-parser),
/// which sizes each value's buffer from its declared length before reading: a 252-byte file
/// claiming 4 GiB made it zero-fill 4 GiB (found by `fuzz/dicom_decode`). Walks the group's
/// headers as that reader decodes them (explicit VR little endian, an unknown VR read as UN)
/// and refuses an element claiming more bytes than the file has left. The walk covers group
/// 0002 and everything inside the declared group length, which is what that reader consumes.
pub(super) fn check_meta_lengths(body: &[u8]) -> Result<()> {
    let data = body.get(4..).unwrap_or_default(); // after "DICM"
    let mut pos = 0usize;
    let mut group_end: Option<usize> = None;
    while pos + 8 <= data.len() {
        let group = u16::from_le_bytes([data[pos], data[pos + 1]]);
        let within_group_length = group_end.is_some_and(|end| pos < end);
        if group != 0x0002 && !within_group_length {
            break;
        }
        let element = u16::from_le_bytes([data[pos + 2], data[pos + 3]]);
        let vr = VR::from_binary([data[pos + 4], data[pos + 5]]).unwrap_or(VR::UN);
        let (header, len) = if !has_long_length(vr) {
            (8, u32::from(u16::from_le_bytes([data[pos + 6], data[pos + 7]])))
        } else if pos + 12 <= data.len() {
            (12, u32::from_le_bytes([data[pos + 8], data[pos + 9], data[pos + 10], data[pos + 11]]))
        } else {
            break;
        };
        if len == u32::MAX {
            break; // undefined length: that reader refuses it without allocating
        }
        let remaining = data.len() - pos - header;
        if len as usize > remaining {
            return Err(Error::Parse(format!(
                "file meta element (0002,{element:04X}) claims {len} bytes but only {remaining} follow"
            )));
        }
        if (group, element) == (0x0002, 0x0000) && len == 4 && group_end.is_none() {
            // The value follows the header, whichever form the (possibly wrong) VR gave it.
            let at = pos + header;
            let value = [data[at], data[at + 1], data[at + 2], data[at + 3]];
            group_end = Some((at + 4).saturating_add(u32::from_le_bytes(value) as usize));
        }
        pos += header + len as usize;
    }
    Ok(())
}

/// Walks a data set's element headers before dicom-rs reads it and refuses one whose text
/// value claims more bytes than the file has left: dicom-rs would zero-fill a buffer of that
/// size before the read fails (up to 4 GiB per element; found by `fuzz/dicom_decode`). Only a
/// clear lie is refused: where the walk cannot follow the encoding (unknown VR, undefined-length
/// UN) it stops and leaves the verdict to dicom-rs. dicom-rs's byte and number values have the
/// same weakness; they are not refused here (see docs/reliability.md).
pub(super) fn check_value_lengths(data: &[u8], explicit: bool, little: bool) -> Result<()> {
    let u16_at = |p: usize, le: bool| {
        let b = [data[p], data[p + 1]];
        if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let u32_at = |p: usize, le: bool| {
        let b = [data[p], data[p + 1], data[p + 2], data[p + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut pos = 0usize;
    let mut in_fragments = false;
    while pos + 8 <= data.len() {
        // Group 0002 (file meta) is always explicit little endian.
        let meta = u16_at(pos, true) == 0x0002;
        let (explicit, le) = if meta { (true, true) } else { (explicit, little) };
        let (group, element) = (u16_at(pos, le), u16_at(pos + 2, le));
        if group == 0xFFFE {
            let len = u32_at(pos + 4, le);
            pos += 8;
            match element {
                // Fragments of encapsulated pixel data are raw bytes; items of a sequence
                // hold elements, walked in turn.
                0xE000 if in_fragments && len != u32::MAX => pos = pos.saturating_add(len as usize),
                0xE0DD => in_fragments = false,
                _ => {}
            }
            continue;
        }
        let tag = Tag(group, element);
        let (vr, len, header) = if explicit {
            let Some(vr) = VR::from_binary([data[pos + 4], data[pos + 5]]) else { return Ok(()) };
            if has_long_length(vr) {
                if pos + 12 > data.len() {
                    return Ok(());
                }
                (Some(vr), u32_at(pos + 8, le), 12)
            } else {
                (Some(vr), u32::from(u16_at(pos + 6, le)), 8)
            }
        } else {
            // As dicom-rs's implicit VR decoder resolves it (pixel and overlay data are OW, the
            // rest from the dictionary with virtual VRs made concrete, unknown tags UN).
            let vr = if tag == tags::PIXEL_DATA || (group >> 8 == 0x60 && element == 0x3000) {
                VR::OW
            } else {
                StandardDataDictionary.by_tag(tag).map(|e| e.vr().relaxed()).unwrap_or(VR::UN)
            };
            let vr = Some(vr);
            (vr, u32_at(pos + 4, le), 8)
        };
        pos += header;
        if len == u32::MAX {
            if tag == tags::PIXEL_DATA {
                in_fragments = true;
            } else if vr == Some(VR::UN) {
                return Ok(()); // implicit VR inside: beyond this walk
            }
            continue; // a sequence: its items are walked next
        }
        if vr == Some(VR::SQ) {
            continue;
        }
        let remaining = data.len() - pos;
        if let Some(vr) = vr.filter(|&vr| is_text_vr(vr)) {
            if len as usize > remaining {
                return Err(Error::Parse(format!(
                    "element ({group:04X},{element:04X}) {vr:?} claims {len} bytes, only {remaining} remain in the file"
                )));
            }
        }
        pos = pos.saturating_add(vr.map_or(len as usize, |vr| consumed_by_dicom_rs(vr, len as usize)));
    }
    Ok(())
}

/// The encoding of a transfer syntax, for [`check_value_lengths`]: (explicit VR, little endian).
pub(super) fn encoding_of(transfer_syntax: &str) -> (bool, bool) {
    match transfer_syntax.trim_end_matches(['\0', ' ']) {
        "1.2.840.10008.1.2" => (false, true),
        "1.2.840.10008.1.2.2" => (true, false),
        _ => (true, true),
    }
}
