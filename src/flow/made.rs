//! MADE (Germain et al. 2015) with a context input, laid out exactly as nflows 0.14's
//! `nflows.transforms.made.MADE` so that a trained nflows model maps onto ours one to one:
//!
//! - input degrees 1..D; hidden degrees `arange(H) % max(1, D−1) + min(1, D−1)` in every layer;
//! - hidden masks keep `W[o, i]` iff `deg_out[o] ≥ deg_in[i]`, the output mask iff `>`;
//! - output degrees `tile(1..D, M)`: feature-major, feature i owns outputs `[i·M, (i+1)·M)`;
//! - context enters through an unmasked linear layer at the first layer:
//!   `h = initial(x) + relu(context(c))`, then `relu(h)` (feed-forward) and per hidden layer
//!   `h = dropout(relu(masked(h)))`; residual blocks follow nflows' `MaskedResidualBlock`.

use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The shape of one MADE network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MadeConfig {
    pub features: usize,
    /// 0 for an unconditional network.
    pub context_features: usize,
    pub hidden_features: usize,
    /// Hidden masked layers after the first (nflows' `num_blocks`): "2×256" in the papers' tables.
    pub hidden_layers: usize,
    /// Outputs per feature (3K − 1 for a K-bin spline with linear tails).
    pub output_multiplier: usize,
    pub residual: bool,
    pub dropout: f64,
}

/// Degrees of the inputs: 1..=D.
pub fn input_degrees(features: usize) -> Vec<usize> {
    (1..=features).collect()
}

/// Degrees of a hidden layer (nflows' `random_mask=False` rule).
pub fn hidden_degrees(hidden: usize, features: usize) -> Vec<usize> {
    let max = (features.max(2) - 1).max(1);
    let min = 1.min(features.saturating_sub(1));
    (0..hidden).map(|i| i % max + min).collect()
}

/// Degrees of the outputs: each feature's degree repeated `multiplier` times (feature-major).
pub fn output_degrees(features: usize, multiplier: usize) -> Vec<usize> {
    (1..=features).flat_map(|d| std::iter::repeat_n(d, multiplier)).collect()
}

/// `mask[o][i] = 1` iff `out[o] > in[i]` (strict, output layer) or `≥` (hidden layers).
pub fn mask(out_degrees: &[usize], in_degrees: &[usize], strict: bool) -> Vec<f32> {
    out_degrees
        .iter()
        .flat_map(|&o| {
            in_degrees.iter().map(move |&i| if (strict && o > i) || (!strict && o >= i) { 1.0 } else { 0.0 })
        })
        .collect()
}

/// A linear layer whose weight is multiplied by a fixed 0/1 mask.
pub struct MaskedLinear {
    weight: Tensor,
    bias: Tensor,
    mask: Tensor,
    /// `weight · mask`, computed once when the weight is frozen (sampling, teachers).
    frozen: Option<Tensor>,
}

/// nflows' `nn.Linear` default initialisation: U(±1/√fan_in) for weight and bias.
pub fn torch_default_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

impl MaskedLinear {
    fn new(
        vb: VarBuilder,
        in_deg: &[usize],
        out_deg: &[usize],
        strict: bool,
        init: Option<Init>,
    ) -> candle_core::Result<Self> {
        let (i, o) = (in_deg.len(), out_deg.len());
        let weight = vb.get_with_hints((o, i), "weight", init.unwrap_or(torch_default_init(i)))?;
        let bias = vb.get_with_hints(o, "bias", init.unwrap_or(torch_default_init(i)))?;
        let mask = Tensor::from_vec(mask(out_deg, in_deg, strict), (o, i), vb.device())?.to_dtype(vb.dtype())?;
        let frozen = if weight.is_variable() { None } else { Some((&weight * &mask)?) };
        Ok(Self { weight, bias, mask, frozen })
    }

    /// `weight · mask`.
    pub fn masked_weight(&self) -> candle_core::Result<Tensor> {
        match &self.frozen {
            Some(w) => Ok(w.clone()),
            None => &self.weight * &self.mask,
        }
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        crate::nn::add_bias(&xs.matmul(&self.masked_weight()?.t()?)?, &self.bias)
    }
}

/// An ordinary linear layer (the context path).
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn new(vb: VarBuilder, inputs: usize, outputs: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints((outputs, inputs), "weight", torch_default_init(inputs))?,
            bias: vb.get_with_hints(outputs, "bias", torch_default_init(inputs))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        crate::nn::add_bias(&xs.matmul(&self.weight.t()?)?, &self.bias)
    }
}

enum HiddenLayer {
    FeedForward(MaskedLinear),
    Residual { lin0: MaskedLinear, lin1: MaskedLinear, context: Option<Dense> },
}

/// What the context contributes to a MADE pass. It does not depend on the inputs, so the
/// sequential (D-pass) solver computes it once.
pub struct ContextTerms {
    first: Option<Tensor>,
    layers: Vec<Option<Tensor>>,
}

/// A MADE network: `(xs (n, D), ctx (n, C))` → `(n, D·M)`, output `[i·M + j]` depending only on
/// inputs `< i` and the context.
pub struct Made {
    cfg: MadeConfig,
    initial: MaskedLinear,
    context: Option<Dense>,
    layers: Vec<HiddenLayer>,
    last: MaskedLinear,
}

/// Inverted dropout with a mask drawn from `rng` (seeded, so training is reproducible).
fn dropout(xs: &Tensor, p: f64, rng: &mut ChaCha8Rng) -> candle_core::Result<Tensor> {
    let keep = 1.0 - p;
    let n = xs.elem_count();
    let scale = (1.0 / keep) as f32;
    let m: Vec<f32> = (0..n).map(|_| if rng.random::<f64>() < keep { scale } else { 0.0 }).collect();
    let m = Tensor::from_vec(m, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
    xs * m
}

impl Made {
    pub fn new(cfg: &MadeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (d, h) = (cfg.features, cfg.hidden_features);
        let in_deg = input_degrees(d);
        let hid_deg = hidden_degrees(h, d);
        let out_deg = output_degrees(d, cfg.output_multiplier);
        let initial = MaskedLinear::new(vb.pp("initial"), &in_deg, &hid_deg, false, None)?;
        let context =
            if cfg.context_features > 0 { Some(Dense::new(vb.pp("context"), cfg.context_features, h)?) } else { None };
        let mut layers = Vec::with_capacity(cfg.hidden_layers);
        for i in 0..cfg.hidden_layers {
            let vb = vb.pp("layers").pp(i);
            layers.push(if cfg.residual {
                HiddenLayer::Residual {
                    lin0: MaskedLinear::new(vb.pp("lin0"), &hid_deg, &hid_deg, false, None)?,
                    lin1: MaskedLinear::new(
                        vb.pp("lin1"),
                        &hid_deg,
                        &hid_deg,
                        false,
                        Some(Init::Uniform { lo: -1e-3, up: 1e-3 }),
                    )?,
                    context: if cfg.context_features > 0 {
                        Some(Dense::new(vb.pp("context"), cfg.context_features, h)?)
                    } else {
                        None
                    },
                }
            } else {
                HiddenLayer::FeedForward(MaskedLinear::new(vb, &hid_deg, &hid_deg, false, None)?)
            });
        }
        let last = MaskedLinear::new(vb.pp("final"), &hid_deg, &out_deg, true, None)?;
        Ok(Self { cfg: cfg.clone(), initial, context, layers, last })
    }

    pub fn config(&self) -> &MadeConfig {
        &self.cfg
    }

    /// `rng` turns dropout on (training); `None` is evaluation.
    pub fn forward(
        &self,
        xs: &Tensor,
        ctx: Option<&Tensor>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> candle_core::Result<Tensor> {
        let terms = self.context_terms(ctx)?;
        self.last.forward(&self.trunk(self.initial.forward(xs)?, &terms, rng)?)
    }

    pub fn context_terms(&self, ctx: Option<&Tensor>) -> candle_core::Result<ContextTerms> {
        let first = match (&self.context, ctx) {
            (Some(layer), Some(c)) => Some(layer.forward(c)?.relu()?),
            _ => None,
        };
        let layers = self
            .layers
            .iter()
            .map(|l| match (l, ctx) {
                (HiddenLayer::Residual { context: Some(layer), .. }, Some(c)) => layer.forward(c).map(Some),
                _ => Ok(None),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(ContextTerms { first, layers })
    }

    /// From the first masked layer's output to the last hidden layer's.
    pub fn trunk(
        &self,
        mut h: Tensor,
        terms: &ContextTerms,
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> candle_core::Result<Tensor> {
        if let Some(c) = &terms.first {
            h = (h + c)?;
        }
        if !self.cfg.residual {
            h = h.relu()?;
        }
        let p = self.cfg.dropout;
        for (layer, ctx_term) in self.layers.iter().zip(&terms.layers) {
            h = match layer {
                HiddenLayer::FeedForward(lin) => {
                    let t = lin.forward(&h)?.relu()?;
                    match rng.as_deref_mut() {
                        Some(r) if p > 0.0 => dropout(&t, p, r)?,
                        _ => t,
                    }
                }
                HiddenLayer::Residual { lin0, lin1, .. } => {
                    let mut t = lin0.forward(&h.relu()?)?;
                    if let Some(c) = ctx_term {
                        t = (t + c)?;
                    }
                    t = t.relu()?;
                    if let Some(r) = rng.as_deref_mut().filter(|_| p > 0.0) {
                        t = dropout(&t, p, r)?;
                    }
                    (h + lin1.forward(&t)?)?
                }
            };
        }
        Ok(h)
    }

    /// The first masked layer.
    pub fn initial(&self) -> &MaskedLinear {
        &self.initial
    }

    /// The output layer.
    pub fn output(&self) -> &MaskedLinear {
        &self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_degrees_follow_nflows() {
        assert_eq!(hidden_degrees(7, 4), vec![1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(hidden_degrees(3, 1), vec![0, 0, 0]);
        assert_eq!(output_degrees(3, 2), vec![1, 1, 2, 2, 3, 3]);
    }

    #[test]
    fn made_masks_are_strict_only_at_the_output() {
        let m = mask(&[1, 2], &[1, 2], false);
        assert_eq!(m, vec![1.0, 0.0, 1.0, 1.0]);
        let m = mask(&[1, 2], &[1, 2], true);
        assert_eq!(m, vec![0.0, 0.0, 1.0, 0.0]);
    }
}
