#!/usr/bin/env python3
"""Captioned image-set fixture (issue 13, point 3: member / non-member sets with captions).

Writes a Hugging Face "imagefolder" of real PBC blood-smear images and what diffusers'
train_text_to_image.py pre-processing makes of each, for tests/sd_captions.rs:

  tests/data/sd/captioned/            the folder the Rust loader reads
      metadata.jsonl                  {"file_name": ..., "text": ..., "label": ...} per line
                                      (label is an extra key the loader must ignore; one caption
                                      is empty, one has non-ASCII text)
      <3 JPEGs>                       copied byte for byte from ../shared/data/pbc/train
                                      (360x363, the shorter side is the width)
      wide_rgba.png                   a 120x77 crop of a fourth image with a varying alpha
                                      channel (odd aspect, landscape, crop offset .5 rounding)
      tall_grey.png                   a 90x101 greyscale crop of a fifth image (mode L), stored
                                      rotated (101x90) with EXIF orientation 6
      square64.png                    a 64x64 crop of a sixth (already at resolution 64)
  tests/data/sd/captioned_ref/r<res>/<file_name>.png   for res 32 and 64: the res x res RGB
                                      result, stored losslessly as PNG (smaller than .npy)

The reference is PIL's own code path: the file opened as datasets' imagefolder opens it
(exif_transpose when there is an orientation tag), .convert("RGB"), then torchvision's
Resize(res, InterpolationMode.BILINEAR) + CenterCrop(res) on the PIL image. torchvision is not
installed here, so its two steps are written out from its source (torchvision 0.2x,
transforms/functional.py): _compute_resized_output_size gives the shorter side `res` and the
longer int(res * long / short); an image already at that size is returned as is, else
img.resize((w, h), Image.BILINEAR); center_crop takes top = int(round((h - res) / 2.0)), left
likewise (Python's round, half to even).

Seeded: the same run gives the same files. Needs: Pillow, numpy.
Run: python tools/sd/make_caption_fixture.py
"""

import json
import os
import random
import shutil

import numpy as np
from PIL import ExifTags, Image, ImageOps

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PBC = os.path.join(REPO, "..", "shared", "data", "pbc", "train")
OUT = os.path.join(REPO, "tests", "data", "sd", "captioned")
REF = os.path.join(REPO, "tests", "data", "sd", "captioned_ref")
RESOLUTIONS = (32, 64)
CAPTIONS = {
    "basophil": "a basophil in a peripheral blood smear",
    "eosinophil": "an eosinophil, May-Grünwald–Giemsa stain",
    "erythroblast": "an erythroblast in a blood smear",
    "ig": "an immature granulocyte",
    "lymphocyte": "a lymphocyte in a peripheral blood smear",
    "monocyte": "a monocyte in a peripheral blood smear",
    "neutrophil": "a neutrophil in a peripheral blood smear",
    "platelet": "platelets in a peripheral blood smear",
}


def torchvision_resize_center_crop(img, res):
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = res, int(res * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - res) / 2.0))
    left = int(round((new_w - res) / 2.0))
    return img.crop((left, top, left + res, top + res))


def load_like_datasets(path):
    """datasets' Image feature (5.2.0, features/image.py decode_example): open, load, and
    exif_transpose when the file has an orientation tag."""
    image = Image.open(path)
    image.load()
    if image.getexif().get(ExifTags.Base.Orientation) is not None:
        image = ImageOps.exif_transpose(image)
    return image


def main():
    rng = random.Random(13)
    classes = sorted(os.listdir(PBC))
    picks = []
    for cls in rng.sample(classes, 6):
        files = sorted(f for f in os.listdir(os.path.join(PBC, cls)) if f.lower().endswith(".jpg"))
        picks.append((cls, os.path.join(PBC, cls, rng.choice(files))))

    shutil.rmtree(OUT, ignore_errors=True)
    shutil.rmtree(REF, ignore_errors=True)
    os.makedirs(OUT)
    records = []
    for cls, src in picks[:3]:
        name = os.path.basename(src)
        shutil.copyfile(src, os.path.join(OUT, name))
        records.append({"file_name": name, "text": CAPTIONS[cls], "label": cls})

    cls, src = picks[3]
    rgb = np.asarray(Image.open(src).convert("RGB"))
    y, x = rng.randrange(0, rgb.shape[0] - 77), rng.randrange(0, rgb.shape[1] - 120)
    crop = rgb[y : y + 77, x : x + 120]
    yy, xx = np.mgrid[0:77, 0:120]
    alpha = (40 + (xx * 215) // 119).astype(np.uint8)  # alpha must be dropped, not composited
    Image.fromarray(np.dstack([crop, alpha]), "RGBA").save(os.path.join(OUT, "wide_rgba.png"))
    records.append({"file_name": "wide_rgba.png", "text": CAPTIONS[cls], "label": cls})

    cls, src = picks[4]
    grey = np.asarray(Image.open(src).convert("L"))
    y, x = rng.randrange(0, grey.shape[0] - 101), rng.randrange(0, grey.shape[1] - 90)
    # Stored 101 wide x 90 high with EXIF orientation 6 (rotate 90 degrees clockwise to view),
    # as phones and some scanners write them: datasets' imagefolder applies exif_transpose, so
    # the model saw the 90 x 101 portrait.
    stored = Image.fromarray(grey[y : y + 101, x : x + 90], "L").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    stored.save(os.path.join(OUT, "tall_grey.png"), exif=exif)
    # The unconditional caption: an empty text is allowed.
    records.append({"file_name": "tall_grey.png", "text": "", "label": cls})

    cls, src = picks[5]
    rgb = np.asarray(Image.open(src).convert("RGB"))
    y, x = rng.randrange(0, rgb.shape[0] - 64), rng.randrange(0, rgb.shape[1] - 64)
    Image.fromarray(rgb[y : y + 64, x : x + 64], "RGB").save(os.path.join(OUT, "square64.png"))
    records.append({"file_name": "square64.png", "text": CAPTIONS[cls], "label": cls})

    with open(os.path.join(OUT, "metadata.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    for res in RESOLUTIONS:
        os.makedirs(os.path.join(REF, f"r{res}"))
        for r in records:
            img = load_like_datasets(os.path.join(OUT, r["file_name"])).convert("RGB")
            out = torchvision_resize_center_crop(img, res)
            assert out.size == (res, res)
            out.save(os.path.join(REF, f"r{res}", r["file_name"] + ".png"))

    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.dirname(OUT))
                for f in fs if d.startswith((OUT, REF)))
    print(f"wrote {len(records)} images, references at {RESOLUTIONS}; {total} bytes in all")
    for r in records:
        img = load_like_datasets(os.path.join(OUT, r["file_name"]))
        print(" ", r["file_name"], img.size, img.mode, repr(r["text"]))


if __name__ == "__main__":
    main()
