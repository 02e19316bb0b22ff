//! Row loops of the kernel, compiled three times: for baseline x86-64, for AVX2 + FMA and for
//! AVX-512, chosen at run time. Both directions run [`LANES`] elements at a time
//! through the lane kernels, the rest of a row element by element.

use super::kernel::{rqs_element, rqs_element_backward, scratch_len, Consts};
use super::lanes::{backward_block, forward_block, inverse_block, LaneScratch, LANES};
use super::math::Real;
use super::Direction;

/// One rayon task's scratch for the forward and backward ops.
pub(super) struct RowScratch<F> {
    element: Vec<F>,
    lanes: LaneScratch<F>,
}

impl<F: Real> RowScratch<F> {
    pub(super) fn new(k: usize) -> Self {
        Self { element: vec![F::zero(); scratch_len(k)], lanes: LaneScratch::new(k) }
    }
}

/// One row of the forward kernel.
#[inline(always)]
fn row_fwd<F: Real>(
    c: &Consts<F>,
    dir: Direction,
    xr: &[F],
    pr: &[F],
    yr: &mut [F],
    lr: &mut [F],
    scratch: &mut RowScratch<F>,
) {
    let m = pr.len() / xr.len().max(1);
    let mut start = 0;
    while start + LANES <= xr.len() {
        let end = start + LANES;
        let (ps, xs) = (&pr[start * m..end * m], &xr[start..end]);
        let (ys, ls) = (&mut yr[start..end], &mut lr[start..end]);
        match dir {
            Direction::Forward => forward_block(c, xs, ps, ys, ls, &mut scratch.lanes),
            Direction::Inverse => inverse_block(c, xs, ps, ys, ls, &mut scratch.lanes),
        }
        start = end;
    }
    for i in start..xr.len() {
        let (y, l) = rqs_element(c, dir, xr[i], &pr[i * m..(i + 1) * m], &mut scratch.element);
        yr[i] = y;
        lr[i] = l;
    }
}

/// One row of the backward kernel.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_bwd<F: Real>(
    c: &Consts<F>,
    dir: Direction,
    xr: &[F],
    pr: &[F],
    gyr: &[F],
    glr: &[F],
    gpr: &mut [F],
    gxr: &mut [F],
    scratch: &mut RowScratch<F>,
) {
    let m = pr.len() / xr.len().max(1);
    let mut start = 0;
    while start + LANES <= xr.len() {
        let end = start + LANES;
        let (xs, ps, gps) = (&xr[start..end], &pr[start * m..end * m], &mut gpr[start * m..end * m]);
        backward_block(
            c,
            dir,
            xs,
            ps,
            &gyr[start..end],
            &glr[start..end],
            gps,
            &mut gxr[start..end],
            &mut scratch.lanes,
        );
        start = end;
    }
    for i in start..xr.len() {
        let gp = &mut gpr[i * m..(i + 1) * m];
        gxr[i] = rqs_element_backward(c, dir, xr[i], &pr[i * m..(i + 1) * m], gyr[i], glr[i], gp, &mut scratch.element);
    }
}

/// `row_fwd` and `row_bwd` compiled with the target features `$features`, inside a module that
/// also says when the CPU has them (`available`).
#[cfg(target_arch = "x86_64")]
macro_rules! row_kernels_for {
    ($features:literal) => {
        /// # Safety
        /// Only when [`available`].
        #[target_feature(enable = $features)]
        pub unsafe fn row_fwd<F: Real>(
            c: &Consts<F>,
            dir: Direction,
            xr: &[F],
            pr: &[F],
            yr: &mut [F],
            lr: &mut [F],
            scratch: &mut RowScratch<F>,
        ) {
            super::row_fwd(c, dir, xr, pr, yr, lr, scratch)
        }

        /// # Safety
        /// Only when [`available`].
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn row_bwd<F: Real>(
            c: &Consts<F>,
            dir: Direction,
            xr: &[F],
            pr: &[F],
            gyr: &[F],
            glr: &[F],
            gpr: &mut [F],
            gxr: &mut [F],
            scratch: &mut RowScratch<F>,
        ) {
            super::row_bwd(c, dir, xr, pr, gyr, glr, gpr, gxr, scratch)
        }
    };
}

/// The same row kernels compiled for AVX2 + FMA, chosen at run time (as the matmul does): the
/// default build targets baseline x86-64.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    row_kernels_for!("avx2,fma");
}

/// The row kernels for AVX-512 (16 f32 lanes per register: one lane block).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;

    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
        })
    }

    row_kernels_for!("avx512f,avx512vl,avx512dq,avx2,fma");
}

pub(super) fn dispatch_fwd<F: Real>(
    c: &Consts<F>,
    dir: Direction,
    xr: &[F],
    pr: &[F],
    yr: &mut [F],
    lr: &mut [F],
    scratch: &mut RowScratch<F>,
) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has AVX-512 F/VL/DQ, AVX2 and FMA.
        return unsafe { avx512::row_fwd(c, dir, xr, pr, yr, lr, scratch) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::row_fwd(c, dir, xr, pr, yr, lr, scratch) };
    }
    row_fwd(c, dir, xr, pr, yr, lr, scratch)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn dispatch_bwd<F: Real>(
    c: &Consts<F>,
    dir: Direction,
    xr: &[F],
    pr: &[F],
    gyr: &[F],
    glr: &[F],
    gpr: &mut [F],
    gxr: &mut [F],
    scratch: &mut RowScratch<F>,
) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has AVX-512 F/VL/DQ, AVX2 and FMA.
        return unsafe { avx512::row_bwd(c, dir, xr, pr, gyr, glr, gpr, gxr, scratch) };
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::row_bwd(c, dir, xr, pr, gyr, glr, gpr, gxr, scratch) };
    }
    row_bwd(c, dir, xr, pr, gyr, glr, gpr, gxr, scratch)
}
