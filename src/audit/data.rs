//! Member / non-member image sets: an `.npz` archive (key `images`, uint8 `[N, H, W]`,
//! `[N, H, W, C]` or `[N, C, H, W]`; optional `indices` name the samples) or a folder of PNG /
//! JPEG files (sorted by name). Pixels are mapped to the model's range, x = u8 / 127.5 − 1;
//! nothing is resized — an image size the model does not take is an error, not a guess.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::error::{Error, Result};

/// Images in the model's input range [−1, 1], channel-first, all the same size.
#[derive(Debug, Clone)]
pub struct SampleSet {
    pub source: PathBuf,
    /// One name per image: the `indices` entry of an `.npz`, else the file name / position.
    pub ids: Vec<String>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `len × channels × height × width` values.
    pub pixels: Vec<f32>,
    /// One caption per image for a captioned folder (`metadata.jsonl`), else `None`.
    pub captions: Option<Vec<String>>,
}

/// A 2-D grey image (for display): row-major, values in [−1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Image2d {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl SampleSet {
    /// Loads the first `limit` images (all when `None`) of an `.npz` file or an image folder.
    pub fn load(path: &Path, limit: Option<usize>) -> Result<Self> {
        if path.is_dir() {
            Self::load_folder(path, limit)
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("npz")) {
            Self::load_npz(path, limit)
        } else if !path.exists() {
            Err(Error::Data(format!("{}: no such file or folder", path.display())))
        } else {
            Err(Error::Data(format!(
                "{}: expected an .npz archive (key 'images') or a folder of PNG/JPEG images",
                path.display()
            )))
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The pixels of image `i` (channel-first).
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Image `i` as a grey 2-D image (the mean over channels).
    pub fn image2d(&self, i: usize) -> Image2d {
        Image2d::from_chw(self.image(i), self.channels, self.height, self.width)
    }

    /// All images as a `[N, C, H, W]` tensor.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(&self.pixels, (self.len(), self.channels, self.height, self.width), device)?)
    }

    fn load_npz(path: &Path, limit: Option<usize>) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
            .map_err(|e| Error::Data(format!("{}: not an .npz (zip) archive ({e})", path.display())))?;
        let read_entry = |zip: &mut zip::ZipArchive<_>, name: &str| -> Result<Option<Vec<u8>>> {
            let mut entry = match zip.by_name(name) {
                Ok(e) => e,
                Err(zip::result::ZipError::FileNotFound) => return Ok(None),
                Err(e) => return Err(Error::Data(format!("{}: cannot read {name} ({e})", path.display()))),
            };
            // Bounded: a zip bomb stops here instead of exhausting memory.
            const MAX_ENTRY_BYTES: u64 = 4 << 30;
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_ENTRY_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::Data(format!("{}: cannot read {name} ({e})", path.display())))?;
            if bytes.len() as u64 > MAX_ENTRY_BYTES {
                return Err(Error::Data(format!("{}: {name} inflates past 4 GiB", path.display())));
            }
            Ok(Some(bytes))
        };
        let bytes = read_entry(&mut zip, "images.npy")?
            .ok_or_else(|| Error::Data(format!("{}: no 'images' array in the archive", path.display())))?;
        let npy = npyz::NpyFile::new(&bytes[..])
            .map_err(|e| Error::Data(format!("{}: images.npy is not a valid .npy ({e})", path.display())))?;
        let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        let descr = npy.dtype().descr();
        let type_str = descr.trim_matches('\'');
        if !matches!(type_str, "|u1" | "<u1" | ">u1") {
            return Err(Error::Data(format!(
                "{}: images must be uint8 (0–255), found dtype {type_str}",
                path.display()
            )));
        }
        let raw: Vec<u8> =
            npy.into_vec().map_err(|e| Error::Data(format!("{}: cannot decode images.npy ({e})", path.display())))?;
        // Layout: [N,H,W] grey, [N,H,W,C] with C ∈ {1,3} (image libraries), else [N,C,H,W].
        let (n, c, h, w, channels_last) = match shape[..] {
            [n, h, w] => (n, 1, h, w, false),
            [n, h, w, c] if (c == 1 || c == 3) && !(h == 1 || h == 3) => (n, c, h, w, true),
            [n, c, h, w] => (n, c, h, w, false),
            _ => {
                return Err(Error::Data(format!(
                    "{}: images have shape {shape:?}; expected [N, H, W], [N, H, W, C] or [N, C, H, W]",
                    path.display()
                )))
            }
        };
        let ids: Vec<String> = match read_entry(&mut zip, "indices.npy")? {
            Some(b) => {
                let npy = npyz::NpyFile::new(&b[..])
                    .map_err(|e| Error::Data(format!("{}: indices.npy is not a valid .npy ({e})", path.display())))?;
                let v: Vec<i64> = npy
                    .into_vec()
                    .map_err(|e| Error::Data(format!("{}: indices must be integers ({e})", path.display())))?;
                if v.len() != n {
                    return Err(Error::Data(format!("{}: {} indices for {n} images", path.display(), v.len())));
                }
                v.iter().map(|i| i.to_string()).collect()
            }
            None => (0..n).map(|i| i.to_string()).collect(),
        };
        let take = limit.map_or(n, |l| l.min(n));
        let per = c * h * w;
        let mut pixels = Vec::with_capacity(take * per);
        for i in 0..take {
            let img = &raw[i * per..(i + 1) * per];
            if channels_last {
                for ch in 0..c {
                    pixels.extend((0..h * w).map(|p| to_model_range(img[p * c + ch])));
                }
            } else {
                pixels.extend(img.iter().map(|&v| to_model_range(v)));
            }
        }
        Ok(Self {
            source: path.to_path_buf(),
            ids: ids.into_iter().take(take).collect(),
            channels: c,
            height: h,
            width: w,
            pixels,
            captions: None,
        })
    }

    fn load_folder(dir: &Path, limit: Option<usize>) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
            })
            .collect();
        files.sort();
        if let Some(l) = limit {
            files.truncate(l);
        }
        let mut set =
            Self {
            source: dir.to_path_buf(),
            ids: Vec::new(),
            channels: 1,
            height: 0,
            width: 0,
            pixels: Vec::new(),
            captions: None,
        };
        // Grey unless some image has colour; decided up front so all images share a layout.
        let decoded: Vec<(PathBuf, ::image::DynamicImage)> = files
            .into_iter()
            .map(|p| {
                let img =
                    ::image::open(&p).map_err(|e| Error::Data(format!("{}: cannot decode ({e})", p.display())))?;
                Ok((p, img))
            })
            .collect::<Result<_>>()?;
        let colour = decoded.iter().any(|(_, i)| i.color().has_color());
        set.channels = if colour { 3 } else { 1 };
        for (p, img) in decoded {
            let (w, h) = (img.width() as usize, img.height() as usize);
            if set.ids.is_empty() {
                set.width = w;
                set.height = h;
            } else if (w, h) != (set.width, set.height) {
                return Err(Error::Data(format!(
                    "{}: {w}×{h}, but the other images are {}×{} (all must share one size)",
                    p.display(),
                    set.width,
                    set.height
                )));
            }
            if colour {
                let rgb = img.to_rgb8();
                for ch in 0..3 {
                    set.pixels.extend(rgb.pixels().map(|px| to_model_range(px.0[ch])));
                }
            } else {
                set.pixels.extend(img.to_luma8().pixels().map(|px| to_model_range(px.0[0])));
            }
            set.ids.push(p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
        if set.ids.is_empty() {
            return Err(Error::Data(format!("{}: no PNG or JPEG images in the folder", dir.display())));
        }
        Ok(set)
    }

    /// Samples of `self` whose pixels equal a sample of `other` (exact duplicates), as
    /// (index in self, index in other).
    pub fn exact_overlap(&self, other: &SampleSet) -> Vec<(usize, usize)> {
        if self.image_len() != other.image_len() {
            return Vec::new();
        }
        let key = |img: &[f32]| -> Vec<u32> { img.iter().map(|v| v.to_bits()).collect() };
        let index: HashMap<Vec<u32>, usize> = (0..other.len()).map(|j| (key(other.image(j)), j)).collect();
        (0..self.len()).filter_map(|i| index.get(&key(self.image(i))).map(|&j| (i, j))).collect()
    }
}

/// True when `path` is a folder with a `metadata.jsonl`.
pub fn is_captioned_folder(path: &Path) -> bool {
    path.is_dir() && path.join("metadata.jsonl").is_file()
}

impl SampleSet {
    /// TEMPORARY (replaced by the full loader): a metadata.jsonl folder of images already at
    /// `resolution`.
    pub fn load_captioned(path: &Path, resolution: usize, limit: Option<usize>) -> Result<Self> {
        let meta = path.join("metadata.jsonl");
        let text = std::fs::read_to_string(&meta).map_err(|e| Error::io(&meta, e))?;
        let mut set = Self {
            source: path.to_path_buf(),
            ids: Vec::new(),
            channels: 3,
            height: resolution,
            width: resolution,
            pixels: Vec::new(),
            captions: Some(Vec::new()),
        };
        for (ln, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            if limit.is_some_and(|l| set.ids.len() >= l) {
                break;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::Data(format!("{}:{}: {e}", meta.display(), ln + 1)))?;
            let (Some(f), Some(c)) = (v["file_name"].as_str(), v["text"].as_str()) else {
                return Err(Error::Data(format!("{}:{}: no file_name / text", meta.display(), ln + 1)));
            };
            let img = ::image::open(path.join(f))
                .map_err(|e| Error::Data(format!("{}: cannot decode ({e})", path.join(f).display())))?
                .to_rgb8();
            if (img.width() as usize, img.height() as usize) != (resolution, resolution) {
                return Err(Error::Data(format!("{f}: not {resolution}×{resolution}")));
            }
            for ch in 0..3 {
                set.pixels.extend(img.pixels().map(|px| to_model_range(px.0[ch])));
            }
            set.ids.push(f.to_string());
            if let Some(caps) = set.captions.as_mut() {
                caps.push(c.to_string());
            }
        }
        Ok(set)
    }
}

fn to_model_range(v: u8) -> f32 {
    v as f32 / 127.5 - 1.0
}

impl Image2d {
    /// Mean over the channels of a channel-first image.
    pub fn from_chw(pixels: &[f32], channels: usize, height: usize, width: usize) -> Self {
        let plane = height * width;
        let data =
            (0..plane).map(|p| (0..channels).map(|c| pixels[c * plane + p]).sum::<f32>() / channels as f32).collect();
        Self { width, height, data }
    }
}
