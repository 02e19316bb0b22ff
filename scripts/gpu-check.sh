#!/usr/bin/env bash
# On a GPU node: verifies the cuda build and prints its timing table.
#   bash scripts/gpu-check.sh [LAUNCHER]      (default dist-cuda/run.sh, from scripts/build-cuda.sh)
# 1. `selftest` on the GPU: the spline against nflows' reference values (f32 within 1e-4, f64
#    within 1e-9), MAF/IAF invertibility, outputs and gradients against the CPU.
# 2. The benchmark table (scripts/bench.sh) on the GPU, batch sizes up to 10 000.
set -euo pipefail
cd "$(dirname "$0")/.."
Z=${1:-dist-cuda/run.sh}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$Z" --device cuda selftest
ZDCFLOW=$Z DEVICE=cuda THREADS=${THREADS:-8} bash scripts/bench.sh --rounds 2
