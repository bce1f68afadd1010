//! Captioned member / non-member sets for Stable Diffusion audits (issue 13, point 3):
//! `SampleSet::load_captioned` against PIL's pre-processing of the same files
//! (`tools/sd/make_caption_fixture.py`: `convert("RGB")`, torchvision `Resize(res, BILINEAR)` +
//! `CenterCrop(res)` as diffusers' `train_text_to_image.py` applies them), and every bad input
//! of the issue: a one-line error naming the file (and the line of `metadata.jsonl`), the
//! folder left as it was.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use melo::audit::data::{is_captioned_folder, MAX_IMAGE_PIXELS};
use melo::audit::{Error, SampleSet};

const FILES: [&str; 6] =
    ["LY_272765.jpg", "ERB_352362.jpg", "MO_821329.jpg", "wide_rgba.png", "tall_grey.png", "square64.png"];

fn fixture() -> PathBuf {
    let dir = common::repo().join("tests/data/sd/captioned");
    assert!(
        dir.join("metadata.jsonl").is_file(),
        "{} is missing: run python tools/sd/make_caption_fixture.py",
        dir.display()
    );
    dir
}

fn reference(res: usize, file_name: &str) -> Vec<u8> {
    let path = common::repo().join(format!("tests/data/sd/captioned_ref/r{res}/{file_name}.png"));
    let img =
        image::open(&path).unwrap_or_else(|e| panic!("{}: {e} (run tools/sd/make_caption_fixture.py)", path.display()));
    assert_eq!((img.width() as usize, img.height() as usize), (res, res), "{}", path.display());
    img.to_rgb8().into_raw()
}

/// Image `i` of `set` back in grey levels, interleaved RGB like the reference.
fn grey_levels(set: &SampleSet, i: usize) -> Vec<u8> {
    let img = set.image(i);
    let plane = set.height * set.width;
    (0..plane).flat_map(|p| (0..3).map(move |c| ((img[c * plane + p] + 1.0) * 127.5).round() as u8)).collect()
}

/// (max, mean) absolute difference in grey levels.
fn difference(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let max = a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y)).max().unwrap();
    let mean = a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y) as f64).sum::<f64>() / a.len() as f64;
    (max, mean)
}

#[test]
fn matches_pil_preprocessing_at_32_and_64() {
    let dir = fixture();
    for res in [32, 64] {
        let set = SampleSet::load_captioned(&dir, res, None).unwrap();
        assert_eq!((set.channels, set.height, set.width, set.len()), (3, res, res, FILES.len()));
        assert_eq!(set.ids, FILES, "ids are the file names in metadata.jsonl order");
        let captions = set.captions.as_ref().expect("a captioned set has captions");
        assert_eq!(captions[3], "an eosinophil, May-Grünwald–Giemsa stain");
        assert_eq!(captions[4], "", "an empty text is the unconditional caption, kept as is");
        assert_eq!(captions[0], "a lymphocyte in a peripheral blood smear");
        for (i, name) in FILES.iter().enumerate() {
            let ours = grey_levels(&set, i);
            let (max, mean) = difference(&ours, &reference(res, name));
            eprintln!("res {res} {name}: max |Δ| {max} grey levels, mean {mean:.4}");
            if name.ends_with(".png") {
                // Lossless input: the port of Pillow's fixed-point bilinear must be bit-exact.
                assert_eq!(max, 0, "res {res} {name}: differs from PIL (mean {mean})");
            } else {
                // JPEG: `image`'s decoder (zune-jpeg) and PIL's libjpeg-turbo round the IDCT /
                // chroma upsampling differently: at full size up to 3 grey levels on ~0.5 % of
                // the values of these three files. Fed PIL's own decode (PNG copies, checked once
                // by hand), the resize gives exactly PIL's result at 32 and 64; after resizing
                // the decoders' difference measured max 1, mean ≤ 0.0065 grey levels.
                assert!(max <= 1 && mean <= 0.02, "res {res} {name}: max {max}, mean {mean} grey levels from PIL");
            }
        }
        // tall_grey.png is stored 101 × 90 with EXIF orientation 6; the reference is the upright
        // 90 × 101 image (datasets' exif_transpose), so the match above checks the rotation.
        // Greyscale input is replicated into R = G = B (PIL convert("RGB")).
        let grey = grey_levels(&set, 4);
        assert!(grey.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    }
}

#[test]
fn an_image_at_the_resolution_is_used_as_is() {
    let set = SampleSet::load_captioned(&fixture(), 64, None).unwrap();
    let file = image::open(fixture().join("square64.png")).unwrap().to_rgb8().into_raw();
    assert_eq!(grey_levels(&set, 5), file);
}

#[test]
fn limit_keeps_the_first_lines() {
    let set = SampleSet::load_captioned(&fixture(), 32, Some(2)).unwrap();
    assert_eq!(set.ids, FILES[..2]);
    assert_eq!(set.captions.as_ref().unwrap().len(), 2);
    assert_eq!(set.pixels.len(), 2 * 3 * 32 * 32);
}

#[test]
fn captioned_folders_are_recognised_and_other_loaders_have_no_captions() {
    assert!(is_captioned_folder(&fixture()));
    let plain = common::repo().join("tests/data/sd/captioned_ref/r32");
    assert!(!is_captioned_folder(&plain));
    assert!(!is_captioned_folder(&fixture().join("metadata.jsonl")));
    let set = SampleSet::load(&plain, None).unwrap();
    assert_eq!(set.len(), FILES.len());
    assert!(set.captions.is_none());
}

// ---- bad input -------------------------------------------------------------------------------

/// A copy of the fixture in a temporary folder (`set/` inside it), to break.
struct Broken {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Broken {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("set");
        std::fs::create_dir(&dir).unwrap();
        for entry in std::fs::read_dir(fixture()).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
        Self { _tmp: tmp, dir }
    }

    fn metadata(&self) -> PathBuf {
        self.dir.join("metadata.jsonl")
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.metadata()).unwrap().lines().map(str::to_owned).collect()
    }

    fn write_lines(&self, lines: &[String]) {
        std::fs::write(self.metadata(), lines.join("\n") + "\n").unwrap();
    }

    /// Replaces line `n` (1-based) of metadata.jsonl.
    fn set_line(&self, n: usize, line: &str) {
        let mut lines = self.lines();
        lines[n - 1] = line.to_owned();
        self.write_lines(&lines);
    }

    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        walk(self._tmp.path())
    }

    /// Loads at `res`, expecting an `Error::Data` on one line that contains every `needles`
    /// entry, with nothing in the temporary folder changed.
    fn refused(&self, res: usize, needles: &[&str]) -> String {
        let before = self.snapshot();
        let err = match SampleSet::load_captioned(&self.dir, res, None) {
            Err(Error::Data(msg)) => msg,
            Err(other) => panic!("expected Error::Data, got {other:?}"),
            Ok(set) => panic!("loaded {} images from a broken folder", set.len()),
        };
        assert!(!err.contains('\n'), "not one line: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
        }
        assert_eq!(before, self.snapshot(), "the folder changed");
        err
    }
}

fn walk(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

fn json(file_name: &str, text: &str) -> String {
    serde_json::json!({"file_name": file_name, "text": text}).to_string()
}

#[test]
fn the_unbroken_copy_loads() {
    // The bad-input tests below each break one thing in this copy.
    let b = Broken::new();
    assert_eq!(SampleSet::load_captioned(&b.dir, 32, None).unwrap().len(), FILES.len());
}

#[test]
fn missing_metadata_is_refused() {
    let b = Broken::new();
    std::fs::remove_file(b.metadata()).unwrap();
    assert!(!is_captioned_folder(&b.dir));
    b.refused(32, &[&b.dir.display().to_string(), "no metadata.jsonl"]);
}

#[test]
fn malformed_json_names_the_line() {
    let b = Broken::new();
    b.set_line(3, r#"{"file_name": "MO_821329.jpg", "text": "a monocyte""#);
    b.refused(32, &[&format!("{}:3:", b.metadata().display()), "not valid JSON"]);
    b.set_line(3, r#"["MO_821329.jpg", "a monocyte"]"#);
    b.refused(32, &[&format!("{}:3:", b.metadata().display()), "JSON object"]);
}

#[test]
fn missing_or_non_string_fields_are_refused() {
    let b = Broken::new();
    let meta = b.metadata().display().to_string();
    b.set_line(2, r#"{"text": "an erythroblast"}"#);
    b.refused(32, &[&format!("{meta}:2:"), "\"file_name\""]);
    b.set_line(2, r#"{"file_name": "ERB_352362.jpg"}"#);
    b.refused(32, &[&format!("{meta}:2:"), "\"text\""]);
    b.set_line(2, r#"{"file_name": "ERB_352362.jpg", "text": null}"#);
    b.refused(32, &[&format!("{meta}:2:"), "\"text\" must be a string"]);
    b.set_line(2, r#"{"file_name": "ERB_352362.jpg", "text": ["an", "erythroblast"]}"#);
    b.refused(32, &[&format!("{meta}:2:"), "\"text\" must be a string"]);
    b.set_line(2, r#"{"file_name": 7, "text": "an erythroblast"}"#);
    b.refused(32, &[&format!("{meta}:2:"), "\"file_name\" must be a string"]);
}

#[test]
fn hostile_file_names_are_refused_even_when_the_file_exists() {
    let b = Broken::new();
    let meta = b.metadata().display().to_string();
    // A real image just outside the folder and one in a subfolder: reading either would take
    // files the auditor did not hand over.
    std::fs::copy(b.dir.join("square64.png"), b.dir.parent().unwrap().join("outside.png")).unwrap();
    std::fs::create_dir(b.dir.join("sub")).unwrap();
    std::fs::copy(b.dir.join("square64.png"), b.dir.join("sub/inner.png")).unwrap();
    let outside = b.dir.parent().unwrap().join("outside.png").display().to_string();
    for name in ["../outside.png", "sub/inner.png", "sub\\inner.png", outside.as_str(), "..", ".", ""] {
        b.set_line(6, &json(name, "hostile"));
        // square64.png is no longer listed; the name check must come first and say why.
        b.refused(32, &[&format!("{meta}:6:"), "not a plain file name"]);
    }
}

#[test]
fn a_listed_file_that_does_not_exist_is_refused() {
    let b = Broken::new();
    std::fs::remove_file(b.dir.join("ERB_352362.jpg")).unwrap();
    b.refused(32, &[&format!("{}:2:", b.metadata().display()), "\"ERB_352362.jpg\" does not exist"]);
    std::fs::create_dir(b.dir.join("ERB_352362.jpg")).unwrap();
    b.refused(32, &[&format!("{}:2:", b.metadata().display()), "\"ERB_352362.jpg\" is not a file"]);
}

#[test]
fn a_file_listed_twice_is_refused() {
    let b = Broken::new();
    let mut lines = b.lines();
    lines.push(json("LY_272765.jpg", "the same image again"));
    b.write_lines(&lines);
    b.refused(32, &[&format!("{}:7:", b.metadata().display()), "listed twice (first on line 1)"]);
}

#[test]
fn images_not_in_the_caption_file_are_refused() {
    let b = Broken::new();
    let lines = b.lines();
    b.write_lines(&[lines[0].clone(), lines[2].clone(), lines[4].clone()]);
    let err = b.refused(32, &[&b.metadata().display().to_string(), "does not match the images", "not listed"]);
    // The first few, sorted, and how many in all.
    assert!(err.contains("ERB_352362.jpg, square64.png, wide_rgba.png"), "{err}");
    // Non-image files (notes, the set's README) are not images to caption.
    let b = Broken::new();
    std::fs::write(b.dir.join("README.md"), "notes").unwrap();
    assert_eq!(SampleSet::load_captioned(&b.dir, 32, None).unwrap().len(), FILES.len());
    std::fs::copy(b.dir.join("square64.png"), b.dir.join("EXTRA.PNG")).unwrap();
    b.refused(32, &["EXTRA.PNG", "not listed"]);
}

#[test]
fn an_empty_caption_file_is_refused() {
    let b = Broken::new();
    b.write_lines(&[]);
    for f in FILES {
        std::fs::remove_file(b.dir.join(f)).unwrap();
    }
    b.refused(32, &[&b.metadata().display().to_string(), "lists no images"]);
}

#[test]
fn an_undecodable_image_names_the_file_and_line() {
    let b = Broken::new();
    std::fs::write(b.dir.join("wide_rgba.png"), b"\x89PNG\r\n\x1a\n not really a png").unwrap();
    b.refused(
        32,
        &[&b.dir.join("wide_rgba.png").display().to_string(), "line 4 of", "metadata.jsonl", "cannot decode"],
    );
    let b = Broken::new();
    std::fs::write(b.dir.join("MO_821329.jpg"), b"plain text, not a JPEG").unwrap();
    b.refused(32, &[&b.dir.join("MO_821329.jpg").display().to_string(), "line 3 of", "cannot decode"]);
}

#[test]
fn resolution_zero_or_huge_is_refused() {
    let b = Broken::new();
    let dir = b.dir.display().to_string();
    b.refused(0, &[&dir, "resolution 0"]);
    b.refused(4096, &[&dir, "resolution 4096", "1–2048"]);
    // The largest allowed resolution is accepted (the check is not off by one).
    assert_eq!(SampleSet::load_captioned(&b.dir, 2048, Some(1)).unwrap().height, 2048);
}

/// A PNG that claims `width × height` pixels: signature, IHDR (8-bit RGB), an empty IDAT, IEND.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[]);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn an_image_over_the_pixel_limit_is_refused_before_decoding() {
    let b = Broken::new();
    // 10,000 × 9,000 = 90 M pixels: just over PIL's MAX_IMAGE_PIXELS (89,478,485), 270 MB decoded.
    const { assert!(10_000 * 9_000 > MAX_IMAGE_PIXELS) };
    std::fs::write(b.dir.join("square64.png"), png_claiming(10_000, 9_000)).unwrap();
    let file = b.dir.join("square64.png").display().to_string();
    b.refused(32, &[&file, "line 6 of", "10000×9000", "limit of 89478485 pixels"]);
    std::fs::write(b.dir.join("square64.png"), png_claiming(100_000, 100_000)).unwrap();
    b.refused(32, &[&file, "line 6 of", "limit"]);
}

#[test]
fn a_sliver_that_would_resize_past_the_pixel_limit_is_refused() {
    let b = Broken::new();
    // 1 × 3000 with the shorter side to 2048 is 2048 × 6,144,000 before the crop.
    image::GrayImage::from_pixel(1, 3000, image::Luma([90])).save(b.dir.join("tall_grey.png")).unwrap();
    // First in line, so that no image is upscaled to 2048 before the refusal (a slow test).
    let mut lines = b.lines();
    lines.swap(0, 4);
    b.write_lines(&lines);
    b.refused(2048, &[&b.dir.join("tall_grey.png").display().to_string(), "line 1 of", "aspect ratio too extreme"]);
    // At resolution 16 the same sliver is 16 × 48,000 and loads.
    assert_eq!(SampleSet::load_captioned(&b.dir, 16, None).unwrap().len(), FILES.len());
}

#[test]
fn sixteen_bit_images_are_refused() {
    let b = Broken::new();
    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(40, 40, |x, y| image::Luma([(x * 1000 + y) as u16]));
    img.save(b.dir.join("tall_grey.png")).unwrap();
    b.refused(32, &[&b.dir.join("tall_grey.png").display().to_string(), "line 5 of", "only 8-bit"]);
}

#[test]
fn not_a_folder_or_not_utf8_is_refused() {
    let b = Broken::new();
    match SampleSet::load_captioned(&b.dir.join("metadata.jsonl"), 32, None) {
        Err(Error::Data(msg)) => assert!(msg.contains("not a folder"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut bytes = std::fs::read(b.metadata()).unwrap();
    let second_line = bytes.iter().position(|&c| c == b'\n').unwrap() + 1;
    bytes.insert(second_line + 20, 0xff);
    std::fs::write(b.metadata(), bytes).unwrap();
    b.refused(32, &[&format!("{}:2:", b.metadata().display()), "not UTF-8"]);
}
