//! DICOM files: parsing (with or without preamble and file meta), pixel decoding for every
//! transfer syntax the corpus holds, colour conversion and the modality LUT — matching what
//! pydicom's `pixel_array` + `apply_modality_lut` / `apply_color_lut` give.

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

use super::meta::{is_phi_tag, ImageMeta, TagEntry, VoiLut, Window};
use super::{jpeg_ls, LoadOptions, MedicalImage};
use crate::error::{Error, Result};

const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
const JPEG_LS_NEAR_LOSSLESS: &str = "1.2.840.10008.1.2.4.81";

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

pub(crate) fn parse(bytes: &[u8]) -> Result<(DefaultDicomObject, bool)> {
    let (mut obj, inferred) = parse_raw(bytes)?;
    let little = encoding_of(obj.meta().transfer_syntax()).1;
    if has_known_un(&obj, 0) {
        resolve_un_vrs(&mut obj, little, 0);
    }
    Ok((obj, inferred))
}

fn parse_raw(bytes: &[u8]) -> Result<(DefaultDicomObject, bool)> {
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
const MAX_UN_DEPTH: usize = 16;

/// A standard attribute written with VR UN, which [`resolve_un_vrs`] re-reads.
fn is_known_un(elem: &dicom_object::mem::InMemElement) -> bool {
    let tag = elem.tag();
    elem.vr() == VR::UN
        && tag.group() % 2 == 0
        && tag.group() != 0x0002
        && matches!(elem.value(), DicomValue::Primitive(_))
        && StandardDataDictionary.by_tag(tag).is_some_and(|e| e.vr().relaxed() != VR::UN)
}

fn has_known_un(obj: &InMemDicomObject, depth: usize) -> bool {
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
fn resolve_un_vrs(obj: &mut InMemDicomObject, little_endian: bool, depth: usize) {
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
fn reread_with_vr(
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
fn first_element_is_explicit(data: &[u8]) -> bool {
    data.len() >= 6 && data[4].is_ascii_uppercase() && VR::from_binary([data[4], data[5]]).is_some()
}

fn parse_plain(bytes: &[u8], body: Option<&[u8]>) -> Result<(DefaultDicomObject, bool)> {
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

const DEFLATED_EXPLICIT_LE: &str = "1.2.840.10008.1.2.1.99";
/// The inflated data set may not exceed this (a deflate bomb is refused, not expanded).
const MAX_INFLATED_BYTES: u64 = 1 << 31;

/// Deflated Explicit VR Little Endian, inflated here (bounded, and a truncated stream is an
/// error) rather than by dicom-rs, which loops forever on some truncated streams.
fn inflate_deflated_dataset(body: &[u8]) -> Option<Result<DefaultDicomObject>> {
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
fn parse_with_other_encoding(body: &[u8]) -> Option<(DefaultDicomObject, bool)> {
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

struct LenientMeta {
    transfer_syntax: String,
    sop_class: String,
    sop_instance: String,
    dataset_offset: usize,
}

/// Walks the group 0002 elements after "DICM", each in explicit or implicit VR (little endian).
fn read_meta_leniently(body: &[u8]) -> Option<LenientMeta> {
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
fn parse_without_meta(bytes: &[u8]) -> Result<DefaultDicomObject> {
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

fn string_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let elem = obj.element_opt(tag).ok()??;
    let s = elem.value().to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string();
    (!s.is_empty()).then_some(s)
}

fn strings_of(obj: &InMemDicomObject, tag: Tag) -> Vec<String> {
    let Some(elem) = obj.element_opt(tag).ok().flatten() else {
        return Vec::new();
    };
    match elem.value().to_multi_str() {
        Ok(values) => {
            values.iter().map(|s| s.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string()).collect()
        }
        Err(_) => Vec::new(),
    }
}

fn f64s_of(obj: &InMemDicomObject, tag: Tag) -> Vec<f64> {
    strings_of(obj, tag).iter().filter_map(|s| s.parse::<f64>().ok()).filter(|v| v.is_finite()).collect()
}

fn f64_of(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    let elem = obj.element_opt(tag).ok()??;
    match elem.vr() {
        VR::US | VR::SS | VR::UL | VR::SL | VR::FL | VR::FD => elem.value().to_float64().ok(),
        _ => f64s_of(obj, tag).first().copied(),
    }
}

fn int_of(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    let elem = obj.element_opt(tag).ok()??;
    match elem.vr() {
        VR::US | VR::SS | VR::UL | VR::SL => elem.value().to_int::<i64>().ok(),
        _ => {
            let s = string_of(obj, tag)?;
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().filter(|v| v.fract() == 0.0 && v.is_finite()).map(|v| v as i64))
        }
    }
}

fn required_u16(obj: &InMemDicomObject, tag: Tag, name: &'static str) -> Result<u16> {
    int_of(obj, tag).and_then(|v| u16::try_from(v).ok()).ok_or(Error::MissingAttribute(name))
}

/// u16 words of a LUT Data element, whatever VR (OW, US, SS) it was stored as.
fn lut_words(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<u16>> {
    let elem = obj.element_opt(tag).ok()??;
    match elem.value() {
        DicomValue::Primitive(p) => {
            if let Ok(words) = p.to_multi_int::<i64>() {
                if elem.vr() != VR::OB && elem.vr() != VR::UN {
                    return Some(words.into_iter().map(|w| w as u16).collect());
                }
            }
            let raw = p.to_bytes();
            Some(raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
        }
        _ => None,
    }
}

/// A LUT Descriptor: (entries, first mapped value, bits per entry).
fn lut_descriptor(obj: &InMemDicomObject, tag: Tag, signed_first: bool) -> Option<(usize, f64, u16)> {
    let elem = obj.element_opt(tag).ok()??;
    let values: Vec<i64> = match elem.value().to_multi_int::<i64>() {
        Ok(v) => v,
        Err(_) => strings_of(obj, tag).iter().filter_map(|s| s.parse().ok()).collect(),
    };
    if values.len() < 3 {
        return None;
    }
    let entries = if values[0] == 0 { 65536 } else { (values[0] as u16) as usize };
    let first = if signed_first { values[1] as u16 as i16 as f64 } else { values[1] as u16 as f64 };
    Some((entries, first, values[2] as u16))
}

fn read_meta(obj: &DefaultDicomObject, inferred: bool) -> ImageMeta {
    let ts_uid = obj.meta().transfer_syntax().trim_end_matches('\0').to_string();
    let ts_name =
        TransferSyntaxRegistry.get(&ts_uid).map(|ts| ts.name().to_string()).unwrap_or_else(|| "unknown".into());
    let modality = string_of(obj, tags::MODALITY).unwrap_or_default();
    let signed = int_of(obj, tags::PIXEL_REPRESENTATION) == Some(1);
    let slope = f64_of(obj, tags::RESCALE_SLOPE).unwrap_or(1.0);
    let intercept = f64_of(obj, tags::RESCALE_INTERCEPT).unwrap_or(0.0);
    let has_rescale = obj.element_opt(tags::RESCALE_SLOPE).ok().flatten().is_some();
    let units = if modality == "CT" && has_rescale {
        "HU".to_string()
    } else {
        string_of(obj, tags::RESCALE_TYPE).unwrap_or_default()
    };
    let centers = f64s_of(obj, tags::WINDOW_CENTER);
    let widths = f64s_of(obj, tags::WINDOW_WIDTH);
    let windows = centers
        .iter()
        .zip(&widths)
        .filter(|(_, &w)| w > 0.0)
        .map(|(&center, &width)| Window { center, width })
        .collect();
    let voi_luts = voi_luts(obj, signed);
    let arr = |tag, n| {
        let v = f64s_of(obj, tag);
        (v.len() >= n).then_some(v)
    };
    ImageMeta {
        source: None,
        modality,
        photometric: string_of(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default(),
        transfer_syntax: ts_uid,
        transfer_syntax_name: ts_name,
        inferred_encoding: inferred,
        bits_allocated: int_of(obj, tags::BITS_ALLOCATED).unwrap_or(0) as u16,
        bits_stored: int_of(obj, tags::BITS_STORED).unwrap_or(0) as u16,
        signed,
        rescale_slope: slope,
        rescale_intercept: intercept,
        units,
        windows,
        voi_luts,
        pixel_spacing: arr(tags::PIXEL_SPACING, 2).map(|v| [v[0], v[1]]),
        imager_pixel_spacing: arr(tags::IMAGER_PIXEL_SPACING, 2).map(|v| [v[0], v[1]]),
        frame_time_ms: f64_of(obj, tags::FRAME_TIME).filter(|&v| v > 0.0),
        cine_rate: f64_of(obj, tags::CINE_RATE).filter(|&v| v > 0.0),
        recommended_frame_rate: f64_of(obj, tags::RECOMMENDED_DISPLAY_FRAME_RATE).filter(|&v| v > 0.0),
        image_orientation: arr(tags::IMAGE_ORIENTATION_PATIENT, 6).map(|v| [v[0], v[1], v[2], v[3], v[4], v[5]]),
        image_position: arr(tags::IMAGE_POSITION_PATIENT, 3).map(|v| [v[0], v[1], v[2]]),
        slice_location: f64_of(obj, tags::SLICE_LOCATION),
        instance_number: int_of(obj, tags::INSTANCE_NUMBER),
        series_uid: string_of(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        study_uid: string_of(obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        series_description: string_of(obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        study_description: string_of(obj, tags::STUDY_DESCRIPTION).unwrap_or_default(),
        series_number: int_of(obj, tags::SERIES_NUMBER),
        body_part: string_of(obj, tags::BODY_PART_EXAMINED).unwrap_or_default(),
        patient_name: string_of(obj, tags::PATIENT_NAME).unwrap_or_default().replace('^', " ").trim().to_string(),
        patient_id: string_of(obj, tags::PATIENT_ID).unwrap_or_default(),
        patient_birth_date: string_of(obj, tags::PATIENT_BIRTH_DATE).unwrap_or_default(),
        patient_sex: string_of(obj, tags::PATIENT_SEX).unwrap_or_default(),
        patient_age: string_of(obj, tags::PATIENT_AGE).unwrap_or_default(),
        institution: string_of(obj, tags::INSTITUTION_NAME).unwrap_or_default(),
        study_date: string_of(obj, tags::STUDY_DATE).unwrap_or_default(),
        accession_number: string_of(obj, tags::ACCESSION_NUMBER).unwrap_or_default(),
        tags: tag_entries(obj),
    }
}

fn voi_luts(obj: &InMemDicomObject, signed: bool) -> Vec<VoiLut> {
    let Some(elem) = obj.element_opt(tags::VOILUT_SEQUENCE).ok().flatten() else {
        return Vec::new();
    };
    let Some(items) = elem.value().items() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let (entries, first, bits) = lut_descriptor(item, tags::LUT_DESCRIPTOR, signed)?;
            let mut data = lut_words(item, tags::LUT_DATA)?;
            if data.is_empty() {
                return None;
            }
            data.truncate(entries);
            Some(VoiLut {
                first_mapped: first,
                bits,
                data,
                explanation: string_of(item, tags::LUT_EXPLANATION).unwrap_or_default(),
            })
        })
        .collect()
}

const MAX_TAG_ROWS: usize = 20_000;

fn tag_entries(obj: &DefaultDicomObject) -> Vec<TagEntry> {
    let mut rows = Vec::new();
    for elem in obj.meta().to_element_iter() {
        let tag = elem.tag();
        rows.push(TagEntry {
            group: tag.group(),
            element: tag.element(),
            name: tag_name(tag),
            vr: elem.vr().to_string().to_string(),
            value: elem.value().to_str().map(|s| clip(&s)).unwrap_or_default(),
            depth: 0,
            phi: false,
        });
    }
    walk_tags(obj, 0, false, &mut rows);
    rows
}

fn tag_name(tag: Tag) -> String {
    StandardDataDictionary.by_tag(tag).map(|e| e.alias.to_string()).unwrap_or_else(|| {
        if tag.group() % 2 == 1 {
            "Private".into()
        } else {
            "Unknown".into()
        }
    })
}

fn clip(s: &str) -> String {
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s.to_string()
    }
}

fn walk_tags(obj: &InMemDicomObject, depth: usize, inherited_phi: bool, rows: &mut Vec<TagEntry>) {
    for elem in obj {
        if rows.len() >= MAX_TAG_ROWS {
            return;
        }
        let tag = elem.tag();
        let phi = inherited_phi || is_phi_tag(tag.group(), tag.element());
        let value = match elem.value() {
            DicomValue::Sequence(seq) => format!("{} item(s)", seq.items().len()),
            DicomValue::PixelSequence(seq) => format!("{} fragment(s)", seq.fragments().len()),
            DicomValue::Primitive(p) => match elem.vr() {
                VR::OB | VR::OW | VR::OF | VR::OD | VR::OL | VR::OV | VR::UN => {
                    format!("<{} bytes>", p.calculate_byte_len())
                }
                _ => clip(&p.to_str()),
            },
        };
        rows.push(TagEntry {
            group: tag.group(),
            element: tag.element(),
            name: tag_name(tag),
            vr: elem.vr().to_string().to_string(),
            value,
            depth,
            phi,
        });
        if let DicomValue::Sequence(seq) = elem.value() {
            if depth < 8 {
                for item in seq.items() {
                    walk_tags(item, depth + 1, phi, rows);
                }
            }
        }
    }
}

/// Decoded samples before any LUT: one f64 per sample, interleaved.
struct Samples {
    values: Vec<f64>,
    channels: usize,
    /// Colour already converted to RGB by the codec (JPEG, JPEG 2000).
    codec_converted_color: bool,
}

fn decode(obj: &DefaultDicomObject, inferred: bool, options: &LoadOptions) -> Result<MedicalImage> {
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
    let photometric = meta.photometric.clone();
    let geometry = Geometry { rows, cols, spp, frames, bits_allocated, bits_stored };
    let samples = if let Some(codec) = OwnCodec::for_transfer_syntax(&meta.transfer_syntax) {
        decode_encapsulated(obj, codec, &geometry, &meta)?
    } else {
        decode_with_dicom_rs(obj, &geometry, &meta)?
    };
    let mut values = samples.values;
    let channels = samples.channels;
    let is_ybr = photometric.starts_with("YBR_FULL");
    if channels == 3 && is_ybr && !samples.codec_converted_color {
        ybr_full_to_rgb(&mut values, bits_stored);
    }
    let (channels, values) = if photometric == "PALETTE COLOR" && channels == 1 {
        (3, apply_palette(obj, &values, meta.signed)?)
    } else if channels == 1 {
        (1, apply_modality_lut(obj, &meta, values))
    } else {
        (channels, values.into_iter().map(|v| v as f32).collect())
    };
    Ok(MedicalImage { meta, frames, rows, cols, channels, values })
}

fn decode_with_dicom_rs(obj: &DefaultDicomObject, g: &Geometry, meta: &ImageMeta) -> Result<Samples> {
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
    let ybr422 = meta.photometric == "YBR_FULL_422" && !encapsulated && bits_allocated == 8;
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

fn decode_error(message: &str, meta: &ImageMeta) -> Error {
    if TransferSyntaxRegistry.get(&meta.transfer_syntax).is_none() {
        Error::Unsupported(format!("unknown transfer syntax {}", meta.transfer_syntax))
    } else {
        Error::Decode(format!("{} ({}): {message}", meta.transfer_syntax_name, meta.transfer_syntax))
    }
}

/// Samples wider than Bits Stored carry garbage in the high bits; for signed data the stored
/// sign bit is extended (as pydicom does). Unsigned data keeps its bits untouched.
fn sign_extend(raw: u64, bits_stored: u16, signed: bool) -> f64 {
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
enum OwnCodec {
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
fn check_jpeg2000_size(fragment: &[u8], g: &Geometry) -> Result<()> {
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
struct Geometry {
    rows: usize,
    cols: usize,
    spp: usize,
    frames: usize,
    bits_allocated: u16,
    bits_stored: u16,
}

fn decode_encapsulated(obj: &DefaultDicomObject, codec: OwnCodec, g: &Geometry, meta: &ImageMeta) -> Result<Samples> {
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
fn decode_jpeg_frame(stream: &[u8], g: &Geometry, meta: &ImageMeta) -> Result<Vec<u32>> {
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
    if meta.photometric == "RGB" && !hints.colour_marker && hints.full_resolution {
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
fn check_jpeg_frame_size(width: usize, height: usize, g: &Geometry) -> Result<()> {
    if (width, height) != (g.cols, g.rows) {
        return Err(Error::Decode(format!("JPEG frame is {width}×{height}, header says {}×{}", g.cols, g.rows)));
    }
    Ok(())
}

/// 12-bit DCT JPEG (process 4) through the project's own decoder: components as coded.
fn decode_jpeg12_frame(stream: &[u8], g: &Geometry) -> Result<Vec<u32>> {
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
struct JpegHeaderHints {
    /// A JFIF (APP0) or Adobe (APP14) marker: the codec's own colour rules apply.
    colour_marker: bool,
    /// The frame header (SOF) was reached and every component is sampled 1 × 1.
    full_resolution: bool,
    /// Width and height of the frame header, if reached.
    frame_size: Option<(usize, usize)>,
}

fn jpeg_header_hints(stream: &[u8]) -> JpegHeaderHints {
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
fn decode_rle_frame(stream: &[u8], g: &Geometry) -> Result<Vec<u32>> {
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
fn unpack_bits(src: &[u8], len: usize) -> Vec<u8> {
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

fn split_by_offsets(fragments: &[Vec<u8>], offsets: &[u32]) -> Result<Vec<Vec<u8>>> {
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

fn interleave_planes(values: &[f64], pixels: usize, frames: usize) -> Vec<f64> {
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
fn expand_ybr422(values: &[f64], rows: usize, cols: usize, frames: usize) -> Result<Vec<f64>> {
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

/// YCbCr (full range) to RGB, pydicom's `convert_color_space` rounding.
fn ybr_full_to_rgb(values: &mut [f64], bits_stored: u16) {
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

fn apply_palette(obj: &DefaultDicomObject, values: &[f64], signed: bool) -> Result<Vec<f32>> {
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
const MAX_SEGMENTED_ENTRIES: usize = 1 << 20;

fn expand_segments(
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
fn apply_modality_lut(obj: &DefaultDicomObject, meta: &ImageMeta, values: Vec<f64>) -> Vec<f32> {
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

fn modality_lut_sequence(obj: &DefaultDicomObject, signed: bool) -> Option<(usize, f64, Vec<u16>)> {
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

/// Explicit VR: whether the header has 2 reserved bytes and a 32-bit length (12 bytes in all)
/// rather than a 16-bit length (8 bytes), as PS3.5 7.1.2 and dicom-rs's decoder read it.
fn has_long_length(vr: VR) -> bool {
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
fn is_text_vr(vr: VR) -> bool {
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
fn consumed_by_dicom_rs(vr: VR, len: usize) -> usize {
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
fn check_meta_lengths(body: &[u8]) -> Result<()> {
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
fn check_value_lengths(data: &[u8], explicit: bool, little: bool) -> Result<()> {
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
fn encoding_of(transfer_syntax: &str) -> (bool, bool) {
    match transfer_syntax.trim_end_matches(['\0', ' ']) {
        "1.2.840.10008.1.2" => (false, true),
        "1.2.840.10008.1.2.2" => (true, false),
        _ => (true, true),
    }
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
