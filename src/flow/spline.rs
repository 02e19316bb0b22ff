//! Rational-quadratic spline with linear tails (Durkan et al. 2019, "Neural Spline Flows"),
//! computed exactly as nflows 0.14's `unconstrained_rational_quadratic_spline` does it.
//!
//! The spline knows nothing about networks: it takes, per element, an input and the raw
//! (unnormalised) parameters — `K` widths, `K` heights and `K − 1` inner derivatives — and returns
//! the output and log|dy/dx|. Outside `[−B, B]` it is the identity with log|det| = 0; the boundary
//! derivatives are fixed so that the linear tails join with slope 1.
//!
//! Everything lives in one scalar implementation ([`Knots`]): forward, inverse, and the analytic
//! first derivatives of (output, log|det|) with respect to the input and to every raw parameter.
//! [`rqs`] wraps it into a candle op with a backward pass (fused, parallel over rows) so that
//! training does not build dozens of small tensor ops per spline.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use num_traits::Float;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The spline's arithmetic type. f32 uses polynomial `exp` / `ln` (relative error ~1e-7, like
/// libm's) that compile to a few vector-friendly instructions instead of library calls; f64 keeps
/// libm (it is what the float64 reference test checks).
pub trait Real: Float + Send + Sync {
    fn fexp(self) -> Self;
    fn fln(self) -> Self;
    /// exp(x) for x ≤ 0 (and NaN), branch-free so that a loop of them vectorises.
    fn fexp_nonpositive(self) -> Self;
}

impl Real for f64 {
    #[inline(always)]
    fn fexp(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn fexp_nonpositive(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn fln(self) -> Self {
        self.ln()
    }
}

impl Real for f32 {
    #[inline(always)]
    fn fexp(self) -> Self {
        if !(-87.0..=88.0).contains(&self) {
            return self.exp();
        }
        exp_f32_in_range(self)
    }

    #[inline(always)]
    fn fexp_nonpositive(self) -> Self {
        // Below −87 the result is < 2⁻¹²⁵ ≈ 0 for a softmax term; NaN compares false and passes.
        exp_f32_in_range(if self < -87.0 { -87.0 } else { self })
    }

    /// ln(x) = e·ln2 + 2·atanh((m − 1)/(m + 1)) with x = m·2ᵉ, m ∈ [√½, √2).
    #[inline(always)]
    fn fln(self) -> Self {
        if !(f32::MIN_POSITIVE..f32::INFINITY).contains(&self) {
            return self.ln();
        }
        let bits = self.to_bits() as i32;
        let mut e = ((bits >> 23) & 0xff) - 127;
        let mut m = f32::from_bits(((bits & 0x007f_ffff) | 0x3f80_0000) as u32);
        if m > std::f32::consts::SQRT_2 {
            m *= 0.5;
            e += 1;
        }
        let s = (m - 1.0) / (m + 1.0);
        let s2 = s * s;
        let p = 2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (0.2 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 / 11.0)))));
        p + e as f32 * std::f32::consts::LN_2
    }
}

/// exp(x) = 2ⁿ·eʳ for x ∈ [−87, 88]: x = n·ln2 + r, |r| ≤ ln2/2, eʳ by its Taylor series to r⁷
/// (relative error < 1e-7).
#[inline(always)]
fn exp_f32_in_range(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits((((t.to_bits() as i32).wrapping_sub(0x4B40_0000) + 127) << 23) as u32);
    p * scale
}

/// The largest number of bins a spline may have (fixed-size scratch arrays keep the kernel
/// allocation-free).
pub const MAX_BINS: usize = 64;

/// nflows' `searchsorted` adds this to the last knot so that an input equal to the right
/// boundary falls into the last bin.
const SEARCH_EPS: f64 = 1e-6;

/// torch's softplus returns its input above this threshold.
const SOFTPLUS_THRESHOLD: f64 = 20.0;

/// Shape and numerical floor of a spline, as nflows names them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplineConfig {
    pub num_bins: usize,
    pub tail_bound: f64,
    pub min_bin_width: f64,
    pub min_bin_height: f64,
    pub min_derivative: f64,
}

impl Default for SplineConfig {
    /// The settings both papers' code uses.
    fn default() -> Self {
        Self { num_bins: 8, tail_bound: 14.0, min_bin_width: 1e-6, min_bin_height: 1e-6, min_derivative: 1e-6 }
    }
}

impl SplineConfig {
    /// Raw parameters per feature: K widths, K heights, K − 1 inner derivatives.
    pub fn params_per_feature(&self) -> usize {
        3 * self.num_bins - 1
    }

    /// Checks the ranges nflows asserts at run time; the message names the offending field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let k = self.num_bins as f64;
        if !(2..=MAX_BINS).contains(&self.num_bins) {
            return Err(("num_bins", format!("must be in 2..={MAX_BINS}, got {}", self.num_bins)));
        }
        if !(self.tail_bound.is_finite() && self.tail_bound > 0.0) {
            return Err(("tail_bound", format!("must be finite and > 0, got {}", self.tail_bound)));
        }
        if !(self.min_bin_width >= 0.0 && self.min_bin_width * k < 1.0) {
            return Err(("min_bin_width", "must be ≥ 0 and < 1/num_bins".into()));
        }
        if !(self.min_bin_height >= 0.0 && self.min_bin_height * k < 1.0) {
            return Err(("min_bin_height", "must be ≥ 0 and < 1/num_bins".into()));
        }
        if !(self.min_derivative >= 0.0 && self.min_derivative < 1.0) {
            return Err(("min_derivative", "must be in [0, 1)".into()));
        }
        Ok(())
    }
}

/// Which way the spline is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// y = s(x), log|ds/dx|.
    Forward,
    /// x = s⁻¹(y), log|ds⁻¹/dy| = −log|ds/dx|.
    Inverse,
}

/// Per-dtype constants derived from a [`SplineConfig`] (the GPU kernels take the same values).
#[derive(Clone, Copy)]
pub(super) struct Consts<F> {
    pub(super) k: usize,
    pub(super) left: F,
    pub(super) span: F,
    pub(super) min_w: F,
    pub(super) min_h: F,
    pub(super) min_d: F,
    pub(super) scale_w: F,
    pub(super) scale_h: F,
    pub(super) boundary_derivative: F,
    pub(super) search_eps: F,
}

impl<F: Real> Consts<F> {
    pub(super) fn new(cfg: &SplineConfig) -> Self {
        let c = |v: f64| F::from(v).unwrap();
        let k = cfg.num_bins;
        // nflows pads the inner derivatives with log(exp(1 − min_d) − 1), computed in float64,
        // then applies min_d + softplus to it in the tensor's dtype.
        let pad = ((1.0 - cfg.min_derivative).exp() - 1.0).ln();
        Self {
            k,
            left: c(-cfg.tail_bound),
            span: c(cfg.tail_bound) - c(-cfg.tail_bound),
            min_w: c(cfg.min_bin_width),
            min_h: c(cfg.min_bin_height),
            min_d: c(cfg.min_derivative),
            scale_w: F::one() - c(cfg.min_bin_width) * c(k as f64),
            scale_h: F::one() - c(cfg.min_bin_height) * c(k as f64),
            boundary_derivative: c(cfg.min_derivative) + softplus(c(pad)),
            search_eps: c(SEARCH_EPS),
        }
    }

    #[inline(always)]
    fn inside(&self, v: F) -> bool {
        v >= self.left && v <= self.left + self.span
    }
}

#[inline(always)]
fn softplus<F: Real>(x: F) -> F {
    if x > F::from(SOFTPLUS_THRESHOLD).unwrap() {
        x
    } else {
        log1p(x.fexp())
    }
}

/// log(1 + e) by Kahan's formulation: a few ulp, but one `ln` instead of glibc's much slower
/// `log1p` (which dominated the spline's cost in f32).
#[inline(always)]
fn log1p<F: Real>(e: F) -> F {
    let u = F::one() + e;
    if u == F::one() {
        e
    } else {
        u.fln() * e / (u - F::one())
    }
}

#[inline(always)]
fn softplus_grad<F: Real>(x: F) -> F {
    if x > F::from(SOFTPLUS_THRESHOLD).unwrap() {
        F::one()
    } else {
        F::one() / (F::one() + (-x).fexp())
    }
}

#[inline(always)]
fn softmax<F: Real>(u: &[F], out: &mut [F]) {
    let max = u.iter().copied().fold(F::neg_infinity(), F::max);
    let mut sum = F::zero();
    for (o, &v) in out.iter_mut().zip(u) {
        *o = (v - max).fexp_nonpositive();
        sum = sum + *o;
    }
    let inv = F::one() / sum;
    for o in out.iter_mut() {
        *o = *o * inv;
    }
}

/// nflows' `searchsorted`: the number of knots `≤ v` minus one, the last knot raised by 1e-6.
#[inline(always)]
fn search<F: Float>(knots: &[F], v: F, eps: F) -> usize {
    let last = knots.len() - 1;
    let mut count = 0usize;
    for (j, &loc) in knots.iter().enumerate() {
        let loc = if j == last { loc + eps } else { loc };
        if v >= loc {
            count += 1;
        }
    }
    count.saturating_sub(1).min(last - 1)
}

/// The knots of one element's spline, built from its raw parameters in a caller's scratch
/// buffer ([`scratch_len`] values), so evaluating an element allocates and zeroes nothing.
struct Knots<'a, F> {
    /// Softmax of the raw widths / heights (kept for the backward pass).
    soft_w: &'a [F],
    soft_h: &'a [F],
    /// Knot positions, K + 1 each, pinned to ±B at both ends.
    cum_w: &'a [F],
    cum_h: &'a [F],
}

/// Scratch values one element needs: the knots (4K + 2) and the backward pass's K.
fn scratch_len(k: usize) -> usize {
    5 * k + 2
}

/// Where an input falls and the bin's local quantities (Durkan et al., eq. 4–5 notation).
struct Bin<F> {
    k: usize,
    theta: F,
    width: F,
    height: F,
    delta: F,
    d0: F,
    d1: F,
}

/// Partial derivatives of y and log|dy/dx| with respect to a bin's local quantities.
struct LocalGrads<F> {
    y_theta: F,
    y_delta: F,
    y_d0: F,
    y_d1: F,
    /// ∂y/∂height at fixed δ (the explicit factor in y = ch + h·N/D).
    y_height: F,
    l_theta: F,
    l_delta: F,
    l_d0: F,
    l_d1: F,
}

impl<'a, F: Real> Knots<'a, F> {
    /// Builds the knots into `scratch` (its first 4K + 2 values); returns them and the rest.
    #[inline(always)]
    fn new(c: &Consts<F>, params: &[F], scratch: &'a mut [F]) -> (Self, &'a mut [F]) {
        let k = c.k;
        let (soft_w, rest) = scratch.split_at_mut(k);
        let (soft_h, rest) = rest.split_at_mut(k);
        let (cum_w, rest) = rest.split_at_mut(k + 1);
        let (cum_h, rest) = rest.split_at_mut(k + 1);
        softmax(&params[..k], soft_w);
        softmax(&params[k..2 * k], soft_h);
        Self::cumulate(soft_w, c.min_w, c.scale_w, c, cum_w);
        Self::cumulate(soft_h, c.min_h, c.scale_h, c, cum_h);
        (Knots { soft_w, soft_h, cum_w, cum_h }, rest)
    }

    /// The derivative at knot `j`: the tails' slope at both ends, min_d + softplus inside. Only
    /// the two knots of the bin in use are ever needed, so they are computed on demand.
    #[inline(always)]
    fn deriv(c: &Consts<F>, params: &[F], j: usize) -> F {
        if j == 0 || j == c.k {
            c.boundary_derivative
        } else {
            c.min_d + softplus(params[2 * c.k + j - 1])
        }
    }

    /// min + scale·softmax, cumulative sum padded with 0, mapped to [−B, B], ends pinned.
    #[inline(always)]
    fn cumulate(soft: &[F], min: F, scale: F, c: &Consts<F>, out: &mut [F]) {
        let k = soft.len();
        let mut acc = F::zero();
        out[0] = c.left;
        for j in 0..k {
            acc = acc + (min + scale * soft[j]);
            out[j + 1] = c.span * acc + c.left;
        }
        out[k] = c.left + c.span;
    }

    #[inline(always)]
    fn bin(&self, c: &Consts<F>, params: &[F], k: usize, theta: F) -> Bin<F> {
        let width = self.cum_w[k + 1] - self.cum_w[k];
        let height = self.cum_h[k + 1] - self.cum_h[k];
        let (d0, d1) = (Self::deriv(c, params, k), Self::deriv(c, params, k + 1));
        Bin { k, theta, width, height, delta: height / width, d0, d1 }
    }

    /// y = s(x) and log|s'(x)| for an input inside [−B, B].
    #[inline(always)]
    fn forward(&self, c: &Consts<F>, params: &[F], x: F) -> (F, F, Bin<F>) {
        let k = search(self.cum_w, x, c.search_eps);
        let w = self.cum_w[k + 1] - self.cum_w[k];
        let bin = self.bin(c, params, k, (x - self.cum_w[k]) / w);
        let (t, one) = (bin.theta, F::one());
        let tomt = t * (one - t);
        let numerator = bin.height * (bin.delta * t * t + bin.d0 * tomt);
        let denominator = bin.delta + (bin.d0 + bin.d1 - two::<F>() * bin.delta) * tomt;
        let y = self.cum_h[k] + numerator / denominator;
        (y, log_derivative(&bin), bin)
    }

    /// x = s⁻¹(y) and log|ds⁻¹/dy| for an input inside [−B, B] (the root formula of nflows).
    #[inline(always)]
    fn inverse(&self, c: &Consts<F>, params: &[F], y: F) -> (F, F, Bin<F>) {
        let k = search(self.cum_h, y, c.search_eps);
        let w = self.cum_w[k + 1] - self.cum_w[k];
        let h = self.cum_h[k + 1] - self.cum_h[k];
        let delta = h / w;
        let (d0, d1) = (Self::deriv(c, params, k), Self::deriv(c, params, k + 1));
        let dy = y - self.cum_h[k];
        let s = d0 + d1 - two::<F>() * delta;
        let a = dy * s + h * (delta - d0);
        let b = h * d0 - dy * s;
        let cc = -delta * dy;
        let disc = b * b - F::from(4.0).unwrap() * a * cc;
        let root = (two::<F>() * cc) / (-b - disc.max(F::zero()).sqrt());
        let x = root * w + self.cum_w[k];
        let bin = Bin { k, theta: root, width: w, height: h, delta, d0, d1 };
        (x, -log_derivative(&bin), bin)
    }

    /// Accumulates the gradient of `gy·y + gl·log|dy/dx|` (the forward spline at `bin`) with
    /// respect to the raw parameters into `grad` (length 3K − 1) and returns its gradient with
    /// respect to the input x.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn backprop(&self, c: &Consts<F>, params: &[F], bin: &Bin<F>, gy: F, gl: F, grad: &mut [F], g_soft: &mut [F]) -> F {
        let kk = c.k;
        let g = local_grads(bin);
        let g_theta = gy * g.y_theta + gl * g.l_theta;
        let g_delta = gy * g.y_delta + gl * g.l_delta;
        let g_d0 = gy * g.y_d0 + gl * g.l_d0;
        let g_d1 = gy * g.y_d1 + gl * g.l_d1;
        // θ = (x − cw_k)/w, δ = h/w, w = cw_{k+1} − cw_k, h = ch_{k+1} − ch_k.
        let g_x = g_theta / bin.width;
        let g_w = -(g_theta * bin.theta + g_delta * bin.delta) / bin.width;
        let g_h = gy * g.y_height + g_delta / bin.width;
        let k = bin.k;
        let mut g_cw = [F::zero(); 2];
        let mut g_ch = [F::zero(); 2];
        g_cw[0] = -g_x - g_w;
        g_cw[1] = g_w;
        g_ch[0] = gy - g_h;
        g_ch[1] = g_h;
        accumulate_softmax(self.soft_w, k, g_cw, c.span * c.scale_w, &mut grad[..kk], g_soft);
        accumulate_softmax(self.soft_h, k, g_ch, c.span * c.scale_h, &mut grad[kk..2 * kk], g_soft);
        for (j, g_dj) in [(k, g_d0), (k + 1, g_d1)] {
            if (1..kk).contains(&j) {
                let idx = 2 * kk + j - 1;
                grad[idx] = grad[idx] + g_dj * softplus_grad(params[idx]);
            }
        }
        g_x
    }
}

#[inline(always)]
fn two<F: Float>() -> F {
    F::one() + F::one()
}

/// log|dy/dx| at a bin's θ: log(δ²·(d1θ² + 2δθ(1−θ) + d0(1−θ)²)) − 2·log(denominator).
#[inline(always)]
fn log_derivative<F: Real>(b: &Bin<F>) -> F {
    let (t, one, two) = (b.theta, F::one(), two::<F>());
    let tomt = t * (one - t);
    let denominator = b.delta + (b.d0 + b.d1 - two * b.delta) * tomt;
    let numerator = b.delta * b.delta * (b.d1 * t * t + two * b.delta * tomt + b.d0 * (one - t) * (one - t));
    numerator.fln() - two * denominator.fln()
}

#[inline(always)]
fn local_grads<F: Float>(b: &Bin<F>) -> LocalGrads<F> {
    let (t, one, two) = (b.theta, F::one(), two::<F>());
    let tomt = t * (one - t);
    let s = b.d0 + b.d1 - two * b.delta;
    let num = b.delta * t * t + b.d0 * tomt;
    let den = b.delta + s * tomt;
    let r = num / den;
    let n_theta = two * b.delta * t + b.d0 * (one - two * t);
    let d_theta = s * (one - two * t);
    let d_delta = one - two * tomt;
    let gnum = b.d1 * t * t + two * b.delta * tomt + b.d0 * (one - t) * (one - t);
    let g_theta = two * b.d1 * t + two * b.delta * (one - two * t) - two * b.d0 * (one - t);
    let h_over_den = b.height / den;
    LocalGrads {
        y_theta: h_over_den * (n_theta - r * d_theta),
        y_delta: h_over_den * (t * t - r * d_delta),
        y_d0: h_over_den * tomt * (one - r),
        y_d1: -h_over_den * r * tomt,
        y_height: r,
        l_theta: g_theta / gnum - two * d_theta / den,
        l_delta: two / b.delta + two * tomt / gnum - two * d_delta / den,
        l_d0: (one - t) * (one - t) / gnum - two * tomt / den,
        l_d1: t * t / gnum - two * tomt / den,
    }
}

/// Back-propagates gradients on knots k and k+1 (the pinned ends excluded) through
/// knot_j = left + span·Σ_{i<j}(min + scale·softmax_i) and the softmax, into the raw parameters.
#[inline(always)]
fn accumulate_softmax<F: Float>(soft: &[F], k: usize, g_knots: [F; 2], factor: F, grad: &mut [F], g_soft: &mut [F]) {
    let kk = soft.len();
    // g_soft_i = factor · Σ_{j ∈ {k, k+1}, 1 ≤ j ≤ K−1, j > i} g_knot_j
    let g_soft = &mut g_soft[..kk];
    g_soft.iter_mut().for_each(|g| *g = F::zero());
    for (offset, &g) in g_knots.iter().enumerate() {
        let j = k + offset;
        if j >= 1 && j < kk {
            for gs in g_soft.iter_mut().take(j) {
                *gs = *gs + factor * g;
            }
        }
    }
    let dot = soft.iter().zip(g_soft.iter()).fold(F::zero(), |acc, (&s, &g)| acc + s * g);
    for i in 0..kk {
        grad[i] = grad[i] + soft[i] * (g_soft[i] - dot);
    }
}

/// One element: output and log|det| of the spline in `dir`.
pub fn rqs_scalar<F: Real>(cfg: &SplineConfig, dir: Direction, input: F, params: &[F]) -> (F, F) {
    let c = Consts::new(cfg);
    rqs_element(&c, dir, input, params, &mut vec![F::zero(); scratch_len(cfg.num_bins)])
}

#[inline(always)]
fn rqs_element<F: Real>(c: &Consts<F>, dir: Direction, input: F, params: &[F], scratch: &mut [F]) -> (F, F) {
    if !c.inside(input) {
        return (input, F::zero());
    }
    let (kn, _) = Knots::new(c, params, scratch);
    let (out, ladj, _) = match dir {
        Direction::Forward => kn.forward(c, params, input),
        Direction::Inverse => kn.inverse(c, params, input),
    };
    (out, ladj)
}

/// One element's backward pass: given upstream gradients `g_out` (on the output) and `g_ladj`
/// (on log|det|), writes the gradient with respect to the raw parameters into `grad_params`
/// (overwritten) and returns the gradient with respect to the input.
pub fn rqs_scalar_backward<F: Real>(
    cfg: &SplineConfig,
    dir: Direction,
    input: F,
    params: &[F],
    g_out: F,
    g_ladj: F,
    grad_params: &mut [F],
) -> F {
    let c = Consts::new(cfg);
    let mut scratch = vec![F::zero(); scratch_len(cfg.num_bins)];
    rqs_element_backward(&c, dir, input, params, g_out, g_ladj, grad_params, &mut scratch)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rqs_element_backward<F: Real>(
    c: &Consts<F>,
    dir: Direction,
    input: F,
    params: &[F],
    g_out: F,
    g_ladj: F,
    grad_params: &mut [F],
    scratch: &mut [F],
) -> F {
    grad_params.iter_mut().for_each(|g| *g = F::zero());
    if !c.inside(input) {
        return g_out;
    }
    let (kn, g_soft) = Knots::new(c, params, scratch);
    match dir {
        Direction::Forward => {
            let (_, _, bin) = kn.forward(c, params, input);
            kn.backprop(c, params, &bin, g_out, g_ladj, grad_params, g_soft)
        }
        Direction::Inverse => {
            // x = s⁻¹(y; p), L⁻ = −L(x; p) with L = log s'. With f_x = s'(x) = e^L:
            //   ∂x/∂y = 1/f_x, ∂x/∂p = −(∂s/∂p)/f_x,
            //   ∂L⁻/∂y = −L_x/f_x, ∂L⁻/∂p = L_x(∂s/∂p)/f_x − ∂L/∂p.
            // So grad_p = cy·∂s/∂p + cl·∂L/∂p with cy = (−g_out + g_ladj·L_x)/f_x, cl = −g_ladj,
            // and grad_y = −cy: one forward backprop at the solution x serves both.
            let (_, neg_l, bin) = kn.inverse(c, params, input);
            let f_x = (-neg_l).fexp();
            let l_x = local_grads(&bin).l_theta / bin.width;
            let cy = (-g_out + g_ladj * l_x) / f_x;
            kn.backprop(c, params, &bin, cy, -g_ladj, grad_params, g_soft);
            -cy
        }
    }
}

// ---------------------------------------------------------------------------------------------
// candle ops

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

fn contiguous_slice<'a, T>(s: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("rqs: expected a contiguous tensor"),
    }
}

/// Rows handed to one rayon task: small enough to balance two to sixteen cores, large enough
/// that scheduling costs nothing.
const MIN_ROWS_PER_TASK: usize = 16;

/// One row of the forward kernel.
#[inline(always)]
fn row_fwd<F: Real>(c: &Consts<F>, dir: Direction, xr: &[F], pr: &[F], yr: &mut [F], lr: &mut [F], scratch: &mut [F]) {
    let m = pr.len() / xr.len().max(1);
    for i in 0..xr.len() {
        let (y, l) = rqs_element(c, dir, xr[i], &pr[i * m..(i + 1) * m], scratch);
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
    scratch: &mut [F],
) {
    let m = pr.len() / xr.len().max(1);
    for i in 0..xr.len() {
        let gp = &mut gpr[i * m..(i + 1) * m];
        gxr[i] = rqs_element_backward(c, dir, xr[i], &pr[i * m..(i + 1) * m], gyr[i], glr[i], gp, scratch);
    }
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

    /// # Safety
    /// Only when [`available`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_fwd<F: Real>(
        c: &Consts<F>,
        dir: Direction,
        xr: &[F],
        pr: &[F],
        yr: &mut [F],
        lr: &mut [F],
        scratch: &mut [F],
    ) {
        super::row_fwd(c, dir, xr, pr, yr, lr, scratch)
    }

    /// # Safety
    /// Only when [`available`].
    #[target_feature(enable = "avx2,fma")]
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
        scratch: &mut [F],
    ) {
        super::row_bwd(c, dir, xr, pr, gyr, glr, gpr, gxr, scratch)
    }
}

fn dispatch_fwd<F: Real>(
    c: &Consts<F>,
    dir: Direction,
    xr: &[F],
    pr: &[F],
    yr: &mut [F],
    lr: &mut [F],
    scratch: &mut [F],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::row_fwd(c, dir, xr, pr, yr, lr, scratch) };
    }
    row_fwd(c, dir, xr, pr, yr, lr, scratch)
}

#[allow(clippy::too_many_arguments)]
fn dispatch_bwd<F: Real>(
    c: &Consts<F>,
    dir: Direction,
    xr: &[F],
    pr: &[F],
    gyr: &[F],
    glr: &[F],
    gpr: &mut [F],
    gxr: &mut [F],
    scratch: &mut [F],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::row_bwd(c, dir, xr, pr, gyr, glr, gpr, gxr, scratch) };
    }
    row_bwd(c, dir, xr, pr, gyr, glr, gpr, gxr, scratch)
}

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
                || vec![F::zero(); scratch_len(cfg.num_bins)],
                |scratch, ((yr, lr), (xr, pr))| dispatch_fwd(&c, dir, xr, pr, yr, lr, scratch),
            )
    });
    out
}

fn rqs_bwd_cpu<F: Real>(cfg: &SplineConfig, dir: Direction, xs: &[F], ps: &[F], gs: &[F], d: usize) -> Vec<F> {
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
                || vec![F::zero(); scratch_len(cfg.num_bins)],
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
                let out = rqs_fwd_cpu(&self.cfg, self.dir, contiguous_slice(x, l1)?, contiguous_slice(p, l2)?, d);
                Ok((CpuStorage::F32(out), shape))
            }
            (CpuStorage::F64(x), CpuStorage::F64(p)) => {
                let out = rqs_fwd_cpu(&self.cfg, self.dir, contiguous_slice(x, l1)?, contiguous_slice(p, l2)?, d);
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
        super::spline_cuda::forward(&self.cfg, self.dir, s1, l1, s2, l2, n, d)
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
                let (x, p, g) = (contiguous_slice(x, l1)?, contiguous_slice(p, l2)?, contiguous_slice(g, l3)?);
                Ok((CpuStorage::F32(rqs_bwd_cpu(&self.cfg, self.dir, x, p, g, d)), shape))
            }
            (CpuStorage::F64(x), CpuStorage::F64(p), CpuStorage::F64(g)) => {
                let (x, p, g) = (contiguous_slice(x, l1)?, contiguous_slice(p, l2)?, contiguous_slice(g, l3)?);
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
        super::spline_cuda::backward(&self.cfg, self.dir, s1, l1, s2, l2, s3, l3, n, d)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn cfg(k: usize, b: f64, m: f64) -> SplineConfig {
        SplineConfig { num_bins: k, tail_bound: b, min_bin_width: m, min_bin_height: m, min_derivative: m }
    }

    fn random_params(rng: &mut ChaCha8Rng, m: usize, scale: f64) -> Vec<f64> {
        (0..m).map(|_| rng.random_range(-scale..scale)).collect()
    }

    #[test]
    fn rqs_is_identity_outside_bound() {
        let c = cfg(8, 3.0, 1e-3);
        let p = vec![0.3; c.params_per_feature()];
        for x in [-10.0, -3.0001, 3.0001, 50.0] {
            for dir in [Direction::Forward, Direction::Inverse] {
                assert_eq!(rqs_scalar(&c, dir, x, &p), (x, 0.0));
            }
        }
    }

    #[test]
    fn rqs_inverse_undoes_forward_and_negates_log_det() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for &(k, b) in &[(4, 3.0), (8, 14.0), (16, 5.0)] {
            let c = cfg(k, b, 1e-6);
            for _ in 0..500 {
                let p = random_params(&mut rng, c.params_per_feature(), 3.0);
                let x = rng.random_range(-b..b);
                let (y, l) = rqs_scalar(&c, Direction::Forward, x, &p);
                let (x2, l2) = rqs_scalar(&c, Direction::Inverse, y, &p);
                assert!((x - x2).abs() < 1e-9 * (1.0 + x.abs()), "x {x} → {y} → {x2}");
                assert!((l + l2).abs() < 1e-8, "ladj {l} vs {l2}");
            }
        }
    }

    #[test]
    fn rqs_log_det_matches_finite_difference() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let c = cfg(8, 4.0, 1e-3);
        for _ in 0..300 {
            let p = random_params(&mut rng, c.params_per_feature(), 2.0);
            let x = rng.random_range(-3.9..3.9);
            let h = 1e-6;
            for dir in [Direction::Forward, Direction::Inverse] {
                let (_, l) = rqs_scalar(&c, dir, x, &p);
                let (yp, _) = rqs_scalar(&c, dir, x + h, &p);
                let (ym, _) = rqs_scalar(&c, dir, x - h, &p);
                let fd = ((yp - ym) / (2.0 * h)).ln();
                assert!((fd - l).abs() < 1e-5, "{dir:?} x={x}: fd {fd} vs {l}");
            }
        }
    }

    /// The analytic backward pass against central differences of the scalar function, for every
    /// raw parameter and the input, in both directions, for a random mix of upstream gradients.
    #[test]
    fn rqs_backward_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for &(k, b) in &[(4, 3.0), (8, 14.0)] {
            let c = cfg(k, b, 1e-3);
            let m = c.params_per_feature();
            for _ in 0..200 {
                let p = random_params(&mut rng, m, 2.0);
                let x = rng.random_range(-0.95 * b..0.95 * b);
                let (gy, gl) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
                for dir in [Direction::Forward, Direction::Inverse] {
                    let f = |x: f64, p: &[f64]| {
                        let (y, l) = rqs_scalar(&c, dir, x, p);
                        gy * y + gl * l
                    };
                    let mut grad = vec![0.0; m];
                    let gx = rqs_scalar_backward(&c, dir, x, &p, gy, gl, &mut grad);
                    let h = 1e-6;
                    let fd_x = (f(x + h, &p) - f(x - h, &p)) / (2.0 * h);
                    assert!((fd_x - gx).abs() < 1e-5 * (1.0 + fd_x.abs()), "{dir:?} dx: fd {fd_x} vs {gx}");
                    for j in 0..m {
                        let (mut pp, mut pm) = (p.clone(), p.clone());
                        pp[j] += h;
                        pm[j] -= h;
                        let fd = (f(x, &pp) - f(x, &pm)) / (2.0 * h);
                        assert!(
                            (fd - grad[j]).abs() < 1e-5 * (1.0 + fd.abs()),
                            "{dir:?} k={k} param {j}: fd {fd} vs {}",
                            grad[j]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rqs_tensor_op_equals_scalar_function() -> candle_core::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let c = cfg(8, 14.0, 1e-6);
        let (n, d, m) = (5, 7, c.params_per_feature());
        let xs: Vec<f64> = (0..n * d).map(|_| rng.random_range(-16.0..16.0)).collect();
        let ps: Vec<f64> = (0..n * d * m).map(|_| rng.random_range(-3.0..3.0)).collect();
        let dev = Device::Cpu;
        let xt = Tensor::from_vec(xs.clone(), (n, d), &dev)?;
        let pt = Tensor::from_vec(ps.clone(), (n, d, m), &dev)?;
        for dir in [Direction::Forward, Direction::Inverse] {
            let (y, l) = rqs(&xt, &pt, &c, dir)?;
            let (y, l) = (y.flatten_all()?.to_vec1::<f64>()?, l.flatten_all()?.to_vec1::<f64>()?);
            for i in 0..n * d {
                let (ey, el) = rqs_scalar(&c, dir, xs[i], &ps[i * m..(i + 1) * m]);
                assert_eq!((y[i], l[i]), (ey, el));
            }
        }
        Ok(())
    }

    #[test]
    fn rqs_tensor_gradients_reach_inputs_and_params() -> candle_core::Result<()> {
        let c = cfg(8, 3.0, 1e-3);
        let dev = Device::Cpu;
        let x = candle_core::Var::from_tensor(&Tensor::new(&[[0.5f64, -1.0]], &dev)?)?;
        let p =
            candle_core::Var::from_tensor(&(Tensor::ones((1, 2, c.params_per_feature()), DType::F64, &dev)? * 0.1)?)?;
        for dir in [Direction::Forward, Direction::Inverse] {
            let (y, l) = rqs(x.as_tensor(), p.as_tensor(), &c, dir)?;
            let loss = (y.sum_all()? + l.sum_all()?)?;
            let grads = loss.backward()?;
            let gx = grads.get(x.as_tensor()).expect("input gradient").to_vec2::<f64>()?;
            let mut grad = vec![0.0; c.params_per_feature()];
            let expected = rqs_scalar_backward(&c, dir, 0.5, &vec![0.1; c.params_per_feature()], 1.0, 1.0, &mut grad);
            assert!((gx[0][0] - expected).abs() < 1e-12);
            let gp = grads.get(p.as_tensor()).expect("param gradient").to_vec3::<f64>()?;
            for (a, b) in gp[0][0].iter().zip(&grad) {
                assert!((a - b).abs() < 1e-12);
            }
        }
        Ok(())
    }
}
