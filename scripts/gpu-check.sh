#!/usr/bin/env bash
# On a GPU node: verifies the cuda build and prints its timing table.
#   bash scripts/gpu-check.sh [LAUNCHER]      (default dist-cuda/run.sh, from scripts/build-cuda.sh)
# 1. `selftest` on the GPU: the spline against nflows' reference values (f32 within 1e-4, f64
#    within 1e-9), MAF/IAF invertibility, outputs and gradients against the CPU.
# 2. The benchmark table (scripts/bench.sh) on the GPU, batch sizes up to 10 000.
# 3. Whole student showers in each --precision.
set -euo pipefail
cd "$(dirname "$0")/.."
Z=${1:-dist-cuda/run.sh}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$Z" --device cuda selftest
ZDCFLOW=$Z DEVICE=cuda THREADS=${THREADS:-8} bash scripts/bench.sh --rounds 2
# 3. Whole student showers at batch 10 000 in each precision (README "GPUs"): float32, TF32 tensor
#    cores for every float32 product, bf16 masked-layer products.
for det in ds2 ds3 zdc; do
  for p in model tf32 bf16; do
    "$Z" --device cuda bench --shower "$det" --batch-size 10000 --repeats 3 --precision "$p" -q
  done
done
