#!/usr/bin/env python3
"""Writes the "Model facts" (issue 15) into the shipped adapters' metadata, without retraining:
intended use, known limitations, "research use only", and the test metrics with 95 %
confidence intervals computed from each adapter's own training report (`TASK.report.json`:
test confusion matrix and macro AUC).

Intervals, computed here independently of the Rust code (src/model/facts.rs, which
tests/model_facts.rs checks against these values):
- accuracy and per-class sensitivity: Wilson score interval (Newcombe 1998) from the
  confusion matrix;
- two-class AUC: Hanley & McNeil (1982) standard error, positive class = the second label;
- multi-class macro AUC: none (a bootstrap needs the per-image test probabilities, which the
  reports keep only for the first 64 test images).

Only the `facts` entry of the `adapter` JSON in the safetensors header's `__metadata__`
changes; every other entry (including calibration or OOD statistics written by another
tool) is kept as it is, and the tensor bytes after the header are copied unchanged (checked).
Safe to rerun, before or after other header rewrites. Run from the repository root:
python3 tools/train/model_facts.py
"""
import json
import math
import sys

import adapter_header  # tools/train/adapter_header.py

Z95 = 1.959963984540054

RESEARCH = "not for diagnosis or treatment decisions"

# Per shipped adapter: intended use and known limitations, from docs/results.md and the
# source data sets' papers (../shared/data/README.md).
FACTS = {
    "pneumonia": {
        "intended_use": "Research: flags pneumonia on paediatric chest X-rays (anterior-posterior, "
        "children aged 1-5) as a second reader in studies and teaching; " + RESEARCH + ".",
        "limitations": [
            "Paediatric chest X-rays from one centre only (Kermany et al. 2018, Guangzhou): adults, "
            "other hospitals and other devices were never seen",
            "Trained on 28 x 28 px MedMNIST copies upsampled to 56 px: fine detail of the original "
            "radiograph is not used",
            "Misses normal cases more than pneumonia: test sensitivity for 'normal' is 0.71 (166 of 234), "
            "so about 3 in 10 normal films are called pneumonia",
            "Does not tell bacterial from viral pneumonia, nor pneumonia from other opacities",
        ],
    },
    "breast_malignancy": {
        "intended_use": "Research: separates malignant from normal or benign findings on breast "
        "ultrasound images as a second reader in studies; " + RESEARCH + ".",
        "limitations": [
            "Small data set from one centre (BUSI, Al-Dhabyani et al. 2020, Cairo; women aged 25-75): "
            "546 training and 156 test images",
            "Trained on 28 x 28 px MedMNIST copies upsampled to 112 px: lesion margins and texture "
            "at the original resolution are not used",
            "Normal and benign are one class: it does not say which benign lesion, nor grade a "
            "malignancy",
            "Only 42 malignant test images: the sensitivity interval is wide",
        ],
    },
    "retina_dr_grade": {
        "intended_use": "Research: grades diabetic retinopathy (0-4) on colour fundus photographs "
        "for method comparisons; not for screening, " + RESEARCH + ".",
        "limitations": [
            "Weak model: test accuracy 0.47 and macro AUC 0.73 (MedMNIST v2 ResNet-18: 0.52 / 0.72); "
            "grades 2 and 4 are mostly missed (sensitivity 0.12 and 0.20)",
            "Trained on 28 x 28 px MedMNIST copies of DeepDRiD fundus photographs upsampled to 56 px: "
            "microaneurysms and small haemorrhages are not visible at that size",
            "The grade is treated as five unordered classes: a grade 4 called grade 3 counts as wrong "
            "as one called grade 0",
            "1,080 training images from one challenge data set; only 20 test images of grade 4",
        ],
    },
    "blood_cell_type": {
        "intended_use": "Research: names the type of a single, centred white blood cell, platelet or "
        "erythroblast in a May-Grunwald-Giemsa stained peripheral blood smear image, for studies "
        "and teaching; " + RESEARCH + ".",
        "limitations": [
            "Cells of healthy donors from one laboratory and one analyser (PBC, Acevedo et al. 2020, "
            "Hospital Clinic of Barcelona, CellaVision DM96): blasts, abnormal or leukaemic cells "
            "were never seen and are given one of the eight names",
            "Expects one cell cropped at the centre of a 360 x 363 px image, resized to 84 px; "
            "a whole smear or another stain is out of scope",
            "Balanced subset (400 / 50 / 100 images per class): the test metrics do not reflect the "
            "classes' frequencies in real smears",
            "Immature granulocytes (ig) and monocytes are the most confused classes (sensitivity 0.93)",
        ],
    },
}


def wilson(x, n, z=Z95):
    p = x / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z / d * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def hanley_mcneil_se(a, n_pos, n_neg):
    q1 = a / (2 - a)
    q2 = 2 * a * a / (1 + a)
    return math.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg))


def intervals(classes, confusion, macro_auc):
    out = []
    total = sum(map(sum, confusion))
    correct = sum(confusion[i][i] for i in range(len(classes)))

    def proportion(metric, x, n):
        low, high = wilson(x, n)
        return {"metric": metric, "value": x / n, "low": low, "high": high, "n": n, "method": "Wilson score"}

    out.append(proportion("accuracy", correct, total))
    if len(classes) == 2 and macro_auc is not None:
        se = hanley_mcneil_se(macro_auc, sum(confusion[1]), sum(confusion[0]))
        out.append({"metric": "auc", "value": macro_auc, "low": max(0.0, macro_auc - Z95 * se),
                    "high": min(1.0, macro_auc + Z95 * se), "n": total, "method": "Hanley-McNeil"})
    for i, c in enumerate(classes):
        out.append(proportion(f"sensitivity.{c}", confusion[i][i], sum(confusion[i])))
    return out


def rewrite(path, report):
    header, meta, data = adapter_header.read(path)
    if meta["labels"] != report["classes"]:
        sys.exit(f"{path}: labels {meta['labels']} differ from the report's {report['classes']}")
    facts = FACTS[meta["task"]]
    meta["facts"] = {
        "intended_use": facts["intended_use"],
        "limitations": facts["limitations"],
        "research_use_only": True,
        "test_intervals": intervals(report["classes"], report["test"]["confusion"], report["test"]["macro_auc"]),
    }
    adapter_header.write(path, header, meta, data)


def main():
    for task in sorted(FACTS):
        report = json.load(open(f"adapters/{task}.report.json"))
        rewrite(f"adapters/{task}.safetensors", report)
        print(f"{task}: facts written")


if __name__ == "__main__":
    main()
