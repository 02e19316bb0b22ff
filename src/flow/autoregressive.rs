//! One MADE + rational-quadratic-spline block and its two passes.
//!
//! A block has a *fast* direction: one MADE pass on the block's input, then the spline in that
//! direction. The other direction solves `input = s⁻¹(output; MADE(input))` one feature per MADE
//! pass (D passes). A MAF block's fast direction is the spline forward (x → z, density); an IAF
//! block's is the spline inverse with the MADE fed the z-side (z → x, sampling) — the student of
//! CaloFlow II / iCaloFlow, whose MADE outputs match its teacher's block for block.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;

use super::layers::add_bias;
use super::made::{Made, MadeConfig};
use super::spline::{rqs, Direction, SplineConfig};

/// What a pass through one block produced.
pub struct BlockPass {
    pub output: Tensor,
    /// log|∂output/∂input| per sample, shape (n,).
    pub ladj: Tensor,
    /// The raw MADE output (n, D·(3K−1)) that parameterised the spline (the D-pass solve
    /// computes it only when asked to).
    pub made: Option<Tensor>,
}

pub struct MadeRqs {
    made: Made,
    spline: SplineConfig,
    fast: Direction,
}

fn opposite(dir: Direction) -> Direction {
    match dir {
        Direction::Forward => Direction::Inverse,
        Direction::Inverse => Direction::Forward,
    }
}

impl MadeRqs {
    /// A trainable block.
    pub fn new(made: &MadeConfig, spline: &SplineConfig, fast: Direction, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self { made: Made::new(made, vb.pp("made"))?, spline: *spline, fast })
    }

    /// A frozen (inference) block from fixed weights (see [`Made::frozen`]).
    pub fn frozen(
        made: &MadeConfig,
        spline: &SplineConfig,
        fast: Direction,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Ok(Self { made: Made::frozen(made, vb.pp("made"))?, spline: *spline, fast })
    }

    /// See [`Made::set_matmul_precision`].
    pub fn set_matmul_precision(&mut self, precision: super::MatmulPrecision) -> candle_core::Result<()> {
        self.made.set_matmul_precision(precision)
    }

    fn spline_step(
        &self,
        made_input: &Tensor,
        spline_input: &Tensor,
        ctx: Option<&Tensor>,
        dir: Direction,
        rng: Option<&mut ChaCha8Rng>,
    ) -> candle_core::Result<BlockPass> {
        let made = self.made.forward(made_input, ctx, rng)?;
        let (output, ladj) = rqs(spline_input, &made, &self.spline, dir)?;
        Ok(BlockPass { output, ladj: ladj.sum(1)?, made: Some(made) })
    }

    /// The one-MADE-pass direction.
    pub fn fast_pass(
        &self,
        input: &Tensor,
        ctx: Option<&Tensor>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> candle_core::Result<BlockPass> {
        self.spline_step(input, input, ctx, self.fast, rng)
    }

    /// The inverse of [`Self::fast_pass`]: D MADE passes, each fixing one more feature.
    ///
    /// Feature t's spline parameters depend only on features < t, so pass t needs only the output
    /// rows of feature t, the context terms are computed once, and the first layer's
    /// pre-activation is updated by the new feature's column alone. This is the same solve as D
    /// full MADE passes, at a fraction of the cost (for the ZDC shapes, ~1/1000 of the output layer).
    /// `with_made` also returns the full MADE output at the solution (for traces).
    pub fn slow_pass(&self, target: &Tensor, ctx: Option<&Tensor>, with_made: bool) -> candle_core::Result<BlockPass> {
        let (n, d) = target.dims2()?;
        let m = self.spline.params_per_feature();
        let dir = opposite(self.fast);
        let terms = self.made.context_terms(ctx)?;
        let w_in = self.made.initial().masked_weight()?;
        let w_out = self.made.output().masked_weight()?;
        let b_out = self.made.output().bias();
        let hidden = w_in.dim(0)?;
        let mut pre = self.made.initial().bias().unsqueeze(0)?.broadcast_as((n, hidden))?.contiguous()?;
        let mut columns = Vec::with_capacity(d);
        let mut ladj: Option<Tensor> = None;
        for t in 0..d {
            let h = self.made.trunk(pre.clone(), &terms, None)?;
            let params = add_bias(&h.matmul(&w_out.narrow(0, t * m, m)?.t()?)?, &b_out.narrow(0, t * m, m)?)?;
            let (y, l) = rqs(&target.narrow(1, t, 1)?, &params, &self.spline, dir)?;
            let l = l.squeeze(1)?;
            ladj = Some(match ladj {
                None => l,
                Some(acc) => (acc + l)?,
            });
            if t + 1 < d {
                pre = (pre + y.broadcast_mul(&w_in.narrow(1, t, 1)?.t()?)?)?;
            }
            columns.push(y);
        }
        let output = Tensor::cat(&columns, 1)?;
        let made = if with_made { Some(self.made.forward(&output, ctx, None)?) } else { None };
        let ladj = ladj.ok_or_else(|| candle_core::Error::Msg("a block needs at least one feature".into()))?;
        Ok(BlockPass { output, ladj, made })
    }
}
