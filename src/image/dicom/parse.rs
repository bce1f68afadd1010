//! Parsing a DICOM file into a data set: with or without preamble and file meta, lenient
//! file meta groups, deflated data sets, trailing padding, and standard attributes written as UN
//! re-read with the dictionary's VR.

use super::*;

pub(crate) fn parse(bytes: &[u8]) -> Result<(DefaultDicomObject, bool)> {
    let (mut obj, inferred) = parse_raw(bytes)?;
    let little = encoding_of(obj.meta().transfer_syntax()).1;
    if has_known_un(&obj, 0) {
        resolve_un_vrs(&mut obj, little, 0);
    }
    Ok((obj, inferred))
}

pub(super) fn parse_raw(bytes: &[u8]) -> Result<(DefaultDicomObject, bool)> {
    let body = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        Some(&bytes[128..])
    } else if bytes.starts_with(b"DICM") {
        Some(bytes)
    } else {
        None
    };
    if let Some(body) = body {
        check_meta_lengths(body)?;
    }
    if let Some(inflated) = body.and_then(inflate_deflated_dataset) {
        return inflated.map(|obj| (obj, false));
    }
    parse_plain(bytes, body)
}

/// How deep [`resolve_un_vrs`] follows nested sequences (the tag listing stops at 8 too).
pub(super) const MAX_UN_DEPTH: usize = 16;

/// A standard attribute written with VR UN, which [`resolve_un_vrs`] re-reads.
pub(super) fn is_known_un(elem: &dicom_object::mem::InMemElement) -> bool {
    let tag = elem.tag();
    elem.vr() == VR::UN
        && tag.group() % 2 == 0
        && tag.group() != 0x0002
        && matches!(elem.value(), DicomValue::Primitive(_))
        && StandardDataDictionary.by_tag(tag).is_some_and(|e| e.vr().relaxed() != VR::UN)
}

pub(super) fn has_known_un(obj: &InMemDicomObject, depth: usize) -> bool {
    depth < MAX_UN_DEPTH
        && obj.iter().any(|elem| {
            is_known_un(elem)
                || elem.items().is_some_and(|items| items.iter().any(|item| has_known_un(item, depth + 1)))
        })
}

/// PS3.5 6.2.2: a writer that does not know an attribute's VR writes UN, the value bytes as the
/// data set's encoding holds them (a sequence's items in implicit VR little endian). pydicom
/// reads a standard attribute's UN value with the dictionary's VR; without that, Modality reads
/// as bytes ("67\84") and Rows or Pixel Representation as missing, so the pixels cannot be
/// decoded (or decode unsigned). Each such value is parsed again, by dicom-rs, from a one-element
/// data set in which its header names the dictionary's VR.
pub(super) fn resolve_un_vrs(obj: &mut InMemDicomObject, little_endian: bool, depth: usize) {
    // Text values keep the data set's character set: it goes first in each one-element set.
    let charset = obj
        .element_opt(tags::SPECIFIC_CHARACTER_SET)
        .ok()
        .flatten()
        .and_then(|e| e.value().to_bytes().ok().map(|b| b.to_vec()));
    let mut replacements = Vec::new();
    for elem in obj.iter() {
        if is_known_un(elem) {
            let DicomValue::Primitive(value) = elem.value() else { continue };
            let vr = StandardDataDictionary.by_tag(elem.tag()).map(|e| e.vr().relaxed()).unwrap_or(VR::UN);
            if let Some(resolved) = reread_with_vr(elem.tag(), vr, &value.to_bytes(), little_endian, charset.as_deref())
            {
                replacements.push(resolved);
            }
        } else if elem.items().is_some_and(|items| items.iter().any(|item| has_known_un(item, depth + 1))) {
            let mut elem = elem.clone();
            for item in elem.items_mut().into_iter().flatten() {
                resolve_un_vrs(item, little_endian, depth + 1);
            }
            replacements.push(elem);
        }
    }
    for elem in replacements {
        obj.put(elem);
    }
}

/// The element `tag` read by dicom-rs from `value` as if its header had said `vr`; None when
/// that fails (the UN element is then kept as it is).
pub(super) fn reread_with_vr(
    tag: Tag,
    vr: VR,
    value: &[u8],
    little_endian: bool,
    charset: Option<&[u8]>,
) -> Option<dicom_object::mem::InMemElement> {
    let mut stream = Vec::with_capacity(value.len() + 64);
    let padded = |v: &[u8]| {
        let mut v = v.to_vec();
        if v.len() % 2 == 1 {
            v.push(b' ');
        }
        v
    };
    let ts = if little_endian || vr == VR::SQ {
        // Implicit VR little endian: the reader takes every VR from the dictionary, which is
        // what is wanted; a UN sequence's items are in this encoding whatever the data set's.
        let mut push = |t: Tag, v: &[u8]| {
            stream.extend(t.group().to_le_bytes());
            stream.extend(t.element().to_le_bytes());
            stream.extend((v.len() as u32).to_le_bytes());
            stream.extend(v);
        };
        if let Some(cs) = charset.filter(|_| tag != tags::SPECIFIC_CHARACTER_SET) {
            push(tags::SPECIFIC_CHARACTER_SET, &padded(cs));
        }
        push(tag, value);
        entries::IMPLICIT_VR_LITTLE_ENDIAN.erased()
    } else {
        let mut push = |t: Tag, vr: VR, v: &[u8]| -> Option<()> {
            stream.extend(t.group().to_be_bytes());
            stream.extend(t.element().to_be_bytes());
            stream.extend(vr.to_string().as_bytes());
            if has_long_length(vr) {
                stream.extend([0, 0]);
                stream.extend((v.len() as u32).to_be_bytes());
            } else {
                stream.extend(u16::try_from(v.len()).ok()?.to_be_bytes());
            }
            stream.extend(v);
            Some(())
        };
        if let Some(cs) = charset.filter(|_| tag != tags::SPECIFIC_CHARACTER_SET) {
            push(tags::SPECIFIC_CHARACTER_SET, VR::CS, &padded(cs))?;
        }
        push(tag, vr, value)?;
        entries::EXPLICIT_VR_BIG_ENDIAN.erased()
    };
    let set = InMemDicomObject::read_dataset_with_ts(&stream[..], &ts).ok()?;
    set.element_opt(tag).ok().flatten().cloned()
}

/// Whether a data set's first element carries a VR (explicit VR) rather than a length there.
pub(super) fn first_element_is_explicit(data: &[u8]) -> bool {
    data.len() >= 6 && data[4].is_ascii_uppercase() && VR::from_binary([data[4], data[5]]).is_some()
}

pub(super) fn parse_plain(bytes: &[u8], body: Option<&[u8]>) -> Result<(DefaultDicomObject, bool)> {
    if let Some(lenient) = body.and_then(read_meta_leniently) {
        let body = body.unwrap_or_default();
        check_value_lengths(&body[4..lenient.dataset_offset], true, true)?;
        let rest = &body[lenient.dataset_offset..];
        let (_, little) = encoding_of(&lenient.transfer_syntax);
        // The VR form the first element shows, as parse_with_other_encoding reads it: some
        // writers declare one and write the other.
        let explicit = first_element_is_explicit(rest);
        check_value_lengths(rest, explicit, little)?;
    }
    match body {
        Some(body) => match OpenFileOptions::new().read_preamble(ReadPreamble::Never).from_reader(body) {
            Ok(obj) => Ok((obj, false)),
            Err(first) => without_trailing_padding(body)
                .and_then(|trimmed| OpenFileOptions::new().read_preamble(ReadPreamble::Never).from_reader(trimmed).ok())
                .map(|obj| (obj, false))
                .or_else(|| parse_with_other_encoding(body))
                .ok_or_else(|| Error::Parse(first.to_string())),
        },
        None => parse_without_meta(bytes).map(|obj| (obj, true)),
    }
}

pub(super) const DEFLATED_EXPLICIT_LE: &str = "1.2.840.10008.1.2.1.99";
/// The inflated data set may not exceed this (a deflate bomb is refused, not expanded).
pub(super) const MAX_INFLATED_BYTES: u64 = 1 << 31;

/// Deflated Explicit VR Little Endian, inflated here (bounded, and a truncated stream is an
/// error) rather than by dicom-rs, which loops forever on some truncated streams.
pub(super) fn inflate_deflated_dataset(body: &[u8]) -> Option<Result<DefaultDicomObject>> {
    use std::io::Read;
    let mut cursor = std::io::Cursor::new(body);
    let mut meta = dicom_object::meta::FileMetaTable::from_reader(&mut cursor).ok()?;
    if meta.transfer_syntax() != DEFLATED_EXPLICIT_LE {
        return None;
    }
    let compressed = &body[cursor.position() as usize..];
    let mut inflated = Vec::new();
    let read = flate2::read::DeflateDecoder::new(compressed).take(MAX_INFLATED_BYTES + 1).read_to_end(&mut inflated);
    Some(match read {
        Err(e) => Err(Error::Parse(format!("deflated data set: {e}"))),
        Ok(_) if inflated.len() as u64 > MAX_INFLATED_BYTES => {
            Err(Error::TooLarge("deflated data set inflates past 2 GiB".into()))
        }
        Ok(_) => {
            let ts = entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
            InMemDicomObject::read_dataset_with_ts(&inflated[..], &ts)
                .map_err(|e| Error::Parse(format!("deflated data set: {e}")))
                .map(|dataset| {
                    meta.set_transfer_syntax(&ts);
                    dataset.with_exact_meta(meta)
                })
        }
    })
}

/// Some writers pad the file with zero bytes after the Pixel Data element, which dicom-rs
/// reads as a broken element; pydicom skips them. Cut the file right after Pixel Data when
/// what follows is all zeros.
pub(crate) fn without_trailing_padding(body: &[u8]) -> Option<&[u8]> {
    let tag_le = [0xE0, 0x7F, 0x10, 0x00];
    let pos = body.windows(4).rposition(|w| w == tag_le)?;
    let header = body.get(pos..pos + 12)?;
    let (value_start, len) = if &header[4..6] == b"OW" || &header[4..6] == b"OB" {
        (pos + 12, u32::from_le_bytes([header[8], header[9], header[10], header[11]]))
    } else {
        (pos + 8, u32::from_le_bytes([header[4], header[5], header[6], header[7]]))
    };
    if len == u32::MAX {
        return None;
    }
    let end = value_start.checked_add(len as usize)?;
    let rest = body.get(end..)?;
    (!rest.is_empty() && rest.iter().all(|&b| b == 0)).then(|| &body[..end])
}

/// A file meta group dicom-rs refuses (some writers encode it in implicit VR, or the data
/// set in another VR than declared): read group 0002 leniently, then the data set with the
/// declared transfer syntax, else the other little-endian one — as pydicom manages to.
pub(super) fn parse_with_other_encoding(body: &[u8]) -> Option<(DefaultDicomObject, bool)> {
    let lenient = read_meta_leniently(body)?;
    let rest = &body[lenient.dataset_offset..];
    let declared = TransferSyntaxRegistry.get(&lenient.transfer_syntax);
    // Only the encoding the first element shows: reading explicit data as implicit (or the
    // reverse) yields garbage lengths and gigabyte allocations.
    let explicit = first_element_is_explicit(rest);
    let fallback = if explicit {
        entries::EXPLICIT_VR_LITTLE_ENDIAN.erased()
    } else {
        entries::IMPLICIT_VR_LITTLE_ENDIAN.erased()
    };
    let declared_explicit = lenient.transfer_syntax != entries::IMPLICIT_VR_LITTLE_ENDIAN.uid();
    let dicom_rs_read_meta = dicom_object::meta::FileMetaTable::from_reader(body).is_ok();
    if dicom_rs_read_meta && explicit == declared_explicit {
        // Meta and encoding agree: the first failure was genuine (a truncated or broken file).
        return None;
    }
    let retry_declared = declared.filter(|_| explicit == declared_explicit);
    for ts in retry_declared.into_iter().chain(std::iter::once(&fallback)) {
        let Ok(dataset) = InMemDicomObject::read_dataset_with_ts(rest, ts) else { continue };
        if dataset.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() && dataset.iter().count() < 2 {
            continue;
        }
        // The pixel data keep the declared compression even when the data set is in another VR.
        let pixel_ts = match declared {
            Some(d) if d.is_codec_free() => ts.uid(),
            Some(d) => d.uid(),
            None => ts.uid(),
        };
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(lenient.sop_class.clone())
            .media_storage_sop_instance_uid(lenient.sop_instance.clone())
            .transfer_syntax(pixel_ts)
            .implementation_class_uid("2.25.1")
            .build()
            .ok()?;
        return Some((dataset.with_exact_meta(meta), true));
    }
    None
}

pub(super) struct LenientMeta {
    pub(super) transfer_syntax: String,
    pub(super) sop_class: String,
    pub(super) sop_instance: String,
    pub(super) dataset_offset: usize,
}

/// Walks the group 0002 elements after "DICM", each in explicit or implicit VR (little endian).
pub(super) fn read_meta_leniently(body: &[u8]) -> Option<LenientMeta> {
    let mut pos = 4; // "DICM"
    let mut meta = LenientMeta {
        transfer_syntax: String::new(),
        sop_class: "1.2.840.10008.5.1.4.1.1.7".into(),
        sop_instance: "2.25.0".into(),
        dataset_offset: 0,
    };
    while pos + 8 <= body.len() {
        let group = u16::from_le_bytes([body[pos], body[pos + 1]]);
        if group != 0x0002 {
            break;
        }
        let element = u16::from_le_bytes([body[pos + 2], body[pos + 3]]);
        let vr = [body[pos + 4], body[pos + 5]];
        let (header, len) = match VR::from_binary(vr) {
            Some(VR::OB | VR::OW | VR::OF | VR::SQ | VR::UT | VR::UN | VR::UC | VR::UR | VR::OD | VR::OL | VR::OV) => {
                let b = body.get(pos + 8..pos + 12)?;
                (12, u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            }
            Some(_) => (8, usize::from(u16::from_le_bytes([body[pos + 6], body[pos + 7]]))),
            None => (8, u32::from_le_bytes([body[pos + 4], body[pos + 5], body[pos + 6], body[pos + 7]]) as usize),
        };
        let value = body.get(pos + header..pos.checked_add(header)?.checked_add(len)?)?;
        let text = || String::from_utf8_lossy(value).trim_end_matches(['\0', ' ']).to_string();
        match element {
            0x0002 => meta.sop_class = text(),
            0x0003 => meta.sop_instance = text(),
            0x0010 => meta.transfer_syntax = text(),
            _ => {}
        }
        pos += header + len;
    }
    meta.dataset_offset = pos;
    (!meta.transfer_syntax.is_empty()).then_some(meta)
}

/// A data set with no file meta: infer its encoding the way pydicom does (explicit VR if the
/// bytes after the first tag spell a VR; little endian if the first group reads small).
pub(super) fn parse_without_meta(bytes: &[u8]) -> Result<DefaultDicomObject> {
    if bytes.len() < 8 {
        return Err(Error::NotDicom("file too short".into()));
    }
    let explicit = bytes[4].is_ascii_uppercase()
        && bytes[5].is_ascii_uppercase()
        && VR::from_binary([bytes[4], bytes[5]]).is_some();
    let group_le = u16::from_le_bytes([bytes[0], bytes[1]]);
    let group_be = u16::from_be_bytes([bytes[0], bytes[1]]);
    let little = group_le <= group_be;
    let first_group = if little { group_le } else { group_be };
    if !(0x0002..=0x0028).contains(&first_group) || first_group % 2 != 0 {
        return Err(Error::NotDicom("no DICM prefix and the data does not start with a DICOM tag".into()));
    }
    let ts = match (explicit, little) {
        (false, _) => entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        (true, true) => entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        (true, false) => entries::EXPLICIT_VR_BIG_ENDIAN.erased(),
    };
    check_value_lengths(bytes, explicit, little)?;
    let dataset = InMemDicomObject::read_dataset_with_ts(bytes, &ts).map_err(|e| Error::Parse(e.to_string()))?;
    let sop_class = string_of(&dataset, tags::SOP_CLASS_UID).unwrap_or_else(|| "1.2.840.10008.5.1.4.1.1.7".into());
    let sop_instance = string_of(&dataset, tags::SOP_INSTANCE_UID).unwrap_or_else(|| "2.25.0".into());
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(ts.uid())
        .implementation_class_uid("2.25.1")
        .build()
        .map_err(|e| Error::Parse(e.to_string()))?;
    Ok(dataset.with_exact_meta(meta))
}
