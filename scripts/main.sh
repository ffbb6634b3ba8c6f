#!/usr/bin/env bash
# The README main job: set up, then run the default profile on the real data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
.venv/bin/edgekd-run "${PROFILE:-default}"
