//! The spline as a candle op on whole tensors, with its fused backward (parallel over rows).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::super::layers::contiguous_slice;
use super::kernel::Consts;
use super::math::Real;
use super::simd::{dispatch_bwd, dispatch_fwd, RowScratch};
use super::{Direction, SplineConfig};

/// `(inputs (n, d), raw params (n, d·(3K−1)))` → `(2, n, d)`: outputs and per-element log|det|.
struct RqsOp {
    cfg: SplineConfig,
    dir: Direction,
}

/// `(inputs, raw params, upstream gradient (2, n, d))` → one flat tensor: the raw-parameter
/// gradients (n·d·(3K−1), in the params' layout), then the input gradients (n·d) — both halves
/// contiguous, so handing them back costs no copy.
struct RqsBackwardOp {
    cfg: SplineConfig,
    dir: Direction,
}

/// Rows handed to one rayon task: small enough to balance two to sixteen cores, large enough
/// that scheduling costs nothing.
const MIN_ROWS_PER_TASK: usize = 16;

fn rqs_fwd_cpu<F: Real>(cfg: &SplineConfig, dir: Direction, xs: &[F], ps: &[F], d: usize) -> Vec<F> {
    let c = Consts::<F>::new(cfg);
    let m = cfg.params_per_feature();
    let nd = xs.len();
    let mut out = vec![F::zero(); 2 * nd];
    let (ys, ls) = out.split_at_mut(nd);
    // candle's own pool: a second rayon pool would compete with candle's threads for the cores.
    candle_core::utils::with_threadpool(|| {
        ys.par_chunks_mut(d)
            .zip(ls.par_chunks_mut(d))
            .zip(xs.par_chunks(d).zip(ps.par_chunks(d * m)))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each_init(
                || RowScratch::new(cfg.num_bins),
                |scratch, ((yr, lr), (xr, pr))| dispatch_fwd(&c, dir, xr, pr, yr, lr, scratch),
            )
    });
    out
}

pub(super) fn rqs_bwd_cpu<F: Real>(
    cfg: &SplineConfig,
    dir: Direction,
    xs: &[F],
    ps: &[F],
    gs: &[F],
    d: usize,
) -> Vec<F> {
    let c = Consts::<F>::new(cfg);
    let m = cfg.params_per_feature();
    let nd = xs.len();
    let (g_out, g_ladj) = gs.split_at(nd);
    let mut out = vec![F::zero(); nd * (m + 1)];
    let (g_params, g_inputs) = out.split_at_mut(nd * m);
    candle_core::utils::with_threadpool(|| {
        g_params
            .par_chunks_mut(d * m)
            .zip(g_inputs.par_chunks_mut(d))
            .zip(xs.par_chunks(d).zip(ps.par_chunks(d * m)))
            .zip(g_out.par_chunks(d).zip(g_ladj.par_chunks(d)))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each_init(
                || RowScratch::new(cfg.num_bins),
                |scratch, (((gpr, gxr), (xr, pr)), (gyr, glr))| {
                    dispatch_bwd(&c, dir, xr, pr, gyr, glr, gpr, gxr, scratch)
                },
            )
    });
    out
}

fn check_shapes(cfg: &SplineConfig, lx: &Layout, lp: &Layout) -> candle_core::Result<(usize, usize)> {
    let (n, d) = lx.shape().dims2()?;
    let (pn, pdm) = lp.shape().dims2()?;
    if (pn, pdm) != (n, d * cfg.params_per_feature()) {
        candle_core::bail!("rqs: params have shape {:?}, expected ({n}, {})", lp.shape(), d * cfg.params_per_feature());
    }
    Ok((n, d))
}

impl CustomOp2 for RqsOp {
    fn name(&self) -> &'static str {
        "rational-quadratic-spline"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d) = check_shapes(&self.cfg, l1, l2)?;
        let shape = Shape::from((2, n, d));
        match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(p)) => {
                let out = rqs_fwd_cpu(
                    &self.cfg,
                    self.dir,
                    contiguous_slice(x, l1, "rqs")?,
                    contiguous_slice(p, l2, "rqs")?,
                    d,
                );
                Ok((CpuStorage::F32(out), shape))
            }
            (CpuStorage::F64(x), CpuStorage::F64(p)) => {
                let out = rqs_fwd_cpu(
                    &self.cfg,
                    self.dir,
                    contiguous_slice(x, l1, "rqs")?,
                    contiguous_slice(p, l2, "rqs")?,
                    d,
                );
                Ok((CpuStorage::F64(out), shape))
            }
            _ => candle_core::bail!("rqs: inputs must both be f32 or both f64"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, d) = check_shapes(&self.cfg, l1, l2)?;
        super::super::spline_cuda::forward(&self.cfg, self.dir, s1, l1, s2, l2, n, d)
    }

    fn bwd(
        &self,
        xs: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let op = RqsBackwardOp { cfg: self.cfg, dir: self.dir };
        let g = xs.apply_op3_no_bwd(params, &grad_res.contiguous()?, &op)?;
        let (n, pdm) = params.dims2()?;
        let g_params = g.narrow(0, 0, n * pdm)?.reshape((n, pdm))?;
        let g_xs = g.narrow(0, n * pdm, xs.elem_count())?.reshape(xs.shape())?;
        Ok((Some(g_xs), Some(g_params)))
    }
}

impl CustomOp3 for RqsBackwardOp {
    fn name(&self) -> &'static str {
        "rational-quadratic-spline-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, d) = check_shapes(&self.cfg, l1, l2)?;
        let shape = Shape::from(n * d * (self.cfg.params_per_feature() + 1));
        match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(p), CpuStorage::F32(g)) => {
                let (x, p, g) =
                    (contiguous_slice(x, l1, "rqs")?, contiguous_slice(p, l2, "rqs")?, contiguous_slice(g, l3, "rqs")?);
                Ok((CpuStorage::F32(rqs_bwd_cpu(&self.cfg, self.dir, x, p, g, d)), shape))
            }
            (CpuStorage::F64(x), CpuStorage::F64(p), CpuStorage::F64(g)) => {
                let (x, p, g) =
                    (contiguous_slice(x, l1, "rqs")?, contiguous_slice(p, l2, "rqs")?, contiguous_slice(g, l3, "rqs")?);
                Ok((CpuStorage::F64(rqs_bwd_cpu(&self.cfg, self.dir, x, p, g, d)), shape))
            }
            _ => candle_core::bail!("rqs backward: inputs must all be f32 or all f64"),
        }
    }

    #[cfg(feature = "cuda")]
    #[allow(clippy::too_many_arguments)]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, d) = check_shapes(&self.cfg, l1, l2)?;
        super::super::spline_cuda::backward(&self.cfg, self.dir, s1, l1, s2, l2, s3, l3, n, d)
    }
}

/// The spline on whole tensors: `inputs` (n, d) and raw `params` (n, d, 3K−1) — or (n, d·(3K−1)),
/// feature-major, as a MADE outputs them — give `(outputs (n, d), log|det| per element (n, d))`.
/// Differentiable with respect to both inputs.
pub fn rqs(
    inputs: &Tensor,
    params: &Tensor,
    cfg: &SplineConfig,
    dir: Direction,
) -> candle_core::Result<(Tensor, Tensor)> {
    if !matches!(inputs.dtype(), DType::F32 | DType::F64) {
        candle_core::bail!("rqs: unsupported dtype {:?}", inputs.dtype());
    }
    let n = inputs.dim(0)?;
    let flat = params.contiguous()?.reshape((n, params.elem_count() / n.max(1)))?;
    let out = inputs.contiguous()?.apply_op2(&flat, RqsOp { cfg: *cfg, dir })?;
    Ok((out.get(0)?, out.get(1)?))
}
