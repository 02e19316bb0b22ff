//! The inverse spline (the sampling direction of an IAF) on [`LANES`] elements at once, laid out
//! lane-minor (structure of arrays) so that every step — softmax, knots, bin search, root formula,
//! log|det| — is a loop over lanes the compiler vectorises. It computes exactly what
//! [`super::kernel::rqs_element`] computes, operation for operation, so results are bit-identical
//! (the property tests in `tests.rs` check it); the bin search counts knots instead of branching.

use super::kernel::Consts;
use super::math::{Real, SOFTPLUS_THRESHOLD};

/// Elements per block: one AVX-512 register of f32.
pub(super) const LANES: usize = 16;

type Lanes<F> = [F; LANES];

/// Per-task scratch: the raw parameters and the knots of one block, lane-minor.
pub(super) struct LaneScratch<F> {
    raw: Vec<Lanes<F>>,
    soft: Vec<Lanes<F>>,
    cum_w: Vec<Lanes<F>>,
    cum_h: Vec<Lanes<F>>,
}

impl<F: Real> LaneScratch<F> {
    pub(super) fn new(k: usize) -> Self {
        let zero = [F::zero(); LANES];
        Self { raw: vec![zero; 3 * k - 1], soft: vec![zero; k], cum_w: vec![zero; k + 1], cum_h: vec![zero; k + 1] }
    }
}

#[inline(always)]
fn map<F: Copy>(f: impl Fn(usize) -> F) -> Lanes<F> {
    std::array::from_fn(f)
}

/// Softmax of raw rows `raw[..k]` into `soft`, then the knots `min + scale·softmax` cumulated,
/// mapped to [−B, B] and pinned at both ends into `out` (as `Knots::new` does per element).
#[inline(always)]
fn knots<F: Real>(c: &Consts<F>, raw: &[Lanes<F>], min: F, scale: F, soft: &mut [Lanes<F>], out: &mut [Lanes<F>]) {
    let k = c.k;
    let mut max = [F::neg_infinity(); LANES];
    for r in raw {
        max = map(|l| max[l].max(r[l]));
    }
    let mut sum = [F::zero(); LANES];
    for (s, r) in soft.iter_mut().zip(raw) {
        *s = map(|l| (r[l] - max[l]).fexp_nonpositive());
        sum = map(|l| sum[l] + s[l]);
    }
    let inv = map(|l| F::one() / sum[l]);
    let mut acc = [F::zero(); LANES];
    out[0] = [c.left; LANES];
    for j in 0..k {
        let s = &mut soft[j];
        *s = map(|l| s[l] * inv[l]);
        acc = map(|l| acc[l] + (min + scale * s[l]));
        out[j + 1] = map(|l| c.span * acc[l] + c.left);
    }
    out[k] = [c.left + c.span; LANES];
}

/// min_d + softplus(x) per lane, as `Knots::deriv` computes an inner derivative.
#[inline(always)]
fn inner_derivative<F: Real>(c: &Consts<F>, x: &Lanes<F>) -> Lanes<F> {
    let threshold = F::from(SOFTPLUS_THRESHOLD).unwrap();
    // Lanes above the threshold return x; their exp is not needed (0 keeps the fast path).
    let below = map(|l| if x[l] > threshold { F::zero() } else { x[l] });
    let e = F::fexp_lanes(&below);
    let u = map(|l| F::one() + e[l]);
    let ln_u = F::fln_lanes(&u);
    map(|l| {
        let log1p = if u[l] == F::one() { e[l] } else { ln_u[l] * e[l] / (u[l] - F::one()) };
        c.min_d + if x[l] > threshold { x[l] } else { log1p }
    })
}

/// x = s⁻¹(y) and log|ds⁻¹/dy| of `LANES` elements: inputs `ys`, raw parameters `ps` (element-major,
/// `3K − 1` per element, as a MADE lays them out); identity outside [−B, B]. Inlined into the row
/// loops so that it is compiled for each instruction set they are dispatched on.
#[inline(always)]
pub(super) fn inverse_block<F: Real>(
    c: &Consts<F>,
    ys: &[F],
    ps: &[F],
    xs: &mut [F],
    ls: &mut [F],
    s: &mut LaneScratch<F>,
) {
    let k = c.k;
    let m = 3 * k - 1;
    debug_assert!(ys.len() == LANES && ps.len() == LANES * m);
    for (j, r) in s.raw.iter_mut().enumerate() {
        *r = map(|l| ps[l * m + j]);
    }
    let two = F::one() + F::one();
    let inside: Lanes<bool> = map(|l| c.inside(ys[l]));
    // Outside lanes compute on 0 (a point inside) and keep their input.
    let y: Lanes<F> = map(|l| if inside[l] { ys[l] } else { F::zero() });
    knots(c, &s.raw[..k], c.min_w, c.scale_w, &mut s.soft, &mut s.cum_w);
    knots(c, &s.raw[k..2 * k], c.min_h, c.scale_h, &mut s.soft, &mut s.cum_h);

    // nflows' searchsorted on the heights: knots ≤ y, the last raised by eps, minus one.
    let mut count = [0usize; LANES];
    for (j, knot) in s.cum_h.iter().enumerate() {
        let eps = if j == k { c.search_eps } else { F::zero() };
        count = map(|l| count[l] + (y[l] >= knot[l] + eps) as usize);
    }
    let bin: Lanes<usize> = map(|l| count[l].saturating_sub(1).min(k - 1));
    let (cw, ch) = (&s.cum_w, &s.cum_h);
    let cw0 = map(|l| cw[bin[l]][l]);
    let cw1 = map(|l| cw[bin[l] + 1][l]);
    let ch0 = map(|l| ch[bin[l]][l]);
    let ch1 = map(|l| ch[bin[l] + 1][l]);
    // Derivatives at the bin's knots: the tails' slope at j = 0 and j = K, min_d + softplus inside.
    let raw_at = |j: &Lanes<usize>| map(|l| s.raw[2 * k + j[l].clamp(1, k - 1) - 1][l]);
    let (j0, j1) = (bin, map(|l| bin[l] + 1));
    let (inner0, inner1) = (inner_derivative(c, &raw_at(&j0)), inner_derivative(c, &raw_at(&j1)));
    let d0 = map(|l| if j0[l] == 0 { c.boundary_derivative } else { inner0[l] });
    let d1 = map(|l| if j1[l] == k { c.boundary_derivative } else { inner1[l] });

    let w = map(|l| cw1[l] - cw0[l]);
    let h = map(|l| ch1[l] - ch0[l]);
    let delta = map(|l| h[l] / w[l]);
    let mut root = [F::zero(); LANES];
    for l in 0..LANES {
        let dy = y[l] - ch0[l];
        let sl = d0[l] + d1[l] - two * delta[l];
        let a = dy * sl + h[l] * (delta[l] - d0[l]);
        let b = h[l] * d0[l] - dy * sl;
        let cc = -delta[l] * dy;
        let disc = b * b - F::from(4.0).unwrap() * a * cc;
        root[l] = (two * cc) / (-b - disc.max(F::zero()).sqrt());
    }
    // log|ds/dx| at θ = root, as `log_derivative`.
    let mut num = [F::zero(); LANES];
    let mut den = [F::zero(); LANES];
    for l in 0..LANES {
        let t = root[l];
        let tomt = t * (F::one() - t);
        den[l] = delta[l] + (d0[l] + d1[l] - two * delta[l]) * tomt;
        num[l] =
            delta[l] * delta[l] * (d1[l] * t * t + two * delta[l] * tomt + d0[l] * (F::one() - t) * (F::one() - t));
    }
    let (ln_num, ln_den) = (F::fln_lanes(&num), F::fln_lanes(&den));
    for l in 0..LANES {
        let x = root[l] * w[l] + cw0[l];
        let ladj = -(ln_num[l] - two * ln_den[l]);
        (xs[l], ls[l]) = if inside[l] { (x, ladj) } else { (ys[l], F::zero()) };
    }
}
