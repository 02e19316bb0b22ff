#!/usr/bin/env bash
# Channel-loss weight sweep (ZDC): one teacher, one bs+ch student per weight (distill.channel_weight,
# channel loss in photons², docs/methods.md "Distillation loss"), each sampled on the test split with the
# file's photon sums and the default noise removal, evaluated; prints a markdown table of MAE_c,
# MAE_cw, WS and the student's best validation KL against the weight, after the noise-floor row.
#
#   bash scripts/sweep-channel-weight.sh [WORKDIR]
# Env: WEIGHTS ("0 0.001 0.01 0.1 1 10"), EVENTS (12000), SETUP (bs+ch), STUDENT_BATCHES (20),
#      SEEDS (1 2: sampling seeds per weight), TEACHER (an existing teacher directory to reuse).
# At the demo's sizes: a teacher ≈ 110 CPU-s, each student ≈ 45 CPU-s, sampling + evaluation ≈ 5 CPU-s.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/channel-sweep}
WEIGHTS=${WEIGHTS:-0 0.001 0.01 0.1 1 10}; EVENTS=${EVENTS:-12000}; SETUP=${SETUP:-bs+ch}
STUDENT_BATCHES=${STUDENT_BATCHES:-20}; SEEDS=${SEEDS:-1 2}
cargo build --release -q
Z="target/release/zdcflow --quiet"
mkdir -p "$W"
[ -f "$W/zdc.h5" ] || $Z generate zdc --events "$EVENTS" --seed 1 --output "$W/zdc.h5"
T=${TEACHER:-$W/teacher}
if [ ! -f "$T/model.json" ]; then
  $Z train-teacher --config configs/demo-zdc.toml --set data.path="$W/zdc.h5" --output-dir "$T"
fi
for wt in $WEIGHTS; do
  d="$W/student-$wt"
  [ -f "$d/model.json" ] || $Z distill-student --config configs/demo-zdc-student.toml --teacher "$T" \
    --set data.path="$W/zdc.h5" --set distill.setup="$SETUP" --set distill.channel_weight="$wt" \
    --set train.max_batches="$STUDENT_BATCHES" --output-dir "$d"
  for s in $SEEDS; do
    [ -f "$d/m$s.json" ] && continue
    $Z sample --model "$d" --conditions "$W/zdc.h5" --photon-sum data --seed "$s" --output "$d/gen$s.h5" >/dev/null
    $Z evaluate --reference "$W/zdc.h5" --generated "$d/gen$s.h5" --output "$d/m$s.json" >/dev/null
  done
done
python3 - "$W" "$SEEDS" $WEIGHTS <<'PY'
import json, statistics, sys
w, seeds, weights = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
def ms(v):
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0:.2f}"
first = json.load(open(f"{w}/student-{weights[0]}/m{seeds[0]}.json"))["details"]["noise_floor"]
print("| channel_weight | MAE_c | MAE_cw | WS | best val. KL |\n|---|---|---|---|---|")
print(f"| noise floor (reference halves) | {first['mae_c']:.2f} | {first['mae_cw']:.2f} | {first['ws']:.2f} | — |")
for wt in weights:
    m = [json.load(open(f"{w}/student-{wt}/m{s}.json"))["metrics"] for s in seeds]
    kl = json.load(open(f"{w}/student-{wt}/flow/model.json"))["training"]["best_metric"]
    print(f"| {wt} | " + " | ".join(ms([x[k] for x in m]) for k in ("mae_c", "mae_cw", "ws")) + f" | {kl:.3f} |")
PY
