#!/usr/bin/env python3
"""MPR planes of the shipped 20-slice MR series, computed with pydicom + numpy, for
tests/mpr_reference.rs.

The volume: every file's pixel_array through apply_modality_lut, as float32, stacked in order of
Image Position (Patient) along the normal (row direction x column direction of Image
Orientation (Patient)). The planes, as src/volume.rs defines them (nearest neighbour, no
interpolation):
  acquired k:   vol[k]         (rows x columns)
  reformat 1 r: vol[:, r, :]   (slices x columns)
  reformat 2 c: vol[:, :, c]   (slices x rows)
with the slice axis of the reformats flipped (last slice in the top row) when the end of the
normal that goes on top points along it: the head end (+z in LPS) when the normal is mostly
head-foot, else the anterior end (-y), else the patient's right (-x).

Written: shapes, spacings (row and column from Pixel Spacing; slice = (last - first) / (n - 1)
along the normal), a SHA-256 of every plane's float32 little-endian bytes, and a few planes'
middle rows in full, for readable failures.

Usage: python tools/mpr/reference.py assets/samples/mr_brain_series tests/data/mpr_reference.json
"""
import glob
import hashlib
import json
import os
import sys

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

SAMPLES = {"acquired": [0, 9, 19], "reformat1": [0, 100, 128, 255], "reformat2": [0, 64, 128, 255]}


def sha(plane):
    return hashlib.sha256(np.ascontiguousarray(plane, dtype="<f4").tobytes()).hexdigest()


def main():
    folder, out = sys.argv[1:3]
    files = sorted(glob.glob(os.path.join(folder, "*.dcm")))
    datasets = [pydicom.dcmread(f) for f in files]
    o = np.array(datasets[0].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = o[:3] / np.linalg.norm(o[:3]), o[3:] / np.linalg.norm(o[3:])
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    along = [float(np.dot(np.array(ds.ImagePositionPatient, dtype=np.float64), normal)) for ds in datasets]
    order = sorted(range(len(datasets)), key=lambda i: (along[i], i))
    vol = np.stack([apply_modality_lut(datasets[i].pixel_array, datasets[i]).astype(np.float32) for i in order])
    axis = int(np.argmax(np.abs(normal)))
    towards_top = normal[2] if axis == 2 else -normal[axis]
    flip = bool(towards_top > 0)
    by_slice = vol[::-1] if flip else vol
    planes = {
        "acquired": [vol[k] for k in range(vol.shape[0])],
        "reformat1": [by_slice[:, r, :] for r in range(vol.shape[1])],
        "reformat2": [by_slice[:, :, c] for c in range(vol.shape[2])],
    }
    d = sorted(along)
    row_mm, col_mm = (float(v) for v in datasets[0].PixelSpacing)
    result = dict(
        meta=dict(generator="tools/mpr/reference.py", source=folder, pydicom=pydicom.__version__,
                  numpy=np.__version__),
        files=[os.path.basename(files[i]) for i in order],
        shape=list(vol.shape),
        pixel_spacing=[row_mm, col_mm],
        slice_spacing=(d[-1] - d[0]) / (len(d) - 1),
        last_slice_on_top=flip,
        planes={kind: dict(shape=list(ps[0].shape), sha256=[sha(p) for p in ps],
                           middle_rows={str(i): ps[i][ps[i].shape[0] // 2].tolist() for i in SAMPLES[kind]})
                for kind, ps in planes.items()},
    )
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
