#!/usr/bin/env bash
# Prints one performance table: zdcflow's training steps and sampling for the papers' shapes and
# full models (random weights) at batch sizes 100, 1000 and 10 000, with peak memory, and — when the
# PyTorch + nflows peer is available — the peer's figures and the ratio, measured in the same run.
#
#   bash scripts/bench.sh                       # CPU, 2 threads, release build
#   ZDCFLOW=dist-cuda/run.sh DEVICE=cuda bash scripts/bench.sh      # a GPU node (the cuda build)
#   PEER_PY=~/.cache/zdcflow-peer/bin/python bash scripts/bench.sh  # peer from ../shared/peer/setup.sh
# Env: THREADS (default 2), QUICK=1 (skip the slow rows: MAF full showers, batch 10 000 on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-2}
if [ -z "${ZDCFLOW:-}" ]; then cargo build --release -q; ZDCFLOW=target/release/zdcflow; fi
PEER_PY=${PEER_PY:-}
[ -z "$PEER_PY" ] && [ -x "$HOME/.cache/zdcflow-peer/bin/python" ] && PEER_PY=$HOME/.cache/zdcflow-peer/bin/python
PEER=../shared/peer/peer_bench.py
OUT=$(mktemp)
run() {  # label, then a zdcflow bench command line; records ms/sample and peak RSS
  local label=$1; shift
  local rss json
  if [ -x /usr/bin/time ]; then
    json=$(/usr/bin/time -f "%M" -o "$OUT.rss" "$ZDCFLOW" --quiet --device "$DEVICE" --threads "$THREADS" bench --json "$@" | tail -1)
    rss=$(cat "$OUT.rss")
  else
    json=$("$ZDCFLOW" --quiet --device "$DEVICE" --threads "$THREADS" bench --json "$@" | tail -1)
    rss=0
  fi
  python3 - "$label" "$json" "$rss" >>"$OUT" <<'PY'
import json, sys
label, j, rss = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
print(json.dumps({"label": label, "batch": j["batch"], "ms": j["ms_per_sample"], "rss_mb": rss / 1024}))
PY
}
peer() {  # shape, what → ms/sample of the peer at its default batch
  [ -n "$PEER_PY" ] && [ -f "$PEER" ] || return 0
  "$PEER_PY" "$PEER" --shape "$1" --what "$2" --threads "$THREADS" --device "$DEVICE" 2>/dev/null | tail -1 \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["ms_per_sample"])'
}
for shape in ds2-flow3 ds3-flow3 zdc; do
  run "$shape train-step (MAF)" --shape "$shape" --what train-step
  run "$shape sample-iaf" --shape "$shape" --what sample-iaf
  [ "$shape" = zdc ] || run "$shape sample-maf" --shape "$shape" --what sample-maf
done
for b in 100 1000 10000; do
  [ "$b" = 10000 ] && [ "$DEVICE" = cpu ] && [ -n "${QUICK:-}" ] && continue
  run "ZDC student, full sample" --shower zdc --batch-size "$b" --repeats 2
  run "DS2 student, full shower" --shower ds2 --batch-size "$b" --repeats 2
  run "DS3 student, full shower" --shower ds3 --batch-size "$b" --repeats 1
done
if [ -z "${QUICK:-}" ]; then
  run "ZDC teacher, full sample" --shower zdc --teacher --batch-size 100 --repeats 1
  run "DS2 teacher, full shower" --shower ds2 --teacher --batch-size 100 --repeats 1
fi
declare -A PEERS
if [ -n "$PEER_PY" ]; then
  for shape in ds2-flow3 ds3-flow3 zdc; do
    for what in train-step sample-iaf sample-maf; do
      [ "$shape" = zdc ] && [ "$what" != sample-iaf ] && [ "$what" != train-step ] && continue
      PEERS["$shape $what"]=$(peer "$shape" "$what" || true)
    done
  done
fi
printf '\n%-32s %7s %13s %11s %15s %7s\n' "measurement ($DEVICE, $THREADS threads)" batch "ms/sample" "samples/s" "peer ms/sample" ratio
while IFS= read -r line; do
  python3 - "$line" "$(declare -p PEERS)" <<'PY'
import json, re, sys
r = json.loads(sys.argv[1])
peers = dict(re.findall(r'\["([^"]+)"\]="([^"]*)"', sys.argv[2]))
key = r["label"].replace(" (MAF)", "")
p = peers.get(key, "")
ratio = f"{r['ms'] / float(p):.2f}" if p else ""
print(f"{r['label']:<32} {r['batch']:>7} {r['ms']:>13.4f} {1e3 / r['ms']:>11.0f} {p:>15} {ratio:>7}   (peak {r['rss_mb']:.0f} MB)")
PY
done <"$OUT"
rm -f "$OUT" "$OUT.rss"
