#!/usr/bin/env bash
# The main job on a fresh machine: builds zdcflow (release) and runs `zdcflow demo`, which chains
# generate → train-teacher → distill-student → sample → evaluate on small generated data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release
exec ./target/release/zdcflow demo "$@"
