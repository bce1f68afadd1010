//! DICOMweb client (PS3.18): QIDO-RS search, WADO-RS retrieve of a series into the study
//! store, STOW-RS send. Blocking HTTP over `ureq`; this build speaks plain `http://` only
//! (an `https://` URL is refused with a clear message rather than sent in clear).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::error::{Error, Result};
use super::query::QueryKeys;
use crate::store::{StoredInstance, StudyStore};

/// Largest response we read (a series retrieved in one multipart body).
const MAX_BODY: u64 = 4 << 30;

pub struct DicomWebClient {
    base: String,
    agent: ureq::Agent,
    timeout: Duration,
}

impl DicomWebClient {
    /// `base` is the service root, e.g. `http://pacs:8042/dicom-web`.
    pub fn new(base: &str, timeout: Duration) -> Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if base.starts_with("https://") {
            return Err(Error::Invalid(format!(
                "{base}: https DICOMweb services are not supported by this build (no TLS); use an http:// URL on a trusted network"
            )));
        }
        if !base.starts_with("http://") {
            return Err(Error::Invalid(format!("{base}: a DICOMweb URL starts with http://")));
        }
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
        Ok(DicomWebClient { base, agent, timeout })
    }

    fn fail(&self, during: &str, e: ureq::Error) -> Error {
        match e {
            ureq::Error::Timeout(_) => Error::Timeout {
                peer: self.base.clone(),
                seconds: self.timeout.as_secs(),
                during: format!(" during {during}"),
            },
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                Error::Connect { peer: self.base.clone(), reason: io.to_string() }
            }
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                Error::Connect { peer: self.base.clone(), reason: e.to_string() }
            }
            other => Error::Connection {
                peer: self.base.clone(),
                during: format!(" during {during}"),
                reason: other.to_string(),
            },
        }
    }

    fn http_status(&self, during: &str, status: u16, body: &str) -> Error {
        let detail: String = body.chars().take(200).collect();
        Error::Protocol { peer: self.base.clone(), reason: format!("{during}: HTTP {status} {}", detail.trim()) }
    }

    /// QIDO-RS: studies matching `keys` (DICOM JSON objects, one per study).
    pub fn search_studies(&self, keys: &QueryKeys) -> Result<Vec<Value>> {
        let mut params = Vec::new();
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                params.push((k.to_string(), v.clone()));
            }
        };
        add("PatientID", &keys.patient_id);
        add("PatientName", &keys.patient_name);
        add("PatientBirthDate", &keys.birth_date);
        add("StudyDate", &keys.study_date);
        add("ModalitiesInStudy", &keys.modality);
        add("AccessionNumber", &keys.accession);
        add("StudyInstanceUID", &keys.study_uid);
        self.qido("/studies", &params)
    }

    /// QIDO-RS: the series of a study.
    pub fn search_series(&self, study_uid: &str) -> Result<Vec<Value>> {
        self.qido(&format!("/studies/{}/series", path_segment(study_uid)?), &[])
    }

    /// QIDO-RS: the instances of a series.
    pub fn search_instances(&self, study_uid: &str, series_uid: &str) -> Result<Vec<Value>> {
        self.qido(&format!("/studies/{}/series/{}/instances", path_segment(study_uid)?, path_segment(series_uid)?), &[])
    }

    fn qido(&self, path: &str, params: &[(String, String)]) -> Result<Vec<Value>> {
        let during = "QIDO-RS search";
        let mut rq = self.agent.get(format!("{}{path}", self.base)).header("Accept", "application/dicom+json");
        for (k, v) in params {
            rq = rq.query(k, v);
        }
        let mut rsp = rq.call().map_err(|e| self.fail(during, e))?;
        let status = rsp.status().as_u16();
        if status == 204 {
            return Ok(Vec::new()); // no matches
        }
        let body = rsp.body_mut().with_config().limit(MAX_BODY).read_to_vec().map_err(|e| self.fail(during, e))?;
        if status != 200 {
            return Err(self.http_status(during, status, &String::from_utf8_lossy(&body)));
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(items)) => Ok(items),
            _ => Err(Error::Protocol {
                peer: self.base.clone(),
                reason: format!("{during}: the answer is not a DICOM JSON array"),
            }),
        }
    }

    /// WADO-RS: every instance of a series, stored into `store` as it is parsed out of the
    /// multipart answer (each part is checked like a received C-STORE).
    pub fn retrieve_series(
        &self,
        study_uid: &str,
        series_uid: &str,
        store: &StudyStore,
    ) -> Result<Vec<StoredInstance>> {
        let url = format!("{}/studies/{}/series/{}", self.base, path_segment(study_uid)?, path_segment(series_uid)?);
        let source = "DICOMWEB";
        let mut stored = Vec::new();
        for part in self.wado(&url)? {
            stored.push(store.import_bytes(&part, source)?);
        }
        Ok(stored)
    }

    /// WADO-RS: one instance as the service holds it (a Part 10 file, in its stored transfer
    /// syntax), not stored anywhere.
    pub fn retrieve_instance(&self, study_uid: &str, series_uid: &str, sop_instance_uid: &str) -> Result<Vec<u8>> {
        let url = format!(
            "{}/studies/{}/series/{}/instances/{}",
            self.base,
            path_segment(study_uid)?,
            path_segment(series_uid)?,
            path_segment(sop_instance_uid)?
        );
        let mut parts = self.wado(&url)?;
        if parts.len() != 1 {
            return Err(Error::Protocol {
                peer: self.base.clone(),
                reason: format!("WADO-RS retrieve: {} parts for one instance", parts.len()),
            });
        }
        Ok(parts.remove(0))
    }

    /// The parts of a WADO-RS multipart answer, any transfer syntax.
    fn wado(&self, url: &str) -> Result<Vec<Vec<u8>>> {
        let during = "WADO-RS retrieve";
        let mut rsp = self
            .agent
            .get(url)
            .header("Accept", "multipart/related; type=\"application/dicom\"; transfer-syntax=*")
            .call()
            .map_err(|e| self.fail(during, e))?;
        let status = rsp.status().as_u16();
        let content_type = rsp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = rsp.body_mut().with_config().limit(MAX_BODY).read_to_vec().map_err(|e| self.fail(during, e))?;
        if status != 200 {
            return Err(self.http_status(during, status, &String::from_utf8_lossy(&body)));
        }
        let boundary = boundary_of(&content_type).ok_or_else(|| Error::Protocol {
            peer: self.base.clone(),
            reason: format!("{during}: not a multipart answer ({content_type})"),
        })?;
        let parts = split_multipart(&body, &boundary)
            .map_err(|e| Error::Protocol { peer: self.base.clone(), reason: format!("{during}: {e}") })?;
        Ok(parts.into_iter().map(<[u8]>::to_vec).collect())
    }

    /// STOW-RS: sends Part 10 files in one multipart request; returns the service's answer
    /// (DICOM JSON with the referenced and failed SOP sequences).
    pub fn store_files(&self, files: &[PathBuf]) -> Result<Value> {
        let during = "STOW-RS store";
        let boundary = format!("melo-{:016x}", rand::random::<u64>());
        let mut body = Vec::new();
        for file in files {
            let bytes = std::fs::read(file)
                .map_err(|e| Error::File { file: file.display().to_string(), reason: e.to_string() })?;
            // A file that does not parse is never sent (as with C-STORE).
            check_part10(&bytes).map_err(|e| Error::File { file: file.display().to_string(), reason: e })?;
            body.extend_from_slice(format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes());
            body.extend_from_slice(&bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let mut rsp = self
            .agent
            .post(format!("{}/studies", self.base))
            .header("Content-Type", format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"))
            .header("Accept", "application/dicom+json")
            .send(&body[..])
            .map_err(|e| self.fail(during, e))?;
        let status = rsp.status().as_u16();
        let answer = rsp.body_mut().with_config().limit(64 << 20).read_to_vec().map_err(|e| self.fail(during, e))?;
        if !(200..300).contains(&status) {
            return Err(self.http_status(during, status, &String::from_utf8_lossy(&answer)));
        }
        serde_json::from_slice(&answer).map_err(|e| Error::Protocol {
            peer: self.base.clone(),
            reason: format!("{during}: unreadable answer: {e}"),
        })
    }
}

fn check_part10(bytes: &[u8]) -> std::result::Result<(), String> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let part10 = crate::store::split_part10(bytes)?;
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(part10.meta.transfer_syntax())
        .ok_or_else(|| format!("unknown transfer syntax {}", part10.meta.transfer_syntax()))?;
    crate::store::parse_data_set(part10.data_set, ts)
        .map(|_| ())
        .map_err(|e| format!("not a valid DICOM data set: {e}"))
}

/// A UID as a URL path segment: refused unless it is made of digits and dots, so nothing can
/// be smuggled into the path.
fn path_segment(uid: &str) -> Result<&str> {
    if !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        Ok(uid)
    } else {
        Err(Error::Invalid(format!("{uid:?} is not a UID")))
    }
}

/// The boundary parameter of a `multipart/related` content type.
fn boundary_of(content_type: &str) -> Option<String> {
    if !content_type.to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    content_type.split(';').map(str::trim).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The bodies of a multipart message (RFC 2046), without their headers.
fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> std::result::Result<Vec<&'a [u8]>, String> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut parts = Vec::new();
    let mut rest = match find(body, delimiter) {
        Some(i) => &body[i + delimiter.len()..],
        None => return Err("no multipart boundary in the body".into()),
    };
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts); // closing delimiter
        }
        let headers_end = find(rest, b"\r\n\r\n").ok_or("a part without headers")?;
        let content = &rest[headers_end + 4..];
        let next = find(content, delimiter).ok_or("a part without its closing boundary")?;
        // The CRLF before a delimiter belongs to the delimiter.
        let end = if next >= 2 && &content[next - 2..next] == b"\r\n" { next - 2 } else { next };
        parts.push(&content[..end]);
        rest = &content[next + delimiter.len()..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A DICOM JSON object (`{"0020000D": {"vr": "UI", "Value": [...]}}`) as keyword → value,
/// like [`super::query::match_to_map`] does for C-FIND matches.
pub fn json_to_map(obj: &Value) -> BTreeMap<String, String> {
    use dicom_core::dictionary::DataDictionary;
    let dict = dicom_dictionary_std::StandardDataDictionary;
    let mut out = BTreeMap::new();
    let Some(map) = obj.as_object() else { return out };
    for (tag, element) in map {
        let Ok(raw) = u32::from_str_radix(tag, 16) else { continue };
        let t = dicom_core::Tag((raw >> 16) as u16, raw as u16);
        let name = dict.by_tag(t).map(|e| e.alias.to_string()).unwrap_or_else(|| tag.clone());
        let values: Vec<String> = element["Value"]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        Value::Object(o) => o.get("Alphabetic").and_then(Value::as_str).unwrap_or_default().to_string(),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.insert(name, values.join("\\"));
    }
    out
}

/// Of a STOW-RS answer: how many instances were stored (Referenced SOP Sequence, 0008,1199) and
/// how many failed (Failed SOP Sequence, 0008,1198).
pub fn stow_counts(answer: &Value) -> (usize, usize) {
    let count = |tag: &str| answer[tag]["Value"].as_array().map(Vec::len).unwrap_or(0);
    (count("00081199"), count("00081198"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_are_cut_at_their_boundaries() {
        let body = b"preamble\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nAB\r\n--CD\r\n--b1\r\nX: y\r\n\r\n\r\n--b1--\r\n";
        let parts = split_multipart(body, "b1").unwrap();
        assert_eq!(parts, vec![&b"AB\r\n--CD"[..], &b""[..]]);
        assert_eq!(
            boundary_of("multipart/related; type=\"application/dicom\"; boundary=\"x y\"").as_deref(),
            Some("x y")
        );
        assert!(boundary_of("application/json").is_none());
        assert!(split_multipart(b"--b1\r\nA: b\r\n\r\nno end", "b1").is_err());
        assert!(path_segment("1.2/../3").is_err());
        assert!(DicomWebClient::new("https://pacs/dicom-web", Duration::from_secs(1)).is_err());
    }
}
