#!/usr/bin/env python3
"""Check the latent demo's member / non-member split for what its README must state: set sizes
and class counts, that the two sets share no source file, exact duplicates (same pixels) within
and between the sets (both of the original PBC files and of the 64 px crops the model saw), and
the closest member / non-member pair of crops (mean squared difference in grey levels): a
non-member nearly identical to a member would be "leaked" without being trained on.

  python tools/sd/check_demo_split.py [assets/demo_sd] > split_check.json
"""
import collections
import hashlib
import json
import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


def read_set(folder):
    with open(os.path.join(folder, "metadata.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    crops = np.stack([np.asarray(Image.open(os.path.join(folder, r["file_name"])).convert("RGB"))
                      for r in rows]).astype(np.float64)
    return rows, crops


def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def source_digest(rel):
    path = os.path.join(SHARED, rel)
    if not os.path.exists(path):
        return None
    return digest(np.asarray(Image.open(path).convert("RGB")))


def main():
    demo = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "assets", "demo_sd")
    mem_rows, mem = read_set(os.path.join(demo, "members"))
    non_rows, non = read_set(os.path.join(demo, "nonmembers"))
    out = {"members": len(mem_rows), "nonmembers": len(non_rows)}
    out["captions_members"] = dict(collections.Counter(r["text"] for r in mem_rows))
    out["captions_nonmembers"] = dict(collections.Counter(r["text"] for r in non_rows))
    mem_src = {r["source"] for r in mem_rows}
    non_src = {r["source"] for r in non_rows}
    out["shared_source_files"] = len(mem_src & non_src)

    def dup_count(hashes):
        return sum(c - 1 for c in collections.Counter(hashes).values() if c > 1)

    for name, rows in (("members", mem_rows), ("nonmembers", non_rows)):
        src = [source_digest(r["source"]) for r in rows]
        out[f"source_pixels_found_{name}"] = sum(h is not None for h in src)
        out[f"duplicate_source_pixels_within_{name}"] = dup_count([h for h in src if h is not None])
    mem_src_px = {source_digest(r["source"]) for r in mem_rows} - {None}
    non_src_px = {source_digest(r["source"]) for r in non_rows} - {None}
    out["duplicate_source_pixels_between"] = len(mem_src_px & non_src_px)
    mem_h = [digest(c.astype(np.uint8)) for c in mem]
    non_h = [digest(c.astype(np.uint8)) for c in non]
    out["duplicate_crops_within_members"] = dup_count(mem_h)
    out["duplicate_crops_within_nonmembers"] = dup_count(non_h)
    out["duplicate_crops_between"] = len(set(mem_h) & set(non_h))

    m = mem.reshape(len(mem), -1)
    n = non.reshape(len(non), -1)
    d = (m**2).sum(1)[:, None] + (n**2).sum(1)[None, :] - 2 * m @ n.T
    d = np.maximum(d, 0) / m.shape[1]
    i, j = np.unravel_index(np.argmin(d), d.shape)
    out["closest_pair"] = {"member": mem_rows[i]["file_name"], "nonmember": non_rows[j]["file_name"],
                           "mse_grey_levels": round(float(d[i, j]), 2)}
    out["median_nearest_member_mse_grey_levels"] = round(float(np.median(d.min(0))), 2)
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
