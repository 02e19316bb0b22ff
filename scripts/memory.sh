#!/usr/bin/env bash
# Measures peak memory (RSS) of generating, inspecting, sampling and evaluating 100 000
# CaloChallenge dataset-3 showers (16 GB as float32): every step streams; all but `evaluate` stay
# below 1 GB, `evaluate` (the classifier on 40 501 inputs) peaks near 5.3 GB (docs/performance.md).
# Needs ≈ 40 GB of free disk; takes a while on 2 cores (sampling 100k DS3 showers).
#   bash scripts/memory.sh [WORKDIR] [EVENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/memory}; N=${2:-100000}
cargo build --release -q
Z="target/release/zdcflow --quiet"
mkdir -p "$W"
peak() {  # label, command… → prints peak RSS
  local label=$1; shift
  /usr/bin/time -f "%M %e" -o "$W/time.txt" "$@" >/dev/null
  read -r kb secs <"$W/time.txt"
  printf '%-44s peak RSS %7.0f MB  (%6.0f s)\n' "$label" "$((kb / 1024))" "$secs"
}
peak "generate $N DS3 showers" $Z generate calo --dataset 3 --events "$N" --seed 1 --gzip 1 --output "$W/ds3.h5"
peak "inspect (validate every event)" $Z inspect "$W/ds3.h5"
peak "train smoke teachers (Flow-1/2/3, 1 epoch)" $Z train-teacher --config configs/smoke-ds3.toml --set data.path="$W/ds3.h5" \
  --set data.max_events=2000 --set flow3.train.max_batches=20 --output-dir "$W/teacher"
peak "distil smoke students (Flow-2/3)" $Z distill-student --config configs/smoke-ds3-student.toml --teacher "$W/teacher" \
  --set data.path="$W/ds3.h5" --output-dir "$W/student"
peak "sample $N DS3 showers (batch 1000)" $Z sample --model "$W/student" --events "$N" --seed 2 --output "$W/gen.h5"
peak "evaluate $N vs $N (classifier 1 epoch)" $Z evaluate --reference "$W/ds3.h5" --generated "$W/gen.h5" --classifier-epochs 1 --output "$W/m.json"
ls -la "$W"/*.h5
