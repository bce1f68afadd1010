//! The weights of one pipeline component (`unet/`, `vae/`, `text_encoder/`) as diffusers and
//! transformers save them: `diffusion_pytorch_model.safetensors` (diffusers) or
//! `model.safetensors` (transformers), the `.fp16` variant of either, or shards listed by a
//! `*.safetensors.index.json`. Every header is checked with
//! [`crate::model::safetensors_io::check_file_header`] before any tensor is read, and each
//! tensor is read from its file (and widened to f32) only when the component asks for it
//! through the [`VarBuilder`], so the peak is the model plus one tensor. Positional reads rather
//! than a memory map: mapping a file is `unsafe` (another process truncating it is undefined
//! behaviour), and unsafe code stays in the two kernel modules (crate root). [`Weights::check_all_used`] then refuses a file with tensors the config's
//! architecture never asked for: such weights belong to another model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::diffusion::error::{Error, Result};

/// File-name stem of a diffusers model's weights (`UNet2DConditionModel`, `AutoencoderKL`).
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model";
/// File-name stem of a transformers model's weights (`CLIPTextModel`).
pub const TRANSFORMERS_WEIGHTS: &str = "model";

/// An index file larger than this is refused before it is read: Stable Diffusion's UNet index
/// (≈ 700 tensors) is about 100 KB, so 64 MB only stops a lying file from filling memory.
const MAX_INDEX_BYTES: u64 = 64 << 20;

/// Which saved copy of the weights to read. diffusers' `variant="fp16"` saves
/// `<stem>.fp16.safetensors` (usually half precision) beside or instead of `<stem>.safetensors`;
/// the choice is explicit because the two copies can differ (e.g. a fine-tune that only
/// re-saved one of them), so a missing file is never silently replaced by the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// `<stem>.safetensors` / `<stem>.safetensors.index.json`.
    #[default]
    Default,
    /// `<stem>.fp16.safetensors` / `<stem>.safetensors.index.fp16.json`.
    Fp16,
}

impl Variant {
    /// The single-file name, as diffusers' and transformers' `_add_variant` make it.
    pub fn file_name(self, stem: &str) -> String {
        match self {
            Variant::Default => format!("{stem}.safetensors"),
            Variant::Fp16 => format!("{stem}.fp16.safetensors"),
        }
    }

    /// The shard-index name (`_add_variant` puts the variant before `.json`).
    pub fn index_name(self, stem: &str) -> String {
        match self {
            Variant::Default => format!("{stem}.safetensors.index.json"),
            Variant::Fp16 => format!("{stem}.safetensors.index.fp16.json"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Default => "default",
            Variant::Fp16 => "fp16",
        }
    }
}

/// Where a component's weights are, before anything is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightFiles {
    Single(PathBuf),
    /// The index file and the distinct shard files it names (sorted).
    Sharded {
        index: PathBuf,
        shards: Vec<PathBuf>,
    },
}

impl WeightFiles {
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            WeightFiles::Single(p) => vec![p.as_path()],
            WeightFiles::Sharded { shards, .. } => shards.iter().map(PathBuf::as_path).collect(),
        }
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

fn weights_error(context: &Path, reason: impl Into<String>) -> Error {
    Error::Weights { context: context.display().to_string(), reason: reason.into() }
}

/// A shard name from an index must be a plain file name in the component folder: no
/// directories, no `..`, no absolute path (an index could otherwise read any file on disk).
fn plain_file_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!((components.next(), components.next()), (Some(Component::Normal(_)), None))
        && !name.contains(['/', '\\', '\0'])
}

/// Reads a shard index and returns its weight map, every shard name checked.
fn read_index(index: &Path) -> Result<BTreeMap<String, String>> {
    let size = std::fs::metadata(index).map_err(|e| Error::io(index, e))?.len();
    if size > MAX_INDEX_BYTES {
        return Err(weights_error(index, format!("shard index of {size} bytes (at most {MAX_INDEX_BYTES})")));
    }
    let parsed: ShardIndex = crate::diffusion::error::read_json_file(index, "safetensors shard index")?;
    if parsed.weight_map.is_empty() {
        return Err(weights_error(index, "the shard index lists no tensors"));
    }
    for (tensor, shard) in &parsed.weight_map {
        if !plain_file_name(shard) {
            return Err(weights_error(
                index,
                format!("tensor '{tensor}' is placed in '{shard}', which is not a file name inside the folder"),
            ));
        }
        if !shard.ends_with(".safetensors") {
            return Err(weights_error(
                index,
                format!("tensor '{tensor}' is placed in '{shard}', which is not a .safetensors file"),
            ));
        }
    }
    Ok(parsed.weight_map)
}

/// Finds the weights of the component in `dir` saved under `stem` (see [`DIFFUSERS_WEIGHTS`],
/// [`TRANSFORMERS_WEIGHTS`]) for `variant`, without reading tensors. Like diffusers, a shard
/// index wins over a single file when both are present. Every shard the index names must
/// exist. A folder with only the other variant or only PyTorch pickles (`.bin`) gets a reason
/// that says so.
pub fn locate(dir: &Path, stem: &str, variant: Variant) -> Result<WeightFiles> {
    let index = dir.join(variant.index_name(stem));
    if index.is_file() {
        let weight_map = read_index(&index)?;
        let names: std::collections::BTreeSet<&String> = weight_map.values().collect();
        let mut shards = Vec::with_capacity(names.len());
        for name in names {
            let shard = dir.join(name);
            if !shard.is_file() {
                return Err(weights_error(&index, format!("names shard '{name}', which is not in {}", dir.display())));
            }
            shards.push(shard);
        }
        return Ok(WeightFiles::Sharded { index, shards });
    }
    let single = dir.join(variant.file_name(stem));
    if single.is_file() {
        return Ok(WeightFiles::Single(single));
    }
    let other = match variant {
        Variant::Default => Variant::Fp16,
        Variant::Fp16 => Variant::Default,
    };
    let hint = if dir.join(other.file_name(stem)).is_file() || dir.join(other.index_name(stem)).is_file() {
        format!(" (only the {} variant is there: choose it to load that copy)", other.name())
    } else if dir.join(format!("{stem}.bin")).is_file() || dir.join(format!("{stem}.fp16.bin")).is_file() {
        format!(" (only PyTorch pickles {stem}.bin, which are not read: save the model with safe_serialization)")
    } else {
        String::new()
    };
    Err(weights_error(dir, format!("no {} or {}{hint}", variant.file_name(stem), variant.index_name(stem))))
}

/// The variant a component loader reads when none is named: the full-precision copy when it is
/// there, else the fp16 one when that is the only copy (a folder saved with `variant="fp16"`
/// alone). With neither, [`Variant::Default`], so that the refusal names the usual file.
pub fn preferred_variant(dir: &Path, stem: &str) -> Variant {
    match available_variants(dir, stem).as_slice() {
        [Variant::Fp16] => Variant::Fp16,
        _ => Variant::Default,
    }
}

/// The variants whose weights are present in `dir` (for showing what a folder holds).
pub fn available_variants(dir: &Path, stem: &str) -> Vec<Variant> {
    [Variant::Default, Variant::Fp16]
        .into_iter()
        .filter(|v| dir.join(v.file_name(stem)).is_file() || dir.join(v.index_name(stem)).is_file())
        .collect()
}

/// One tensor of an opened file: its type, shape and absolute byte range in the file.
struct Entry {
    file: usize,
    dtype: Result<DType, String>,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
}

struct Store {
    /// Each file with its handle; a tensor read seeks, so reads take the handle's lock.
    files: Vec<(PathBuf, Mutex<File>)>,
    entries: HashMap<String, Entry>,
    used: Mutex<HashSet<String>>,
}

/// The opened weights of one component. Cloning shares the open files; they are closed when
/// the last clone (and every [`VarBuilder`] made from it) is dropped, i.e. once the model is
/// built.
#[derive(Clone)]
pub struct Weights {
    store: Arc<Store>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("files", &self.store.files.iter().map(|(p, _)| p).collect::<Vec<_>>())
            .field("tensors", &self.store.entries.len())
            .finish()
    }
}

/// A tensor whose bytes hold NaN or ±∞ (tested on the raw bits, before any copy).
fn has_non_finite(dtype: DType, bytes: &[u8]) -> bool {
    match dtype {
        DType::F32 => {
            bytes.chunks_exact(4).any(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000)
        }
        DType::F16 => bytes.chunks_exact(2).any(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        DType::BF16 => bytes.chunks_exact(2).any(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        DType::F64 => bytes.chunks_exact(8).any(|b| {
            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) & 0x7ff0_0000_0000_0000
                == 0x7ff0_0000_0000_0000
        }),
        _ => false,
    }
}

impl Weights {
    /// Locates ([`locate`]) and opens the weights of the component in `dir`.
    pub fn load(dir: &Path, stem: &str, variant: Variant) -> Result<Self> {
        let files = locate(dir, stem, variant)?;
        Self::open(&files)
    }

    /// Maps the files and checks their headers. For shards, the index must describe them
    /// exactly: each tensor in the shard the index names, none in two shards, none unlisted.
    pub fn open(files: &WeightFiles) -> Result<Self> {
        let mut mapped = Vec::new();
        let mut entries: HashMap<String, Entry> = HashMap::new();
        for (i, path) in files.paths().into_iter().enumerate() {
            let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
            let (header_len, header) =
                crate::model::safetensors_io::check_file_header(path, &mut file).map_err(|e| match e {
                    crate::model::Error::NotSafetensors { reason, .. } => {
                        weights_error(path, format!("not a valid safetensors file ({reason})"))
                    }
                    other => weights_error(path, other.to_string()),
                })?;
            let data_start = 8 + header_len;
            for (name, info) in header.tensors() {
                if let Some(previous) = entries.get(&name) {
                    return Err(weights_error(
                        path,
                        format!("tensor '{name}' is also in {}", mapped_path(&mapped, previous.file).display()),
                    ));
                }
                let dtype = DType::try_from(info.dtype).map_err(|_| format!("{:?}", info.dtype));
                let (start, end) = info.data_offsets;
                let entry =
                    Entry { file: i, dtype, shape: info.shape.clone(), range: data_start + start..data_start + end };
                entries.insert(name, entry);
            }
            mapped.push((path.to_path_buf(), Mutex::new(file)));
        }
        if let WeightFiles::Sharded { index, .. } = files {
            let weight_map = read_index(index)?;
            for (name, entry) in &entries {
                let holder = mapped_path(&mapped, entry.file);
                match weight_map.get(name) {
                    Some(shard) if holder.file_name().is_some_and(|f| f == shard.as_str()) => {}
                    Some(shard) => {
                        return Err(weights_error(
                            index,
                            format!("places tensor '{name}' in {shard}, but it is in {}", holder.display()),
                        ))
                    }
                    None => {
                        return Err(weights_error(
                            index,
                            format!("does not list tensor '{name}' of {}", holder.display()),
                        ))
                    }
                }
            }
            if let Some((name, shard)) = weight_map.iter().find(|(name, _)| !entries.contains_key(*name)) {
                return Err(weights_error(index, format!("lists tensor '{name}' in {shard}, which does not hold it")));
            }
        }
        Ok(Self { store: Arc::new(Store { files: mapped, entries, used: Mutex::new(HashSet::new()) }) })
    }

    /// A [`VarBuilder`] that gives every tensor as f32 on `device` (f16 / bf16 widened).
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, device.clone())
    }

    pub fn files(&self) -> Vec<&Path> {
        self.store.files.iter().map(|(p, _)| p.as_path()).collect()
    }

    pub fn len(&self) -> usize {
        self.store.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.entries.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store.entries.contains_key(name)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.store.entries.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.store.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The stored type of `name` (`None` if absent or a type candle does not have).
    pub fn dtype_of(&self, name: &str) -> Option<DType> {
        self.store.entries.get(name).and_then(|e| e.dtype.clone().ok())
    }

    /// Number of stored values, all tensors together.
    pub fn num_params(&self) -> usize {
        self.store.entries.values().map(|e| e.shape.iter().product::<usize>()).sum()
    }

    /// Tensors no one has asked for yet, sorted.
    pub fn unused(&self) -> Vec<String> {
        let used = self.store.used.lock().map(|u| u.clone()).unwrap_or_default();
        let mut unused: Vec<String> = self.store.entries.keys().filter(|n| !used.contains(*n)).cloned().collect();
        unused.sort();
        unused
    }

    /// After `component` is built: refuses weights that hold tensors its config's architecture
    /// does not use (they describe another model), except names `ignore` accepts (e.g. the
    /// `position_ids` buffer older transformers saved with CLIP).
    pub fn check_all_used(&self, component: &str, ignore: impl Fn(&str) -> bool) -> Result<()> {
        self.check_all_used_hinted(component, ignore, |_| "")
    }

    /// [`Weights::check_all_used`] whose reason also says what the unused tensors suggest:
    /// `hint` gets them (sorted) and returns a phrase placed after the count, or "".
    pub fn check_all_used_hinted(
        &self,
        component: &str,
        ignore: impl Fn(&str) -> bool,
        hint: impl Fn(&[&str]) -> &'static str,
    ) -> Result<()> {
        let unused: Vec<String> = self.unused().into_iter().filter(|n| !ignore(n)).collect();
        if unused.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = unused.iter().map(String::as_str).collect();
        Err(Error::Weights {
            context: component.to_string(),
            reason: format!(
                "weights do not fit config.json: {} tensor(s) are not used by the architecture it describes{} (e.g. {})",
                unused.len(),
                hint(&names),
                names.iter().take(3).copied().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    /// The tensor `name` in its stored type, on the CPU, with its values checked finite.
    pub fn tensor(&self, name: &str) -> candle_core::Result<Tensor> {
        let store = &self.store;
        let Some(entry) = store.entries.get(name) else { candle_core::bail!("cannot find tensor {name}") };
        let (path, file) = &store.files[entry.file];
        let dtype = match &entry.dtype {
            Ok(d @ (DType::F16 | DType::BF16 | DType::F32 | DType::F64)) => *d,
            Ok(d) => candle_core::bail!("{}: tensor '{name}' has type {d:?}, expected a float type", path.display()),
            Err(t) => candle_core::bail!("{}: tensor '{name}' has type {t}, which is not supported", path.display()),
        };
        // In range: check_file_header verified that the ranges tile the file's data section.
        let mut bytes = vec![0u8; entry.range.len()];
        {
            let mut file = file
                .lock()
                .map_err(|_| candle_core::Error::Msg(format!("{}: a read failed earlier", path.display())))?;
            file.seek(SeekFrom::Start(entry.range.start as u64)).and_then(|_| file.read_exact(&mut bytes)).map_err(
                |e| candle_core::Error::Msg(format!("{}: cannot read tensor '{name}': {e}", path.display())),
            )?;
        }
        let bytes = bytes.as_slice();
        if has_non_finite(dtype, bytes) {
            candle_core::bail!("{}: tensor '{name}' contains NaN or infinite values", path.display())
        }
        if let Ok(mut used) = store.used.lock() {
            used.insert(name.to_string());
        }
        Tensor::from_raw_buffer(bytes, dtype, &entry.shape, &Device::Cpu)
    }
}

fn mapped_path(mapped: &[(PathBuf, Mutex<File>)], i: usize) -> &Path {
    mapped.get(i).map(|(p, _)| p.as_path()).unwrap_or(Path::new("?"))
}

impl candle_nn::var_builder::SimpleBackend for Weights {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Some(entry) = self.store.entries.get(name) {
            if entry.shape.as_slice() != s.dims() {
                candle_core::bail!("shape mismatch for {name}: expected {s:?}, the file has {:?}", entry.shape)
            }
        }
        self.tensor(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.tensor(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.store.entries.contains_key(name)
    }
}
