//! The CPU kernel of a frozen MADE layer: `act(bias + add + x · Wᵀ)` in one output buffer.
//!
//! A frozen layer's mask is a staircase (see `made.rs`): row group g of the output reads only the
//! first `cols_g` inputs. Candle would multiply each group separately, concatenate the parts and
//! add the bias in two more passes over the output (a fifth of a DS2 student shower was these
//! copies). Here the output rows are filled with the bias (plus an optional residual or context
//! term), each group's product is accumulated into its columns in place by the `gemm` crate (the
//! one candle's CPU matmul calls), and ReLU is applied while the rows are still in cache.

use candle_core::{DType, Device, Layout, Storage, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

use super::amx::PackedWeight;
use super::layers::contiguous_slice;

/// `len` consecutive output rows of a staircase mask, which read only the first `cols` inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    pub start: usize,
    pub len: usize,
    pub cols: usize,
}

/// Below this many rows per thread the batch is one task whose GEMM splits its columns across
/// the threads (a single event, the ZDC output layer: a memory-bound product); above it each
/// thread computes its share of the rows start to finish.
const MIN_ROWS_PER_TASK: usize = 64;

/// `act(bias + add + x · maskedᵀ)` for a contiguous-or-not `x` (n, i), `masked` (o, i) whose
/// rows of group g are zero beyond `cols_g`, `bias` (o), `add` (n, o). f32 and f64 on the CPU;
/// `None` for anything else (the caller falls back to candle's ops).
pub fn affine(
    x: &Tensor,
    masked: &Tensor,
    bias: &Tensor,
    add: Option<&Tensor>,
    groups: &[Group],
    relu: bool,
) -> candle_core::Result<Option<Tensor>> {
    if !x.device().is_cpu() || !matches!(x.dtype(), DType::F32 | DType::F64) || x.rank() != 2 {
        return Ok(None);
    }
    let (n, i) = x.dims2()?;
    let o = masked.dim(0)?;
    if masked.dims2()? != (o, i) || bias.dims1()? != o {
        candle_core::bail!("staircase affine: x {:?}, weight {:?}, bias {:?}", x.shape(), masked.shape(), bias.shape());
    }
    if groups.iter().any(|g| g.start + g.len > o || g.cols > i) || groups.iter().map(|g| g.len).sum::<usize>() != o {
        candle_core::bail!("staircase affine: groups {groups:?} do not tile {o} outputs of {i} inputs");
    }
    let x = x.contiguous()?;
    let threads = candle_core::utils::get_num_threads().max(1);
    let rows_per_task = gemm_rows_per_task(n, threads);
    let parallelism =
        if threads > 1 && rows_per_task >= n { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let (ws, wl) = masked.storage_and_layout();
    let out = match x.dtype() {
        DType::F32 => {
            let w = on_host::<f32>(&ws, wl)?;
            host::<f32>(&x, bias, add, relu, rows_per_task, |x, out, m| {
                gemm_product(x, w, out, m, groups, parallelism);
                Ok(())
            })?
        }
        DType::F64 => {
            let w = on_host::<f64>(&ws, wl)?;
            host::<f64>(&x, bias, add, relu, rows_per_task, |x, out, m| {
                gemm_product(x, w, out, m, groups, parallelism);
                Ok(())
            })?
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// [`affine`] with the product on AMX tiles in bf16 ([`PackedWeight`]); `None` where `x` is not
/// a float32 matrix on the CPU.
pub fn affine_bf16(
    x: &Tensor,
    packed: &PackedWeight,
    bias: &Tensor,
    add: Option<&Tensor>,
    relu: bool,
) -> candle_core::Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || x.rank() != 2 {
        return Ok(None);
    }
    if (bias.dims1()?, x.dim(1)?) != packed.shape() {
        candle_core::bail!("staircase affine: x {:?}, bias {:?}, weight {:?}", x.shape(), bias.shape(), packed.shape());
    }
    let x = x.contiguous()?;
    // Tiles take 32 rows at a time: each thread gets whole tile rows, however small the batch.
    let threads = candle_core::utils::get_num_threads().max(1);
    let rows_per_task = x.dim(0)?.div_ceil(threads).div_ceil(32).max(1) * 32;
    let out = host::<f32>(&x, bias, add, relu, rows_per_task, |x, out, m| {
        packed.accumulate(x, out, m);
        Ok(())
    })?;
    Ok(Some(out))
}

/// `act(bias + add + product)` on the tensors' host storage, all of dtype `T`: rows are split
/// among the threads, and `product(x_rows, out_rows, m)` adds `x_rows · Wᵀ` into each task's rows.
fn host<T: WithDType + Float>(
    x: &Tensor,
    bias: &Tensor,
    add: Option<&Tensor>,
    relu: bool,
    rows_per_task: usize,
    product: impl Fn(&[T], &mut [T], usize) -> candle_core::Result<()> + Sync,
) -> candle_core::Result<Tensor> {
    let (n, o) = (x.dim(0)?, bias.dims1()?);
    let add = add.map(|a| a.contiguous()).transpose()?;
    if let Some(a) = &add {
        if a.dims2()? != (n, o) {
            candle_core::bail!("staircase affine: added term {:?}, output ({n}, {o})", a.shape());
        }
    }
    let (xs, xl) = x.storage_and_layout();
    let (bs, bl) = bias.storage_and_layout();
    let added = add.as_ref().map(|a| a.storage_and_layout());
    let add = added.as_ref().map(|(s, l)| on_host::<T>(s, l)).transpose()?;
    let out = run(on_host(&xs, xl)?, on_host(&bs, bl)?, add, n, relu, rows_per_task, product)?;
    Tensor::from_vec(out, (n, o), &Device::Cpu)
}

fn on_host<'a, T: WithDType>(s: &'a Storage, l: &Layout) -> candle_core::Result<&'a [T]> {
    match s {
        Storage::Cpu(c) => contiguous_slice(T::cpu_storage_as_slice(c)?, l, "staircase affine"),
        _ => candle_core::bail!("staircase affine: a tensor not on the CPU"),
    }
}

/// Rows per GEMM task for `n` rows: a share per thread, or below `MIN_ROWS_PER_TASK` rows per
/// thread one task (whose GEMM then splits its columns).
fn gemm_rows_per_task(n: usize, threads: usize) -> usize {
    if threads == 1 || n >= threads * MIN_ROWS_PER_TASK {
        n.div_ceil(threads).max(1)
    } else {
        n.max(1)
    }
}

fn run<T: WithDType + Float>(
    x: &[T],
    b: &[T],
    add: Option<&[T]>,
    n: usize,
    relu: bool,
    rows_per_task: usize,
    product: impl Fn(&[T], &mut [T], usize) -> candle_core::Result<()> + Sync,
) -> candle_core::Result<Vec<T>> {
    let o = b.len();
    let i = x.len().checked_div(n).unwrap_or(0);
    // Every element is written (bias first) before it is read, so the buffer is not zeroed.
    let mut out: Vec<T> = Vec::with_capacity(n * o);
    candle_core::utils::with_threadpool(|| {
        out.spare_capacity_mut()[..n * o].par_chunks_mut(rows_per_task * o.max(1)).enumerate().try_for_each(
            |(task, rows)| {
                let first = task * rows_per_task;
                let m = rows.len() / o.max(1);
                for (r, row) in rows.chunks_mut(o.max(1)).enumerate() {
                    match add {
                        Some(a) => {
                            let a = &a[(first + r) * o..(first + r + 1) * o];
                            for ((v, &a), &bb) in row.iter_mut().zip(a).zip(b) {
                                v.write(a + bb);
                            }
                        }
                        None => {
                            for (v, &bb) in row.iter_mut().zip(b) {
                                v.write(bb);
                            }
                        }
                    }
                }
                // SAFETY: every element of `rows` was initialised just above.
                let rows: &mut [T] = unsafe { &mut *(rows as *mut [std::mem::MaybeUninit<T>] as *mut [T]) };
                product(&x[first * i..(first + m) * i], rows, m)?;
                if relu {
                    for v in rows.iter_mut() {
                        // `max`, which the compiler vectorises (a compare-and-branch it did not); NaN → 0.
                        *v = Float::max(*v, T::zero());
                    }
                }
                Ok::<(), candle_core::Error>(())
            },
        )
    })?;
    // SAFETY: the tasks above initialised all n·o elements.
    unsafe { out.set_len(n * o) };
    Ok(out)
}

/// `out (m, o) += x (m, i) · wᵀ` for a weight `w` (o, i) whose rows of group g are zero beyond
/// `cols_g`: one GEMM per group. [`affine`] has checked the shapes and that the groups tile `o`.
fn gemm_product<T: WithDType + Float>(
    x: &[T],
    w: &[T],
    out: &mut [T],
    m: usize,
    groups: &[Group],
    parallelism: gemm::Parallelism,
) {
    if m == 0 {
        return;
    }
    let (o, i) = (out.len() / m, x.len() / m);
    debug_assert_eq!(w.len(), o * i, "weight of the output's and the input's width");
    for g in groups.iter().filter(|g| g.cols > 0 && g.len > 0) {
        // SAFETY: dst addresses out[r·o + g.start + c] for r < m, c < g.len, inside `out`
        // (checked in `affine`: g.start + g.len ≤ o, g.cols ≤ i, w is (o, i)); lhs x[r·i + k] for k < g.cols ≤ i and r < m;
        // rhs w[(g.start + c)·i + k], inside the (o, i) weight.
        unsafe {
            gemm::gemm(
                m,
                g.len,
                g.cols,
                out.as_mut_ptr().add(g.start),
                1,
                o as isize,
                true,
                x.as_ptr(),
                1,
                i as isize,
                w.as_ptr().add(g.start * i),
                i as isize,
                1,
                T::one(),
                T::one(),
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn reference(
        x: &Tensor,
        masked: &Tensor,
        bias: &Tensor,
        add: Option<&Tensor>,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        let mut y = x.matmul(&masked.t()?)?.broadcast_add(bias)?;
        if let Some(a) = add {
            y = (y + a)?;
        }
        if relu {
            y = y.relu()?;
        }
        Ok(y)
    }

    /// A staircase weight (o, i): group g keeps its first `cols_g` inputs.
    fn staircase_weight(o: usize, i: usize, groups: &[Group], dtype: DType) -> candle_core::Result<Tensor> {
        let dev = Device::Cpu;
        let mut w = Vec::with_capacity(o * i);
        for r in 0..o {
            let g = groups.iter().find(|g| (g.start..g.start + g.len).contains(&r)).unwrap();
            for c in 0..i {
                w.push(if c < g.cols { ((r * 31 + c * 17) % 23) as f64 / 23.0 - 0.5 } else { 0.0 });
            }
        }
        Tensor::from_vec(w, (o, i), &dev)?.to_dtype(dtype)
    }

    #[test]
    fn staircase_affine_equals_matmul_bias_add_relu() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (i, o) = (37, 50);
        let groups = [
            Group { start: 0, len: 7, cols: 0 },
            Group { start: 7, len: 20, cols: 5 },
            Group { start: 27, len: 13, cols: 30 },
            Group { start: 40, len: 10, cols: 37 },
        ];
        for dtype in [DType::F32, DType::F64] {
            let w = staircase_weight(o, i, &groups, dtype)?;
            let b = Tensor::arange(0f64, o as f64, &dev)?.affine(0.01, -0.2)?.to_dtype(dtype)?;
            // 1 row: one task, its GEMM threaded; 300: a share per thread.
            for n in [1usize, 128, 300] {
                let x = Tensor::arange(0f64, (n * i) as f64, &dev)?
                    .reshape((n, i))?
                    .affine(0.37, 0.1)?
                    .sin()?
                    .to_dtype(dtype)?;
                let a = Tensor::arange(0f64, (n * o) as f64, &dev)?
                    .reshape((n, o))?
                    .affine(0.11, 0.0)?
                    .cos()?
                    .to_dtype(dtype)?;
                for (add, relu) in [(None, false), (None, true), (Some(&a), false), (Some(&a), true)] {
                    let got = affine(&x, &w, &b, add, &groups, relu)?.expect("cpu f32/f64");
                    let want = reference(&x, &w, &b, add, relu)?;
                    let worst =
                        (got - &want)?.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                    let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                    assert!(worst < tol, "{dtype:?} n {n} add {} relu {relu}: {worst}", add.is_some());
                }
            }
            // A strided input is made contiguous first.
            let x = Tensor::arange(0f64, (64 * i) as f64, &dev)?.reshape((i, 64))?.to_dtype(dtype)?.t()?;
            let got = affine(&x, &w, &b, None, &groups, true)?.expect("cpu");
            let want = reference(&x, &w, &b, None, true)?;
            let worst = (got - want)?.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            assert!(worst < 1e-3, "strided input: {worst}");
        }
        Ok(())
    }

    #[test]
    fn groups_that_do_not_tile_the_outputs_are_refused() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::zeros((4, 3), DType::F32, &dev)?;
        let b = Tensor::zeros(4, DType::F32, &dev)?;
        let x = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let short = [Group { start: 0, len: 3, cols: 3 }];
        assert!(affine(&x, &w, &b, None, &short, false).is_err());
        let wide = [Group { start: 0, len: 4, cols: 4 }];
        assert!(affine(&x, &w, &b, None, &wide, false).is_err());
        Ok(())
    }
}
