#!/usr/bin/env python3
"""ROI statistics and lengths on the shipped CT slice, computed with pydicom + numpy, for
tests/measure_reference.rs.

The masks follow src/measure.rs: continuous image coordinates in pixels, (0, 0) the top-left
corner of the first pixel; a pixel belongs to an ROI when its centre (col + 0.5, row + 0.5) lies
inside (edges included). Rectangle: between two opposite corners. Ellipse: inscribed in that
rectangle. Values: pydicom's pixel_array through apply_modality_lut (HU), as float64.

Usage: python tools/measure/roi_reference.py assets/samples/ct/693_J2KR.dcm tests/data/measure_reference.json
"""
import json
import sys

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

# (kind, x0, y0, x1, y1): corners in image coordinates; fractional on purpose.
ROIS = [
    ("rectangle", 200.0, 220.0, 260.0, 300.0),
    ("rectangle", 310.7, 150.2, 355.3, 171.9),
    ("ellipse", 180.0, 180.0, 330.0, 330.0),
    ("ellipse", 99.4, 240.6, 140.1, 262.2),
    ("ellipse", 0.0, 0.0, 512.0, 512.0),
]
# (x0, y0, x1, y1): segments across a known number of pixels.
LENGTHS = [(100.0, 200.0, 300.0, 200.0), (256.5, 10.5, 256.5, 410.5), (50.0, 60.0, 80.0, 100.0)]


def mask(shape, kind, x0, y0, x1, y1):
    rows, cols = shape
    cy, cx = np.mgrid[0:rows, 0:cols].astype(np.float64) + 0.5
    lx, hx, ly, hy = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    if kind == "rectangle":
        return (cx >= lx) & (cx <= hx) & (cy >= ly) & (cy <= hy)
    rx, ry = (hx - lx) / 2, (hy - ly) / 2
    return ((cx - (lx + rx)) / rx) ** 2 + ((cy - (ly + ry)) / ry) ** 2 <= 1.0


def main():
    src, out = sys.argv[1:3]
    ds = pydicom.dcmread(src)
    hu = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    rois = []
    for kind, x0, y0, x1, y1 in ROIS:
        inside = hu[mask(hu.shape, kind, x0, y0, x1, y1)]
        rois.append(dict(
            kind=kind, corners=[x0, y0, x1, y1], pixels=int(inside.size),
            mean=float(inside.mean()), sd=float(inside.std()), min=float(inside.min()), max=float(inside.max()),
            area_mm2=float(inside.size * row_mm * col_mm),
        ))
    lengths = [dict(points=[x0, y0, x1, y1], mm=float(np.hypot((x1 - x0) * col_mm, (y1 - y0) * row_mm)))
               for x0, y0, x1, y1 in LENGTHS]
    meta = dict(generator="tools/measure/roi_reference.py", source=src, pydicom=pydicom.__version__,
                numpy=np.__version__, pixel_spacing=[row_mm, col_mm], modality=str(ds.Modality))
    with open(out, "w") as f:
        json.dump(dict(meta=meta, rois=rois, lengths=lengths), f, indent=1)


if __name__ == "__main__":
    main()
