//! Reading attributes out of a parsed data set: typed element readers, the image metadata the
//! viewer shows and the tag listing (patient attributes marked).

use super::*;

pub(super) fn string_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let elem = obj.element_opt(tag).ok()??;
    let s = elem.value().to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string();
    (!s.is_empty()).then_some(s)
}

pub(super) fn strings_of(obj: &InMemDicomObject, tag: Tag) -> Vec<String> {
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

pub(super) fn f64s_of(obj: &InMemDicomObject, tag: Tag) -> Vec<f64> {
    strings_of(obj, tag).iter().filter_map(|s| s.parse::<f64>().ok()).filter(|v| v.is_finite()).collect()
}

pub(super) fn f64_of(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    let elem = obj.element_opt(tag).ok()??;
    match elem.vr() {
        VR::US | VR::SS | VR::UL | VR::SL | VR::FL | VR::FD => elem.value().to_float64().ok(),
        _ => f64s_of(obj, tag).first().copied(),
    }
}

pub(super) fn int_of(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
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

pub(super) fn required_u16(obj: &InMemDicomObject, tag: Tag, name: &'static str) -> Result<u16> {
    int_of(obj, tag).and_then(|v| u16::try_from(v).ok()).ok_or(Error::MissingAttribute(name))
}

/// u16 words of a LUT Data element, whatever VR (OW, US, SS) it was stored as.
pub(super) fn lut_words(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<u16>> {
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
pub(super) fn lut_descriptor(obj: &InMemDicomObject, tag: Tag, signed_first: bool) -> Option<(usize, f64, u16)> {
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

pub(super) fn read_meta(obj: &DefaultDicomObject, inferred: bool) -> ImageMeta {
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

pub(super) fn voi_luts(obj: &InMemDicomObject, signed: bool) -> Vec<VoiLut> {
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

pub(super) const MAX_TAG_ROWS: usize = 20_000;

pub(super) fn tag_entries(obj: &DefaultDicomObject) -> Vec<TagEntry> {
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

pub(super) fn tag_name(tag: Tag) -> String {
    StandardDataDictionary.by_tag(tag).map(|e| e.alias.to_string()).unwrap_or_else(|| {
        if tag.group() % 2 == 1 {
            "Private".into()
        } else {
            "Unknown".into()
        }
    })
}

pub(super) fn clip(s: &str) -> String {
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s.to_string()
    }
}

pub(super) fn walk_tags(obj: &InMemDicomObject, depth: usize, inherited_phi: bool, rows: &mut Vec<TagEntry>) {
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
