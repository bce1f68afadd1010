#!/usr/bin/env python3
"""The MeLo table of docs/results.md from `melo train` reports (`*.report.json`).

    python3 tools/train/table.py adapters/*.report.json docs/training/*.report.json

Groups the reports by data set, one row per method, and adds the published baselines on the
same official test splits (MedMNIST v2 paper, Acevedo et al. 2020) for comparison. Nothing is
computed here except formatting and the trainable share of the 22.05 M backbone + head.
"""

import json
import sys
from pathlib import Path

# Published test metrics (AUC, ACC) on the same splits; see ../shared/docs/background.md §1.
PUBLISHED = {
    "BreastMNIST (MedMNIST v2)": [("ResNet-18 (28 px), MedMNIST v2", 0.901, 0.863), ("Google AutoML Vision, MedMNIST v2", 0.919, 0.861)],
    "PneumoniaMNIST (MedMNIST v2)": [("ResNet-18 (28 px), MedMNIST v2", 0.944, 0.854), ("Google AutoML Vision, MedMNIST v2", 0.991, 0.946)],
    "RetinaMNIST (MedMNIST v2)": [("ResNet-18 (28 px), MedMNIST v2", 0.717, 0.524), ("Google AutoML Vision, MedMNIST v2", 0.750, 0.531)],
    "PBC (Acevedo et al. 2020), 8-class subset": [("VGG-16, Acevedo et al. 2019 (full PBC)", None, 0.962)],
}
# Linear probe of the same backbone at 224 px (sklearn logistic regression, background §4).
PROBE_224 = {"BreastMNIST (MedMNIST v2)": (0.854, 0.853), "PneumoniaMNIST (MedMNIST v2)": (0.964, 0.866), "RetinaMNIST (MedMNIST v2)": (0.738, 0.510), "PBC (Acevedo et al. 2020), 8-class subset": (0.997, 0.943)}
BACKBONE_PARAMS = 21_520_896 + 1370 * 384


def fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def ips(r):
    # A linear probe computes the frozen features once; its epochs only train the head.
    return "(features once)" if r["method"] == "linear" else f"{r['train_images_per_second']:.1f}"


DEFAULT_LR = {"linear": 3e-3, "lora": 1e-3, "full": 5e-5}


def label(r):
    o = r["options"]
    h = o.get("head_epochs", 0)
    text = r["method"] + (f", head first ({h} ep.)" if h else "")
    if o.get("augment") == "affine":
        text += ", affine aug."
    # The documented learning rate of each method; a row trained with another one says so.
    if o["lr"] != DEFAULT_LR[r["method"]]:
        text += f", lr {o['lr']:g}"
    return text


def recipe(r):
    """What a run was trained with, apart from its seed."""
    o = r["options"]
    return (r["method"], o["size"], o.get("head_epochs", 0), o.get("augment"), o["epochs"], o["lr"], o["rank"])


def print_seed_table(rs):
    """Recipes run with more than one seed: test macro AUC per seed, mean and sd."""
    groups = {}
    for r in rs:
        groups.setdefault(recipe(r), []).append(r)
    groups = {k: sorted(v, key=lambda r: r["options"]["seed"]) for k, v in groups.items() if len(v) > 1}
    if not groups:
        return
    print("\nThe same recipes with other seeds (seed 0 is the matching row above; the seed changes the head's and LoRA's")
    print("initialisation, the shuffles and the augmentation draws):\n")
    print("| recipe | input | epochs | seeds | val macro AUC (kept epoch) | test macro AUC | mean ± sd of test AUC |")
    print("|---|---|---|---|---|---|---|")
    for k, v in groups.items():
        aucs = [r["test"]["macro_auc"] for r in v]
        mean = sum(aucs) / len(aucs)
        sd = (sum((a - mean) ** 2 for a in aucs) / (len(aucs) - 1)) ** 0.5
        seeds = ", ".join(str(r["options"]["seed"]) for r in v)
        vals = " / ".join(fmt(r["val"]["macro_auc"]) for r in v)
        tests = " / ".join(fmt(a) for a in aucs)
        print(f"| {label(v[0])} | {k[1]} px | {k[4]} | {seeds} | {vals} | {tests} | {mean:.3f} ± {sd:.3f} |")


def main(paths):
    reports = [json.loads(Path(p).read_text()) | {"_path": p} for p in paths]
    by_data = {}
    for r in reports:
        # The data set's name (reports before issue 20 held its path: its last component).
        by_data.setdefault(r["data"] if "data_licence" in r else Path(r["data"]).name, []).append(r)
    order = {"linear": 0, "lora": 1, "full": 2}
    for data, rs in sorted(by_data.items()):
        # The shipped adapter and a copy of it kept in docs/training/ are one run.
        seen, unique = set(), []
        for r in sorted(rs, key=lambda r: not r["_path"].startswith("adapters/")):
            key = (r["method"], r["options"]["size"], r["train_seconds"], r["options"]["seed"])
            if key not in seen:
                seen.add(key)
                unique.append(r)
        all_seeds = unique
        # One row per recipe: the seed-0 run (other seeds go to the table below).
        rs = [r for r in unique if r["options"]["seed"] == 0]
        rs = sorted(rs, key=lambda r: (order[r["method"]], r["options"]["size"], r["options"].get("head_epochs", 0), r["options"].get("augment") == "affine", r["options"]["lr"], r["options"]["epochs"]))
        r0 = rs[0]
        print(f"\n**{data}** — {len(r0['classes'])} classes, train / val / test {r0['train_samples']} / {r0['val_samples']} / {r0['test_samples']}\n")
        print("| method | input | trainable parameters | share | file on disk | epochs (best) | training time | train img/s | test ACC | test macro AUC | test macro F1 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            c = len(r["classes"])
            share = 100.0 * r["trainable_parameters"] / (BACKBONE_PARAMS + c * 768 + c)
            t = r["test"]
            name = label(r)
            if r["_path"].startswith("adapters/"):
                name = f"**{name} (shipped)**"
            print(
                f"| {name} | {r['options']['size']} px | {r['trainable_parameters']:,} | {share:.3f} % | {r['file_bytes'] / 1e6:.2f} MB | "
                f"{len(r['history'])} ({r['best_epoch']}) | {r['train_seconds'] / 60:.1f} min | {ips(r)} | "
                f"{fmt(t['accuracy'])} | {fmt(t['macro_auc'])} | {fmt(t['macro_f1'])} |"
            )
        auc, acc = PROBE_224.get(data, (None, None))
        print(f"| *linear probe (background §4)* | 224 px | | | | | | | {fmt(acc)} | {fmt(auc)} | |")
        for name, auc, acc in PUBLISHED.get(data, []):
            print(f"| *{name}* | | | | | | | | {fmt(acc)} | {fmt(auc)} | |")
        print_seed_table(all_seeds)


if __name__ == "__main__":
    main(sys.argv[1:])
