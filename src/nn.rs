//! A plain multilayer perceptron (the evaluation classifier).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::flow::layers::{add_bias, torch_default_init};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Slope 0.01, as the CaloChallenge classifier.
    LeakyRelu,
}

pub struct Mlp {
    layers: Vec<(Tensor, Tensor)>,
    activation: Activation,
}

impl Mlp {
    /// Layers `sizes[0] → sizes[1] → …`, parameters `<i>.weight`, `<i>.bias` under `vb`.
    pub fn new(sizes: &[usize], activation: Activation, vb: VarBuilder) -> candle_core::Result<Self> {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let vb = vb.pp(i);
                let init = torch_default_init(w[0]);
                Ok((vb.get_with_hints((w[1], w[0]), "weight", init)?, vb.get_with_hints(w[1], "bias", init)?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers, activation })
    }

    /// The output of the last layer (no activation after it).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = add_bias(&h.matmul(&w.t()?)?, b)?;
            if i + 1 < self.layers.len() {
                h = match self.activation {
                    Activation::LeakyRelu => candle_nn::ops::leaky_relu(&h, 0.01)?,
                };
            }
        }
        Ok(h)
    }
}
