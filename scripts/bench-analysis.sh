#!/usr/bin/env bash
# Analysis benchmarks: scikit-dimension then cloud-expert on the same shape, one after the other.
# usage: scripts/bench-analysis.sh [N] [D]   (default 10000 768)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
n="${1:-10000}"
d="${2:-768}"
out=bench-out/analysis
mkdir -p "$out"
OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2 NUMBA_NUM_THREADS=2 \
  .venv/bin/python scripts/bench_skdim.py "$n" "$d" "$out/skdim.json" 2>/dev/null
target/release/cloud-expert bench-analysis --n "$n" --d "$d" --reference "$out/skdim.json" \
  --json "$out/cloud-expert.json"
