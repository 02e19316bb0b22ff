#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test zdcflow:
# HDF5 + pkg-config (linked by the hdf5-metno crate), make and a C/C++ compiler (jemalloc is built
# from source; a test compiles the CUDA kernels as host C++) and h5py + numpy (the format tests read our
# files the way the official CaloChallenge evaluation does). Idempotent and quiet when all is there.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1; then
  echo "zdcflow needs a Rust toolchain (https://rustup.rs): cargo was not found" >&2
  exit 1
fi
missing=()
pkg-config --exists hdf5 2>/dev/null || missing+=(libhdf5-dev pkg-config)
command -v make >/dev/null 2>&1 || missing+=(make)
{ command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1; } || missing+=(gcc g++)
# candle-onnx (ONNX export) runs prost-build, which needs protoc.
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing ${missing[*]} (apt)…" >&2
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! python3 -c "import h5py, numpy" 2>/dev/null; then
  echo "installing h5py and numpy (pip)…" >&2
  python3 -m pip install -q h5py numpy
fi
# ONNX Runtime for Python: tests/onnx_export.rs runs exported graphs with it (scripts/onnx_run.py).
if ! python3 -c "import onnxruntime" 2>/dev/null; then
  echo "installing onnxruntime (pip)…" >&2
  python3 -m pip install -q onnxruntime || echo "onnxruntime could not be installed: the ONNX test checks graphs with candle-onnx only" >&2
fi
