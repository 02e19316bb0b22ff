#!/usr/bin/env bash
# Builds scripts/onnx_cpp/onnx_showers against ONNX Runtime's C API: the library from the Python
# wheel (`pip install onnxruntime`: onnxruntime/capi/libonnxruntime.so.*), the header
# onnxruntime_c_api.h (+ the two it includes) from ORT_INCLUDE. Neither Debian 12 nor PyPI ships
# the headers: take them from the ONNX Runtime release archive (include/) of the wheel's version or
# older, as a Geant4 or O2 build has them.
#   ORT_INCLUDE=/path/to/onnxruntime/include bash scripts/onnx_cpp/build.sh   → scripts/onnx_cpp/onnx_showers
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${ORT_INCLUDE:?set ORT_INCLUDE to a folder with onnxruntime_c_api.h (the ONNX Runtime release archive, include/)}"
[ -f "$ORT_INCLUDE/onnxruntime_c_api.h" ] || { echo "no onnxruntime_c_api.h in $ORT_INCLUDE" >&2; exit 1; }
capi=$(python3 -c "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))")
lib=$(ls "$capi"/libonnxruntime.so.* | head -1)
[ -n "$lib" ] || { echo "no libonnxruntime.so.* in $capi (pip install onnxruntime)" >&2; exit 1; }
# The wheel's file is libonnxruntime.so.1.X.Y, its soname libonnxruntime.so.1: link that name beside.
mkdir -p "$here/lib"
ln -sf "$lib" "$here/lib/libonnxruntime.so.1"
${CXX:-g++} -O2 -std=c++17 -I"$ORT_INCLUDE" "$here/onnx_showers.cpp" "$here/lib/libonnxruntime.so.1" \
  -Wl,-rpath,"$here/lib" -o "$here/onnx_showers"
echo "$here/onnx_showers (ONNX Runtime $(python3 -c 'import onnxruntime; print(onnxruntime.__version__)'), $lib)"
