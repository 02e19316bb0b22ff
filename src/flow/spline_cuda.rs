//! The spline's GPU kernels (`spline_cuda.cu`, the same formulas as the CPU kernel), compiled
//! with NVRTC the first time a spline runs on a GPU and launched one thread per element.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaStorage, DType, Layout, Shape};

use super::spline::{Consts, Direction, SplineConfig};

const SOURCE: &str = include_str!("spline_cuda.cu");
const MODULE: &str = "zdcflow_rqs";
/// Threads per block: each thread keeps its knots in local memory.
const BLOCK: u32 = 256;

static PTX: OnceLock<Result<String, String>> = OnceLock::new();

fn ptx() -> candle_core::Result<&'static str> {
    PTX.get_or_init(|| {
        let opts = CompileOptions { options: vec!["--std=c++14".into()], ..Default::default() };
        compile_ptx_with_opts(SOURCE, opts).map(|p| p.to_src()).map_err(|e| e.to_string())
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(format!("compiling the spline's CUDA kernels: {e}")))
}

fn launch_config(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: ((n as u32).div_ceil(BLOCK).max(1), 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

fn err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("spline kernel: {e}"))
}

fn suffix(dtype: DType) -> candle_core::Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F64 => Ok("f64"),
        d => candle_core::bail!("spline kernel: unsupported dtype {d:?}"),
    }
}

/// Runs `kernel` on `inputs` (each contiguous from its layout's start) into a new buffer of `len`.
fn run<T>(
    kernel: &str,
    cfg: &SplineConfig,
    dir: Direction,
    n_el: usize,
    inputs: &[(&CudaStorage, &Layout)],
    len: usize,
) -> candle_core::Result<CudaStorage>
where
    T: super::spline::Real + DeviceRepr + ValidAsZeroBits + CudaDType,
{
    let dev = &inputs[0].0.device;
    let c = Consts::<T>::new(cfg);
    let slices = inputs
        .iter()
        .map(|(s, l)| Ok(s.as_cuda_slice::<T>()?.slice(l.start_offset()..)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let out = dev.alloc_zeros::<T>(len)?;
    let func = dev.get_or_load_custom_func(kernel, MODULE, ptx()?)?;
    let (k, inverse, n, m) =
        (c.k as i32, (dir == Direction::Inverse) as i32, n_el as i32, cfg.params_per_feature() as i32);
    let mut b = func.builder();
    b.arg(&k);
    for v in
        [&c.left, &c.span, &c.min_w, &c.min_h, &c.min_d, &c.scale_w, &c.scale_h, &c.boundary_derivative, &c.search_eps]
    {
        b.arg(v);
    }
    b.arg(&inverse);
    b.arg(&n);
    b.arg(&m);
    for s in &slices {
        b.arg(s);
    }
    b.arg(&out);
    // SAFETY: the arguments match the kernel's signature; every buffer holds what it indexes.
    unsafe { b.launch(launch_config(n_el)) }.map_err(err)?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

fn check(cfg: &SplineConfig) -> candle_core::Result<()> {
    if cfg.num_bins > 32 {
        candle_core::bail!("the GPU spline supports up to 32 bins, got {}", cfg.num_bins);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn forward(
    cfg: &SplineConfig,
    dir: Direction,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    n: usize,
    d: usize,
) -> candle_core::Result<(CudaStorage, Shape)> {
    check(cfg)?;
    let name = format!("rqs_forward_{}", suffix(s1.dtype())?);
    let inputs = [(s1, l1), (s2, l2)];
    let out = match s1.dtype() {
        DType::F32 => run::<f32>(&name, cfg, dir, n * d, &inputs, 2 * n * d)?,
        _ => run::<f64>(&name, cfg, dir, n * d, &inputs, 2 * n * d)?,
    };
    Ok((out, Shape::from((2, n, d))))
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    cfg: &SplineConfig,
    dir: Direction,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
    n: usize,
    d: usize,
) -> candle_core::Result<(CudaStorage, Shape)> {
    check(cfg)?;
    let name = format!("rqs_backward_{}", suffix(s1.dtype())?);
    let len = n * d * (cfg.params_per_feature() + 1);
    let inputs = [(s1, l1), (s2, l2), (s3, l3)];
    let out = match s1.dtype() {
        DType::F32 => run::<f32>(&name, cfg, dir, n * d, &inputs, len)?,
        _ => run::<f64>(&name, cfg, dir, n * d, &inputs, len)?,
    };
    Ok((out, Shape::from(len)))
}
