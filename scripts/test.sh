#!/usr/bin/env bash
# The README test command: set up, then run the whole test suite: unit tests, the smoke profile end to end
# through papermill, every notebook with its default parameters under nbval (in place: its demo runs go to
# outputs/notebooks), and the same notebooks in JupyterLab in headless Chromium (tests/test_jupyterlab.py, which
# reads the demo runs nbval trained). Two pytest-xdist workers share the machine's two cores with the smoke run: the
# notebooks run in order on one worker, the rest test by test (work units:
# tests/conftest.py); EDGEKD_TEST_WORKERS sets another count. Extra arguments go to pytest, e.g. the fast tier, which
# needs no HAM10000 folder: bash scripts/test.sh -m "not data"   (tiers and order: tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1  # see tests/conftest.py
.venv/bin/python -m pytest -p no:cacheprovider -n "${EDGEKD_TEST_WORKERS:-2}" --dist loadscope \
  tests notebooks --nbval-lax --nbval-current-env --durations=25 "$@"
