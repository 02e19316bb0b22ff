//! The spline's fast arithmetic: the [`Real`] trait (polynomial `exp` / `ln` for f32), softplus
//! and softmax as nflows computes them.

use num_traits::Float;

/// The spline's arithmetic type. f32 uses polynomial `exp` / `ln` (relative error ~1e-7, like
/// libm's) that compile to a few vector-friendly instructions instead of library calls; f64 keeps
/// libm (it is what the float64 reference test checks).
pub trait Real: Float + Send + Sync {
    fn fexp(self) -> Self;
    fn fln(self) -> Self;
    /// exp(x) for x ≤ 0 (and NaN), branch-free so that a loop of them vectorises.
    fn fexp_nonpositive(self) -> Self;
    /// [`Real::fexp`] of every lane, bit for bit; f32 takes a branch-free loop when every lane is
    /// in the polynomial's range.
    #[inline(always)]
    fn fexp_lanes<const L: usize>(x: &[Self; L]) -> [Self; L] {
        std::array::from_fn(|l| x[l].fexp())
    }
    /// [`Real::fln`] of every lane, bit for bit (branch-free for normal positive f32 lanes).
    #[inline(always)]
    fn fln_lanes<const L: usize>(x: &[Self; L]) -> [Self; L] {
        std::array::from_fn(|l| x[l].fln())
    }
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

    #[inline(always)]
    fn fln(self) -> Self {
        if !(f32::MIN_POSITIVE..f32::INFINITY).contains(&self) {
            return self.ln();
        }
        ln_f32_normal(self)
    }

    #[inline(always)]
    fn fexp_lanes<const L: usize>(x: &[f32; L]) -> [f32; L] {
        if x.iter().fold(true, |ok, v| ok & (-87.0..=88.0).contains(v)) {
            std::array::from_fn(|l| exp_f32_in_range(x[l]))
        } else {
            std::array::from_fn(|l| x[l].fexp())
        }
    }

    #[inline(always)]
    fn fln_lanes<const L: usize>(x: &[f32; L]) -> [f32; L] {
        if x.iter().fold(true, |ok, v| ok & (f32::MIN_POSITIVE..f32::INFINITY).contains(v)) {
            std::array::from_fn(|l| ln_f32_normal(x[l]))
        } else {
            std::array::from_fn(|l| x[l].fln())
        }
    }
}

/// ln(x) = e·ln2 + 2·atanh((m − 1)/(m + 1)) with x = m·2ᵉ, m ∈ [√½, √2), for normal positive x;
/// branch-free (the mantissa fold is a select).
#[inline(always)]
fn ln_f32_normal(x: f32) -> f32 {
    let bits = x.to_bits() as i32;
    let e = ((bits >> 23) & 0xff) - 127;
    let m = f32::from_bits(((bits & 0x007f_ffff) | 0x3f80_0000) as u32);
    let fold = m > std::f32::consts::SQRT_2;
    let m = if fold { m * 0.5 } else { m };
    let e = e + fold as i32;
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let p = 2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (0.2 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 / 11.0)))));
    p + e as f32 * std::f32::consts::LN_2
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

/// torch's softplus returns its input above this threshold.
pub(super) const SOFTPLUS_THRESHOLD: f64 = 20.0;

#[inline(always)]
pub(super) fn softplus<F: Real>(x: F) -> F {
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
pub(super) fn softplus_grad<F: Real>(x: F) -> F {
    if x > F::from(SOFTPLUS_THRESHOLD).unwrap() {
        F::one()
    } else {
        F::one() / (F::one() + (-x).fexp())
    }
}

#[inline(always)]
pub(super) fn softmax<F: Real>(u: &[F], out: &mut [F]) {
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
