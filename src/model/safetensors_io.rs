//! Reading and writing safetensors with checked names, shapes and types.
//!
//! candle's own loaders either panic-free-but-vague (`load_buffer`) or `unwrap` while
//! serialising; here every failure names the file and the tensor, and every read tensor is
//! converted to contiguous f32 (the backbone is stored in f16, computed in f32).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};

use super::error::{Error, Result};

/// A parsed safetensors file: tensors (in their stored type) and the `__metadata__` map.
pub(crate) struct TensorFile {
    pub path: PathBuf,
    tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Reads and parses `path`. The whole file is read (not memory-mapped) so that its pages
    /// are released once the f32 copies exist: resident memory then holds the model once.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &bytes)
    }

    /// Parses bytes already in memory; `path` is only used in messages.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::NotSafetensors { path: path.to_path_buf(), reason };
        let (_, header) = check_header(path, bytes)?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let dtype = match DType::try_from(view.dtype()) {
                Ok(d) => d,
                Err(_) => return Err(bad(format!("tensor '{name}' has unsupported type {:?}", view.dtype()))),
            };
            let tensor = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
                .map_err(|e| bad(format!("tensor '{name}': {e}")))?;
            tensors.insert(name, tensor);
        }
        Ok(Self { path: path.to_path_buf(), tensors, metadata })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.dims())
    }

    /// The tensor `name` as contiguous f32, which must have exactly `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = self.f32_any(name)?;
        if tensor.dims() != shape {
            return Err(Error::weights(
                self.path.display().to_string(),
                format!("tensor '{name}' has shape {:?}, expected {shape:?}", tensor.dims()),
            ));
        }
        Ok(tensor)
    }

    /// The tensor `name` as contiguous f32, whatever its shape.
    pub fn f32_any(&self, name: &str) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::weights(self.path.display().to_string(), format!("tensor '{name}' is missing")))?;
        if !matches!(tensor.dtype(), DType::F16 | DType::BF16 | DType::F32 | DType::F64) {
            return Err(Error::weights(
                self.path.display().to_string(),
                format!("tensor '{name}' has type {:?}, expected a float type", tensor.dtype()),
            ));
        }
        let tensor = tensor.to_dtype(DType::F32)?.contiguous()?;
        // A NaN or infinite weight would silently poison every prediction.
        let finite = tensor.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite());
        if !finite {
            return Err(Error::weights(
                self.path.display().to_string(),
                format!("tensor '{name}' contains NaN or infinite values"),
            ));
        }
        Ok(tensor)
    }
}

/// Checks a whole safetensors file's bytes against its header before any tensor is touched:
/// the header length lies inside the file (and under safetensors' 100 MB cap), the JSON
/// parses, every tensor's byte range matches its shape and type, the ranges tile the data
/// section exactly (no overlap, no gap, none past the end). A truncated file or a header that
/// lies fails here. Returns the header length and the parsed header; tensor `i`'s bytes are
/// `bytes[8 + len + start .. 8 + len + end]` with `(start, end)` its `data_offsets`.
pub(crate) fn check_header(path: &Path, bytes: &[u8]) -> Result<(usize, safetensors::tensor::Metadata)> {
    SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::NotSafetensors { path: path.to_path_buf(), reason: e.to_string() })
}

/// [`check_header`] for a file on disk without reading its tensors: the header is read and
/// checked the same way (length inside the file and under safetensors' 100 MB cap, JSON,
/// ranges that match shapes and types and tile the data section), and the data section must
/// end exactly at the end of the file. Leaves the file position unspecified.
pub(crate) fn check_file_header(
    path: &Path,
    file: &mut std::fs::File,
) -> Result<(usize, safetensors::tensor::Metadata)> {
    use std::io::{Read, Seek, SeekFrom};
    let refuse = |reason: String| Error::NotSafetensors { path: path.to_path_buf(), reason };
    let io = |e: std::io::Error| refuse(format!("cannot read: {e}"));
    let file_len = file.seek(SeekFrom::End(0)).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| refuse("shorter than its 8-byte header length".into()))?;
    let header_len = u64::from_le_bytes(len);
    // safetensors' own cap (MAX_HEADER_SIZE), checked before anything is allocated.
    if header_len > 100_000_000 || header_len > file_len - 8 {
        return Err(refuse(format!("header length {header_len} does not fit a {file_len}-byte file")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    // Deserialising a Metadata checks every tensor's range as `read_metadata` does.
    let metadata: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| refuse(format!("invalid header: {e}")))?;
    let end = 8 + header_len + metadata.data_len() as u64;
    if end != file_len {
        return Err(refuse(format!("the header describes {end} bytes but the file has {file_len}")));
    }
    Ok((header_len as usize, metadata))
}

/// One f32 tensor ready to serialise.
struct F32Bytes {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &F32Bytes {
    fn dtype(&self) -> StDtype {
        StDtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Serialises f32 tensors (in name order) with a `__metadata__` map.
pub(crate) fn serialize_f32(tensors: &BTreeMap<String, Tensor>, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let mut prepared = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let values = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        prepared.push((name.clone(), F32Bytes { shape: tensor.dims().to_vec(), bytes }));
    }
    let views = prepared.iter().map(|(name, t)| (name.as_str(), t));
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| Error::Unsupported(format!("cannot serialise tensors: {e}")))
}
