//! The local study store: a folder the user chooses, one DICOM file per instance under
//! `STUDY/SERIES/INSTANCE.dcm` (names derived from the UIDs, never leaving the folder), and an
//! SQLite index (patients, studies, series, instances) in `melo-index.sqlite` beside them.
//!
//! Crash safety: each file is written to a temporary file, synced and renamed into place
//! (`crate::atomic`), and only then entered in the index, in one transaction. A crash mid-
//! receive leaves at worst a stale temporary or an unindexed file, never an index row that
//! points at half a file.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileMetaTable, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::error::IoError;

/// Name of the index database inside the store folder.
pub const INDEX_FILE: &str = "melo-index.sqlite";

/// Implementation Class UID written into the file meta of stored files (a UID under the
/// "2.25" UUID arc, fixed for MeLo Workstation).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.163018215317420861093312207513434513771";
const IMPLEMENTATION_VERSION: &str = "MELO_0_1";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("study index {path}: {reason}")]
    Database { path: PathBuf, reason: String },
    /// The data set does not parse, or lacks the UIDs a stored file needs.
    #[error("unreadable data set: {0}")]
    Unreadable(String),
    /// The data set contradicts what the sender said it is (SOP class or instance UID).
    #[error("data set does not match its command: {0}")]
    Mismatch(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What was stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredInstance {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub study_uid: String,
    pub series_uid: String,
    pub transfer_syntax: String,
    /// Absolute path of the file.
    pub path: PathBuf,
    /// The store already held this instance; the file was replaced.
    pub replaced: bool,
}

/// One data set as received over the network: its bytes in `transfer_syntax`, without file
/// meta.
#[derive(Debug, Clone, Copy)]
pub struct IncomingDataSet<'a> {
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    pub transfer_syntax: &'a str,
    pub data_set: &'a [u8],
    /// AE title of the sender, kept in the index and the file meta (Source AE Title).
    pub source_aet: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StudyRecord {
    pub study_uid: String,
    pub patient_id: String,
    pub patient_name: String,
    pub birth_date: String,
    pub study_date: String,
    pub accession: String,
    pub description: String,
    pub series: usize,
    pub instances: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SeriesRecord {
    pub series_uid: String,
    pub study_uid: String,
    pub modality: String,
    pub number: Option<i64>,
    pub description: String,
    pub instances: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceRecord {
    pub sop_instance_uid: String,
    pub series_uid: String,
    pub sop_class_uid: String,
    pub number: Option<i64>,
    pub transfer_syntax: String,
    pub path: PathBuf,
    pub size: u64,
}

pub struct StudyStore {
    root: PathBuf,
    db_path: PathBuf,
    // One connection, one writer at a time: receptions on several associations serialise on
    // the index only; their files are written in parallel.
    db: Mutex<Connection>,
}

const SCHEMA: &str = "
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS patients (
    id INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL,
    name TEXT NOT NULL,
    birth_date TEXT NOT NULL,
    sex TEXT NOT NULL,
    UNIQUE (patient_id, name, birth_date)
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient INTEGER NOT NULL REFERENCES patients(id),
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL,
    accession TEXT NOT NULL,
    description TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    modality TEXT NOT NULL,
    number INTEGER,
    description TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    sop_class_uid TEXT NOT NULL,
    number INTEGER,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    source_aet TEXT NOT NULL,
    received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
CREATE INDEX IF NOT EXISTS series_by_study ON series(study_uid);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_uid);
";

impl StudyStore {
    /// Opens (creating when needed) the store in `root`.
    pub fn open(root: &Path) -> Result<StudyStore> {
        std::fs::create_dir_all(root).map_err(|e| io(root, e))?;
        let root = root.canonicalize().map_err(|e| io(root, e))?;
        let db_path = root.join(INDEX_FILE);
        let db_err = |e: rusqlite::Error| Error::Database { path: db_path.clone(), reason: e.to_string() };
        let conn = Connection::open(&db_path).map_err(db_err)?;
        // WAL: readers (the window listing studies) do not block the receiver; FULL sync so a
        // committed row survives a power cut as the renamed file does.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(StudyStore { root, db_path, db: Mutex::new(conn) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn db_error(&self, e: rusqlite::Error) -> Error {
        Error::Database { path: self.db_path.clone(), reason: e.to_string() }
    }

    /// Checks and stores one received data set: it must parse in its transfer syntax and
    /// carry the SOP class and instance the sender announced; then the file is written
    /// atomically and indexed.
    pub fn store_data_set(&self, incoming: &IncomingDataSet) -> Result<StoredInstance> {
        let ts = TransferSyntaxRegistry
            .get(incoming.transfer_syntax)
            .ok_or_else(|| Error::Unreadable(format!("unknown transfer syntax {}", incoming.transfer_syntax)))?;
        if ts.is_unsupported() {
            return Err(Error::Unreadable(format!("transfer syntax {} cannot be read", ts.name())));
        }
        let (obj, data_set) = parse_data_set(incoming.data_set, ts).map_err(Error::Unreadable)?;
        let attrs = Attributes::of(&obj)?;
        if attrs.sop_instance_uid != incoming.sop_instance_uid {
            return Err(Error::Mismatch(format!(
                "SOP Instance UID {} in the data set, {} in the command",
                attrs.sop_instance_uid, incoming.sop_instance_uid
            )));
        }
        if attrs.sop_class_uid != incoming.sop_class_uid {
            return Err(Error::Mismatch(format!(
                "SOP Class UID {} in the data set, {} in the command",
                attrs.sop_class_uid, incoming.sop_class_uid
            )));
        }
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(incoming.sop_class_uid)
            .media_storage_sop_instance_uid(incoming.sop_instance_uid)
            .transfer_syntax(incoming.transfer_syntax)
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION)
            .source_application_entity_title(incoming.source_aet)
            .build()
            .map_err(|e| Error::Unreadable(format!("cannot build the file meta: {e}")))?;
        self.write_and_index(&attrs, &meta, data_set, incoming.transfer_syntax, incoming.source_aet)
    }

    /// Imports a DICOM Part 10 file (preamble, `DICM`, file meta) as if it had been received.
    pub fn import_file(&self, path: &Path, source_aet: &str) -> Result<StoredInstance> {
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        self.import_bytes(&bytes, source_aet).map_err(|e| match e {
            Error::Unreadable(why) => Error::Unreadable(format!("{}: {why}", path.display())),
            other => other,
        })
    }

    /// Stores a DICOM Part 10 object held in memory (a WADO-RS part, a file read elsewhere).
    pub fn import_bytes(&self, bytes: &[u8], source_aet: &str) -> Result<StoredInstance> {
        let part10 = split_part10(bytes).map_err(Error::Unreadable)?;
        self.store_data_set(&IncomingDataSet {
            sop_class_uid: part10.meta.media_storage_sop_class_uid(),
            sop_instance_uid: part10.meta.media_storage_sop_instance_uid(),
            transfer_syntax: part10.meta.transfer_syntax(),
            data_set: part10.data_set,
            source_aet,
        })
    }

    fn write_and_index(
        &self,
        a: &Attributes,
        meta: &FileMetaTable,
        data_set: &[u8],
        transfer_syntax: &str,
        source_aet: &str,
    ) -> Result<StoredInstance> {
        let relative = PathBuf::from(safe_name(&a.study_uid))
            .join(safe_name(&a.series_uid))
            .join(format!("{}.dcm", safe_name(&a.sop_instance_uid)));
        let path = self.root.join(&relative);
        let dir = path.parent().expect("a joined path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        crate::atomic::write_atomic(&path, |w| {
            w.write_all(&[0u8; 128])?;
            w.write_all(b"DICM")?;
            meta.write(&mut *w).map_err(std::io::Error::other)?;
            w.write_all(data_set)
        })
        .map_err(|e| match e {
            crate::Error::Io(io) => Error::Io(io),
            other => Error::Unreadable(other.to_string()),
        })?;
        let size = std::fs::metadata(&path).map_err(|e| io(&path, e))?.len();

        let mut conn = self.db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction().map_err(|e| self.db_error(e))?;
        let previous: Option<String> = tx
            .query_row("SELECT path FROM instances WHERE sop_instance_uid = ?1", [&a.sop_instance_uid], |r| r.get(0))
            .optional()
            .map_err(|e| self.db_error(e))?;
        tx.execute(
            "INSERT INTO patients (patient_id, name, birth_date, sex) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (patient_id, name, birth_date) DO UPDATE SET sex = excluded.sex",
            params![a.patient_id, a.patient_name, a.birth_date, a.sex],
        )
        .map_err(|e| self.db_error(e))?;
        let patient: i64 = tx
            .query_row(
                "SELECT id FROM patients WHERE patient_id = ?1 AND name = ?2 AND birth_date = ?3",
                params![a.patient_id, a.patient_name, a.birth_date],
                |r| r.get(0),
            )
            .map_err(|e| self.db_error(e))?;
        tx.execute(
            "INSERT INTO studies (study_uid, patient, study_date, study_time, accession, description)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (study_uid) DO UPDATE SET patient = excluded.patient, study_date = excluded.study_date,
               study_time = excluded.study_time, accession = excluded.accession, description = excluded.description",
            params![a.study_uid, patient, a.study_date, a.study_time, a.accession, a.study_description],
        )
        .map_err(|e| self.db_error(e))?;
        tx.execute(
            "INSERT INTO series (series_uid, study_uid, modality, number, description) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (series_uid) DO UPDATE SET study_uid = excluded.study_uid, modality = excluded.modality,
               number = excluded.number, description = excluded.description",
            params![a.series_uid, a.study_uid, a.modality, a.series_number, a.series_description],
        )
        .map_err(|e| self.db_error(e))?;
        tx.execute(
            "INSERT INTO instances (sop_instance_uid, series_uid, sop_class_uid, number, transfer_syntax, path, size, source_aet)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (sop_instance_uid) DO UPDATE SET series_uid = excluded.series_uid,
               sop_class_uid = excluded.sop_class_uid, number = excluded.number,
               transfer_syntax = excluded.transfer_syntax, path = excluded.path, size = excluded.size,
               source_aet = excluded.source_aet, received_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')",
            params![
                a.sop_instance_uid,
                a.series_uid,
                a.sop_class_uid,
                a.instance_number,
                transfer_syntax,
                relative.to_string_lossy(),
                size as i64,
                source_aet
            ],
        )
        .map_err(|e| self.db_error(e))?;
        tx.commit().map_err(|e| self.db_error(e))?;
        drop(conn);
        // The same instance re-sent with other study/series UIDs: its old file is no longer
        // indexed; remove it (best effort, after the commit, so the index never points at a
        // missing file).
        if let Some(old) = &previous {
            let old = self.root.join(old);
            if old != path {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(StoredInstance {
            sop_instance_uid: a.sop_instance_uid.clone(),
            sop_class_uid: a.sop_class_uid.clone(),
            study_uid: a.study_uid.clone(),
            series_uid: a.series_uid.clone(),
            transfer_syntax: transfer_syntax.to_string(),
            path,
            replaced: previous.is_some(),
        })
    }

    /// Every study, newest study date first.
    pub fn studies(&self) -> Result<Vec<StudyRecord>> {
        let conn = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare(
                "SELECT s.study_uid, p.patient_id, p.name, p.birth_date, s.study_date, s.accession, s.description,
                        (SELECT COUNT(*) FROM series r WHERE r.study_uid = s.study_uid),
                        (SELECT COUNT(*) FROM instances i JOIN series r ON i.series_uid = r.series_uid
                          WHERE r.study_uid = s.study_uid)
                 FROM studies s JOIN patients p ON s.patient = p.id
                 ORDER BY s.study_date DESC, s.study_uid",
            )
            .map_err(|e| self.db_error(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StudyRecord {
                    study_uid: r.get(0)?,
                    patient_id: r.get(1)?,
                    patient_name: r.get(2)?,
                    birth_date: r.get(3)?,
                    study_date: r.get(4)?,
                    accession: r.get(5)?,
                    description: r.get(6)?,
                    series: r.get::<_, i64>(7)? as usize,
                    instances: r.get::<_, i64>(8)? as usize,
                })
            })
            .map_err(|e| self.db_error(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.db_error(e))
    }

    /// The series of a study, by series number.
    pub fn series(&self, study_uid: &str) -> Result<Vec<SeriesRecord>> {
        let conn = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare(
                "SELECT r.series_uid, r.study_uid, r.modality, r.number, r.description,
                        (SELECT COUNT(*) FROM instances i WHERE i.series_uid = r.series_uid)
                 FROM series r WHERE r.study_uid = ?1 ORDER BY r.number, r.series_uid",
            )
            .map_err(|e| self.db_error(e))?;
        let rows = stmt
            .query_map([study_uid], |r| {
                Ok(SeriesRecord {
                    series_uid: r.get(0)?,
                    study_uid: r.get(1)?,
                    modality: r.get(2)?,
                    number: r.get(3)?,
                    description: r.get(4)?,
                    instances: r.get::<_, i64>(5)? as usize,
                })
            })
            .map_err(|e| self.db_error(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.db_error(e))
    }

    /// The instances of a series, by instance number; paths are absolute.
    pub fn instances(&self, series_uid: &str) -> Result<Vec<InstanceRecord>> {
        let conn = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare(
                "SELECT sop_instance_uid, series_uid, sop_class_uid, number, transfer_syntax, path, size
                 FROM instances WHERE series_uid = ?1 ORDER BY number, sop_instance_uid",
            )
            .map_err(|e| self.db_error(e))?;
        let rows = stmt
            .query_map([series_uid], |r| {
                Ok(InstanceRecord {
                    sop_instance_uid: r.get(0)?,
                    series_uid: r.get(1)?,
                    sop_class_uid: r.get(2)?,
                    number: r.get(3)?,
                    transfer_syntax: r.get(4)?,
                    path: self.root.join(r.get::<_, String>(5)?),
                    size: r.get::<_, i64>(6)? as u64,
                })
            })
            .map_err(|e| self.db_error(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| self.db_error(e))
    }

    /// How many instances the index holds.
    pub fn instance_count(&self) -> Result<usize> {
        let conn = self.db.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("SELECT COUNT(*) FROM instances", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(|e| self.db_error(e))
    }
}

/// The attributes the index keeps, read from a data set.
struct Attributes {
    sop_class_uid: String,
    sop_instance_uid: String,
    study_uid: String,
    series_uid: String,
    patient_id: String,
    patient_name: String,
    birth_date: String,
    sex: String,
    study_date: String,
    study_time: String,
    accession: String,
    study_description: String,
    modality: String,
    series_number: Option<i64>,
    series_description: String,
    instance_number: Option<i64>,
}

impl Attributes {
    fn of(obj: &InMemDicomObject) -> Result<Attributes> {
        let text = |tag: Tag| -> String {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok().map(|s| s.trim_end_matches(['\0', ' ']).trim_start().to_string()))
                .unwrap_or_default()
        };
        let number = |tag: Tag| text(tag).trim().parse::<i64>().ok();
        let required = |tag: Tag, name: &str| -> Result<String> {
            let v = text(tag);
            if v.is_empty() {
                Err(Error::Unreadable(format!("no {name} in the data set")))
            } else {
                Ok(v)
            }
        };
        Ok(Attributes {
            sop_class_uid: required(tags::SOP_CLASS_UID, "SOP Class UID")?,
            sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            study_uid: required(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series_uid: required(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            patient_id: text(tags::PATIENT_ID),
            patient_name: text(tags::PATIENT_NAME),
            birth_date: text(tags::PATIENT_BIRTH_DATE),
            sex: text(tags::PATIENT_SEX),
            study_date: text(tags::STUDY_DATE),
            study_time: text(tags::STUDY_TIME),
            accession: text(tags::ACCESSION_NUMBER),
            study_description: text(tags::STUDY_DESCRIPTION),
            modality: text(tags::MODALITY),
            series_number: number(tags::SERIES_NUMBER),
            series_description: text(tags::SERIES_DESCRIPTION),
            instance_number: number(tags::INSTANCE_NUMBER),
        })
    }
}

/// A DICOM Part 10 file cut into its file meta and the bytes of its data set.
pub struct Part10<'a> {
    pub meta: FileMetaTable,
    pub data_set: &'a [u8],
}

/// Splits a Part 10 file (128-byte preamble, `DICM`, file meta group) without re-encoding the
/// data set, so what is sent or stored is byte for byte what the file holds.
pub fn split_part10(bytes: &[u8]) -> std::result::Result<Part10<'_>, String> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return Err("not a DICOM Part 10 file (no 'DICM' after the 128-byte preamble)".into());
    }
    let mut cursor = Cursor::new(&bytes[128..]);
    let meta =
        FileMetaTable::from_reader(&mut cursor).map_err(|e| format!("bad file meta: {}", one_line(&e.to_string())))?;
    let start = 128 + cursor.position() as usize;
    Ok(Part10 { meta, data_set: &bytes[start..] })
}

/// Parses a data set in its transfer syntax; returns the object and the bytes that make it up.
/// Zero bytes after Pixel Data (some writers pad files so) are cut off, as DCMTK and pydicom
/// read such files; anything else that does not parse is refused.
pub(crate) fn parse_data_set<'a>(
    data_set: &'a [u8],
    ts: &dicom_encoding::TransferSyntax,
) -> std::result::Result<(InMemDicomObject, &'a [u8]), String> {
    match InMemDicomObject::read_dataset_with_ts(data_set, ts) {
        Ok(obj) => Ok((obj, data_set)),
        Err(e) => crate::image::without_trailing_padding(data_set)
            .and_then(|trimmed| InMemDicomObject::read_dataset_with_ts(trimmed, ts).ok().map(|o| (o, trimmed)))
            .ok_or_else(|| one_line(&e.to_string())),
    }
}

/// A file or folder name for a UID: the UID itself when it is a well-formed UID (digits in
/// dot-separated components, at most 64 characters), else `x` and a hash of it. Either way a
/// single plain name: no separators, no `..`, so no SOP Instance UID can place a file outside
/// the store.
pub fn safe_name(uid: &str) -> String {
    let well_formed = !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()));
    if well_formed {
        uid.to_string()
    } else {
        let digest = Sha256::digest(uid.as_bytes());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("x{hex}")
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io(IoError { path: path.to_path_buf(), source })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_uids_give_plain_names() {
        assert_eq!(safe_name("1.2.840.113619.2.1"), "1.2.840.113619.2.1");
        for hostile in ["../../etc/passwd", "..", ".", "1..2", "1.2/3", "/abs", "1.2\\x", "", "1.2.", &"1".repeat(65)] {
            let name = safe_name(hostile);
            assert!(name.starts_with('x') && name.len() == 33, "{hostile:?} -> {name}");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        assert_ne!(safe_name("../a"), safe_name("../b"));
    }
}
