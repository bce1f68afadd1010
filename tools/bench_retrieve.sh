#!/usr/bin/env bash
# Retrieve time of the 20-slice MR series (assets/samples/mr_brain_series) from a real Orthanc
# into our study store, beside DCMTK's getscu/movescu on the same series (docs/benchmarks.md).
#
#   tools/bench_retrieve.sh [MELO_BINARY] [RUNS]
#
# Starts its own Orthanc on free loopback ports with a temporary storage folder (killed on
# exit), uploads the series through the REST API, then times RUNS retrieves of each kind into
# fresh folders and prints the medians and the ratios DCMTK time / melo time (above 1: melo
# is faster), the convention of docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
melo=${1:-target/release/melo}
runs=${2:-5}
[ -x "$melo" ] || { echo "no $melo: build it first (cargo build --release)" >&2; exit 1; }
for t in getscu movescu curl python3; do command -v "$t" >/dev/null || { echo "missing $t (tools/install_test_servers.sh)" >&2; exit 1; }; done
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
time_it() { # name, command...: appends seconds to $work/name
    local name=$1; shift
    rm -rf "$work/out"; mkdir -p "$work/out"
    local t0; t0=$(now)
    (cd "$work/out" && "$@" >/dev/null 2>&1) || { echo "$name failed: $*" >&2; exit 1; }
    echo "$(now) - $t0" | bc >> "$work/$name"
    [ "$(find "$work/out" -type f -name '*.dcm' -o -type f -name 'MR.*' | wc -l)" -ge 20 ] || { echo "$name: not 20 files" >&2; exit 1; }
}
abs_melo=$(realpath "$melo")
for _ in $(seq "$runs"); do
    time_it melo_get "$abs_melo" net get "$peer" --study-uid "$study" --series-uid "$series" --store .
    time_it getscu getscu -aet MELO -aec ORTHANC "${keys[@]}" 127.0.0.1 "$dicom"
    time_it melo_move "$abs_melo" net move "$peer" --study-uid "$study" --series-uid "$series" --store . --port "$scp"
    time_it movescu movescu -aet MELO -aec ORTHANC -aem MELO --port "$scp" "${keys[@]}" 127.0.0.1 "$dicom"
done
median() { sort -n "$work/$1" | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
mg=$(median melo_get); dg=$(median getscu); mm=$(median melo_move); dm=$(median movescu)
echo "runs: $runs (median seconds, 20 MR slices, loopback, Orthanc $("$orthanc" --version | head -1 | awk '{print $2}'))"
echo "C-GET   melo $mg  getscu  $dg  getscu/melo $(echo "scale=2; $dg / $mg" | bc)"
echo "C-MOVE  melo $mm  movescu $dm  movescu/melo $(echo "scale=2; $dm / $mm" | bc)"
