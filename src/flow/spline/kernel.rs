//! The scalar kernel: one element's spline forward and inverse, and the analytic first
//! derivatives of (output, log|det|) with respect to the input and every raw parameter.

use num_traits::Float;

use super::math::{softmax, softplus, softplus_grad, Real};
use super::{Direction, SplineConfig};

/// nflows' `searchsorted` adds this to the last knot so that an input equal to the right
/// boundary falls into the last bin.
const SEARCH_EPS: f64 = 1e-6;

/// Per-dtype constants derived from a [`SplineConfig`] (the GPU kernels take the same values).
#[derive(Clone, Copy)]
pub(crate) struct Consts<F> {
    pub(crate) k: usize,
    pub(crate) left: F,
    pub(crate) span: F,
    pub(crate) min_w: F,
    pub(crate) min_h: F,
    pub(crate) min_d: F,
    pub(crate) scale_w: F,
    pub(crate) scale_h: F,
    pub(crate) boundary_derivative: F,
    pub(crate) search_eps: F,
}

impl<F: Real> Consts<F> {
    pub(crate) fn new(cfg: &SplineConfig) -> Self {
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
    pub(super) fn inside(&self, v: F) -> bool {
        v >= self.left && v <= self.left + self.span
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
pub(super) fn scratch_len(k: usize) -> usize {
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
pub(super) fn rqs_element<F: Real>(c: &Consts<F>, dir: Direction, input: F, params: &[F], scratch: &mut [F]) -> (F, F) {
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
pub(super) fn rqs_element_backward<F: Real>(
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
