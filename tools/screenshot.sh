#!/usr/bin/env bash
# Screenshot of the real window under Xvfb (needs the Debian packages xvfb, xdotool, x11-apps,
# imagemagick). Usage: tools/screenshot.sh OUT.png [melo args...]
set -euo pipefail
# A fresh settings folder: what earlier runs remembered (task, folders) must not leak in.
export XDG_DATA_HOME=$(mktemp -d)
out=$1; shift
display=:77
Xvfb $display -screen 0 1400x900x24 >/dev/null 2>&1 &
xvfb=$!
trap 'kill $xvfb 2>/dev/null || true' EXIT
sleep 1
DISPLAY=$display WINIT_UNIX_BACKEND=x11 ./target/release/melo "$@" &
app=$!
trap 'kill $app $xvfb 2>/dev/null || true' EXIT
sleep "${MELO_SCREENSHOT_WAIT:-8}"
# Optional input before the picture, e.g. drawing a measurement:
# MELO_SCREENSHOT_XDOTOOL="key r mousemove 500 300 mousedown 1 mousemove 600 400 mouseup 1"
if [ -n "${MELO_SCREENSHOT_XDOTOOL:-}" ]; then
    # shellcheck disable=SC2086  # word splitting makes the chained xdotool commands
    DISPLAY=$display xdotool $MELO_SCREENSHOT_XDOTOOL
    sleep 1
fi
# The pointer off the widgets: no hover highlight or plot crosshair in the picture.
DISPLAY=$display xdotool mousemove 2 2 2>/dev/null || true
sleep 0.5
DISPLAY=$display xwd -root -silent | convert xwd:- "$out"
echo "wrote $out"
