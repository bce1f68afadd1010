#!/usr/bin/env bash
# Frame times of the real window under Xvfb (needs xvfb and xdotool), written by the app itself
# (MELO_FRAME_LOG) while the mouse moves over the window every 16 ms, so every frame answers input.
#   tools/frame_time.sh audit   [SECONDS]   privacy tab, the demo audit (quick preset) running
#   tools/frame_time.sh privacy [SECONDS]   privacy tab, nothing running (the baseline)
#   tools/frame_time.sh viewer  [SECONDS]   viewer + diagnosis panel on the shipped samples
# Prints the median / p95 / max of the UI code's time per frame (ui_ms) and of the time between
# frames (interval_ms: UI + tessellation + software GL paint under Xvfb + waiting for input);
# for `audit`, only frames while the audit ran count; at the end Esc cancels the audit and the
# time from the key to the worker stopping is printed. Raw CSV: target/frame_log_MODE.csv.
set -euo pipefail
# A fresh settings folder: what earlier runs remembered (task, folders) must not leak in.
export XDG_DATA_HOME=$(mktemp -d)
mode=${1:-audit}
secs=${2:-40}
display=:78
log=target/frame_log_$mode.csv
# The window appends to its frame log; this measurement starts a fresh one.
rm -f "$log"
Xvfb $display -screen 0 1400x900x24 >/dev/null 2>&1 &
xvfb=$!
trap 'kill $xvfb 2>/dev/null || true' EXIT
sleep 1
case $mode in
    audit) start=privacy-demo ;;
    privacy) start=privacy ;;
    viewer) start= ;;
    *) echo "unknown mode $mode (audit, privacy, viewer)" >&2; exit 2 ;;
esac
DISPLAY=$display WINIT_UNIX_BACKEND=x11 MELO_FRAME_LOG=$log MELO_GUI_START=$start ./target/release/melo &
app=$!
trap 'kill $app $xvfb 2>/dev/null || true' EXIT
sleep 3
end=$((SECONDS + secs))
while [ $SECONDS -lt $end ]; do
    DISPLAY=$display xdotool mousemove $((500 + RANDOM % 600)) $((200 + RANDOM % 500)) 2>/dev/null || true
    sleep 0.016
done
if [ "$mode" = audit ]; then
    DISPLAY=$display xdotool search --name 'MeLo Workstation' windowfocus 2>/dev/null || true
    DISPLAY=$display xdotool key Escape
    sleep 4
fi
kill $app 2>/dev/null || true
wait $app 2>/dev/null || true
python3 - "$log" "$mode" <<'PY'
import csv, statistics, sys
path, mode = sys.argv[1], sys.argv[2]
lines = open(path).read().splitlines()
notes = [l[2:] for l in lines if l.startswith("# ") and l != "# run"]
rows = list(csv.DictReader(l for l in lines if not l.startswith("#")))
if mode == "audit":
    rows = [r for r in rows if r["audit_running"] == "1"]
rows = [r for r in rows if float(r["interval_ms"]) > 0]
if not rows:
    sys.exit(f"no frames recorded in {path}")
def summary(key):
    v = sorted(float(r[key]) for r in rows)
    p95 = v[min(len(v) - 1, int(0.95 * len(v)))]
    return f"median {statistics.median(v):.2f} ms, p95 {p95:.2f} ms, max {v[-1]:.2f} ms"
span = float(rows[-1]["t_s"]) - float(rows[0]["t_s"])
print(f"{mode}: {len(rows)} frames over {span:.1f} s ({len(rows) / max(span, 1e-9):.1f} frames/s)")
print(f"  ui_ms       {summary('ui_ms')}")
print(f"  interval_ms {summary('interval_ms')}")
for note in notes:
    print(f"  {note}")
PY
