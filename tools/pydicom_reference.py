#!/usr/bin/env python3
"""Reference values from pydicom for every DICOM file in a corpus.

For each file it records what pydicom (with the pylibjpeg plugins) decodes:
  * `status`: "ok", or "error" with pydicom's message (the workstation must also refuse it)
  * `shape`: (frames, rows, cols) or (frames, rows, cols, 3)
  * `photometric`, `transfer_syntax`, `modality`, `window` (first centre/width, if any)
  * `raw_sha256`: sha256 of the decoded sample values (before the modality LUT, colour
    converted to RGB / palette applied exactly as pydicom's default `pixel_array`), as
    little-endian float64 in C order — lossless files must match it bit for bit
  * `values_sha256`: the same after the modality LUT, as float32 (what `melo convert` writes)
  * `min`, `max`, `mean` and `samples` (512 values at deterministic flat indices) of the
    modality-LUT output, so lossy codecs can be compared within a tolerance.

Usage:
  python tools/pydicom_reference.py ../shared/data/dicom tests/data/pydicom_corpus.json
  python tools/pydicom_reference.py --npy OUTDIR FILE...   # full float32 arrays for fixtures
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_color_lut

N_SAMPLES = 512


def read(path):
    """pydicom's reading, extended the way a viewer must: a file without the preamble / file
    meta (or without a transfer syntax in it) is read with `force=True`, and its transfer
    syntax is the encoding pydicom inferred while parsing it."""
    try:
        return pydicom.dcmread(path), False
    except pydicom.errors.InvalidDicomError:
        ds = pydicom.dcmread(path, force=True)
        if len(ds) == 0:
            raise
    return ds, True


def decode(path):
    ds, forced = read(path)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if implicit is not None:
            ds.file_meta.TransferSyntaxUID = (
                pydicom.uid.ImplicitVRLittleEndian if implicit
                else pydicom.uid.ExplicitVRLittleEndian if little
                else pydicom.uid.ExplicitVRBigEndian
            )
            forced = True
    arr = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        values = arr.astype(np.float32)
    elif arr.ndim >= 3 and int(ds.get("SamplesPerPixel", 1)) == 3:
        values = arr.astype(np.float32)
    else:
        values = apply_modality_lut(arr, ds).astype(np.float32)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = 3 if (photometric == "PALETTE COLOR" or int(ds.get("SamplesPerPixel", 1)) == 3) else 1
    rows, cols = int(ds.Rows), int(ds.Columns)
    shape = (frames, rows, cols) + ((3,) if spp == 3 else ())
    arr = np.asarray(arr).reshape(shape)
    values = values.reshape(shape)
    return ds, arr, values, forced


def sample_indices(n):
    # Deterministic, spread over the whole array: a fixed-stride walk, same rule in Rust.
    if n <= N_SAMPLES:
        return list(range(n))
    return [(i * n) // N_SAMPLES for i in range(N_SAMPLES)]


def window_of(ds):
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None:
        return None
    c = c[0] if isinstance(c, pydicom.multival.MultiValue) else c
    w = w[0] if isinstance(w, pydicom.multival.MultiValue) else w
    try:
        return [float(c), float(w)]
    except (TypeError, ValueError):
        return None


def reference(path):
    entry = {}
    try:
        ds, raw, values, forced = decode(path)
    except Exception as exc:  # pydicom refuses the file: record why
        entry["status"] = "error"
        entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
        return entry
    flat = values.reshape(-1)
    idx = sample_indices(flat.size)
    entry.update(
        status="ok",
        inferred_encoding=forced,
        shape=list(values.shape),
        photometric=str(ds.get("PhotometricInterpretation", "")),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.get("file_meta", {}) else None,
        modality=str(ds.get("Modality", "")),
        bits_allocated=int(ds.get("BitsAllocated", 0)),
        window=window_of(ds),
        raw_sha256=hashlib.sha256(np.ascontiguousarray(raw, dtype="<f8").tobytes()).hexdigest(),
        values_sha256=hashlib.sha256(np.ascontiguousarray(values, dtype="<f4").tobytes()).hexdigest(),
        min=float(flat.min()),
        max=float(flat.max()),
        mean=float(flat.astype(np.float64).mean()),
        samples=[float(flat[i]) for i in idx],
    )
    return entry


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--npy", metavar="OUTDIR", help="write full float32 arrays for the given files")
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args()
    if args.npy:
        os.makedirs(args.npy, exist_ok=True)
        for path in args.paths:
            _, _, values, _ = decode(path)
            np.save(os.path.join(args.npy, os.path.basename(path) + ".npy"), values)
        return
    root, out = args.paths
    refs = {}
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            refs[rel] = reference(path)
            print(f"{refs[rel]['status']:5} {rel}", file=sys.stderr)
    meta = {
        "generator": "tools/pydicom_reference.py",
        "pydicom": pydicom.__version__,
        "numpy": np.__version__,
        "samples_rule": "flat index (i * n) // 512 for i in 0..512, or every index when n <= 512",
    }
    with open(out, "w") as f:
        json.dump({"meta": meta, "files": refs}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
