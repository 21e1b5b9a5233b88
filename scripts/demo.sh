#!/usr/bin/env bash
# Set up a fresh clone and caption a real held-out drive with the default model:
# out/project_video01/ gets the captioned video (.mp4), subtitles (.srt, .vtt) and the event log (.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
DRIVECAP_EXTRAS="${DRIVECAP_EXTRAS:-dev}" bash scripts/setup.sh
.venv/bin/drivecap replay project_video01 --out out/project_video01 "$@"
echo "outputs in $(pwd)/out/project_video01/"
