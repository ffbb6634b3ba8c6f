#!/usr/bin/env bash
# The README main job: set up, then run the default profile on the real data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PROFILE=${PROFILE:-default}
# Two single-threaded runs at a time on a local Dask cluster; the timing stages (efficiency) run after
# everything else, one at a time, so no other run shares the machine while they measure latency.
.venv/bin/edgekd-run "$PROFILE" --executor dask --workers 2
# ORT INT8 against ORT FP32 and eager FP32 latency, every model measured in one process on this machine
.venv/bin/edgekd-bench --profile-dir "outputs/$PROFILE"
# The manuscript: quarto render where Quarto is installed, else the pandoc fallback; checked in headless Chromium
.venv/bin/edgekd-paper --profile "$PROFILE"
