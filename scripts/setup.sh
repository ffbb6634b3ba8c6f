#!/usr/bin/env bash
# Set up a fresh machine: system packages (ImageMagick/MagickWand for MedMNIST-C, pandoc and
# Chromium for the paper's fallback render, PDF and browser check, poppler-utils for the PDF test,
# GNU time for scripts/bench_predict.sh) and .venv with pinned packages (installed with uv).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(imagemagick libmagickwand-dev pandoc chromium fonts-dejavu-core poppler-utils time)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[setup] apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
UV_VERSION=0.13.8
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
stamp=.venv/.edgekd-requirements
want=$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # uv installs the same pinned packages as pip, in parallel and from its own cache (~/.cache/uv): on the 2-core
  # machine 31 s cold and 3 s warm against pip's 4 min, which a fresh clone's test run (CI) pays every time.
  echo "[setup] uv pip install -r requirements.txt"
  .venv/bin/pip install -q --disable-pip-version-check "uv==$UV_VERSION"
  .venv/bin/uv pip install -q --native-tls --python .venv/bin/python -r requirements.txt
  .venv/bin/uv pip install -q --native-tls --python .venv/bin/python --no-deps -e .
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, edgekd; print("torch", torch.__version__, "edgekd", edgekd.__version__)')"
