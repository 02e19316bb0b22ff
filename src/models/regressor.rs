//! The ZDC photon-sum regressor: a small MLP on the 9 standardised particle features predicting
//! the standardised log(1 + photon sum). At inference it supplies the flow's 10th condition.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::nn::{Activation, Mlp};
use crate::train::{Batch, Objective};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegressorSpec {
    pub inputs: usize,
    pub hidden: Vec<usize>,
}

pub struct Regressor {
    mlp: Mlp,
}

impl Regressor {
    pub fn new(spec: &RegressorSpec, vb: VarBuilder) -> candle_core::Result<Self> {
        let mut sizes = vec![spec.inputs];
        sizes.extend(&spec.hidden);
        sizes.push(1);
        Ok(Self { mlp: Mlp::new(&sizes, Activation::Relu, vb)? })
    }

    /// `(n, inputs)` → `(n, 1)`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.mlp.forward(x)
    }
}

/// Mean squared error against the target carried in the batch's context column.
pub struct RegressorObjective<'a> {
    pub model: &'a Regressor,
}

impl RegressorObjective<'_> {
    fn squared_errors(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        let target =
            batch.ctx.as_ref().ok_or_else(|| candle_core::Error::Msg("regressor batch without target".into()))?;
        (self.model.forward(&batch.x)? - target)?.sqr()
    }
}

impl Objective for RegressorObjective<'_> {
    fn loss(&self, batch: &Batch, _rng: &mut ChaCha8Rng) -> candle_core::Result<Tensor> {
        self.squared_errors(batch)?.mean_all()
    }

    fn val_sum(&self, batch: &Batch, _rng: &mut ChaCha8Rng) -> candle_core::Result<f64> {
        self.squared_errors(batch)?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()
    }

    fn metric_name(&self) -> &'static str {
        "mse"
    }
}
