//! Member / non-member image sets: an `.npz` archive (key `images`, uint8 `[N, H, W]`,
//! `[N, H, W, C]` or `[N, C, H, W]`; optional `indices` name the samples) or a folder of PNG /
//! JPEG files (sorted by name). Pixels are mapped to the model's range, x = u8 / 127.5 − 1;
//! nothing is resized — an image size the model does not take is an error, not a guess.
//!
//! Captioned sets for text-to-image pipelines ([`SampleSet::load_captioned`]) are the one
//! exception: a Hugging Face "imagefolder" (`metadata.jsonl` beside the images) is resized and
//! centre-cropped exactly as diffusers' `train_text_to_image.py` pre-processes its training
//! images, because membership is decided on what the model saw, not on the files.

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
    /// One caption per image (the `text` of a captioned folder's `metadata.jsonl`); `None` for
    /// sets without captions. An empty caption is the unconditional prompt.
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
        let mut set = Self {
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

/// The file of captions in a Hugging Face imagefolder.
pub const METADATA_FILE: &str = "metadata.jsonl";
/// The largest side a captioned set is resized to (SD 1.x/2.x train at 512 or 768; SDXL at 1024).
pub const MAX_RESOLUTION: usize = 2048;
/// The most pixels a decoded image may have: PIL's `Image.MAX_IMAGE_PIXELS`, its
/// decompression-bomb threshold, so what a diffusers training script opens loads here too and a
/// file claiming more is refused before anything is allocated.
pub const MAX_IMAGE_PIXELS: u64 = 89_478_485;
/// File extensions counted as images when checking that `metadata.jsonl` lists every image
/// (those `datasets`' imagefolder would load); only PNG and JPEG decode.
const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"];
/// A `metadata.jsonl` larger than this is refused unread (a million captions fit in far less).
const MAX_METADATA_BYTES: u64 = 256 << 20;

/// True when `path` is a folder with a `metadata.jsonl`.
pub fn is_captioned_folder(path: &Path) -> bool {
    path.is_dir() && path.join(METADATA_FILE).is_file()
}

/// One line of `metadata.jsonl`.
struct CaptionEntry {
    /// 1-based line number in `metadata.jsonl`.
    line: usize,
    file_name: String,
    text: String,
}

impl SampleSet {
    /// A Hugging Face "imagefolder" with `metadata.jsonl` (`{"file_name": ..., "text": ...}` per
    /// line; other keys ignored): turned upright by the EXIF orientation as `datasets` does, RGB, resized (shorter side to `resolution`, PIL's antialiased
    /// `Image.BILINEAR`) and centre-cropped to `resolution × resolution` the way diffusers'
    /// `train_text_to_image.py` pre-processes (torchvision `Resize(res, BILINEAR)` +
    /// `CenterCrop(res)` on a PIL image); x = u8/127.5 − 1; channels = 3. An image already at
    /// `resolution × resolution` is used as is. Order = `metadata.jsonl` line order; ids =
    /// `file_name`. The whole caption file is checked (names, duplicates, unlisted images) even
    /// when `limit` keeps only the first images.
    pub fn load_captioned(path: &Path, resolution: usize, limit: Option<usize>) -> Result<Self> {
        if resolution == 0 || resolution > MAX_RESOLUTION {
            return Err(Error::Data(format!(
                "{}: resolution {resolution} is outside 1–{MAX_RESOLUTION} pixels",
                path.display()
            )));
        }
        if !path.is_dir() {
            return Err(Error::Data(format!("{}: not a folder (expected images + {METADATA_FILE})", path.display())));
        }
        let entries = read_caption_metadata(path)?;
        let take = limit.map_or(entries.len(), |l| l.min(entries.len()));
        if take == 0 {
            return Err(Error::Data(format!("{}: a limit of 0 images leaves nothing to load", path.display())));
        }
        let metadata = path.join(METADATA_FILE);
        let mut set = Self {
            source: path.to_path_buf(),
            ids: Vec::with_capacity(take),
            channels: 3,
            height: resolution,
            width: resolution,
            pixels: Vec::with_capacity(take * 3 * resolution * resolution),
            captions: None,
        };
        let mut captions = Vec::with_capacity(take);
        let plane = resolution * resolution;
        for entry in entries.into_iter().take(take) {
            let file = path.join(&entry.file_name);
            let rgb = decode_rgb8(&file).map_err(|reason| {
                Error::Data(one_line(&format!(
                    "{} (listed on line {} of {}): {reason}",
                    file.display(),
                    entry.line,
                    metadata.display()
                )))
            })?;
            let (w, h) = (rgb.width() as usize, rgb.height() as usize);
            let (new_w, new_h) = resized_size(w, h, resolution);
            // A sliver (1 × 3000 at 2048 is 2048 × 6 M) would need more memory than the image
            // limit allows; the training script could not have used it either.
            if w == 0 || h == 0 || (new_w as u64) * (new_h as u64) > MAX_IMAGE_PIXELS {
                return Err(Error::Data(format!(
                    "{} (listed on line {} of {}): {w}×{h} resized to {new_w}×{new_h} before the crop is more than {MAX_IMAGE_PIXELS} pixels (aspect ratio too extreme for resolution {resolution})",
                    file.display(),
                    entry.line,
                    metadata.display()
                )));
            }
            let square = resize_center_crop(rgb.as_raw(), w, h, resolution);
            for ch in 0..3 {
                set.pixels.extend((0..plane).map(|p| to_model_range(square[p * 3 + ch])));
            }
            set.ids.push(entry.file_name);
            captions.push(entry.text);
        }
        set.captions = Some(captions);
        Ok(set)
    }
}

/// Reads and checks `dir/metadata.jsonl`: every line an object with a string `file_name` (a
/// plain file name in `dir`, listed once, existing) and a string `text`, and every image in
/// `dir` listed.
fn read_caption_metadata(dir: &Path) -> Result<Vec<CaptionEntry>> {
    let metadata = dir.join(METADATA_FILE);
    let meta = metadata.display();
    let size = match std::fs::metadata(&metadata) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return Err(Error::Data(format!("{meta}: not a file"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Data(format!(
            "{}: no {METADATA_FILE} (a captioned set needs one {{\"file_name\": ..., \"text\": ...}} line per image)",
            dir.display()
        )))
        }
        Err(e) => return Err(Error::io(&metadata, e)),
    };
    if size > MAX_METADATA_BYTES {
        return Err(Error::Data(format!(
            "{meta}: {size} bytes, more than a caption file of {MAX_METADATA_BYTES} bytes"
        )));
    }
    let bytes = std::fs::read(&metadata).map_err(|e| Error::io(&metadata, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count();
        Error::Data(format!("{meta}:{line}: not UTF-8 text"))
    })?;
    // A byte-order mark (Windows editors write one) is not part of the first line's JSON.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut entries = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        // Blank lines carry no record (pandas / pyarrow JSON-lines readers skip them too).
        if raw.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| Error::Data(one_line(&format!("{meta}:{line}: not valid JSON ({e})"))))?;
        let object =
            value.as_object().ok_or_else(|| Error::Data(format!("{meta}:{line}: expected a JSON object {{...}}")))?;
        let string_field = |key: &str| -> Result<String> {
            match object.get(key) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(other) => {
                    Err(Error::Data(one_line(&format!("{meta}:{line}: \"{key}\" must be a string, found {other}"))))
                }
                None => Err(Error::Data(format!("{meta}:{line}: no \"{key}\" key"))),
            }
        };
        let file_name = string_field("file_name")?;
        let caption = string_field("text")?;
        // Only a plain name inside the folder: a separator, `..` or an absolute path would read
        // files the auditor did not hand over.
        let mut components = Path::new(&file_name).components();
        let plain = matches!((components.next(), components.next()), (Some(std::path::Component::Normal(_)), None))
            && !file_name.contains(['/', '\\', '\0']);
        if !plain {
            return Err(Error::Data(one_line(&format!(
                "{meta}:{line}: file_name {file_name:?} is not a plain file name in the folder (no separators or '..')"
            ))));
        }
        if let Some(first) = first_line.insert(file_name.clone(), line) {
            return Err(Error::Data(one_line(&format!(
                "{meta}:{line}: {file_name:?} is listed twice (first on line {first})"
            ))));
        }
        let file = dir.join(&file_name);
        if !file.is_file() {
            let problem = if file.exists() { "is not a file" } else { "does not exist" };
            return Err(Error::Data(one_line(&format!("{meta}:{line}: {file_name:?} {problem} in {}", dir.display()))));
        }
        entries.push(CaptionEntry { line, file_name, text: caption });
    }
    if entries.is_empty() {
        return Err(Error::Data(format!("{meta}: lists no images")));
    }
    let mut unlisted: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            Path::new(name)
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .filter(|name| !first_line.contains_key(name))
        .collect();
    if !unlisted.is_empty() {
        unlisted.sort();
        const SHOWN: usize = 3;
        let more = if unlisted.len() > SHOWN { format!(", … ({} in all)", unlisted.len()) } else { String::new() };
        return Err(Error::Data(one_line(&format!(
            "{meta}: does not match the images: {} not listed ({}{more})",
            if unlisted.len() == 1 { "1 image is" } else { "images are" },
            unlisted[..unlisted.len().min(SHOWN)].join(", ")
        ))));
    }
    Ok(entries)
}

/// Error text on one line (decoder and JSON messages may carry newlines).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Decodes a PNG / JPEG to 8-bit RGB as PIL's `convert("RGB")` does (grey replicated, alpha
/// dropped without compositing), upright per its EXIF orientation, refusing anything above
/// [`MAX_IMAGE_PIXELS`] before decoding.
fn decode_rgb8(file: &Path) -> std::result::Result<::image::RgbImage, String> {
    use ::image::{ColorType, ImageDecoder};
    let mut reader = ::image::ImageReader::open(file)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| format!("cannot read ({e})"))?;
    let mut limits = ::image::Limits::default();
    // Bytes of the largest image accepted, 4 bytes a pixel (RGBA8): the decoder refuses more.
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 4);
    reader.limits(limits);
    let too_large = |w: u64, h: u64| format!("{w}×{h} pixels is more than the limit of {MAX_IMAGE_PIXELS} pixels");
    let mut decoder = reader.into_decoder().map_err(|e| match e {
        ::image::ImageError::Limits(_) => format!("larger than the decoding limit of {MAX_IMAGE_PIXELS} pixels ({e})"),
        e => format!("cannot decode ({e})"),
    })?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > MAX_IMAGE_PIXELS {
        return Err(too_large(w as u64, h as u64));
    }
    // datasets' imagefolder (which train_text_to_image.py loads through) applies
    // exif_transpose when the file has an orientation tag: the model saw the upright image.
    let orientation = decoder.orientation().map_err(|e| format!("cannot read its EXIF orientation ({e})"))?;
    let mut img = ::image::DynamicImage::from_decoder(decoder).map_err(|e| match e {
        ::image::ImageError::Limits(_) => too_large(w as u64, h as u64),
        e => format!("cannot decode ({e})"),
    })?;
    img.apply_orientation(orientation);
    match img.color() {
        ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8 => Ok(img.to_rgb8()),
        // PIL opens 16-bit grey as mode I;16 and its convert("RGB") clips every value above 255
        // to white; guessing another mapping would not be what the model was trained on.
        other => Err(format!(
            "{other:?} pixels: only 8-bit images are read (the training script's PIL convert(\"RGB\") clips 16-bit grey to 255); convert to 8-bit first"
        )),
    }
}

/// The size torchvision `Resize(res)` gives a `w × h` image (its _compute_resized_output_size):
/// the shorter side `res`, the longer int(res · long / short).
fn resized_size(w: usize, h: usize, res: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = ((res * long) as f64 / short.max(1) as f64) as usize;
    if w <= h {
        (res, new_long)
    } else {
        (new_long, res)
    }
}

/// torchvision `Resize(res)` (shorter side to `res`, PIL `BILINEAR`) then `CenterCrop(res)` of
/// an interleaved RGB image: `res × res × 3` bytes.
fn resize_center_crop(rgb: &[u8], w: usize, h: usize, res: usize) -> Vec<u8> {
    let (new_w, new_h) = resized_size(w, h, res);
    let resized = pil_resize_bilinear(rgb, w, h, new_w, new_h, 3);
    // torchvision CenterCrop: int(round((size - res) / 2.0)), Python's round half to even.
    let offset = |size: usize| -> usize {
        let d = size - res;
        let half = d / 2;
        if d % 2 == 1 && half % 2 == 1 {
            half + 1
        } else {
            half
        }
    };
    let (left, top) = (offset(new_w), offset(new_h));
    let mut out = Vec::with_capacity(res * res * 3);
    for y in top..top + res {
        let row = (y * new_w + left) * 3;
        out.extend_from_slice(&resized[row..row + res * 3]);
    }
    out
}

/// Fixed-point fraction bits of PIL's 8-bit resampling (`PRECISION_BITS` in Resample.c).
const PIL_PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's `Image.resize(size, Image.BILINEAR)` on 8-bit interleaved channels, bit for bit: a
/// separable triangle filter whose support grows with the downscale factor (antialiasing),
/// weights normalised per output pixel and rounded to fixed point, the horizontal pass first and
/// rounded to 8 bits before the vertical pass (Pillow's ImagingResampleInner).
fn pil_resize_bilinear(src: &[u8], w: usize, h: usize, new_w: usize, new_h: usize, channels: usize) -> Vec<u8> {
    let mut cur = std::borrow::Cow::Borrowed(src);
    let mut cur_w = w;
    if new_w != w {
        let (bounds, kernel, ksize) = pil_bilinear_coefficients(w, new_w);
        let mut out = vec![0u8; new_w * h * channels];
        for y in 0..h {
            let row = &cur[y * w * channels..(y + 1) * w * channels];
            for (xx, &(xmin, count)) in bounds.iter().enumerate() {
                let k = &kernel[xx * ksize..xx * ksize + count];
                for c in 0..channels {
                    let acc = k.iter().enumerate().fold(1i64 << (PIL_PRECISION_BITS - 1), |acc, (x, &kx)| {
                        acc + row[(xmin + x) * channels + c] as i64 * kx
                    });
                    out[(y * new_w + xx) * channels + c] = pil_clip8(acc);
                }
            }
        }
        cur = std::borrow::Cow::Owned(out);
        cur_w = new_w;
    }
    if new_h != h {
        let (bounds, kernel, ksize) = pil_bilinear_coefficients(h, new_h);
        let stride = cur_w * channels;
        let mut out = vec![0u8; new_h * stride];
        for (yy, &(ymin, count)) in bounds.iter().enumerate() {
            let k = &kernel[yy * ksize..yy * ksize + count];
            for i in 0..stride {
                let acc = k.iter().enumerate().fold(1i64 << (PIL_PRECISION_BITS - 1), |acc, (y, &ky)| {
                    acc + cur[(ymin + y) * stride + i] as i64 * ky
                });
                out[yy * stride + i] = pil_clip8(acc);
            }
        }
        cur = std::borrow::Cow::Owned(out);
    }
    cur.into_owned()
}

fn pil_clip8(acc: i64) -> u8 {
    (acc >> PIL_PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter (support 1):
/// per output pixel the first input index and tap count, and `ksize` fixed-point taps.
fn pil_bilinear_coefficients(in_size: usize, out_size: usize) -> (Vec<(usize, usize)>, Vec<i64>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let triangle = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    };
    let mut bounds = Vec::with_capacity(out_size);
    let mut kernel = vec![0i64; out_size * ksize];
    let mut weights = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncation toward zero, as Pillow rounds the bounds.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin).min(ksize);
        let mut total = 0.0;
        for (x, weight) in weights.iter_mut().enumerate().take(count) {
            *weight = triangle(((x + xmin) as f64 - center + 0.5) * ss);
            total += *weight;
        }
        for x in 0..count {
            let k = if total != 0.0 { weights[x] / total } else { weights[x] };
            let fixed = k * (1i64 << PIL_PRECISION_BITS) as f64;
            kernel[xx * ksize + x] = if k < 0.0 { (fixed - 0.5) as i64 } else { (fixed + 0.5) as i64 };
        }
        bounds.push((xmin, count));
    }
    (bounds, kernel, ksize)
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
