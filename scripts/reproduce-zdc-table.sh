#!/usr/bin/env bash
# Reproduces the layout of Table 1 of the ZDC paper on generated ZDC data: one teacher, the four
# student setups (bs, bs+div, bs+ch, bs+ch+div), each sampled 5 times on the test split with
# different seeds and evaluated; prints a markdown table of WS, MAE_c and MAE_cw (mean ± std over
# the 5 sampling runs), teacher first.
#
#   bash scripts/reproduce-zdc-table.sh [WORKDIR]      (≈ 35–50 min on 2 CPU cores with the defaults)
# Env: EVENTS (generated responses, default 20000), PARTICLES (all|n|lambda|k0s|sigma+),
#      TEACHER_EPOCHS (5), STUDENT_BATCHES (60 batches of 256), HIDDEN (48), RUNS (5), DEVICE (cpu).
# The sizes are the demo's so that it runs on a CPU; for the paper's models use
# configs/zdc-teacher-*.toml and configs/zdc-student-*.toml on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/zdc-table}
EVENTS=${EVENTS:-20000}; PARTICLES=${PARTICLES:-all}; RUNS=${RUNS:-5}; DEVICE=${DEVICE:-cpu}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-5}; STUDENT_BATCHES=${STUDENT_BATCHES:-60}; HIDDEN=${HIDDEN:-48}
cargo build --release -q
Z="target/release/zdcflow --quiet --device $DEVICE"
mkdir -p "$W"
[ -f "$W/zdc.h5" ] || $Z generate zdc --events "$EVENTS" --seed 1 --output "$W/zdc.h5"
if [ ! -f "$W/teacher/model.json" ]; then
  $Z train-teacher --config configs/demo-zdc.toml --set data.path="$W/zdc.h5" --set data.particles="$PARTICLES" \
    --set train.epochs="$TEACHER_EPOCHS" --set "train.milestones=[$((TEACHER_EPOCHS - 1))]" \
    --set flow.hidden_features="$HIDDEN" --output-dir "$W/teacher"
fi
SETUPS="bs bs+div bs+ch bs+ch+div"
for s in $SETUPS; do
  [ -f "$W/student-$s/model.json" ] && continue
  $Z distill-student --config configs/demo-zdc-student.toml --teacher "$W/teacher" --set data.path="$W/zdc.h5" \
    --set distill.setup="$s" --set train.max_batches="$STUDENT_BATCHES" --output-dir "$W/student-$s"
done
for m in teacher $(for s in $SETUPS; do echo "student-$s"; done); do
  for r in $(seq 1 "$RUNS"); do
    out="$W/$m-run$r"
    [ -f "$out.json" ] && continue
    $Z sample --model "$W/$m" --conditions "$W/zdc.h5" --seed "$r" --output "$out.h5" >>"$W/log.txt"
    $Z evaluate --reference "$W/zdc.h5" --generated "$out.h5" --output "$out.json" >>"$W/log.txt"
  done
done
python3 - "$W" "$RUNS" $SETUPS <<'PY'
import json, statistics, sys
w, runs, setups = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows = [("teacher", "teacher")] + [(s, f"student-{s}") for s in setups]
def cell(vals):
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.2f}"
print("| model | WS | MAE_c | MAE_cw |\n|---|---|---|---|")
for name, d in rows:
    m = [json.load(open(f"{w}/{d}-run{r}.json"))["metrics"] for r in range(1, runs + 1)]
    print(f"| {name} | " + " | ".join(cell([x[k] for x in m]) for k in ("ws", "mae_c", "mae_cw")) + " |")
PY
