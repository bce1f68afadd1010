#!/usr/bin/env bash
# Issue 13 point 7: one call of each SD 2.1-base-shaped component, ours (benches/sd_unet_speed.rs,
# release build) then diffusers/transformers (benches/torch_sd_scale.py), interleaved per row on
# the same machine in the same run; one process per row so that VmHWM is that row's peak.
#
#   python benches/torch_sd_scale.py --make /tmp/sd21_random      # once
#   cargo bench --no-run --bench sd_unet_speed -j1                  # once
#   benches/sd_scale.sh /tmp/sd21_random THREADS REPS > /tmp/sd_scale.jsonl
set -euo pipefail
root=${1:?PIPELINE_DIR}
threads=${2:-2}
reps=${3:-3}
rows=${ROWS:-"text:77 unet:256 vae:256 decode:256 unet:512 vae:512 decode:512"}
cd "$(dirname "$0")/.."
bin=$(ls -t target/release/deps/sd_unet_speed-* | grep -v '\.d$' | head -1)
echo "{\"date\": \"$(date -u +%FT%TZ)\", \"threads\": $threads, \"reps\": $reps, \"bin\": \"$bin\", \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
for row in $rows; do
    comp=${row%%:*}
    px=${row##*:}
    RAYON_NUM_THREADS=$threads "$bin" "$comp" "$root" "$px" "$reps"
    OMP_NUM_THREADS=$threads python benches/torch_sd_scale.py --pipeline "$root" --component "$comp" --px "$px" --threads "$threads" --reps "$reps" 2>/dev/null
    echo "{\"after\": \"$comp:$px\", \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
done
