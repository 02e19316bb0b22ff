#!/usr/bin/env bash
# iCaloFlow on generated CaloChallenge data at a CPU budget: teachers (Flow-1, Flow-2, Flow-3) and
# students (Flow-2, Flow-3) with the fast recipe (configs/ds2-fast-*.toml: voxel standardisation,
# budget-sized networks and schedules) and — for comparison at the same number of epochs — with the
# paper's recipe (configs/ds2-flow*.toml, ds2-student-flow*.toml, their networks and schedules with
# the epochs cut to the same budget). Each model samples SHOWERS showers that `evaluate` compares
# with an independent reference at the official classifier settings (evaluate.py: 2048 units, 2
# layers, 50 epochs, batch 1000, lr 2e-4) with --classifier-runs 3; the floor row is the training
# file against the same reference. Prints a markdown table: the per-layer profile errors (layers
# 2–40), separation power, classifier AUCs, FPD and the wall time of each step.
#
#   bash scripts/reproduce-icaloflow.sh [WORKDIR]
# Env: DATASET (2 or 3), EVENTS (training showers, default 20000), REFERENCE (reference showers,
#      10000), SHOWERS (generated per model, 10000), RECIPES ("fast paper"), FLOW3_EPOCHS (6),
#      FLOW2_EPOCHS (60), FLOW1_EPOCHS (100), STUDENT_BATCHES (300 Flow-3 distillation batches),
#      CLASSIFIER_RUNS (3), CLASSIFIER_HIDDEN (2048), TEACHER_SHOWERS (2000: the MAF samples one
#      voxel per pass), DEVICE (cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/icaloflow}
DATASET=${DATASET:-2}; EVENTS=${EVENTS:-20000}; REFERENCE=${REFERENCE:-10000}; SHOWERS=${SHOWERS:-10000}
RECIPES=${RECIPES:-fast paper}; FLOW3_EPOCHS=${FLOW3_EPOCHS:-6}; FLOW2_EPOCHS=${FLOW2_EPOCHS:-60}
FLOW1_EPOCHS=${FLOW1_EPOCHS:-100}; STUDENT_BATCHES=${STUDENT_BATCHES:-300}; CLASSIFIER_RUNS=${CLASSIFIER_RUNS:-3}
CLASSIFIER_HIDDEN=${CLASSIFIER_HIDDEN:-2048}; TEACHER_SHOWERS=${TEACHER_SHOWERS:-2000}; DEVICE=${DEVICE:-cpu}
cargo build --release -q
Z="target/release/zdcflow --quiet --device $DEVICE"
D="ds$DATASET"
mkdir -p "$W"
log() { echo "$(date +%T) $*" | tee -a "$W/log.txt" >&2; }
timed() { # NAME CMD…: runs CMD, appends "NAME seconds" to $W/times.txt
  local name=$1; shift
  local s; s=$(date +%s)
  "$@" >>"$W/log.txt" 2>&1
  echo "$name $(( $(date +%s) - s ))" >>"$W/times.txt"
}
[ -f "$W/train.h5" ] || timed generate $Z generate calo --dataset "$DATASET" --events "$EVENTS" --seed 1 --output "$W/train.h5"
[ -f "$W/reference.h5" ] || $Z generate calo --dataset "$DATASET" --events "$REFERENCE" --seed 1001 --output "$W/reference.h5"
EVAL=(--classifier-runs "$CLASSIFIER_RUNS" --classifier-hidden "$CLASSIFIER_HIDDEN" --classifier-layers 2
      --classifier-epochs 50 --classifier-batch 1000)
[ -f "$W/floor.json" ] || $Z evaluate --reference "$W/reference.h5" --generated "$W/train.h5" --classifier-epochs 0 \
  --output "$W/floor.json" >>"$W/log.txt"
for recipe in $RECIPES; do
  case $recipe in
    fast) prefix="$D-fast-" ;;
    paper) prefix="$D-" ;;
    *) echo "RECIPES: fast and/or paper" >&2; exit 2 ;;
  esac
  T="$W/$recipe-teacher"; S="$W/$recipe-student"
  for f in 1 2 3; do
    epochs_var="FLOW${f}_EPOCHS"
    if [ ! -f "$T/flow$f/metrics.jsonl" ]; then
      log "$recipe: teacher flow$f"
      timed "$recipe-teacher-flow$f" $Z train-teacher --config "configs/${prefix}flow$f.toml" --set data.path="$W/train.h5" \
        --set data.paths=[] --set "train.epochs=${!epochs_var}" --output-dir "$T"
    fi
  done
  for f in 2 3; do
    if [ ! -f "$S/flow$f/metrics.jsonl" ]; then
      log "$recipe: student flow$f"
      batches=0; [ "$f" = 3 ] && batches=$STUDENT_BATCHES
      timed "$recipe-student-flow$f" $Z distill-student --config "configs/${prefix}student-flow$f.toml" --teacher "$T" \
        --set data.path="$W/train.h5" --set data.paths=[] --set train.epochs=1 \
        --set train.max_batches="$batches" --output-dir "$S"
    fi
  done
  for m in teacher student; do
    out="$W/$recipe-$m"
    n=$SHOWERS; [ "$m" = teacher ] && n=$TEACHER_SHOWERS
    [ -f "$out.h5" ] || timed "$recipe-$m-sample" $Z sample --model "$out" --events "$n" --seed 1 --output "$out.h5"
    [ -f "$out.json" ] || timed "$recipe-$m-evaluate" $Z evaluate --reference "$W/reference.h5" --generated "$out.h5" \
      "${EVAL[@]}" --output "$out.json" --plots "$out-plots"
  done
done
python3 - "$W" $RECIPES <<'PY'
import json, sys
w, recipes = sys.argv[1], sys.argv[2:]
times = {}
for line in open(f"{w}/times.txt"):
    k, v = line.split()
    times[k] = int(v)
def row(name, path, train_s):
    m = json.load(open(path))["metrics"]
    p, sp = m["profile"], m["separation_power"]
    auc = lambda k: f"{m[k]['auc']:.3f}" if k in m else "—"
    return (f"| {name} | {p['sparsity']:.3f} | {100 * p['width_r_rel']:.1f} % | {p['centre_r_mm']:.2f} | "
            f"{sp['E_ratio']:.4f} | {sp['E_layer']:.4f} | {auc('classifier_low')} | {auc('classifier_high')} | "
            f"{m['fpd']:.2f} | {train_s} |")
print("| model | |Δ sparsity| | |Δ width r| | |Δ centre r| mm | sp E_tot/E_inc | sp E_layer | AUC low | AUC high | FPD | training s |")
print("|---|---|---|---|---|---|---|---|---|---|")
print(row("floor: training file vs reference", f"{w}/floor.json", "—"))
for r in recipes:
    t = sum(v for k, v in times.items() if k.startswith(f"{r}-teacher-flow"))
    s = sum(v for k, v in times.items() if k.startswith(f"{r}-student-flow"))
    print(row(f"{r} recipe, teacher (MAF)", f"{w}/{r}-teacher.json", t))
    print(row(f"{r} recipe, student (IAF)", f"{w}/{r}-student.json", f"{t} + {s}"))
PY
