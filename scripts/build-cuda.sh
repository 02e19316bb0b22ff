#!/usr/bin/env bash
# Builds zdcflow with the `cuda` feature on a machine with NO GPU and NO CUDA toolkit, from PyPI's
# CUDA 13.0 wheels (nvcc, runtime, cuBLAS, cuRAND, NVRTC) and a generated link stub for the driver.
# Output: dist-cuda/zdcflow and dist-cuda/run.sh — copy both to the GPU node.
#
#   bash scripts/build-cuda.sh
#   CUDA_COMPUTE_CAP=80 bash scripts/build-cuda.sh     # A100 (default 90: H100/H200, sm_90a)
#
# At run time the binary needs the driver (libcuda.so.1, from the node's NVIDIA driver, R580+ for
# CUDA 13) and libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and
# libnvrtc.so.13 (zdcflow compiles its spline kernels with NVRTC at first use). PyTorch's cu130
# wheels install all of them in <site-packages>/nvidia/cu13/lib; run.sh finds them through the
# Python given in $PYTHON (default python3) and puts them on LD_LIBRARY_PATH. Without PyTorch:
#   pip install nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
# The binary needs glibc ≥ 2.34 on the node (ldd --version).
#
# Env: CUDA_WHEELS (default ~/.cache/cuda13-wheels), CUDA_COMPUTE_CAP (default 90),
#      CARGO_TARGET_DIR (default target-cuda). First run ≈ 10 min on 2 cores, ~1.2 GB of wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
W=${CUDA_WHEELS:-$HOME/.cache/cuda13-wheels}
CU=$W/nvidia/cu13
CAP=${CUDA_COMPUTE_CAP:-90}

# 1. nvcc + runtime, cuBLAS, cuRAND, NVRTC — the versions PyTorch's cu130 wheels pin.
if [ ! -x "$CU/bin/nvcc" ] || [ ! -f "$CU/lib/libcublas.so.13" ]; then
  python3 -m pip install -q --no-deps --target "$W" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
fi
# 2. The wheels ship only versioned sonames; the linker wants the plain names.
(cd "$CU/lib" && for l in cudart cublas cublasLt nvrtc; do ln -sf lib$l.so.13 lib$l.so; done && ln -sf libcurand.so.10 libcurand.so)

# 3. A link-time stub for the driver library (the real libcuda.so.1 comes with the node's driver).
cargo fetch -q
if [ ! -f "$CU/lib/stubs/libcuda.so" ]; then
  mkdir -p "$CU/lib/stubs"
  SYS=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.*/src/driver/sys | sort -V | tail -1)
  grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' "$SYS"/mod.rs | awk '{print $4}' | sort -u \
    | awk '{print "int " $1 "(void){return 999;}"}' > "$W/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$W/cuda_stub.c"
fi

# 4. Build. cudarc reads the CUDA version from nvcc; candle-kernels compiles PTX for CUDA_COMPUTE_CAP.
export CUDA_HOME="$CU" CUDA_ROOT="$CU" PATH="$CU/bin:$PATH" CUDA_COMPUTE_CAP="$CAP" CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$CU/lib:$CU/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$CU/lib -L native=$CU/lib/stubs -C link-arg=-Wl,-rpath,\$ORIGIN/lib"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
cargo build --release --features cuda --bin zdcflow

# 5. What to carry to the GPU node: the binary and a launcher that finds the CUDA 13 libraries.
mkdir -p dist-cuda
cp -f "$CARGO_TARGET_DIR/release/zdcflow" dist-cuda/
strip dist-cuda/zdcflow   # debug tables would triple its size
cat > dist-cuda/run.sh <<'RUN'
#!/usr/bin/env bash
# usage: dist-cuda/run.sh ARGS…   (PYTHON=… picks the Python whose wheels brought the CUDA 13 libraries)
here=$(cd "$(dirname "$0")" && pwd)
lib=$("${PYTHON:-python3}" -c 'import os,site,sys
c=[p for p in site.getsitepackages()+sys.path if os.path.isfile(os.path.join(str(p),"nvidia/cu13/lib/libcublas.so.13"))]
print(os.path.join(c[0],"nvidia/cu13/lib") if c else "")' 2>/dev/null)
if [ -z "$lib" ] && [ -d "$here/lib" ]; then lib="$here/lib"; fi
[ -n "$lib" ] || { echo "no nvidia/cu13/lib (libcublas.so.13) in ${PYTHON:-python3}'s site-packages nor $here/lib" >&2; exit 1; }
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/zdcflow" "$@"
RUN
chmod +x dist-cuda/run.sh
ls -la dist-cuda
