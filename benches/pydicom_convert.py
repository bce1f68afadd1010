#!/usr/bin/env python3
"""The peer of `melo convert IN OUT.npy`: pydicom 3 + pylibjpeg reading each file and
writing float32 values after the modality LUT to .npy, the same output as melo's.
Usage: python benches/pydicom_convert.py OUTDIR FILE..."""
import os
import sys

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

out_dir, paths = sys.argv[1], sys.argv[2:]
for path in paths:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if int(ds.get("SamplesPerPixel", 1)) == 1:
        arr = apply_modality_lut(arr, ds)
    np.save(os.path.join(out_dir, os.path.basename(path) + ".npy"), arr.astype(np.float32))
