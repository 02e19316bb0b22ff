//! The flow library: rational-quadratic splines parameterised by conditional MADE networks,
//! stacked into MAF teachers and IAF students.

mod amx;
pub mod autoregressive;
pub mod base;
pub mod error;
pub mod io;
pub mod layers;
pub mod made;
pub mod masked_linear;
pub mod nflows;
pub mod params;
pub mod permutation;
pub mod precision;
pub mod spline;
#[cfg(feature = "cuda")]
mod spline_cuda;
pub mod spline_reference;
pub mod stack;
mod staircase;
pub mod weights_file;

pub use precision::MatmulPrecision;
pub use spline::{Direction, SplineConfig};
pub use stack::{Flow, FlowKind, FlowSpec, Pass, PassOptions, Trace};

use candle_core::Tensor;

/// A bijection f: x ↦ z with a tractable log-determinant.
/// `xs` (n, d), `ctx` (n, c) or None → (`zs` (n, d), `ladj` (n,)), ladj = log|det ∂f/∂x| per sample.
pub trait Transform {
    fn forward(&self, xs: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)>;
    fn inverse(&self, zs: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)>;
}

impl Transform for Flow {
    fn forward(&self, xs: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)> {
        let p = self.to_latent(xs, ctx)?;
        Ok((p.output, p.ladj))
    }

    fn inverse(&self, zs: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)> {
        let p = self.to_data(zs, ctx)?;
        Ok((p.output, p.ladj))
    }
}

/// The spline alone, element-wise, with fixed raw parameters per feature (d, 3K−1).
pub struct ElementwiseSpline {
    pub params: Tensor,
    pub config: SplineConfig,
}

impl ElementwiseSpline {
    fn run(&self, xs: &Tensor, dir: Direction) -> candle_core::Result<(Tensor, Tensor)> {
        let (n, d) = xs.dims2()?;
        let params = self.params.broadcast_as((n, d, self.config.params_per_feature()))?;
        let (y, l) = spline::rqs(xs, &params, &self.config, dir)?;
        Ok((y, l.sum(1)?))
    }
}

impl Transform for ElementwiseSpline {
    fn forward(&self, xs: &Tensor, _ctx: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)> {
        self.run(xs, Direction::Forward)
    }

    fn inverse(&self, zs: &Tensor, _ctx: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)> {
        self.run(zs, Direction::Inverse)
    }
}

impl Transform for permutation::Permutation {
    fn forward(&self, xs: &Tensor, _ctx: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.apply(xs)?, Tensor::zeros(xs.dim(0)?, xs.dtype(), xs.device())?))
    }

    fn inverse(&self, zs: &Tensor, _ctx: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.undo(zs)?, Tensor::zeros(zs.dim(0)?, zs.dtype(), zs.device())?))
    }
}
