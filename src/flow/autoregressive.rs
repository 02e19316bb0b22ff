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

use super::made::{Made, MadeConfig};
use super::spline::{rqs, Direction, SplineConfig};

/// What a pass through one block produced.
pub struct BlockPass {
    pub output: Tensor,
    /// log|∂output/∂input| per sample, shape (n,).
    pub ladj: Tensor,
    /// The raw MADE output (n, D·(3K−1)) that parameterised the spline.
    pub made: Tensor,
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
    pub fn new(made: &MadeConfig, spline: &SplineConfig, fast: Direction, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self { made: Made::new(made, vb.pp("made"))?, spline: *spline, fast })
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
        Ok(BlockPass { output, ladj: ladj.sum(1)?, made })
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
    pub fn slow_pass(&self, target: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<BlockPass> {
        let d = target.dim(1)?;
        let dir = opposite(self.fast);
        let mut guess = target.zeros_like()?;
        let mut pass = None;
        for _ in 0..d {
            let step = self.spline_step(&guess, target, ctx, dir, None)?;
            guess = step.output.clone();
            pass = Some(step);
        }
        pass.ok_or_else(|| candle_core::Error::Msg("a block needs at least one feature".into()))
    }
}
