//! Rational-quadratic spline with linear tails (Durkan et al. 2019, "Neural Spline Flows"),
//! computed exactly as nflows 0.14's `unconstrained_rational_quadratic_spline` does it.
//!
//! The spline knows nothing about networks: it takes, per element, an input and the raw
//! (unnormalised) parameters — `K` widths, `K` heights and `K − 1` inner derivatives — and returns
//! the output and log|dy/dx|. Outside `[−B, B]` it is the identity with log|det| = 0; the boundary
//! derivatives are fixed so that the linear tails join with slope 1.
//!
//! Everything lives in one scalar implementation (`kernel.rs`): forward, inverse, and the analytic
//! first derivatives of (output, log|det|) with respect to the input and to every raw parameter.
//! [`rqs`] wraps it into a candle op with a backward pass (fused, parallel over rows) so that
//! training does not build dozens of small tensor ops per spline.
//!
//! - `mod.rs`: [`SplineConfig`] (its defaults, [`SplineConfig::DEFAULT`], are the only ones),
//!   [`Direction`];
//! - `math.rs`: the arithmetic type [`Real`], softplus, softmax;
//! - `kernel.rs`: one element, forward/inverse and backward;
//! - `lanes.rs`: the inverse on 16 elements at once (structure of arrays, bit-identical);
//! - `simd.rs`: the row loops, baseline, AVX2 + FMA and AVX-512;
//! - `op.rs`: the candle op [`rqs`] and its backward.

use serde::{Deserialize, Serialize};

mod kernel;
mod lanes;
mod math;
mod op;
mod simd;
#[cfg(test)]
mod tests;

#[cfg(feature = "cuda")]
pub(crate) use kernel::Consts;
pub use kernel::{rqs_scalar, rqs_scalar_backward};
pub use math::Real;
pub use op::rqs;

/// The largest number of bins a spline may have (fixed-size scratch arrays keep the kernel
/// allocation-free).
pub const MAX_BINS: usize = 64;

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
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl SplineConfig {
    /// The settings both papers' code uses (and the config files' defaults).
    pub const DEFAULT: Self =
        Self { num_bins: 8, tail_bound: 14.0, min_bin_width: 1e-6, min_bin_height: 1e-6, min_derivative: 1e-6 };

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
