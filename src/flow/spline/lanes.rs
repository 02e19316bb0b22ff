//! The spline in either direction (forward: a MAF's density and training; inverse: an IAF's
//! sampling) on [`LANES`] elements at once, laid out lane-minor (structure of arrays) so that every
//! step — softmax, knots, bin search, rational function or root formula, log|det| — is a loop over
//! lanes the compiler vectorises. It computes exactly what
//! [`super::kernel::rqs_element`] computes, operation for operation, so results are bit-identical
//! (the property tests in `tests.rs` check it); the bin search counts knots instead of branching.

use super::kernel::Consts;
use super::math::{Real, SOFTPLUS_THRESHOLD};
use super::Direction;

/// Elements per block: one AVX-512 register of f32.
pub(super) const LANES: usize = 16;

type Lanes<F> = [F; LANES];

/// Per-task scratch of one block, lane-minor: the raw parameters, the softmaxes and knots, and
/// the backward pass's parameter gradients and softmax gradients.
pub(super) struct LaneScratch<F> {
    raw: Vec<Lanes<F>>,
    soft_w: Vec<Lanes<F>>,
    soft_h: Vec<Lanes<F>>,
    cum_w: Vec<Lanes<F>>,
    cum_h: Vec<Lanes<F>>,
    grad: Vec<Lanes<F>>,
    g_soft: Vec<Lanes<F>>,
}

impl<F: Real> LaneScratch<F> {
    pub(super) fn new(k: usize) -> Self {
        let zero = [F::zero(); LANES];
        Self {
            raw: vec![zero; 3 * k - 1],
            soft_w: vec![zero; k],
            soft_h: vec![zero; k],
            cum_w: vec![zero; k + 1],
            cum_h: vec![zero; k + 1],
            grad: vec![zero; 3 * k - 1],
            g_soft: vec![zero; k],
        }
    }

    /// Softmaxes and knots of the widths and heights from `raw`.
    #[inline(always)]
    fn build_knots(&mut self, c: &Consts<F>) {
        let k = c.k;
        knots(c, &self.raw[..k], c.min_w, c.scale_w, &mut self.soft_w, &mut self.cum_w);
        knots(c, &self.raw[k..2 * k], c.min_h, c.scale_h, &mut self.soft_h, &mut self.cum_h);
    }
}

/// The bin each lane's input falls in and its local quantities (as the scalar kernel's `Bin`).
struct Bins<F> {
    index: Lanes<usize>,
    theta: Lanes<F>,
    width: Lanes<F>,
    height: Lanes<F>,
    delta: Lanes<F>,
    d0: Lanes<F>,
    d1: Lanes<F>,
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

/// The bin of each lane: nflows' searchsorted on `knots` (those ≤ v, the last raised by eps,
/// minus one), as [`super::kernel`]'s `search`.
#[inline(always)]
fn search<F: Real>(c: &Consts<F>, knots: &[Lanes<F>], v: &Lanes<F>) -> Lanes<usize> {
    let k = c.k;
    let mut count = [0usize; LANES];
    for (j, knot) in knots.iter().enumerate() {
        let eps = if j == k { c.search_eps } else { F::zero() };
        count = map(|l| count[l] + (v[l] >= knot[l] + eps) as usize);
    }
    map(|l| count[l].saturating_sub(1).min(k - 1))
}

/// The derivatives (d0, d1) at the knots `bin` and `bin + 1`: the tails' slope at j = 0 and
/// j = K, min_d + softplus of the raw parameter inside.
#[inline(always)]
fn bin_derivatives<F: Real>(c: &Consts<F>, raw: &[Lanes<F>], bin: &Lanes<usize>) -> (Lanes<F>, Lanes<F>) {
    let k = c.k;
    let (j0, j1) = (*bin, map(|l| bin[l] + 1));
    let (inner0, inner1) =
        (inner_derivative(c, &derivative_params(c, raw, &j0)), inner_derivative(c, &derivative_params(c, raw, &j1)));
    let d0 = map(|l| if j0[l] == 0 { c.boundary_derivative } else { inner0[l] });
    let d1 = map(|l| if j1[l] == k { c.boundary_derivative } else { inner1[l] });
    (d0, d1)
}

/// The raw derivative parameter of knot `j` in each lane (knots 0 and K have none: their lanes
/// read a neighbour's, which the callers do not use).
#[inline(always)]
fn derivative_params<F: Real>(c: &Consts<F>, raw: &[Lanes<F>], j: &Lanes<usize>) -> Lanes<F> {
    let k = c.k;
    map(|l| raw[2 * k + j[l].clamp(1, k - 1) - 1][l])
}

/// Copies `LANES` elements' raw parameters (element-major, `3K − 1` each) into `raw`, lane-minor.
#[inline(always)]
fn gather_raw<F: Real>(m: usize, ps: &[F], raw: &mut [Lanes<F>]) {
    for (j, r) in raw.iter_mut().enumerate() {
        *r = map(|l| ps[l * m + j]);
    }
}

/// The bins of the forward direction at inputs `x` (inside [−B, B]), as the scalar `forward`.
#[inline(always)]
fn forward_bins<F: Real>(c: &Consts<F>, s: &LaneScratch<F>, x: &Lanes<F>) -> Bins<F> {
    let index = search(c, &s.cum_w, x);
    let (cw, ch) = (&s.cum_w, &s.cum_h);
    let cw0 = map(|l| cw[index[l]][l]);
    let width = map(|l| cw[index[l] + 1][l] - cw0[l]);
    let height = map(|l| ch[index[l] + 1][l] - ch[index[l]][l]);
    let (d0, d1) = bin_derivatives(c, &s.raw, &index);
    Bins {
        index,
        theta: map(|l| (x[l] - cw0[l]) / width[l]),
        width,
        height,
        delta: map(|l| height[l] / width[l]),
        d0,
        d1,
    }
}

/// log|ds/dx| at each lane's θ, as the scalar `log_derivative`.
#[inline(always)]
fn log_derivative<F: Real>(b: &Bins<F>) -> Lanes<F> {
    let two = F::one() + F::one();
    let mut num = [F::zero(); LANES];
    let mut den = [F::zero(); LANES];
    for l in 0..LANES {
        let (t, delta, d0, d1) = (b.theta[l], b.delta[l], b.d0[l], b.d1[l]);
        let tomt = t * (F::one() - t);
        den[l] = delta + (d0 + d1 - two * delta) * tomt;
        num[l] = delta * delta * (d1 * t * t + two * delta * tomt + d0 * (F::one() - t) * (F::one() - t));
    }
    let (ln_num, ln_den) = (F::fln_lanes(&num), F::fln_lanes(&den));
    map(|l| ln_num[l] - two * ln_den[l])
}

/// y = s(x) and log|ds/dx| of `LANES` elements: inputs `xs`, raw parameters `ps` (element-major,
/// `3K − 1` per element); identity outside [−B, B]. Exactly what [`super::kernel::rqs_element`]
/// computes in the forward direction, operation for operation.
#[inline(always)]
pub(super) fn forward_block<F: Real>(
    c: &Consts<F>,
    xs: &[F],
    ps: &[F],
    ys: &mut [F],
    ls: &mut [F],
    s: &mut LaneScratch<F>,
) {
    let m = 3 * c.k - 1;
    debug_assert!(xs.len() == LANES && ps.len() == LANES * m);
    gather_raw(m, ps, &mut s.raw);
    let two = F::one() + F::one();
    let inside: Lanes<bool> = map(|l| c.inside(xs[l]));
    // Outside lanes compute on 0 (a point inside) and keep their input.
    let x: Lanes<F> = map(|l| if inside[l] { xs[l] } else { F::zero() });
    s.build_knots(c);
    let b = forward_bins(c, s, &x);
    let ladj = log_derivative(&b);
    for l in 0..LANES {
        let (t, delta) = (b.theta[l], b.delta[l]);
        let tomt = t * (F::one() - t);
        let numerator = b.height[l] * (delta * t * t + b.d0[l] * tomt);
        let denominator = delta + (b.d0[l] + b.d1[l] - two * delta) * tomt;
        let y = s.cum_h[b.index[l]][l] + numerator / denominator;
        (ys[l], ls[l]) = if inside[l] { (y, ladj[l]) } else { (xs[l], F::zero()) };
    }
}

/// The bins of the inverse direction at inputs `y` (inside [−B, B]), θ the root of nflows'
/// formula, as the scalar `inverse`.
#[inline(always)]
fn inverse_bins<F: Real>(c: &Consts<F>, s: &LaneScratch<F>, y: &Lanes<F>) -> Bins<F> {
    let two = F::one() + F::one();
    let index = search(c, &s.cum_h, y);
    let (cw, ch) = (&s.cum_w, &s.cum_h);
    let width = map(|l| cw[index[l] + 1][l] - cw[index[l]][l]);
    let ch0 = map(|l| ch[index[l]][l]);
    let height = map(|l| ch[index[l] + 1][l] - ch0[l]);
    let delta = map(|l| height[l] / width[l]);
    let (d0, d1) = bin_derivatives(c, &s.raw, &index);
    let mut root = [F::zero(); LANES];
    for l in 0..LANES {
        let (h, delta, d0, d1) = (height[l], delta[l], d0[l], d1[l]);
        let dy = y[l] - ch0[l];
        let sl = d0 + d1 - two * delta;
        let a = dy * sl + h * (delta - d0);
        let b = h * d0 - dy * sl;
        let cc = -delta * dy;
        let disc = b * b - F::from(4.0).unwrap() * a * cc;
        root[l] = (two * cc) / (-b - disc.max(F::zero()).sqrt());
    }
    Bins { index, theta: root, width, height, delta, d0, d1 }
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
    let m = 3 * c.k - 1;
    debug_assert!(ys.len() == LANES && ps.len() == LANES * m);
    gather_raw(m, ps, &mut s.raw);
    let inside: Lanes<bool> = map(|l| c.inside(ys[l]));
    // Outside lanes compute on 0 (a point inside) and keep their input.
    let y: Lanes<F> = map(|l| if inside[l] { ys[l] } else { F::zero() });
    s.build_knots(c);
    let b = inverse_bins(c, s, &y);
    let ladj = log_derivative(&b);
    for l in 0..LANES {
        let x = b.theta[l] * b.width[l] + s.cum_w[b.index[l]][l];
        (xs[l], ls[l]) = if inside[l] { (x, -ladj[l]) } else { (ys[l], F::zero()) };
    }
}

/// The gradients of `LANES` elements, as [`super::kernel::rqs_element_backward`] computes them
/// operation for operation: given the upstream gradients `gys` (on the output) and `gls` (on
/// log|det|), writes the raw parameters' gradients into `gps` (element-major, overwritten) and the
/// inputs' into `gxs`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_block<F: Real>(
    c: &Consts<F>,
    dir: Direction,
    xs: &[F],
    ps: &[F],
    gys: &[F],
    gls: &[F],
    gps: &mut [F],
    gxs: &mut [F],
    s: &mut LaneScratch<F>,
) {
    let k = c.k;
    let m = 3 * k - 1;
    debug_assert!(xs.len() == LANES && ps.len() == LANES * m && gps.len() == LANES * m);
    gather_raw(m, ps, &mut s.raw);
    let inside: Lanes<bool> = map(|l| c.inside(xs[l]));
    let x: Lanes<F> = map(|l| if inside[l] { xs[l] } else { F::zero() });
    s.build_knots(c);
    let gy_in: Lanes<F> = map(|l| gys[l]);
    let gl_in: Lanes<F> = map(|l| gls[l]);
    let (b, gy, gl, cy) = match dir {
        Direction::Forward => (forward_bins(c, s, &x), gy_in, gl_in, None),
        Direction::Inverse => {
            // As the scalar kernel: one forward backprop at the solution with cy, −g_ladj.
            let b = inverse_bins(c, s, &x);
            let f_x = F::fexp_lanes(&log_derivative(&b));
            let l_theta = local_grads(&b).l_theta;
            let cy = map(|l| (-gy_in[l] + gl_in[l] * (l_theta[l] / b.width[l])) / f_x[l]);
            (b, cy, map(|l| -gl_in[l]), Some(cy))
        }
    };
    let g_x = backprop(c, s, &b, &gy, &gl);
    for l in 0..LANES {
        for j in 0..m {
            gps[l * m + j] = if inside[l] { s.grad[j][l] } else { F::zero() };
        }
        let gx = match cy {
            None => g_x[l],
            Some(cy) => -cy[l],
        };
        gxs[l] = if inside[l] { gx } else { gys[l] };
    }
}

/// ∂y and ∂log|dy/dx| with respect to each lane's bin quantities (the scalar `LocalGrads`).
struct LocalGrads<F> {
    y_theta: Lanes<F>,
    y_delta: Lanes<F>,
    y_d0: Lanes<F>,
    y_d1: Lanes<F>,
    y_height: Lanes<F>,
    l_theta: Lanes<F>,
    l_delta: Lanes<F>,
    l_d0: Lanes<F>,
    l_d1: Lanes<F>,
}

#[inline(always)]
fn local_grads<F: Real>(b: &Bins<F>) -> LocalGrads<F> {
    let (one, two) = (F::one(), F::one() + F::one());
    let zero = [F::zero(); LANES];
    let mut g = LocalGrads {
        y_theta: zero,
        y_delta: zero,
        y_d0: zero,
        y_d1: zero,
        y_height: zero,
        l_theta: zero,
        l_delta: zero,
        l_d0: zero,
        l_d1: zero,
    };
    for l in 0..LANES {
        let (t, delta, d0, d1, height) = (b.theta[l], b.delta[l], b.d0[l], b.d1[l], b.height[l]);
        let tomt = t * (one - t);
        let s = d0 + d1 - two * delta;
        let num = delta * t * t + d0 * tomt;
        let den = delta + s * tomt;
        let r = num / den;
        let n_theta = two * delta * t + d0 * (one - two * t);
        let d_theta = s * (one - two * t);
        let d_delta = one - two * tomt;
        let gnum = d1 * t * t + two * delta * tomt + d0 * (one - t) * (one - t);
        let g_theta = two * d1 * t + two * delta * (one - two * t) - two * d0 * (one - t);
        let h_over_den = height / den;
        g.y_theta[l] = h_over_den * (n_theta - r * d_theta);
        g.y_delta[l] = h_over_den * (t * t - r * d_delta);
        g.y_d0[l] = h_over_den * tomt * (one - r);
        g.y_d1[l] = -h_over_den * r * tomt;
        g.y_height[l] = r;
        g.l_theta[l] = g_theta / gnum - two * d_theta / den;
        g.l_delta[l] = two / delta + two * tomt / gnum - two * d_delta / den;
        g.l_d0[l] = (one - t) * (one - t) / gnum - two * tomt / den;
        g.l_d1[l] = t * t / gnum - two * tomt / den;
    }
    g
}

/// The scalar `backprop` per lane: the gradient of `gy·y + gl·log|dy/dx|` (the forward spline
/// at the bins `b`) with respect to the raw parameters into `s.grad`, returned: the input's.
#[inline(always)]
fn backprop<F: Real>(c: &Consts<F>, s: &mut LaneScratch<F>, b: &Bins<F>, gy: &Lanes<F>, gl: &Lanes<F>) -> Lanes<F> {
    let k = c.k;
    let g = local_grads(b);
    let g_theta = map(|l| gy[l] * g.y_theta[l] + gl[l] * g.l_theta[l]);
    let g_delta = map(|l| gy[l] * g.y_delta[l] + gl[l] * g.l_delta[l]);
    let g_d0 = map(|l| gy[l] * g.y_d0[l] + gl[l] * g.l_d0[l]);
    let g_d1 = map(|l| gy[l] * g.y_d1[l] + gl[l] * g.l_d1[l]);
    let g_x = map(|l| g_theta[l] / b.width[l]);
    let g_w = map(|l| -(g_theta[l] * b.theta[l] + g_delta[l] * b.delta[l]) / b.width[l]);
    let g_h = map(|l| gy[l] * g.y_height[l] + g_delta[l] / b.width[l]);
    let g_cw = [map(|l| -g_x[l] - g_w[l]), g_w];
    let g_ch = [map(|l| gy[l] - g_h[l]), g_h];
    for r in s.grad.iter_mut() {
        *r = [F::zero(); LANES];
    }
    let (grad_w, rest) = s.grad.split_at_mut(k);
    let (grad_h, grad_d) = rest.split_at_mut(k);
    accumulate_softmax(&s.soft_w, &b.index, &g_cw, c.span * c.scale_w, grad_w, &mut s.g_soft);
    accumulate_softmax(&s.soft_h, &b.index, &g_ch, c.span * c.scale_h, grad_h, &mut s.g_soft);
    for (offset, g_dj) in [(0, g_d0), (1, g_d1)] {
        let j = map(|l| b.index[l] + offset);
        let slope = softplus_grad(&derivative_params(c, &s.raw, &j));
        for l in 0..LANES {
            if (1..k).contains(&j[l]) {
                let idx = j[l] - 1;
                grad_d[idx][l] = grad_d[idx][l] + g_dj[l] * slope[l];
            }
        }
    }
    g_x
}

/// The scalar `accumulate_softmax` per lane: gradients on knots `bin` and `bin + 1` (the pinned
/// ends excluded) through the cumulated softmax into the raw parameters `grad`.
#[inline(always)]
fn accumulate_softmax<F: Real>(
    soft: &[Lanes<F>],
    bin: &Lanes<usize>,
    g_knots: &[Lanes<F>; 2],
    factor: F,
    grad: &mut [Lanes<F>],
    g_soft: &mut [Lanes<F>],
) {
    let kk = soft.len();
    for (i, gs) in g_soft.iter_mut().enumerate() {
        let mut acc = [F::zero(); LANES];
        for (offset, g) in g_knots.iter().enumerate() {
            acc = map(|l| {
                let j = bin[l] + offset;
                if j >= 1 && j < kk && i < j {
                    acc[l] + factor * g[l]
                } else {
                    acc[l]
                }
            });
        }
        *gs = acc;
    }
    let mut dot = [F::zero(); LANES];
    for (s, g) in soft.iter().zip(g_soft.iter()) {
        dot = map(|l| dot[l] + s[l] * g[l]);
    }
    for ((gr, s), g) in grad.iter_mut().zip(soft).zip(g_soft.iter()) {
        *gr = map(|l| gr[l] + s[l] * (g[l] - dot[l]));
    }
}

/// The scalar `softplus_grad` per lane: 1 above the threshold, 1/(1 + e^−x) below.
#[inline(always)]
fn softplus_grad<F: Real>(x: &Lanes<F>) -> Lanes<F> {
    let threshold = F::from(SOFTPLUS_THRESHOLD).unwrap();
    let neg = map(|l| if x[l] > threshold { F::zero() } else { -x[l] });
    let e = F::fexp_lanes(&neg);
    map(|l| if x[l] > threshold { F::one() } else { F::one() / (F::one() + e[l]) })
}
