#!/usr/bin/env bash
# Benchmark of the edge path: edgekd-predict's start-up (process start to the first prediction of one
# image), throughput on the 2,005 DermaMNIST test-split JPEGs (200x150) and peak RSS, FP32 and INT8,
# one onnxruntime thread. Prints figures; asserts nothing.
#
#   bash scripts/bench_predict.sh BUNDLE_DIR...      (for example outputs/smoke/bundles/*/bundle)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 BUNDLE_DIR..." >&2; exit 2; }
DATA=${EDGEKD_DATA:-../shared/data/ham10000}
[ -f "$DATA/dermamnist_split.csv" ] || { echo "no HAM10000 folder at $DATA (set EDGEKD_DATA)" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/test"
# the test split as a folder of the original JPEGs (links, nothing copied)
awk -F, 'NR > 1 && $1 == "test" {print $3}' "$DATA/dermamnist_split.csv" | while read -r id; do
  ln -s "$(realpath "$DATA/images/$id.jpg")" "$WORK/test/$id.jpg"
done
IMAGES=("$WORK"/test/*)
ONE=${IMAGES[0]}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; ${#IMAGES[@]} images"
for bundle in "$@"; do
  for backend in fp32 int8; do
    for rep in 1 2 3; do
      OMP_NUM_THREADS=1 /usr/bin/time -f "$bundle $backend one image: %e s wall, %M KiB peak RSS" \
        .venv/bin/edgekd-predict "$bundle" "$ONE" --out "$WORK/one.csv" --backend "$backend" --threads 1 2>&1 |
        grep -E "peak RSS|first prediction"
    done
    for rep in 1 2; do
      OMP_NUM_THREADS=1 /usr/bin/time -f "$bundle $backend folder: %e s wall, %M KiB peak RSS" \
        .venv/bin/edgekd-predict "$bundle" "$WORK/test" --out "$WORK/folder.csv" --backend "$backend" --threads 1 2>&1 |
        grep -E "peak RSS|images/s"
    done
  done
done
