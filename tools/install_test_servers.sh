#!/usr/bin/env bash
# Installs the real servers and tools the networking tests talk to (Debian/Ubuntu):
#   orthanc, orthanc-dicomweb  the PACS the tests query, retrieve from and send to
#   dcmtk                      storescu/echoscu/getscu/movescu, a second independent DICOM peer
#   dicom3tools                dciodvfy, to validate the DICOM files we generate
#   python3-pydicom            pydicom, the reference reader of the SR / SC / de-identified files
# Does nothing when all are present. Needs root (or sudo) only when something is missing.
# The Debian orthanc package starts a system service; the tests never use it (they start their
# own Orthanc on free loopback ports), so it is left as the package configures it.
set -euo pipefail

missing=()
command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
# pydicom for the `python3` the tests call: pip first (a pyenv or venv python does not see
# Debian's python3-pydicom), the Debian package when pip is unavailable.
if ! python3 -c 'import pydicom' >/dev/null 2>&1; then
    python3 -m pip install --quiet 'pydicom>=3,<4' >&2 || missing+=(python3-pydicom)
fi
{ command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } || missing+=(orthanc)
{ [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || [ -e /usr/lib/orthanc/libOrthancDicomWeb.so ]; } \
    || missing+=(orthanc-dicomweb)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "installing test servers: ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root to apt-get install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps the package from starting a system Orthanc inside containers and CI.
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
