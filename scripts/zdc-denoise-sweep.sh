#!/usr/bin/env bash
# Chooses a ZDC model's noise removal on its own generated responses: samples the conditions file
# with every `--denoise` variant and each seed, evaluates each against the same file, and prints a
# markdown table of WS, MAE_c, MAE_cw (one value per seed) and the photon-total error |Σ − S|/S
# (median and 90th percentile over the responses, mean over the seeds), with the noise floor
# (reference halves against each other, from `evaluate`) as the first row.
#
#   bash scripts/zdc-denoise-sweep.sh MODEL CONDITIONS [WORKDIR]
# Env: SEEDS ("1 2"), PHOTON_SUM (data: the conditions file's sums, the published protocol; or
#      model), ZDCFLOW (the binary, default target/release/zdcflow), DEVICE (cpu).
# The generated files and metrics stay in WORKDIR (default runs/denoise-sweep); rerunning reuses them.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/zdc-denoise-sweep.sh MODEL CONDITIONS [WORKDIR]" >&2
  exit 2
fi
MODEL=$1; CONDITIONS=$2; W=${3:-runs/denoise-sweep}
SEEDS=${SEEDS:-1 2}; PHOTON_SUM=${PHOTON_SUM:-data}; DEVICE=${DEVICE:-cpu}
ZDCFLOW=${ZDCFLOW:-$(dirname "$0")/../target/release/zdcflow}
[ -x "$ZDCFLOW" ] || { echo "zdc-denoise-sweep: no binary at $ZDCFLOW (cargo build --release, or set ZDCFLOW)" >&2; exit 1; }
Z="$ZDCFLOW --quiet --device $DEVICE"
VARIANTS="sub-floor-fill round floor floor-recalc sub-floor sub-floor-recalc"
mkdir -p "$W"
for v in $VARIANTS; do
  for s in $SEEDS; do
    out="$W/$v-seed$s"
    [ -f "$out.json" ] && continue
    $Z sample --model "$MODEL" --conditions "$CONDITIONS" --photon-sum "$PHOTON_SUM" --denoise "$v" --seed "$s" \
      --output "$out.h5" >>"$W/log.txt"
    $Z evaluate --reference "$CONDITIONS" --generated "$out.h5" --output "$out.json" >>"$W/log.txt"
  done
done
python3 - "$W" "$PHOTON_SUM" "$SEEDS" $VARIANTS <<'PY'
import json, sys
w, ps, seeds, variants = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4:]
def load(v, s):
    with open(f"{w}/{v}-seed{s}.json") as f:
        return json.load(f)
first = load(variants[0], seeds[0])
floor = first["details"]["noise_floor"]
per_seed = " / ".join(f"seed {s}" for s in seeds)
print(f"photon sums: {ps}; values per cell: {per_seed}; noise floor: {floor['source']}")
print("| --denoise | WS | MAE_c | MAE_cw | photon-total error median | 90th pct |")
print("|---|---|---|---|---|---|")
print(f"| noise floor | {floor['ws']:.2f} | {floor['mae_c']:.2f} | {floor['mae_cw']:.2f} | | |")
for v in variants:
    runs = [load(v, s) for s in seeds]
    cell = lambda k: " / ".join(f"{r['metrics'][k]:.2f}" for r in runs)
    pt = [r["details"].get("photon_total_error") or {} for r in runs]
    mean = lambda k: sum(float("nan") if p.get(k) is None else p[k] for p in pt) / len(pt)
    print(f"| {v} | {cell('ws')} | {cell('mae_c')} | {cell('mae_cw')} | {100 * mean('median'):.1f} % | {100 * mean('p90'):.1f} % |")
PY
