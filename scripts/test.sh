#!/usr/bin/env bash
# The README test command: set up, then run the whole test suite (unit tests, the smoke profile
# end to end through papermill, and every notebook with its default parameters in JupyterLab, in headless
# Chromium: tests/test_jupyterlab.py). Extra arguments go to pytest, e.g. the fast tier, which needs no
# HAM10000 folder: bash scripts/test.sh -m "not data"   (tiers: tests/conftest.py). The same notebooks also run
# under nbval: .venv/bin/python -m pytest --nbval-lax notebooks
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE  # see tests/conftest.py
.venv/bin/python -m pytest -p no:cacheprovider tests --durations=15 "$@"
