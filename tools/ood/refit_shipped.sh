#!/bin/sh
# Re-fits temperature and OOD statistics of the four shipped adapters from their training
# data (../shared/data, see ../shared/data/README.md) with `melo calibrate`: the LoRA factors
# and heads stay byte-identical; labels and split fractions/seed are those of each
# adapters/TASK.report.json (val 0.1, test 0.2, seed 0 for all four).
set -eu
cd "$(dirname "$0")/../.."
MELO=${MELO:-target/debug/melo}
DATA=${DATA:-../shared/data}
"$MELO" calibrate --adapter adapters/pneumonia.safetensors --data "$DATA/medmnist/pneumoniamnist.npz" --labels normal,pneumonia
"$MELO" calibrate --adapter adapters/breast_malignancy.safetensors --data "$DATA/medmnist/breastmnist.npz" --labels malignant,normal_or_benign
"$MELO" calibrate --adapter adapters/retina_dr_grade.safetensors --data "$DATA/medmnist/retinamnist.npz" --labels grade_0,grade_1,grade_2,grade_3,grade_4
"$MELO" calibrate --adapter adapters/blood_cell_type.safetensors --data "$DATA/pbc"
