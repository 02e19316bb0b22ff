//! The GPU spline kernels (`src/flow/spline_cuda.cu`) compiled as host C++ and compared with the
//! CPU kernel: forward and inverse outputs, log|det|, and both backward passes, on random inputs
//! (inside the interval and in the tails). This checks the CUDA port's arithmetic on machines
//! without a GPU; `zdcflow --device cuda selftest` checks the real thing on one.

use std::process::Command;

use zdcflow::flow::spline::{rqs_scalar, rqs_scalar_backward, Direction, SplineConfig};

const HARNESS: &str = r#"
#include <cmath>
#include <cstdio>
#include <cstdint>
#define __device__
#define __forceinline__ inline
#define __global__
struct Dim3 { int x; };
static Dim3 blockIdx, blockDim, threadIdx;
#include "KERNEL"
static uint64_t s = 0x9E3779B97F4A7C15ull;
static double uniform() { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return (double)(s >> 11) / 9007199254740992.0; }
int main() {
    const int K = 8, M = 3 * K - 1, N = 400;
    const double B = 3.0, mn = 1e-3;
    double x[N], p[N * M], g[2 * N], out[2 * N], gout[N * M + N];
    for (int i = 0; i < N; i++) { x[i] = (uniform() - 0.5) * 2.4 * B; g[i] = uniform() - 0.5; g[N + i] = uniform() - 0.5; }
    for (int i = 0; i < N * M; i++) p[i] = (uniform() - 0.5) * 4.0;
    double pad = std::log(std::exp(1.0 - mn) - 1.0);
    double boundary = mn + (pad > 20 ? pad : std::log1p(std::exp(pad)));
    for (int dir = 0; dir < 2; dir++) {
        blockDim.x = 1;
        for (int e = 0; e < N; e++) {
            blockIdx.x = e; threadIdx.x = 0;
            rqs_forward_f64(K, -B, 2 * B, mn, mn, mn, 1 - mn * K, 1 - mn * K, boundary, 1e-6, dir, N, M, x, p, out);
            rqs_backward_f64(K, -B, 2 * B, mn, mn, mn, 1 - mn * K, 1 - mn * K, boundary, 1e-6, dir, N, M, x, p, g, gout);
        }
        for (int e = 0; e < N; e++) {
            printf("%d %.17g %.17g %.17g %.17g %.17g %.17g", dir, x[e], g[e], g[N + e], out[e], out[N + e], gout[N * M + e]);
            for (int j = 0; j < M; j++) printf(" %.17g", p[e * M + j]);
            for (int j = 0; j < M; j++) printf(" %.17g", gout[e * M + j]);
            printf("\n");
        }
    }
}
"#;

#[test]
fn cuda_kernels_compiled_for_the_host_agree_with_the_cpu_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = concat!(env!("CARGO_MANIFEST_DIR"), "/src/flow/spline_cuda.cu");
    let src = dir.path().join("harness.cpp");
    std::fs::write(&src, HARNESS.replace("KERNEL", kernel)).unwrap();
    let exe = dir.path().join("harness");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let status = Command::new(&cxx).args(["-O1", "-std=c++17", "-o"]).arg(&exe).arg(&src).status();
    let status = status.unwrap_or_else(|e| panic!("this test needs a C++ compiler ({cxx}): {e}"));
    assert!(status.success(), "the kernel source does not compile as host C++");
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    let cfg =
        SplineConfig { num_bins: 8, tail_bound: 3.0, min_bin_width: 1e-3, min_bin_height: 1e-3, min_derivative: 1e-3 };
    let m = cfg.params_per_feature();
    let mut lines = 0;
    let mut inside = 0;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: Vec<f64> = line.split_whitespace().map(|t| t.parse().unwrap()).collect();
        let dir = if v[0] == 0.0 { Direction::Forward } else { Direction::Inverse };
        let (x, gy, gl, y, l, gx) = (v[1], v[2], v[3], v[4], v[5], v[6]);
        let params = &v[7..7 + m];
        let gp = &v[7 + m..7 + 2 * m];
        let (ey, el) = rqs_scalar(&cfg, dir, x, params);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + b.abs());
        assert!(close(y, ey) && close(l, el), "{dir:?} x={x}: GPU port ({y}, {l}) vs CPU ({ey}, {el})");
        let mut egp = vec![0.0; m];
        let egx = rqs_scalar_backward(&cfg, dir, x, params, gy, gl, &mut egp);
        assert!(close(gx, egx), "{dir:?} x={x}: input gradient {gx} vs {egx}");
        for j in 0..m {
            assert!(close(gp[j], egp[j]), "{dir:?} x={x}: parameter {j} gradient {} vs {}", gp[j], egp[j]);
        }
        lines += 1;
        inside += (x.abs() < 3.0) as usize;
    }
    assert_eq!(lines, 800);
    assert!(inside > 600 && inside < 800, "inputs cover the interval and the tails ({inside} of 800 inside)");
}
