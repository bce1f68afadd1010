#!/usr/bin/env bash
# Training throughput of `melo train` against PyTorch + timm + PEFT on the same machine, back to
# back (docs/benchmarks.md, "Training throughput"). Needs a release build and the pip packages
# torch, timm, peft. Usage: benches/train_throughput.sh [rounds]; STEPS224 sets the 224 px runs'
# timed steps (default 4; 10 at 56 px).
# Both sides report the same measure: batch ÷ the median step time, the first 2 steps (warm-up:
# first-touch allocations) left out. Ours is `step_images_per_second` of a one-epoch run of
# (timed steps + 2) batches; its epoch throughput (validation excluded, warm-up included) is
# printed beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
data=../shared/data/medmnist/breastmnist.npz
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ours() { # method size limit
    ./target/release/melo train --quiet --data "$data" --method "$1" --size "$2" --batch 32 --epochs 1 \
        --limit "$3" --head-epochs 0 ${4:+--lr $4} --out "$out/$1_$2.safetensors" --task bench >/dev/null 2>&1
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"{r['step_images_per_second']:.2f} img/s (median step; epoch {r['train_images_per_second']:.2f})\")" "$out/$1_$2.report.json"
}
for round in $(seq "$rounds"); do
    echo "round $round (load $(cut -d' ' -f1 /proc/loadavg))"
    for size in 56 224; do
        steps=$([ "$size" = 224 ] && echo "${STEPS224:-4}" || echo 10)
        limit=$(((steps + 2) * 32))
        for method in lora full; do
            lr=$([ "$method" = full ] && echo 5e-5 || echo "")
            # Alternate who goes first, so that a load change hits both sides alike.
            if [ $((round % 2)) = 1 ]; then
                echo "  $method ${size}px  melo: $(ours "$method" "$size" "$limit" $lr) (load $(cut -d' ' -f1 /proc/loadavg))"
                echo "  $method ${size}px  $(python3 benches/torch_train.py --method "$method" --size "$size" --batch 32 --steps "$steps" 2>/dev/null | tail -1)"
            else
                echo "  $method ${size}px  $(python3 benches/torch_train.py --method "$method" --size "$size" --batch 32 --steps "$steps" 2>/dev/null | tail -1)"
                echo "  $method ${size}px  melo: $(ours "$method" "$size" "$limit" $lr) (load $(cut -d' ' -f1 /proc/loadavg))"
            fi
        done
    done
done
