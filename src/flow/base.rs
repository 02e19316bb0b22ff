//! Base distributions of a flow: the standard normal, and nflows' `ConditionalDiagonalNormal`
//! whose means and log standard deviations come from a context encoder (the ZDC group's
//! published model: `Linear(C, F)`, ReLU, `Linear(F, F)`, ReLU, `Linear(F, 2F)`; the first D
//! outputs are the means, the last D the log standard deviations).

use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::layers::torch_default_init;

/// Which base a flow has (recorded in its spec).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "type", deny_unknown_fields)]
pub enum BaseSpec {
    #[default]
    StandardNormal,
    /// N(μ(c), diag σ(c)²) with `[μ, log σ] = encoder(c)`: linear layers with ReLU between them,
    /// of the given hidden widths (the last layer has 2·features outputs).
    ConditionalDiagonalNormal { hidden: Vec<usize> },
}

impl BaseSpec {
    pub fn is_standard(&self) -> bool {
        *self == BaseSpec::StandardNormal
    }

    pub fn validate(&self, context_features: usize) -> Result<(), String> {
        match self {
            BaseSpec::StandardNormal => Ok(()),
            BaseSpec::ConditionalDiagonalNormal { hidden } => {
                if context_features == 0 {
                    return Err("a conditional base needs context features".into());
                }
                if hidden.contains(&0) {
                    return Err("the base encoder's hidden widths must be ≥ 1".into());
                }
                Ok(())
            }
        }
    }

    /// Parameters of the encoder.
    pub fn parameter_count(&self, features: usize, context_features: usize) -> usize {
        match self {
            BaseSpec::StandardNormal => 0,
            BaseSpec::ConditionalDiagonalNormal { hidden } => {
                let widths: Vec<usize> =
                    std::iter::once(context_features).chain(hidden.iter().copied()).chain([2 * features]).collect();
                widths.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
            }
        }
    }
}

struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// A base distribution with its parameters (weights under `<flow prefix>.base.<layer>.…`).
pub struct Base {
    features: usize,
    encoder: Vec<Linear>,
}

/// log N(z; 0, I) per row.
pub fn standard_normal_log_prob(zs: &Tensor) -> candle_core::Result<Tensor> {
    let d = zs.dim(1)? as f64;
    zs.sqr()?.sum(1)?.affine(-0.5, -0.5 * d * (2.0 * std::f64::consts::PI).ln())
}

impl Base {
    pub fn new(spec: &BaseSpec, features: usize, context_features: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let encoder = match spec {
            BaseSpec::StandardNormal => Vec::new(),
            BaseSpec::ConditionalDiagonalNormal { hidden } => {
                let widths: Vec<usize> =
                    std::iter::once(context_features).chain(hidden.iter().copied()).chain([2 * features]).collect();
                widths
                    .windows(2)
                    .enumerate()
                    .map(|(i, w)| {
                        let vb = vb.pp(i);
                        Ok(Linear {
                            weight: vb.get_with_hints((w[1], w[0]), "weight", torch_default_init(w[0]))?,
                            bias: vb.get_with_hints(w[1], "bias", torch_default_init(w[0]))?,
                        })
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?
            }
        };
        Ok(Self { features, encoder })
    }

    pub fn is_conditional(&self) -> bool {
        !self.encoder.is_empty()
    }

    /// `(μ, log σ)`, each (n, D), or None for the standard normal.
    pub fn params(&self, ctx: Option<&Tensor>) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        if self.encoder.is_empty() {
            return Ok(None);
        }
        let ctx = ctx.ok_or_else(|| candle_core::Error::Msg("a conditional base needs a context".into()))?;
        let mut h = ctx.clone();
        for (i, layer) in self.encoder.iter().enumerate() {
            h = layer.forward(&h)?;
            if i + 1 < self.encoder.len() {
                h = h.relu()?;
            }
        }
        Ok(Some((h.narrow(1, 0, self.features)?, h.narrow(1, self.features, self.features)?)))
    }

    /// log p(z | c) per row.
    pub fn log_prob(&self, zs: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<Tensor> {
        match self.params(ctx)? {
            None => standard_normal_log_prob(zs),
            Some((mu, log_sigma)) => {
                let eps = ((zs - mu)? * log_sigma.neg()?.exp()?)?;
                standard_normal_log_prob(&eps)? - log_sigma.sum(1)?
            }
        }
    }

    /// Standard-normal noise → base samples: `(z, log|∂z/∂ε|)` (zero for the standard normal).
    pub fn from_noise(&self, eps: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)> {
        match self.params(ctx)? {
            None => Ok((eps.clone(), Tensor::zeros(eps.dim(0)?, eps.dtype(), eps.device())?)),
            Some((mu, log_sigma)) => Ok((((eps * log_sigma.exp()?)? + mu)?, log_sigma.sum(1)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// A one-layer encoder [μ, log σ] = W c + b with hand-picked values.
    fn base() -> Base {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1.0f64, 0.0], [0.0, 2.0], [0.5, 0.0], [0.0, -0.25]], &dev).unwrap();
        let b = Tensor::new(&[0.1f64, -0.2, 0.0, 0.3], &dev).unwrap();
        let tensors = HashMap::from([("0.weight".to_string(), w), ("0.bias".to_string(), b)]);
        let vb = VarBuilder::from_tensors(tensors, DType::F64, &dev);
        Base::new(&BaseSpec::ConditionalDiagonalNormal { hidden: vec![] }, 2, 2, vb).unwrap()
    }

    #[test]
    fn conditional_diagonal_normal_log_prob_is_the_closed_form() {
        let dev = Device::Cpu;
        let c = Tensor::new(&[[0.4f64, -1.0]], &dev).unwrap();
        let z = Tensor::new(&[[1.5f64, 0.7]], &dev).unwrap();
        let got = base().log_prob(&z, Some(&c)).unwrap().to_vec1::<f64>().unwrap()[0];
        // μ = (0.5, −2.2), log σ = (0.2, 0.55)
        let (mu, ls) = ([0.5, -2.2], [0.2, 0.55]);
        let want: f64 = [1.5, 0.7]
            .iter()
            .enumerate()
            .map(|(i, &zi)| {
                let e = (zi - mu[i]) / f64::exp(ls[i]);
                -0.5 * e * e - ls[i] - 0.5 * (2.0 * std::f64::consts::PI).ln()
            })
            .sum();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn noise_through_a_conditional_base_has_the_base_density() {
        let dev = Device::Cpu;
        let c = Tensor::new(&[[0.4f64, -1.0], [2.0, 0.5]], &dev).unwrap();
        let eps = Tensor::new(&[[0.3f64, -1.2], [-0.1, 2.0]], &dev).unwrap();
        let b = base();
        let (z, ladj) = b.from_noise(&eps, Some(&c)).unwrap();
        let lhs = b.log_prob(&z, Some(&c)).unwrap();
        let rhs = (standard_normal_log_prob(&eps).unwrap() - ladj).unwrap();
        for (l, r) in lhs.to_vec1::<f64>().unwrap().iter().zip(rhs.to_vec1::<f64>().unwrap()) {
            assert!((l - r).abs() < 1e-12, "{l} vs {r}");
        }
        assert!(b.log_prob(&z, None).is_err(), "a conditional base needs its context");
    }
}
