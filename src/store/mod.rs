//! The local study store: a folder the user chooses, one DICOM file per instance under
//! `STUDY/SERIES/INSTANCE.dcm` (names derived from the UIDs, never leaving the folder), and an
//! SQLite index (patients, studies, series, instances) in `melo-index.sqlite` beside them.
//!
//! Crash safety: each file is written to a temporary file, synced and renamed into place
//! (`crate::atomic`), and only then entered in the index, in one transaction. A crash mid-
//! receive leaves at worst a stale temporary or an unindexed file, never an index row that
//! points at half a file. Opening the store repairs both ([`Recovery`]): files renamed into
//! place but never indexed are indexed, temporaries of interrupted writes are removed.

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
/// Lock file beside the index: every open store holds a shared lock on it, so an open that
/// gets the exclusive lock knows no other process is writing into the folder.
pub const LOCK_FILE: &str = "melo-store.lock";
/// While another process has the store open, a temporary file of ours is only taken for a
/// leftover when it has not been written for this long (a live write touches it every few
/// milliseconds, its final fsync takes seconds).
pub const BUSY_STORE_PARTIAL_AGE: std::time::Duration = std::time::Duration::from_secs(600);

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

/// The levels of [`StudyStore::index_rows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexLevel {
    Patient,
    Study,
    Series,
    Instance,
}

/// One row of [`StudyStore::index_rows`]: the attributes of its level and of those above;
/// the fields of lower levels are empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexRow {
    pub patient_id: String,
    pub patient_name: String,
    pub birth_date: String,
    pub sex: String,
    pub study_uid: String,
    pub study_date: String,
    pub study_time: String,
    pub accession: String,
    pub study_description: String,
    /// Study level: the modalities of its series.
    pub modalities_in_study: Vec<String>,
    /// Patient level: its studies; study level: its series.
    pub related: usize,
    /// Study level: its instances.
    pub related_instances: usize,
    pub series_uid: String,
    pub modality: String,
    pub series_number: Option<i64>,
    pub series_description: String,
    /// Series level: its instances.
    pub series_instances: usize,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub instance_number: Option<i64>,
    /// Instance level: the file.
    pub path: Option<PathBuf>,
}

pub struct StudyStore {
    root: PathBuf,
    db_path: PathBuf,
    // One connection, one writer at a time: receptions on several associations serialise on
    // the index only; their files are written in parallel.
    db: Mutex<Connection>,
    recovery: Recovery,
    // Held (shared) for as long as the store is open; see LOCK_FILE.
    _lock: std::fs::File,
}

/// What opening the store repaired after a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Recovery {
    /// Files in place under their UIDs but missing from the index (a crash between the rename
    /// and the index commit), now indexed.
    pub indexed: Vec<PathBuf>,
    /// Unindexed copies of instances the index holds at another path (a crash before the old
    /// copy of a re-sent instance was removed, or before a re-send was committed), removed.
    pub removed_duplicates: Vec<PathBuf>,
    /// Temporary files of interrupted writes, removed.
    pub removed_partials: usize,
    /// Files where the store keeps instances that could not be indexed, left in place, and why.
    pub unreadable: Vec<(PathBuf, String)>,
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
        let lock_path = root.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io(&lock_path, e))?;
        let alone = lock.try_lock().is_ok();
        let mut store = StudyStore { root, db_path, db: Mutex::new(conn), recovery: Recovery::default(), _lock: lock };
        store.recovery = store.recover(alone)?;
        if alone {
            // Downgrade: other processes may open the store now.
            let _ = store._lock.unlock();
        }
        // A folder whose file system has no locks (some network shares) still works as a
        // store; other processes then only ever remove old temporaries there.
        let _ = store._lock.lock_shared();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What [`StudyStore::open`] repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Indexes instance files that are in place but not in the index, removes temporaries of
    /// interrupted writes (all of them when `alone`, else only old ones: another process may
    /// be writing) and unindexed duplicates of indexed instances.
    fn recover(&self, alone: bool) -> Result<Recovery> {
        let mut recovery = Recovery::default();
        let indexed: std::collections::HashMap<String, String> = {
            let conn = self.db.lock().unwrap_or_else(|p| p.into_inner());
            let mut stmt =
                conn.prepare("SELECT path, sop_instance_uid FROM instances").map_err(|e| self.db_error(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(|e| self.db_error(e))?;
            rows.collect::<rusqlite::Result<_>>().map_err(|e| self.db_error(e))?
        };
        let indexed_uids: std::collections::HashMap<&str, &str> =
            indexed.iter().map(|(path, uid)| (uid.as_str(), path.as_str())).collect();
        // crate::atomic removes its temporaries older than STALE_PARTIAL_AGE before `now`; a
        // `now` moved forward makes that threshold ours.
        let threshold = if alone { std::time::Duration::ZERO } else { BUSY_STORE_PARTIAL_AGE };
        let shifted_now = std::time::SystemTime::now() + crate::atomic::STALE_PARTIAL_AGE - threshold
            + std::time::Duration::from_secs(1);
        // The layout is STUDY/SERIES/INSTANCE.dcm: three levels, never following links.
        let mut folders = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = folders.pop() {
            recovery.removed_partials += crate::atomic::remove_stale_partials(&dir, shifted_now);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else { continue };
                let path = entry.path();
                if kind.is_dir() && depth < 2 {
                    folders.push((path, depth + 1));
                    continue;
                }
                if !(kind.is_file() && depth == 2 && path.extension().is_some_and(|e| e == "dcm")) {
                    continue;
                }
                let Ok(relative) = path.strip_prefix(&self.root) else { continue };
                let relative_text = relative.to_string_lossy().to_string();
                if indexed.contains_key(&relative_text) {
                    continue;
                }
                match self.index_file_in_place(&path, relative, &indexed_uids) {
                    Ok(InPlace::Indexed) => recovery.indexed.push(path),
                    Ok(InPlace::Duplicate) => {
                        std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
                        recovery.removed_duplicates.push(path);
                    }
                    Err(Error::Unreadable(why) | Error::Mismatch(why)) => recovery.unreadable.push((path, why)),
                    Err(other) => return Err(other),
                }
            }
        }
        recovery.indexed.sort();
        Ok(recovery)
    }

    /// Indexes a file found in the store's layout without rewriting it: it must parse, and
    /// its UIDs must name the place it is in.
    fn index_file_in_place(
        &self,
        path: &Path,
        relative: &Path,
        indexed_uids: &std::collections::HashMap<&str, &str>,
    ) -> Result<InPlace> {
        let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
        let part10 = split_part10(&bytes).map_err(Error::Unreadable)?;
        let ts_uid = part10.meta.transfer_syntax().trim_end_matches(['\0', ' ']).to_string();
        let ts = TransferSyntaxRegistry
            .get(&ts_uid)
            .ok_or_else(|| Error::Unreadable(format!("unknown transfer syntax {ts_uid}")))?;
        let (obj, _) = parse_data_set(part10.data_set, ts).map_err(Error::Unreadable)?;
        let attrs = Attributes::of(&obj)?;
        let expected = relative_path(&attrs);
        if expected != relative {
            return Err(Error::Mismatch(format!("its UIDs place it at {}", expected.display())));
        }
        if let Some(other) = indexed_uids.get(attrs.sop_instance_uid.as_str()) {
            if self.root.join(other).is_file() {
                return Ok(InPlace::Duplicate);
            }
        }
        let source = part10.meta.source_application_entity_title().unwrap_or("").trim_end_matches(['\0', ' ']);
        self.index(&attrs, relative, &ts_uid, bytes.len() as u64, source)?;
        Ok(InPlace::Indexed)
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
        let relative = relative_path(a);
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
        let previous = self.index(a, &relative, transfer_syntax, size, source_aet)?;
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

    /// Enters a file in place into the index, in one transaction; returns the path the
    /// instance was indexed at before, if any.
    fn index(
        &self,
        a: &Attributes,
        relative: &Path,
        transfer_syntax: &str,
        size: u64,
        source_aet: &str,
    ) -> Result<Option<String>> {
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
        Ok(previous)
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

    /// Index rows at one query/retrieve level, for the query/retrieve SCP (`crate::net`): one
    /// row per patient, study, series or instance, with the attributes of its level and of
    /// the levels above. `study_uid` and `series_uid` narrow the rows down (hierarchical
    /// queries name them); every other key is matched by the caller.
    pub fn index_rows(
        &self,
        level: IndexLevel,
        study_uid: Option<&str>,
        series_uid: Option<&str>,
    ) -> Result<Vec<IndexRow>> {
        let (sql, instance_level) = match level {
            IndexLevel::Patient => (
                "SELECT p.patient_id, p.name, p.birth_date, p.sex,
                        '', '', '', '', '', '',
                        (SELECT COUNT(*) FROM studies s WHERE s.patient = p.id), 0,
                        '', '', NULL, '', 0
                 FROM patients p
                 WHERE (?1 IS NULL OR EXISTS (SELECT 1 FROM studies s WHERE s.patient = p.id AND s.study_uid = ?1))
                   AND ?2 IS NULL
                 ORDER BY p.patient_id, p.name",
                false,
            ),
            IndexLevel::Study => (
                "SELECT p.patient_id, p.name, p.birth_date, p.sex,
                        s.study_uid, s.study_date, s.study_time, s.accession, s.description,
                        (SELECT GROUP_CONCAT(DISTINCT r.modality) FROM series r WHERE r.study_uid = s.study_uid),
                        (SELECT COUNT(*) FROM series r WHERE r.study_uid = s.study_uid),
                        (SELECT COUNT(*) FROM instances i JOIN series r ON i.series_uid = r.series_uid
                          WHERE r.study_uid = s.study_uid),
                        '', '', NULL, '', 0
                 FROM studies s JOIN patients p ON s.patient = p.id
                 WHERE (?1 IS NULL OR s.study_uid = ?1) AND ?2 IS NULL
                 ORDER BY s.study_date, s.study_uid",
                false,
            ),
            IndexLevel::Series => (
                "SELECT p.patient_id, p.name, p.birth_date, p.sex,
                        s.study_uid, s.study_date, s.study_time, s.accession, s.description, '', 0, 0,
                        r.series_uid, r.modality, r.number, r.description,
                        (SELECT COUNT(*) FROM instances i WHERE i.series_uid = r.series_uid)
                 FROM series r JOIN studies s ON r.study_uid = s.study_uid JOIN patients p ON s.patient = p.id
                 WHERE (?1 IS NULL OR s.study_uid = ?1) AND (?2 IS NULL OR r.series_uid = ?2)
                 ORDER BY s.study_uid, r.number, r.series_uid",
                false,
            ),
            IndexLevel::Instance => (
                "SELECT p.patient_id, p.name, p.birth_date, p.sex,
                        s.study_uid, s.study_date, s.study_time, s.accession, s.description, '', 0, 0,
                        r.series_uid, r.modality, r.number, r.description, 0,
                        i.sop_instance_uid, i.sop_class_uid, i.number, i.path
                 FROM instances i JOIN series r ON i.series_uid = r.series_uid
                   JOIN studies s ON r.study_uid = s.study_uid JOIN patients p ON s.patient = p.id
                 WHERE (?1 IS NULL OR s.study_uid = ?1) AND (?2 IS NULL OR r.series_uid = ?2)
                 ORDER BY s.study_uid, r.number, r.series_uid, i.number, i.sop_instance_uid",
                true,
            ),
        };
        let conn = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare(sql).map_err(|e| self.db_error(e))?;
        let rows = stmt
            .query_map(params![study_uid, series_uid], |r| {
                let modalities: Option<String> = r.get(9)?;
                Ok(IndexRow {
                    patient_id: r.get(0)?,
                    patient_name: r.get(1)?,
                    birth_date: r.get(2)?,
                    sex: r.get(3)?,
                    study_uid: r.get(4)?,
                    study_date: r.get(5)?,
                    study_time: r.get(6)?,
                    accession: r.get(7)?,
                    study_description: r.get(8)?,
                    modalities_in_study: modalities
                        .unwrap_or_default()
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect(),
                    related: r.get::<_, i64>(10)? as usize,
                    related_instances: r.get::<_, i64>(11)? as usize,
                    series_uid: r.get(12)?,
                    modality: r.get(13)?,
                    series_number: r.get(14)?,
                    series_description: r.get(15)?,
                    series_instances: r.get::<_, i64>(16)? as usize,
                    sop_instance_uid: if instance_level { r.get(17)? } else { String::new() },
                    sop_class_uid: if instance_level { r.get(18)? } else { String::new() },
                    instance_number: if instance_level { r.get(19)? } else { None },
                    path: if instance_level { Some(self.root.join(r.get::<_, String>(20)?)) } else { None },
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

/// What became of a file found in place during recovery.
enum InPlace {
    Indexed,
    Duplicate,
}

/// Where an instance's file goes, relative to the store root: `STUDY/SERIES/INSTANCE.dcm`.
fn relative_path(a: &Attributes) -> PathBuf {
    PathBuf::from(safe_name(&a.study_uid))
        .join(safe_name(&a.series_uid))
        .join(format!("{}.dcm", safe_name(&a.sop_instance_uid)))
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
