#!/usr/bin/env bash
# The README test command: set up, then run the whole test suite (unit tests, the smoke profile
# end to end through papermill, notebook tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
.venv/bin/python -m pytest -p no:cacheprovider tests notebooks --nbval-lax --nbval-cell-timeout=1200 "$@"
