#!/usr/bin/env bash
# Reproduces the layout of Table 1 of the ZDC paper on generated ZDC data: one teacher, the four
# student setups (bs, bs+div, bs+ch, bs+ch+div), each sampled 5 times on the test split with
# different seeds and evaluated, once with the data file's photon sums (`--photon-sum data`, the
# published protocol) and once with sums drawn from the photon-sum flow (`--photon-sum model`),
# with the default noise removal (`--denoise sub-floor-fill`). Prints a markdown table of WS, MAE_c,
# MAE_cw and the mean-image correlation (mean ± std over the sampling runs): the noise-floor row
# (reference against reference, from `evaluate`) first, then the teacher, then the setups, each
# setup's difference from bs in units of the combined spread (|Δ| > 2 is called significant).
#
#   bash scripts/reproduce-zdc-table.sh [WORKDIR]      (≈ 35–50 min on 2 CPU cores with the defaults;
#   EVENTS=6000 TEACHER_EPOCHS=4 STUDENT_BATCHES=20 HIDDEN=32 RUNS=3: 828 s wall, 353 CPU-s)
# Env: EVENTS (generated responses, default 20000), PARTICLES (all|n|lambda|k0s|sigma+),
#      TEACHER_EPOCHS (5), STUDENT_EPOCHS (1), STUDENT_BATCHES (60 batches of 256 per epoch; one
#      epoch of the default 20 000 events is 55), HIDDEN (48), RUNS (5), DEVICE (cpu),
#      SOURCES ("data model"), DENOISE (sub-floor-fill), STUDENT_INIT (teacher: students start as the exact
#      inverse of their teacher, so the setups cannot separate; random: distilled from scratch),
#      STUDENT_SEED (1: the students' initialisation and batch order; another seed in another
#      WORKDIR, with the teacher copied there, measures the training spread).
# The sizes are the demo's so that it runs on a CPU; for the paper's models use
# configs/zdc-teacher-*.toml and configs/zdc-student-*.toml on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/zdc-table}
EVENTS=${EVENTS:-20000}; PARTICLES=${PARTICLES:-all}; RUNS=${RUNS:-5}; DEVICE=${DEVICE:-cpu}
TEACHER_EPOCHS=${TEACHER_EPOCHS:-5}; STUDENT_EPOCHS=${STUDENT_EPOCHS:-1}; STUDENT_BATCHES=${STUDENT_BATCHES:-60}
HIDDEN=${HIDDEN:-48}; STUDENT_SEED=${STUDENT_SEED:-1}
SOURCES=${SOURCES:-data model}; DENOISE=${DENOISE:-sub-floor-fill}; STUDENT_INIT=${STUDENT_INIT:-teacher}
case "$STUDENT_INIT" in teacher) INIT=true ;; random) INIT=false ;; *) echo "STUDENT_INIT: teacher or random" >&2; exit 2 ;; esac
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
    --set distill.setup="$s" --set train.epochs="$STUDENT_EPOCHS" --set train.max_batches="$STUDENT_BATCHES" \
    --set student.flow.init_from_teacher="$INIT" --set train.seed="$STUDENT_SEED" --output-dir "$W/student-$s"
done
for m in teacher $(for s in $SETUPS; do echo "student-$s"; done); do
  for ps in $SOURCES; do
    for r in $(seq 1 "$RUNS"); do
      out="$W/$m-$ps-run$r"
      [ -f "$out.json" ] && continue
      $Z sample --model "$W/$m" --conditions "$W/zdc.h5" --photon-sum "$ps" --denoise "$DENOISE" --seed "$r" \
        --output "$out.h5" >>"$W/log.txt"
      $Z evaluate --reference "$W/zdc.h5" --generated "$out.h5" --output "$out.json" >>"$W/log.txt"
    done
  done
done
python3 - "$W" "$RUNS" "$SOURCES" "$DENOISE" $SETUPS <<'PY'
import json, statistics, sys
w, runs, sources, denoise, setups = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4], sys.argv[5:]
models = [("teacher", "teacher")] + [(s, f"student-{s}") for s in setups]
keys = ("ws", "mae_c", "mae_cw")
def load(d, ps, r):
    return json.load(open(f"{w}/{d}-{ps}-run{r}.json"))
def values(d, ps):
    out = {k: [] for k in keys + ("corr",)}
    for r in range(1, runs + 1):
        m = load(d, ps, r)
        for k in keys:
            out[k].append(m["metrics"][k])
        out["corr"].append(m["details"]["same_size"]["mean_image_corr"])
    return out
def ms(v):
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)
def cell(v):
    m, s = ms(v)
    return f"{m:.2f} ± {s:.2f}"
first = load("teacher", sources[0], 1)["details"]
floor = first["noise_floor"]
print(f"denoise: {denoise}; {runs} sampling runs per row; noise floor: {floor['source']}, "
      f"{floor['events'][0]} vs {floor['events'][1]} events")
print("| model | photon sums | WS | MAE_c | MAE_cw | mean-image corr (floor-matched) | Δ vs bs (σ): WS, MAE_c |")
print("|---|---|---|---|---|---|---|")
print(f"| noise floor (reference vs reference) | — | {floor['ws']:.2f} | {floor['mae_c']:.2f} | {floor['mae_cw']:.2f} "
      f"| {floor['mean_image_corr']:.3f} | |")
for ps in sources:
    base = values("student-bs", ps) if "bs" in setups else None
    for name, d in models:
        v = values(d, ps)
        delta = ""
        if base is not None and name not in ("teacher", "bs"):
            parts = []
            for k in ("ws", "mae_c"):
                (m1, s1), (m0, s0) = ms(v[k]), ms(base[k])
                z = (m1 - m0) / max((s1 ** 2 + s0 ** 2) ** 0.5, 1e-12)
                parts.append(f"{z:+.1f}{'*' if abs(z) > 2 else ''}")
            delta = ", ".join(parts)
        print(f"| {name} | {ps} | " + " | ".join(cell(v[k]) for k in keys) + f" | {cell(v['corr'])} | {delta} |")
print("(* : |Δ| above twice the combined spread of the sampling runs)")
PY
