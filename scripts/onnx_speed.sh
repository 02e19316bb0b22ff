#!/usr/bin/env bash
# The whole-shower ONNX graph's speed under ONNX Runtime next to `zdcflow sample`, in one run on
# one machine (docs/performance.md, "Whole-shower ONNX graph"): papers' DS2 student sizes with
# random weights (examples/paper_model.rs), CPU, THREADS threads (default 2), batches 1/100/1000.
#   bash scripts/onnx_speed.sh [ds2|ds3]        # needs: pip install onnxruntime numpy
# Prints the machine's load (uptime) before and after: compare numbers taken at the same load.
set -euo pipefail
cd "$(dirname "$0")/.."
DET=${1:-ds2}
THREADS=${THREADS:-2}
SHOWERS=${SHOWERS:-1000}
cargo build --release -q --bin zdcflow --example paper_model
Z=target/release/zdcflow
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
target/release/examples/paper_model "$DET" student "$W/model"
for p in loop unrolled; do
  $Z --quiet export-onnx --model "$W/model" --whole-shower --maf-passes $p --output "$W/$p.onnx"
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u +%F)"
echo "load before: $(uptime | sed 's/.*load average: //')"
echo "graph sizes: loop $(stat -c %s "$W/loop.onnx") bytes, unrolled $(stat -c %s "$W/unrolled.onnx") bytes"
echo "| $DET student, CPU, $THREADS threads | batch | ms per shower |"
echo "|---|---|---|"
for b in 1 100 1000; do
  n=$SHOWERS; [ "$b" = 1 ] && n=50; [ "$n" -lt "$b" ] && n=$b
  ms=$($Z --quiet --threads "$THREADS" sample --model "$W/model" --events "$n" --batch-size "$b" --output "$W/s.h5" \
       | sed -n 's/.*s: \([0-9.]*\) ms\/sample.*/\1/p')
  echo "| zdcflow sample | $b | $ms |"
  for p in loop unrolled; do
    python3 scripts/onnx_speed.py "$W/$p.onnx" --threads "$THREADS" --batches "$b" --showers "$SHOWERS" --repeats 1 \
      | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print(f'| ONNX Runtime, Flow-1 MAF as $p | {r[\"batch\"]} | {r[\"ms_per_shower\"]} |')"
  done
done
echo "load after: $(uptime | sed 's/.*load average: //')"
