#!/usr/bin/env bash
# Benchmark of the edge path: edgekd-predict's start-up (process start to the first prediction of one
# image), throughput on the 2,005 DermaMNIST test-split JPEGs (200x150) and peak RSS, FP32 and INT8,
# one onnxruntime thread. Prints figures; asserts nothing.
#
#   bash scripts/bench_predict.sh BUNDLE_DIR...      (for example outputs/smoke/bundles/*/bundle)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BUNDLE_DIR..." >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# the test split as a folder of links to the raw JPEGs (the data folder as edgekd finds and checks it)
.venv/bin/python - "$WORK/test" <<'PY'
import sys
from pathlib import Path

from edgekd.stages import data as D

out = Path(sys.argv[1])
out.mkdir()
images = D.raw_paths(None)["images"]
for image_id in D.read_split().query("split == 'test'")["image_id"]:
    (out / f"{image_id}.jpg").symlink_to((images / f"{image_id}.jpg").resolve())
PY
IMAGES=("$WORK"/test/*)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; ${#IMAGES[@]} images"

# measure BUNDLE BACKEND WHAT INPUT REPEATS: edgekd-predict's own summary line and /usr/bin/time's figures
measure() {
  for _ in $(seq "$5"); do
    OMP_NUM_THREADS=1 /usr/bin/time -f "$1 $2 $3: %e s wall, %M KiB peak RSS" \
      .venv/bin/edgekd-predict "$1" "$4" --out "$WORK/predictions.csv" --backend "$2" --threads 1 2>&1 |
      grep -E "peak RSS|images/s"
  done
}
for bundle in "$@"; do
  for backend in fp32 int8; do
    measure "$bundle" "$backend" "one image" "${IMAGES[0]}" 3
    measure "$bundle" "$backend" folder "$WORK/test" 2
  done
done
