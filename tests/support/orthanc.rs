//! A real Orthanc (Debian package `orthanc`, plus `orthanc-dicomweb` for the DICOMweb plugin)
//! on loopback: free high ports, a temporary storage and index folder, a generated
//! configuration, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{free_port, require_program};

/// Orthanc's AE title in every test.
pub const ORTHANC_AET: &str = "ORTHANC";

/// Where the Debian packages put the DICOMweb plugin.
const DICOMWEB_PLUGIN_CANDIDATES: &[&str] = &[
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
];

/// A node Orthanc knows (its `DicomModalities`): it accepts queries and retrieves from this
/// AE title and sends C-MOVE results to its host and port.
#[derive(Debug, Clone)]
pub struct Modality {
    pub name: String,
    pub aet: String,
    pub port: u16,
}

impl Modality {
    pub fn new(name: &str, aet: &str, port: u16) -> Self {
        Modality { name: name.into(), aet: aet.into(), port }
    }
}

pub struct Orthanc {
    child: Child,
    pub dicom_port: u16,
    pub http_port: u16,
    // Storage, index, configuration and log; removed when the server is dropped.
    dir: tempfile::TempDir,
    agent: ureq::Agent,
}

impl Orthanc {
    /// Starts Orthanc knowing `modalities`, and waits until its REST API answers.
    pub fn start(modalities: &[Modality]) -> Orthanc {
        let program = require_program("Orthanc", "orthanc");
        let plugin = DICOMWEB_PLUGIN_CANDIDATES.iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| {
            panic!(
                "Orthanc's DICOMweb plugin (libOrthancDicomWeb.so) is not installed; install the Debian \
                 package `orthanc-dicomweb` (sudo tools/install_test_servers.sh)"
            )
        });
        // A port taken between our probe and Orthanc's bind makes Orthanc exit at once; try
        // again on other ports rather than fail the test on that race.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(&program, &plugin, modalities) {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("Orthanc did not start: {last_error}");
    }

    fn try_start(program: &Path, plugin: &Path, modalities: &[Modality]) -> Result<Orthanc, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dicom_port = free_port();
        let http_port = loop {
            let p = free_port();
            if p != dicom_port {
                break p;
            }
        };
        let mut known = serde_json::Map::new();
        for m in modalities {
            known.insert(
                m.name.clone(),
                json!({ "AET": m.aet, "Host": "127.0.0.1", "Port": m.port,
                        "AllowEcho": true, "AllowFind": true, "AllowGet": true, "AllowMove": true,
                        "AllowStore": true }),
            );
        }
        let config = json!({
            "Name": "melo-test",
            "StorageDirectory": dir.path().join("storage"),
            "IndexDirectory": dir.path().join("index"),
            "StorageCompression": false,
            "HttpServerEnabled": true,
            "HttpPort": http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "SslEnabled": false,
            "DicomServerEnabled": true,
            "DicomAet": ORTHANC_AET,
            "DicomPort": dicom_port,
            // Wrong called AE titles must be refused, as a real PACS does.
            "DicomCheckCalledAet": true,
            "DicomCheckModalityHost": false,
            "DicomAlwaysAllowEcho": true,
            "DicomAlwaysAllowStore": true,
            "DicomModalities": known,
            "DicomScpTimeout": 30,
            "DicomScuTimeout": 10,
            "SaveJobs": false,
            "StableAge": 1,
            "Plugins": [plugin],
            "DicomWeb": { "Enable": true, "Root": "/dicom-web/", "EnableWado": true, "Ssl": false },
        });
        let config_path = dir.path().join("orthanc.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("orthanc.log")).map_err(|e| e.to_string())?;
        let child = Command::new(program)
            .arg("--no-jobs")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().into();
        let mut server = Orthanc { child, dicom_port, http_port, dir, agent };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("Orthanc exited with {status}; its log:\n{}", server.log_tail()));
            }
            if server.agent.get(server.url("/system")).call().is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!("its REST API did not answer within 60 s; its log:\n{}", server.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ORTHANC@127.0.0.1:PORT`, the peer syntax of `melo net`.
    pub fn peer(&self) -> String {
        format!("{ORTHANC_AET}@127.0.0.1:{}", self.dicom_port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// The last lines of Orthanc's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("orthanc.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Uploads a DICOM file through the REST API (`POST /instances`); returns Orthanc's answer
    /// (`ID`, `ParentSeries`, `ParentStudy`, `Status`).
    pub fn upload(&self, file: &Path) -> Value {
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut response = self
            .agent
            .post(self.url("/instances"))
            .header("Content-Type", "application/dicom")
            .send(&bytes[..])
            .unwrap_or_else(|e| panic!("upload {} to Orthanc: {e}\n{}", file.display(), self.log_tail()));
        let answer: Value = response.body_mut().read_json().unwrap();
        assert_eq!(answer["Status"], "Success", "Orthanc refused {}: {answer}", file.display());
        answer
    }

    pub fn upload_all(&self, files: &[PathBuf]) -> Vec<Value> {
        files.iter().map(|f| self.upload(f)).collect()
    }

    /// GET of a REST resource as JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let mut response =
            self.agent.get(self.url(path)).call().unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_tail()));
        response.body_mut().read_json().unwrap()
    }

    /// GET of a REST resource as bytes (e.g. `/instances/{id}/file`).
    pub fn get_bytes(&self, path: &str) -> Vec<u8> {
        let mut response =
            self.agent.get(self.url(path)).call().unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_tail()));
        response.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap()
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Value {
        let mut response = self
            .agent
            .post(self.url(path))
            .send_json(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log_tail()));
        response.body_mut().read_json().unwrap()
    }

    /// DELETE of a REST resource (e.g. `/studies/{id}`).
    pub fn delete(&self, path: &str) {
        self.agent.delete(self.url(path)).call().unwrap_or_else(|e| panic!("DELETE {path}: {e}\n{}", self.log_tail()));
    }

    /// Orthanc's `/tools/find`: the same query through its own index, to compare C-FIND with.
    pub fn find(&self, level: &str, query: Value) -> Vec<Value> {
        let answer = self.post_json("/tools/find", &json!({ "Level": level, "Query": query, "Expand": true }));
        answer.as_array().cloned().unwrap_or_default()
    }

    /// SOP Instance UIDs of everything Orthanc holds.
    pub fn instance_uids(&self) -> Vec<String> {
        let mut uids: Vec<String> = self
            .find("Instance", json!({}))
            .iter()
            .map(|i| i["MainDicomTags"]["SOPInstanceUID"].as_str().unwrap_or_default().to_string())
            .collect();
        uids.sort();
        uids
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Studies view's node form for an Orthanc reached by DIMSE on loopback at `port`.
pub fn dimse_form(name: &str, port: u16) -> melo::gui::NodeForm {
    melo::gui::NodeForm {
        name: name.into(),
        aet: ORTHANC_AET.into(),
        host: "127.0.0.1".into(),
        port: port.to_string(),
        ..Default::default()
    }
}
