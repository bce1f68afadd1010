#!/usr/bin/env bash
# The quick demo audit from the command line vs the same audit in the real window (Xvfb; needs
# xvfb and xdotool), alternating, so both see the same load. Issue 17: the window within 1.1x.
#   tools/audit_window_vs_cli.sh [ROUNDS] [BINARY]     defaults: 3 rounds, ./target/release/melo
# CLI:    `melo audit --demo --preset quick --out ...`, wall time of the whole process.
# Window: MELO_GUI_START=privacy-demo (the privacy tab, the demo, Run on the first frame), with
#         MELO_FRAME_LOG; from the app's notes: Run handled -> the report received (what the CLI
#         ends with; the window then computes its gallery of exposed members, not counted), and
#         the process start -> the report (window creation included).
# Prints each run and the load average before and after each. Raw logs: target/audit_vs_cli/.
set -euo pipefail
export XDG_DATA_HOME=$(mktemp -d)
rounds=${1:-3}
bin=${2:-./target/release/melo}
display=${MELO_AUDIT_DISPLAY:-:92}
out=target/audit_vs_cli
mkdir -p "$out"
rm -f "$out"/*
xvfb=
app=
trap 'kill $app $xvfb 2>/dev/null || true' EXIT
load() { cut -d' ' -f1-3 /proc/loadavg; }
for round in $(seq 1 "$rounds"); do
    before=$(load)
    start=$(date +%s.%N)
    "$bin" audit --demo --preset quick --out "$out/cli_$round.json" >"$out/cli_$round.log" 2>&1
    end=$(date +%s.%N)
    echo "round $round cli: $(python3 -c "print(f'{$end - $start:.1f}')") s wall (load before $before, after $(load))"

    Xvfb $display -screen 0 1400x900x24 >/dev/null 2>&1 &
    xvfb=$!
    for _ in $(seq 1 50); do
        DISPLAY=$display xdotool getmouselocation >/dev/null 2>&1 && break
        sleep 0.1
    done
    log=$out/window_$round.csv
    before=$(load)
    launch=$(date +%s.%N)
    DISPLAY=$display WINIT_UNIX_BACKEND=x11 MELO_FRAME_LOG=$log MELO_GUI_START=privacy-demo "$bin" \
        >"$out/window_$round.log" 2>&1 &
    app=$!
    until grep -q '^# audit_state .* report=true' "$log" 2>/dev/null; do
        kill -0 $app 2>/dev/null || { echo "the window exited before its report" >&2; exit 1; }
        sleep 0.2
    done
    kill $app 2>/dev/null || true
    wait $app 2>/dev/null || true
    app=
    kill $xvfb 2>/dev/null || true
    wait $xvfb 2>/dev/null || true
    xvfb=
    python3 - "$log" "$launch" "$round" "$before" "$(load)" <<'PY'
import sys
log, launch, round_, before, after = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
notes = {}
for line in open(log):
    if line.startswith("# ") and "unix=" in line:
        name, *fields = line[2:].split()
        f = dict(x.split("=", 1) for x in fields)
        if name == "audit_state" and f.get("report") != "true":
            continue
        notes.setdefault(name, float(f["unix"]))
run, report = notes["audit_run"], notes["audit_state"]
print(f"round {round_} window: {report - run:.1f} s Run->report, {report - launch:.1f} s process start->report "
      f"(load before {before}, after {after})")
PY
done
