#!/bin/bash
# JPEG 2000 decoding against pydicom + pylibjpeg (issue 17) on the NEMA WG04 lossless files.
# Two measures per file, each peer producing the same float32 values after the modality LUT:
#   whole process, file in -> .npy out: `melo convert` vs benches/pydicom_convert.py (hyperfine)
#   decode in a warm process (file read, parse, decode, modality LUT; median of 10):
#           `melo info --time-decode 10` vs benches/pydicom_decode.py
# Usage: benches/j2k_wg04.sh [ROUNDS]   (run from the repository root after cargo build --release)
set -euo pipefail
rounds=${1:-3}
dir=${WG04:-../shared/data/dicom/wg04}
melo=./target/release/melo
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in $(seq "$rounds"); do
  echo "== round $round ($(cut -d' ' -f1-3 /proc/loadavg) load)"
  for f in "$dir"/*_J2KR.dcm; do
    name=$(basename "$f" .dcm)
    hyperfine -N --warmup 1 --runs 5 --export-json "$out/c.json" \
      "$melo convert $f $out/melo.npy" "python3 benches/pydicom_convert.py $out $f" > /dev/null
    ours_decode=$($melo info --time-decode 10 "$f" | sed -nE 's/^decode: median ([0-9.]+) ms.*/\1/p')
    peer_decode=$(python3 benches/pydicom_decode.py "$f" | sed -E 's/.*median ([0-9.]+) ms.*/\1/')
    python3 - "$name" "$out/c.json" "$ours_decode" "$peer_decode" <<'PY'
import json, statistics, sys
name, c, ours_d, peer_d = sys.argv[1], json.load(open(sys.argv[2])), float(sys.argv[3]), float(sys.argv[4])
med = lambda r: statistics.median(r["times"]) * 1e3
ours_c, peer_c = med(c["results"][0]), med(c["results"][1])
print(f"{name}: convert melo {ours_c:.0f} ms, pydicom {peer_c:.0f} ms, {peer_c / ours_c:.2f}x | "
      f"decode melo {ours_d:.1f} ms, pydicom {peer_d:.1f} ms, {peer_d / ours_d:.2f}x")
PY
  done
done
