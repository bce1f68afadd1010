#!/usr/bin/env python3
"""Removes the paths that `melo train` recorded before issue 20 from the shipped adapters
(`adapters/*.safetensors`) and the training reports (`adapters/*.report.json`,
`docs/training/*.report.json`), without retraining.

- Adapters: only the `adapter` entry of the safetensors header's `__metadata__` changes
  (`training.dataset` becomes the data set's name; `data_set` gets its licence and per-split,
  per-class image counts). The tensor bytes after the header are copied unchanged, so the
  weights stay byte-identical (checked below).
- Reports: `data` becomes the name, `data_licence` and `class_counts` are added, the list of
  skipped files becomes `skipped_files` (a count), `file` keeps only the file name, and
  `options` loses `data`, `out` and `backbone`.

The counts are computed from ../shared/data and checked against each report's own split
sizes and test confusion matrix. Run from the repository root: python3 tools/train/scrub_paths.py
"""
import glob
import json
import os
import re
import sys

import numpy as np

import adapter_header  # tools/train/adapter_header.py

SHARED = os.path.join("..", "shared", "data")
# Old `--data` value's final component -> (name, licence); see ../shared/data/README.md.
DATA_SETS = {
    "breastmnist.npz": ("BreastMNIST (MedMNIST v2)", "CC BY 4.0"),
    "pneumoniamnist.npz": ("PneumoniaMNIST (MedMNIST v2)", "CC BY 4.0"),
    "retinamnist.npz": ("RetinaMNIST (MedMNIST v2)", "CC BY 4.0"),
    "pbc": ("PBC (Acevedo et al. 2020), 8-class subset", "CC BY 4.0"),
}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".dcm", ".bmp", ".tif", ".tiff"}
SPLITS = ["train", "val", "test"]


def counts_for(key, classes):
    """{split: {class: n}} for the data set `key`, classes in label order."""
    if key.endswith(".npz"):
        z = np.load(os.path.join(SHARED, "medmnist", key))
        out = {}
        for split in SPLITS:
            labels = z[f"{split}_labels"].reshape(-1)
            out[split] = {c: int((labels == i).sum()) for i, c in enumerate(classes)}
        return out
    root = os.path.join(SHARED, key)
    out = {}
    for split in SPLITS:
        out[split] = {}
        for c in classes:
            files = [f for f in os.listdir(os.path.join(root, split, c))
                     if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
            out[split][c] = len(files)
    return out


def data_key(report):
    old = report.get("options", {}).get("data") or report["data"]
    return os.path.basename(old.rstrip("/"))


def check_counts(path, report, counts):
    for split, field in zip(SPLITS, ["train_samples", "val_samples", "test_samples"]):
        total = sum(counts[split].values())
        if total != report[field]:
            sys.exit(f"{path}: {split} has {total} images in ../shared/data, the report says {report[field]}")
    rows = [sum(r) for r in report["test"]["confusion"]]
    if rows != [counts["test"][c] for c in report["classes"]]:
        sys.exit(f"{path}: test counts {counts['test']} disagree with the confusion matrix rows {rows}")


def scrub_report(path):
    report = json.load(open(path))
    if "skipped" not in report and "data_licence" in report:
        return report, None  # already scrubbed
    key = data_key(report)
    name, licence = DATA_SETS[key]
    counts = counts_for(key, report["classes"])
    check_counts(path, report, counts)
    out = {}
    for k, v in report.items():
        if k == "data":
            out["data"] = name
            out["data_licence"] = licence
        elif k == "test_samples":
            out[k] = v
            out["class_counts"] = counts
        elif k == "skipped":
            out["skipped_files"] = len(v)
        elif k == "file":
            out[k] = os.path.basename(v)
        elif k == "options":
            out[k] = {ok: ov for ok, ov in v.items() if ok not in ("data", "out", "backbone")}
        else:
            out[k] = v
    text = json.dumps(out, indent=2, ensure_ascii=False)
    # Exponents as serde_json writes them (1e-6, not Python's 1e-06): a diff of values only.
    text = re.sub(r"(?<=[0-9])e([+-]?)0*([1-9][0-9]*)\b", lambda m: "e" + m.group(1).replace("+", "") + m.group(2), text)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return out, key


def scrub_adapter(path, report):
    header, meta, data = adapter_header.read(path)
    meta["training"]["dataset"] = report["data"]
    meta["data_set"] = {
        "licence": report["data_licence"],
        "counts": report["class_counts"],
        "skipped_files": report["skipped_files"],
    }
    adapter_header.write(path, header, meta, data)


def main():
    for path in sorted(glob.glob("docs/training/*.report.json")):
        scrub_report(path)
    for path in sorted(glob.glob("adapters/*.report.json")):
        report, _ = scrub_report(path)
        scrub_adapter(path.replace(".report.json", ".safetensors"), report)
    print("scrubbed", len(glob.glob("docs/training/*.report.json")) + len(glob.glob("adapters/*.report.json")), "reports")


if __name__ == "__main__":
    main()
