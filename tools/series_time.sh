#!/usr/bin/env bash
# Opening the 20-slice MR series and stepping through it in the real window under Xvfb (needs
# xvfb and xdotool; input is sent with the X test extension, libXtst, from python3 ctypes).
#   tools/series_time.sh [RUNS] [BINARY]      defaults: 5 runs, ./target/release/melo
#   MELO_SERIES_NO_DIAGNOSIS=1 tools/series_time.sh ...   the viewer alone: MELO_BACKBONE names
#       a missing folder, so no model loads and no slice is diagnosed (by default the diagnosis
#       panel predicts every slice shown, a ViT forward on the same cores).
# Each run starts a fresh window on assets/samples/mr_brain_series with MELO_FRAME_LOG, waits for
# the whole series, then steps through it with the Down arrow (one key, then a pause), and back
# up. From the app's frame-log notes (wall-clock times) it prints, per run and as medians / p95:
#   launch->first slice   the window process started -> the frame that drew slice 1 was painted
#   open->first slice     the open command handled in the window -> the same
#   open->whole series    the open command -> the last file decoded (MPR possible from then)
#   step                  key sent -> the frame drawing the next slice painted (every step)
# "Painted" is the start of the frame after it, which the app asks for at once: eframe starts it
# only once the previous frame was painted and swapped, so the figures are upper bounds.
# Raw logs: target/series_time/run_N.csv.
set -euo pipefail
export XDG_DATA_HOME=$(mktemp -d)
runs=${1:-5}
bin=${2:-./target/release/melo}
display=${MELO_SERIES_DISPLAY:-:91}
out=target/series_time
mkdir -p "$out"
rm -f "$out"/run_*.csv "$out"/input_*.txt
xvfb=
app=
trap 'kill $app $xvfb 2>/dev/null || true' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq 1 "$runs"); do
    # A fresh X server per run: each run starts from the same state.
    Xvfb $display -screen 0 1400x900x24 >/dev/null 2>&1 &
    xvfb=$!
    for _ in $(seq 1 50); do
        DISPLAY=$display xdotool getmouselocation >/dev/null 2>&1 && break
        sleep 0.1
    done
    log=$out/run_$run.csv
    launch=$(date +%s.%N)
    if [ -n "${MELO_SERIES_NO_DIAGNOSIS:-}" ]; then export MELO_BACKBONE=$out/no-backbone; fi
    DISPLAY=$display WINIT_UNIX_BACKEND=x11 MELO_FRAME_LOG=$log "$bin" assets/samples/mr_brain_series &
    app=$!
    # Until the whole series is in (or 30 s).
    for _ in $(seq 1 300); do
        grep -q '^# series_complete' "$log" 2>/dev/null && break
        sleep 0.1
    done
    sleep 1
    window=$(DISPLAY=$display xdotool search --name 'MeLo Workstation' | head -1)
    python3 - "$display" "$window" "$launch" > "$out/input_$run.txt" <<'PY'
import ctypes, sys, time
display, window, launch = sys.argv[1], int(sys.argv[2]), sys.argv[3]
x11 = ctypes.CDLL("libX11.so.6")
xtst = ctypes.CDLL("libXtst.so.6")
x11.XOpenDisplay.restype = ctypes.c_void_p
x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
x11.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
x11.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
x11.XSetInputFocus.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_ulong]
xtst.XTestFakeKeyEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_ulong]
xtst.XTestFakeMotionEvent.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_ulong]
d = x11.XOpenDisplay(display.encode())
# No window manager under Xvfb: give the window the keyboard focus ourselves (RevertToParent).
x11.XSetInputFocus(d, window, 2, 0)
# The pointer over the image, where arrow keys page the stack (no widget has the focus).
xtst.XTestFakeMotionEvent(d, -1, 700, 450, 0)
x11.XSync(d, 0)
time.sleep(0.5)
print(f"launch {launch}")
def key(keysym):
    code = x11.XKeysymToKeycode(d, keysym)
    t = time.time()
    xtst.XTestFakeKeyEvent(d, code, 1, 0)
    xtst.XTestFakeKeyEvent(d, code, 0, 0)
    x11.XSync(d, 0)
    return t
DOWN, UP = 0xFF54, 0xFF52
for keysym, name in [(DOWN, "down")] * 19 + [(UP, "up")] * 19:
    print(f"key {name} {key(keysym):.6f}")
    sys.stdout.flush()
    # Long enough for the frame to be painted, and irregular, so no input lines up with a frame.
    time.sleep(0.25 + (hash(time.time()) % 50) / 1000)
PY
    sleep 0.5
    kill $app 2>/dev/null || true
    wait $app 2>/dev/null || true
    app=
    kill $xvfb 2>/dev/null || true
    wait $xvfb 2>/dev/null || true
    xvfb=
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" "$runs" <<'PY'
import re, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
def notes(path):
    rows = []
    for line in open(path):
        if line.startswith("# ") and "=" in line:
            name, *fields = line[2:].split()
            rows.append((name, dict(f.split("=", 1) for f in fields)))
    return rows
def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(p * len(v)))]
first_launch, first_open, whole, steps = [], [], [], []
for run in range(1, runs + 1):
    rows = notes(f"{out}/run_{run}.csv")
    inputs = [l.split() for l in open(f"{out}/input_{run}.txt")]
    launch = float(inputs[0][1])
    keys = [float(k[2]) for k in inputs[1:]]
    opened = next(float(r["unix"]) for n, r in rows if n == "open")
    shown = [(float(r["unix"]), int(r["slice"]), int(r["stack"])) for n, r in rows if n == "slice_on_screen"]
    complete = next(float(r["unix"]) for n, r in rows if n == "series_complete")
    first = shown[0][0]
    first_launch.append((first - launch) * 1e3)
    first_open.append((first - opened) * 1e3)
    whole.append((complete - opened) * 1e3)
    run_steps = []
    for k in keys:
        after = [t for t, _, _ in shown if t > k]
        if not after:
            sys.exit(f"run {run}: no slice on screen after the key at {k}: keys did not arrive")
        run_steps.append((after[0] - k) * 1e3)
    changed = sum(1 for t, _, _ in shown if t > keys[0])
    if changed != len(keys):
        sys.exit(f"run {run}: {len(keys)} keys but {changed} new slices on screen")
    steps += run_steps
    print(f"run {run}: launch->first {first_launch[-1]:.0f} ms, open->first {first_open[-1]:.0f} ms, "
          f"open->whole {whole[-1]:.0f} ms, step median {statistics.median(run_steps):.1f} ms "
          f"max {max(run_steps):.1f} ms (first slice count on screen: {next(r['count'] for n, r in rows if n == 'slice_drawn')})")
def line(name, v):
    print(f"{name:22s} median {statistics.median(v):7.1f} ms  p95 {pct(v, 0.95):7.1f} ms  max {max(v):7.1f} ms  (n={len(v)})")
line("launch->first slice", first_launch)
line("open->first slice", first_open)
line("open->whole series", whole)
line("step (key->painted)", steps)
PY
