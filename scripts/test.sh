#!/usr/bin/env bash
# The test suite, on a fresh machine: installs prerequisites, then runs every test in release
# mode (the flow kernels are ~30× slower unoptimised). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --release "$@"
