#!/usr/bin/env bash
# Retrieve of the 20-slice MR series (assets/samples/mr_brain_series) from a real Orthanc into
# the viewer, beside DCMTK's getscu/movescu (+ dcmj2pnm decoding a slice) on the same series
# (docs/benchmarks.md, issue 14's acceptance figure).
#
#   tools/bench_retrieve.sh [MELO_BINARY] [RUNS]
#
# Starts its own Orthanc on free loopback ports with a temporary storage folder (killed on
# exit) and uploads the series through the REST API. Then, RUNS times, alternating:
#   melo get   `melo net bench-retrieve --via get --runs 1 --json`: C-GET into a new study
#              store, then the window's loading path (scan the series folder, decode every
#              slice, render the first with its default window); readings from inside the
#              process, plus the process's wall time measured here;
#   getscu     getscu into a new folder, then `dcmj2pnm +Wm` of one slice (first slice on
#              screen) and of the 19 others (all slices decoded), one process per file;
#   melo move  the same with C-MOVE to melo's own SCP;
#   movescu    movescu as its own storage SCP, then dcmj2pnm as above.
# Prints the medians and the ratios DCMTK time / melo time (above 1: melo is faster), the
# convention of docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
melo=${1:-target/release/melo}
runs=${2:-7}
[ -x "$melo" ] || { echo "no $melo: build it first (cargo build --release)" >&2; exit 1; }
for t in getscu movescu dcmj2pnm curl python3; do command -v "$t" >/dev/null || { echo "missing $t (tools/install_test_servers.sh)" >&2; exit 1; }; done
orthanc=$(command -v Orthanc || echo /usr/sbin/Orthanc)

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
dicom=$(port); http=$(port); scp=$(port)
cat > "$work/orthanc.json" <<EOF
{ "Name": "bench", "StorageDirectory": "$work/storage", "IndexDirectory": "$work/index",
  "HttpPort": $http, "DicomPort": $dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false, "DicomCheckCalledAet": true, "SaveJobs": false,
  "DicomModalities": { "melo": { "AET": "MELO", "Host": "127.0.0.1", "Port": $scp } } }
EOF
"$orthanc" --no-jobs "$work/orthanc.json" > "$work/orthanc.log" 2>&1 &
opid=$!
trap 'kill $opid 2>/dev/null; wait $opid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http/system" >/dev/null && break; sleep 0.1; done
for f in assets/samples/mr_brain_series/*.dcm; do
    curl -sf -X POST --data-binary @"$f" "http://127.0.0.1:$http/instances" >/dev/null
done
read -r study series < <(curl -sf "http://127.0.0.1:$http/tools/find" \
    -d '{"Level":"Series","Query":{"Modality":"MR"},"Expand":true}' | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]
print(s["ParentStudy"], s["MainDicomTags"]["SeriesInstanceUID"])')
study=$(curl -sf "http://127.0.0.1:$http/studies/$study" | python3 -c 'import json,sys; print(json.load(sys.stdin)["MainDicomTags"]["StudyInstanceUID"])')
peer="ORTHANC@127.0.0.1:$dicom"
keys=(-k QueryRetrieveLevel=SERIES -k StudyInstanceUID="$study" -k SeriesInstanceUID="$series")

now() { date +%s.%N; }
record() { echo "$2" >> "$work/$1"; }  # series name, seconds

melo_run() { # get|move [--port P]
    local via=$1; shift
    local t0 t1 json
    t0=$(now)
    json=$("$melo" net bench-retrieve "$peer" --study-uid "$study" --series-uid "$series" --via "$via" "$@" --runs 1 --json) \
        || { echo "melo $via failed" >&2; exit 1; }
    t1=$(now)
    record "melo_${via}_process" "$(echo "$t1 - $t0" | bc)"
    read -r n stored first all < <(echo "$json" | python3 -c '
import json, sys
r = json.load(sys.stdin)["runs"][0]
print(r["instances"], r["retrieved_s"], r["first_slice_s"], r["all_slices_s"])')
    [ "$n" -eq 20 ] || { echo "melo $via: $n slices, not 20" >&2; exit 1; }
    record "melo_${via}_stored" "$stored"; record "melo_${via}_first" "$first"; record "melo_${via}_all" "$all"
}

dcmtk_run() { # name, retrieve command...
    local name=$1; shift
    local out="$work/out" t0 t1 t2 t3
    rm -rf "$out"; mkdir -p "$out"
    t0=$(now)
    (cd "$out" && "$@" >/dev/null 2>&1) || { echo "$name failed: $*" >&2; exit 1; }
    t1=$(now)
    mapfile -t files < <(find "$out" -type f -name 'MR.*' | sort)
    [ "${#files[@]}" -eq 20 ] || { echo "$name: ${#files[@]} files, not 20" >&2; exit 1; }
    dcmj2pnm -q +Wm "${files[0]}" "$work/slice.pgm"
    t2=$(now)
    for f in "${files[@]:1}"; do dcmj2pnm -q +Wm "$f" "$work/slice.pgm"; done
    t3=$(now)
    record "${name}_stored" "$(echo "$t1 - $t0" | bc)"
    record "${name}_first" "$(echo "$t2 - $t0" | bc)"
    record "${name}_all" "$(echo "$t3 - $t0" | bc)"
}

for _ in $(seq "$runs"); do
    melo_run get
    dcmtk_run getscu getscu -aet MELO -aec ORTHANC "${keys[@]}" 127.0.0.1 "$dicom"
    melo_run move --port "$scp"
    dcmtk_run movescu movescu -aet MELO -aec ORTHANC -aem MELO --port "$scp" "${keys[@]}" 127.0.0.1 "$dicom"
done
median() { sort -n "$work/$1" | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
ratio() { echo "scale=2; $(median "$1") / $(median "$2")" | bc; }
echo "runs: $runs (median seconds, 20 MR slices, loopback, Orthanc $("$orthanc" --version | head -1 | awk '{print $2}'))"
for pair in "get getscu" "move movescu"; do
    read -r via peer_tool <<< "$pair"
    for stage in stored first all; do
        printf 'C-%-5s %-6s melo %s  %s %s  %s/melo %s\n' "${via^^}" "$stage" "$(median "melo_${via}_$stage")" \
            "$peer_tool" "$(median "${peer_tool}_$stage")" "$peer_tool" "$(ratio "${peer_tool}_$stage" "melo_${via}_$stage")"
    done
    echo "C-${via^^} melo whole process (start to exit, all slices decoded): $(median "melo_${via}_process")"
done
