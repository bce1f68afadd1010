//! Labelled images for training: an ImageFolder directory or a MedMNIST `.npz`.
//!
//! - ImageFolder: `DIR/train/<class>/*`, `DIR/val/<class>/*`, `DIR/test/<class>/*` (the same
//!   classes in each), or `DIR/<class>/*` split per class by a seeded shuffle into train / val /
//!   test; `DIR/train/` + `DIR/test/` without `val/` (most public sets) takes validation out of
//!   train the same way (`--val-fraction`), test untouched. Class names are the folder names, sorted. Files that do not decode are skipped and
//!   counted, never fatal; an empty class folder is an error.
//! - `.npz` (MedMNIST v2 layout): `{train,val,test}_images` u8 [N, H, W] (grey) or
//!   [N, H, W, 3] (RGB), `{train,val,test}_labels` integers [N] or [N, 1].
//!
//! Every image becomes a [`MedicalImage`] exactly like a PNG opened by the workstation (grey →
//! MONOCHROME2, RGB; 8 bits), and is prepared by the engine's own
//! [`preprocess`](crate::model::engine::preprocess), so an adapter sees the same input in
//! training and in `melo predict`.

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use super::{Error, Result};
use crate::image::{load_image, ImageMeta, LoadOptions, MedicalImage};
use crate::model::engine::preprocess;

/// The three parts of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    fn index(self) -> usize {
        match self {
            Split::Train => 0,
            Split::Val => 1,
            Split::Test => 2,
        }
    }
}

/// How a folder without train/val/test subfolders is split.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitFractions {
    pub val: f64,
    pub test: f64,
    pub seed: u64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        Self { val: 0.1, test: 0.2, seed: 0 }
    }
}

/// One npz split: u8 pixels, row-major, `channels` interleaved.
#[derive(Debug, Clone)]
struct NpzImages {
    pixels: Vec<u8>,
    rows: usize,
    cols: usize,
    channels: usize,
}

#[derive(Debug, Clone)]
enum Items {
    Files([Vec<(PathBuf, usize)>; 3]),
    Npz { images: [NpzImages; 3], labels: [Vec<usize>; 3] },
}

/// A labelled data set, opened but not decoded: images are read on demand.
#[derive(Debug, Clone)]
pub struct DataSource {
    pub path: PathBuf,
    /// Class names, index = label.
    pub classes: Vec<String>,
    items: Items,
    /// A `train/` + `test/` folder without `val/`: this fraction of each class of train was
    /// set aside as the validation split (`--val-fraction`).
    pub carved_validation: Option<f64>,
}

/// One split decoded and preprocessed for the network.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Normalised pixels, [n, 3, size, size] flattened.
    pub pixels: Vec<f32>,
    pub labels: Vec<usize>,
    pub size: usize,
    /// Items that could not be decoded, with the reason (skipped).
    pub skipped: Vec<(String, String)>,
}

impl Prepared {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of item `i`, [3, size, size].
    pub fn item(&self, i: usize) -> &[f32] {
        let n = 3 * self.size * self.size;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Number of items per class.
    pub fn class_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for &l in &self.labels {
            counts[l] += 1;
        }
        counts
    }
}

fn check_fractions(val: f64, test: f64) -> Result<()> {
    if !(val >= 0.0 && test >= 0.0 && val + test < 1.0) {
        return Err(Error::Options(format!(
            "validation {val} + test {test} fractions must be non-negative and sum to less than 1"
        )));
    }
    Ok(())
}

/// The labelled files of `dir/<split>/<class>/*`; the first split read fixes the class names,
/// and every later one must have the same.
fn split_folder(dir: &Path, split: Split, classes: &mut Option<Vec<String>>) -> Result<Vec<(PathBuf, usize)>> {
    let found = class_folders(&dir.join(split.name()))?;
    let names: Vec<String> = found.iter().map(|(n, _)| n.clone()).collect();
    match classes {
        None => *classes = Some(names),
        Some(c) if *c != names => {
            return Err(Error::data(
                dir,
                format!("{} has classes [{}] but train has [{}]", split.name(), names.join(", "), c.join(", ")),
            ))
        }
        Some(_) => {}
    }
    Ok(found
        .into_iter()
        .enumerate()
        .flat_map(|(label, (_, files))| files.into_iter().map(move |f| (f, label)))
        .collect())
}

/// Labelled files regrouped per class (index = label), in their original order.
fn by_class(items: Vec<(PathBuf, usize)>, classes: usize) -> Vec<Vec<PathBuf>> {
    let mut per_class = vec![Vec::new(); classes];
    for (file, label) in items {
        per_class[label].push(file);
    }
    per_class
}

/// Each class's files shuffled by a seed of their own and cut into train / val / test by the
/// fractions (rounded per class), so every split keeps the class proportions and the same seed
/// gives the same split.
fn stratified_split(
    dir: &Path,
    classes: &[String],
    per_class: Vec<Vec<PathBuf>>,
    val: f64,
    test: f64,
    seed: u64,
) -> Result<[Vec<(PathBuf, usize)>; 3]> {
    let mut parts: [Vec<(PathBuf, usize)>; 3] = Default::default();
    for (label, mut files) in per_class.into_iter().enumerate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(label as u64));
        files.shuffle(&mut rng);
        let n = files.len();
        let n_test = ((n as f64) * test).round() as usize;
        let n_val = ((n as f64) * val).round() as usize;
        if n_val + n_test >= n {
            return Err(Error::data(dir, format!("class {} has {n} images, too few to split", classes[label])));
        }
        for (k, f) in files.into_iter().enumerate() {
            let split = if k < n_test {
                2
            } else if k < n_test + n_val {
                1
            } else {
                0
            };
            parts[split].push((f, label));
        }
    }
    Ok(parts)
}

const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "dcm", "dicom", "bmp", "tif"];

impl DataSource {
    /// Opens an ImageFolder directory or a `.npz` file. `labels` names the classes of an npz
    /// (default `class_0` …) and must match the folder names of an ImageFolder if given.
    pub fn open(path: &Path, labels: Option<&[String]>, fractions: SplitFractions) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let source = if meta.is_dir() { Self::open_folder(path, fractions)? } else { Self::open_npz(path, labels)? };
        if let Some(labels) = labels {
            if labels.len() != source.classes.len() {
                return Err(Error::data(
                    path,
                    format!(
                        "{} labels given ({}), the data has {} classes",
                        labels.len(),
                        labels.join(","),
                        source.classes.len()
                    ),
                ));
            }
        }
        let mut source = source;
        if let Some(labels) = labels {
            source.classes = labels.to_vec();
        }
        Ok(source)
    }

    /// Number of items in a split.
    pub fn len(&self, split: Split) -> usize {
        match &self.items {
            Items::Files(f) => f[split.index()].len(),
            Items::Npz { labels, .. } => labels[split.index()].len(),
        }
    }

    /// Label of item `i` of a split.
    pub fn label(&self, split: Split, i: usize) -> usize {
        match &self.items {
            Items::Files(f) => f[split.index()][i].1,
            Items::Npz { labels, .. } => labels[split.index()][i],
        }
    }

    /// A name for item `i` (file path, or `npz:split[i]`).
    pub fn item_name(&self, split: Split, i: usize) -> String {
        match &self.items {
            Items::Files(f) => f[split.index()][i].0.display().to_string(),
            Items::Npz { .. } => format!("{}:{}[{i}]", self.path.display(), split.name()),
        }
    }

    /// Item `i` of a split as the workstation would open it.
    pub fn image(&self, split: Split, i: usize) -> Result<MedicalImage> {
        match &self.items {
            Items::Files(f) => Ok(load_image(&f[split.index()][i].0, &LoadOptions::default())?),
            Items::Npz { images, .. } => {
                let im = &images[split.index()];
                let n = im.rows * im.cols * im.channels;
                let values = im.pixels[i * n..(i + 1) * n].iter().map(|&v| f32::from(v)).collect();
                Ok(raster_like(values, im.rows, im.cols, im.channels))
            }
        }
    }

    /// Decodes and preprocesses a split (in parallel), at most `limit` items (the first ones).
    /// Items that fail to decode are skipped and listed.
    pub fn prepare(
        &self,
        split: Split,
        size: usize,
        mean: [f32; 3],
        std: [f32; 3],
        limit: Option<usize>,
    ) -> Result<Prepared> {
        let n = self.len(split).min(limit.unwrap_or(usize::MAX));
        let results: Vec<std::result::Result<Vec<f32>, String>> = (0..n)
            .into_par_iter()
            .map(|i| {
                let image = self.image(split, i).map_err(|e| e.to_string())?;
                let t = preprocess(&image, 0, size, mean, std).map_err(|e| e.to_string())?;
                t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(|e| e.to_string())
            })
            .collect();
        let mut prepared = Prepared {
            pixels: Vec::with_capacity(n * 3 * size * size),
            labels: Vec::with_capacity(n),
            size,
            skipped: Vec::new(),
        };
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(px) => {
                    prepared.pixels.extend_from_slice(&px);
                    prepared.labels.push(self.label(split, i));
                }
                Err(reason) => prepared.skipped.push((self.item_name(split, i), reason)),
            }
        }
        Ok(prepared)
    }

    fn open_folder(dir: &Path, fractions: SplitFractions) -> Result<Self> {
        let present = |split: Split| dir.join(split.name()).is_dir();
        let (train, val, test) = (present(Split::Train), present(Split::Val), present(Split::Test));
        if train && val && test {
            let mut classes = None;
            let parts = [Split::Train, Split::Val, Split::Test].map(|split| split_folder(dir, split, &mut classes));
            let [train, val, test] = parts;
            let classes = classes.unwrap_or_default();
            check_classes(dir, &classes)?;
            return Ok(Self {
                path: dir.to_path_buf(),
                classes,
                items: Items::Files([train?, val?, test?]),
                carved_validation: None,
            });
        }
        if train && test && !val {
            // The layout of most public sets: carve validation out of train (stratified,
            // seeded), never out of test, whose images must stay unseen until the end.
            check_fractions(fractions.val, 0.0)?;
            let mut classes = None;
            let train_items = split_folder(dir, Split::Train, &mut classes)?;
            let test_items = split_folder(dir, Split::Test, &mut classes)?;
            let classes = classes.unwrap_or_default();
            check_classes(dir, &classes)?;
            let [train_items, val_items, _] = stratified_split(
                dir,
                &classes,
                by_class(train_items, classes.len()),
                fractions.val,
                0.0,
                fractions.seed,
            )?;
            return Ok(Self {
                path: dir.to_path_buf(),
                classes,
                items: Items::Files([train_items, val_items, test_items]),
                carved_validation: Some(fractions.val),
            });
        }
        if train || val || test {
            return Err(Error::data(
                dir,
                "has some of train/, val/, test/: expected train/ and test/ (val/ optional), or class folders only",
            ));
        }
        // One folder of class folders: a stratified split, the same for the same seed.
        check_fractions(fractions.val, fractions.test)?;
        let found = class_folders(dir)?;
        let classes: Vec<String> = found.iter().map(|(n, _)| n.clone()).collect();
        check_classes(dir, &classes)?;
        let per_class = found.into_iter().map(|(_, files)| files).collect();
        let parts = stratified_split(dir, &classes, per_class, fractions.val, fractions.test, fractions.seed)?;
        Ok(Self { path: dir.to_path_buf(), classes, items: Items::Files(parts), carved_validation: None })
    }

    fn open_npz(path: &Path, labels: Option<&[String]>) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| Error::data(path, format!("not a .npz (zip) archive and not a folder: {e}")))?;
        let mut read_npy = |name: &str| -> Result<(Vec<u64>, String, Vec<u8>)> {
            let entry = archive.by_name(&format!("{name}.npy")).map_err(|_| {
                Error::data(path, format!("no `{name}` array (expected MedMNIST keys train/val/test_images, _labels)"))
            })?;
            // Bounded read: MedMNIST files are megabytes; a lying entry must not exhaust memory.
            const LIMIT: u64 = 4 << 30;
            if entry.size() > LIMIT {
                return Err(Error::data(
                    path,
                    format!("`{name}` is {} bytes uncompressed, over the 4 GiB limit", entry.size()),
                ));
            }
            // The declared size may lie: reserve at most 64 MiB up front, let the read grow it.
            let mut bytes = Vec::with_capacity(entry.size().min(64 << 20) as usize);
            entry.take(LIMIT).read_to_end(&mut bytes).map_err(|e| Error::data(path, format!("`{name}`: {e}")))?;
            let npy = npyz::NpyFile::new(&bytes[..])
                .map_err(|e| Error::data(path, format!("`{name}` is not a .npy array: {e}")))?;
            if npy.order() != npyz::Order::C && npy.shape().len() > 1 {
                return Err(Error::data(path, format!("`{name}` is stored in Fortran order; save it C-contiguous")));
            }
            let shape = npy.shape().to_vec();
            let dtype = npy.dtype().descr();
            Ok((shape, dtype, bytes))
        };
        let mut images: Vec<NpzImages> = Vec::new();
        let mut all_labels: Vec<Vec<usize>> = Vec::new();
        for split in Split::ALL {
            let (shape, dtype, bytes) = read_npy(&format!("{}_images", split.name()))?;
            let (rows, cols, channels) = match shape.as_slice() {
                [_, r, c] => (*r as usize, *c as usize, 1),
                [_, r, c, 3] => (*r as usize, *c as usize, 3),
                [_, r, c, 1] => (*r as usize, *c as usize, 1),
                other => {
                    return Err(Error::data(
                        path,
                        format!(
                            "{}_images has shape {other:?}; expected [N, H, W] (grey) or [N, H, W, 3] (RGB)",
                            split.name()
                        ),
                    ))
                }
            };
            if !dtype.contains("u1") {
                return Err(Error::data(path, format!("{}_images has dtype {dtype}; expected uint8", split.name())));
            }
            let pixels = npyz::NpyFile::new(&bytes[..])
                .and_then(|f| f.into_vec::<u8>())
                .map_err(|e| Error::data(path, format!("{}_images: {e}", split.name())))?;
            let n_images = shape[0] as usize;

            let (lshape, ldtype, lbytes) = read_npy(&format!("{}_labels", split.name()))?;
            let n_labels = match lshape.as_slice() {
                [n] | [n, 1] => *n as usize,
                other => {
                    return Err(Error::data(
                        path,
                        format!(
                            "{}_labels has shape {other:?}; expected [N] or [N, 1] (one class index per image)",
                            split.name()
                        ),
                    ))
                }
            };
            if n_labels != n_images {
                return Err(Error::data(path, format!("{}: {n_images} images but {n_labels} labels", split.name())));
            }
            let labels = read_int_labels(&lbytes, &ldtype)
                .map_err(|reason| Error::data(path, format!("{}_labels: {reason}", split.name())))?;
            images.push(NpzImages { pixels, rows, cols, channels });
            all_labels.push(labels);
        }
        // Classes are 0 ..= the largest label; `open` checks given names against that count.
        let _ = labels;
        let n_classes = all_labels.iter().flatten().copied().max().unwrap_or(0) + 1;
        let classes: Vec<String> = (0..n_classes).map(|i| format!("class_{i}")).collect();
        let mut train_classes: Vec<usize> = all_labels[0].clone();
        train_classes.sort_unstable();
        train_classes.dedup();
        if train_classes.len() < 2 {
            return Err(Error::data(
                path,
                format!("the training split has {} class(es); a classifier needs at least 2", train_classes.len()),
            ));
        }
        let [a, b, c]: [NpzImages; 3] = images.try_into().expect("three splits");
        let [la, lb, lc]: [Vec<usize>; 3] = all_labels.try_into().expect("three splits");
        Ok(Self {
            path: path.to_path_buf(),
            classes,
            items: Items::Npz { images: [a, b, c], labels: [la, lb, lc] },
            carved_validation: None,
        })
    }
}

/// A decoded raster as `load_raster` builds it for an 8-bit PNG.
fn raster_like(values: Vec<f32>, rows: usize, cols: usize, channels: usize) -> MedicalImage {
    let meta = ImageMeta {
        modality: "OT".into(),
        photometric: if channels == 3 { "RGB".into() } else { "MONOCHROME2".into() },
        transfer_syntax: "Npz".into(),
        bits_stored: 8,
        ..ImageMeta::default()
    };
    MedicalImage { meta, frames: 1, rows, cols, channels, values }
}

/// Integer labels of any NumPy integer dtype, as class indices.
fn read_int_labels(bytes: &[u8], dtype: &str) -> std::result::Result<Vec<usize>, String> {
    let file = npyz::NpyFile::new(bytes).map_err(|e| e.to_string())?;
    let values: Vec<i64> = match dtype.trim_matches(['\'', '"']).trim_start_matches(['<', '|', '=']) {
        "u1" => file.into_vec::<u8>().map(|v| v.into_iter().map(i64::from).collect()),
        "i1" => file.into_vec::<i8>().map(|v| v.into_iter().map(i64::from).collect()),
        "u2" => file.into_vec::<u16>().map(|v| v.into_iter().map(i64::from).collect()),
        "i2" => file.into_vec::<i16>().map(|v| v.into_iter().map(i64::from).collect()),
        "u4" => file.into_vec::<u32>().map(|v| v.into_iter().map(i64::from).collect()),
        "i4" => file.into_vec::<i32>().map(|v| v.into_iter().map(i64::from).collect()),
        "i8" => file.into_vec::<i64>(),
        "u8" => file.into_vec::<u64>().map(|v| v.into_iter().map(|x| x.min(i64::MAX as u64) as i64).collect()),
        other => return Err(format!("dtype {other} is not an integer type")),
    }
    .map_err(|e| e.to_string())?;
    values.into_iter().map(|v| usize::try_from(v).map_err(|_| format!("negative label {v}"))).collect()
}

/// The class folders of `dir` (sorted by name) with their image files (sorted).
fn class_folders(dir: &Path) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut classes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        let mut files = Vec::new();
        for f in std::fs::read_dir(&path).map_err(|e| Error::io(&path, e))? {
            let f = f.map_err(|e| Error::io(&path, e))?.path();
            let is_image = f.is_file()
                && f.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if is_image {
                files.push(f);
            }
        }
        if files.is_empty() {
            return Err(Error::data(&path, format!("class folder '{name}' holds no images (png, jpg, dcm, …)")));
        }
        files.sort();
        classes.push((name, files));
    }
    classes.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(classes)
}

fn check_classes(dir: &Path, classes: &[String]) -> Result<()> {
    match classes.len() {
        0 => Err(Error::data(dir, "no class folders (expected DIR/<class>/*.png or DIR/train/<class>/…)")),
        1 => Err(Error::data(dir, format!("only one class ('{}'); a classifier needs at least 2", classes[0]))),
        _ => Ok(()),
    }
}

/// The official names of the MedMNIST v2 data sets, by file stem.
const MEDMNIST: [(&str, &str); 18] = [
    ("pathmnist", "PathMNIST"),
    ("chestmnist", "ChestMNIST"),
    ("dermamnist", "DermaMNIST"),
    ("octmnist", "OCTMNIST"),
    ("pneumoniamnist", "PneumoniaMNIST"),
    ("retinamnist", "RetinaMNIST"),
    ("breastmnist", "BreastMNIST"),
    ("bloodmnist", "BloodMNIST"),
    ("tissuemnist", "TissueMNIST"),
    ("organamnist", "OrganAMNIST"),
    ("organcmnist", "OrganCMNIST"),
    ("organsmnist", "OrganSMNIST"),
    ("organmnist3d", "OrganMNIST3D"),
    ("nodulemnist3d", "NoduleMNIST3D"),
    ("adrenalmnist3d", "AdrenalMNIST3D"),
    ("fracturemnist3d", "FractureMNIST3D"),
    ("vesselmnist3d", "VesselMNIST3D"),
    ("synapsemnist3d", "SynapseMNIST3D"),
];

/// `PneumoniaMNIST (MedMNIST v2)` for `…/pneumoniamnist.npz`, `BloodMNIST (MedMNIST v2, 224 px)`
/// for `bloodmnist_224.npz`; `None` for any other file or a folder. Only the file name is
/// looked at, and only names on MedMNIST's own list are recognised.
pub fn medmnist_name(path: &Path) -> Option<String> {
    if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz")) {
        return None;
    }
    let stem = path.file_stem()?.to_str()?.to_ascii_lowercase();
    let (base, size) = match stem.rsplit_once('_') {
        Some((b, s)) if ["64", "128", "224"].contains(&s) => (b, Some(s)),
        _ => (stem.as_str(), None),
    };
    let (_, name) = MEDMNIST.iter().find(|(key, _)| *key == base)?;
    Some(match size {
        Some(px) => format!("{name} (MedMNIST v2, {px} px)"),
        None => format!("{name} (MedMNIST v2)"),
    })
}
