#!/usr/bin/env bash
# The performance table (see scripts/bench.py): zdcflow against the PyTorch + nflows peer on the
# same machine, measured alternately, plus whole-shower timings with peak memory.
#   bash scripts/bench.sh [--rounds 3] [--quick]
#   PEER_PY=$(../shared/peer/setup.sh) bash scripts/bench.sh          # with the peer
#   ZDCFLOW=dist-cuda/run.sh DEVICE=cuda THREADS=8 bash scripts/bench.sh   # a GPU node
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ZDCFLOW:-}" ]; then cargo build --release -q; ZDCFLOW=target/release/zdcflow; fi
exec python3 scripts/bench.py --zdcflow "$ZDCFLOW" --device "${DEVICE:-cpu}" --threads "${THREADS:-2}" "$@"
