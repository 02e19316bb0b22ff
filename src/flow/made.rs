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

use super::amx::{self, PackedWeight};
use super::layers::{add_bias, torch_default_init};
use super::masked_linear::{self, MaskRule};
use super::precision::{round_bf16, MatmulPrecision};
use super::staircase::{self, Group};

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
    weights: Weights,
    bias: Tensor,
}

enum Weights {
    /// The stored weight (a variable in training) and its mask (see [`masked_linear`]).
    Trainable { weight: Tensor, rule: std::sync::Arc<MaskRule> },
    /// Sampling, teachers: the masked weight, and its staircase blocks.
    Frozen(Frozen),
}

struct Frozen {
    masked: Tensor,
    blocks: Option<Vec<Block>>,
    /// bf16 products ([`MatmulPrecision::Bf16`]): `masked` then holds bf16-rounded values.
    bf16: Option<Bf16Weight>,
}

/// How a frozen layer in bf16 multiplies.
enum Bf16Weight {
    /// Inputs rounded to bf16 like the weight, products in the model's precision (any device).
    Rounded,
    /// On AMX tiles, the weight packed for them (CPUs with AMX, batches of `AMX_MIN_ROWS` or more).
    Amx(PackedWeight),
    /// The weight in bf16 on a GPU, multiplied by its BLAS in bf16.
    Device(Tensor),
}

/// Below this many rows the tiles (32 rows at a time) would mostly multiply padding.
const AMX_MIN_ROWS: usize = 16;

/// One row group of a staircase mask.
struct Block {
    group: Group,
    /// `masked[rows, ..cols]ᵀ` (cols, len): a view on the CPU, contiguous on CUDA.
    weight_t: Option<Tensor>,
}

/// Row groups of a staircase-masked layer.
const BLOCKS: usize = 8;
/// Below this many rows one dense product is cheaper than the blocks (the D-pass solves).
const MIN_ROWS_FOR_BLOCKS: usize = 256;

/// If every mask row is a prefix of ones and the prefixes never shrink, the row groups and how
/// many leading inputs each group reads.
/// `keep(row, col)` is the mask (evaluated, not stored: the output layer's mask of a ZDC MADE
/// has 64 M entries).
fn staircase(rows: usize, cols: usize, keep: impl Fn(usize, usize) -> bool) -> Option<Vec<(usize, usize, usize)>> {
    let mut prefix = Vec::with_capacity(rows);
    for r in 0..rows {
        let l = (0..cols).take_while(|&c| keep(r, c)).count();
        if (l..cols).any(|c| keep(r, c)) || prefix.last().is_some_and(|&p| l < p) {
            return None;
        }
        prefix.push(l);
    }
    let per = rows.div_ceil(BLOCKS.min(rows).max(1));
    Some(
        (0..rows)
            .step_by(per.max(1))
            .map(|start| {
                let len = per.min(rows - start);
                (start, len, prefix[start + len - 1])
            })
            .collect(),
    )
}

/// `t` with its dimension `dim` reordered by `order` (new index → old index), if any.
fn reorder(t: &Tensor, order: Option<&[usize]>, dim: usize) -> candle_core::Result<Tensor> {
    match order {
        None => Ok(t.clone()),
        Some(o) => t
            .index_select(&Tensor::new(o.iter().map(|&i| i as u32).collect::<Vec<_>>(), t.device())?, dim)?
            .contiguous(),
    }
}

/// Hidden-unit orders of a frozen MADE: the layer's inputs and outputs in the order used.
#[derive(Clone, Copy)]
struct Orders<'a> {
    inputs: Option<&'a [usize]>,
    outputs: Option<&'a [usize]>,
}

impl MaskedLinear {
    /// `in_deg` / `out_deg` are the degrees in the order used; frozen weights (`orders` given)
    /// are reordered to it (`orders` map a used index to the stored one).
    fn new(
        vb: VarBuilder,
        in_deg: &[usize],
        out_deg: &[usize],
        strict: bool,
        init: Option<Init>,
        orders: Option<Orders>,
    ) -> candle_core::Result<Self> {
        let (i, o) = (in_deg.len(), out_deg.len());
        let weight = vb.get_with_hints((o, i), "weight", init.unwrap_or(torch_default_init(i)))?;
        let bias = vb.get_with_hints(o, "bias", init.unwrap_or(torch_default_init(i)))?;
        if let Some(orders) = orders {
            return Self::frozen(weight, bias, in_deg, out_deg, strict, orders);
        }
        Ok(Self { weights: Weights::Trainable { weight, rule: MaskRule::new(out_deg, in_deg, strict) }, bias })
    }

    /// A frozen layer keeps one copy of its weights: the masked weight in the used order (the
    /// stored weight and the mask are dropped once it is made). On the CPU its staircase blocks
    /// are strided views into it, not copies; CUDA's GEMM wants them contiguous.
    fn frozen(
        weight: Tensor,
        bias: Tensor,
        in_deg: &[usize],
        out_deg: &[usize],
        strict: bool,
        orders: Orders,
    ) -> candle_core::Result<Self> {
        let (i, o) = (in_deg.len(), out_deg.len());
        let dev = weight.device().clone();
        let keep_at = |r: usize, c: usize| if strict { out_deg[r] > in_deg[c] } else { out_deg[r] >= in_deg[c] };
        // The stored weight is dropped as soon as it is reordered.
        let weight = {
            let stored = weight;
            reorder(&reorder(&stored, orders.outputs, 0)?, orders.inputs, 1)?
        };
        let masked = {
            let keep: Vec<u8> = (0..o * i).map(|k| keep_at(k / i, k % i) as u8).collect();
            let keep = Tensor::from_vec(keep, (o, i), &dev)?;
            let zero = Tensor::zeros((), weight.dtype(), &dev)?.broadcast_as((o, i))?;
            keep.where_cond(&weight, &zero)?
        };
        drop(weight);
        let bias = reorder(&bias, orders.outputs, 0)?;
        let views = dev.is_cpu();
        let blocks = staircase(o, i, keep_at)
            .map(|groups| {
                groups
                    .into_iter()
                    .map(|(start, len, cols)| {
                        let weight_t = if cols > 0 {
                            let w = masked.narrow(0, start, len)?.narrow(1, 0, cols)?.t()?;
                            Some(if views { w } else { w.contiguous()? })
                        } else {
                            None
                        };
                        Ok(Block { group: Group { start, len, cols }, weight_t })
                    })
                    .collect::<candle_core::Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(Self { weights: Weights::Frozen(Frozen { masked, blocks, bf16: None }), bias })
    }

    /// Switches a frozen float32 layer's products to `precision` (a trainable layer, or a
    /// float64 one, is refused).
    fn set_matmul_precision(&mut self, precision: MatmulPrecision) -> candle_core::Result<()> {
        let Weights::Frozen(f) = &mut self.weights else {
            candle_core::bail!("reduced-precision products are for frozen (sampling) networks only")
        };
        if precision == MatmulPrecision::Full || f.bf16.is_some() {
            return Ok(());
        }
        if f.masked.dtype() != candle_core::DType::F32 {
            candle_core::bail!("bf16 products need a float32 model, this one is {:?}", f.masked.dtype());
        }
        f.masked = round_bf16(&f.masked)?;
        // The staircase blocks are views into `masked` on the CPU, contiguous copies on a GPU:
        // make them again from the rounded weight.
        let views = f.masked.device().is_cpu();
        for b in f.blocks.iter_mut().flatten().filter(|b| b.weight_t.is_some()) {
            let g = b.group;
            let w = f.masked.narrow(0, g.start, g.len)?.narrow(1, 0, g.cols)?.t()?;
            b.weight_t = Some(if views { w } else { w.contiguous()? });
        }
        if !views {
            f.bf16 = Some(Bf16Weight::Device(f.masked.to_dtype(candle_core::DType::BF16)?));
            return Ok(());
        }
        f.bf16 = Some(if amx::available() {
            let (o, i) = f.masked.dims2()?;
            let w = f.masked.flatten_all()?.to_vec1::<f32>()?;
            // How many leading inputs each row reads: its last non-zero weight (a staircase after
            // the frozen reordering, so the panels shrink with it).
            let support: Vec<usize> =
                w.chunks(i.max(1)).map(|row| row.iter().rposition(|&v| v != 0.0).map_or(0, |c| c + 1)).collect();
            Bf16Weight::Amx(PackedWeight::pack(&w, o, i, |r| support[r]))
        } else {
            Bf16Weight::Rounded
        });
        Ok(())
    }

    /// `weight · mask` (for a frozen MADE, in its hidden-unit order).
    pub fn masked_weight(&self) -> candle_core::Result<Tensor> {
        match &self.weights {
            Weights::Frozen(f) => Ok(f.masked.clone()),
            Weights::Trainable { weight, rule } => rule.masked_weight(weight),
        }
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(xs, None, false)
    }

    /// `act(xs · (weight · mask)ᵀ + bias + add)`, act = ReLU if `relu`. A frozen layer on the
    /// CPU computes it in one pass over its output ([`staircase::affine`]).
    pub fn forward_with(&self, xs: &Tensor, add: Option<&Tensor>, relu: bool) -> candle_core::Result<Tensor> {
        let staircase = xs.dim(0).is_ok_and(|n| n >= MIN_ROWS_FOR_BLOCKS);
        let rounded;
        let xs = match &self.weights {
            Weights::Frozen(Frozen { bf16: Some(w), .. }) => {
                if let Some(ys) = self.forward_bf16(w, xs, add, relu)? {
                    return Ok(ys);
                }
                rounded = round_bf16(xs)?;
                &rounded
            }
            _ => xs,
        };
        if let Weights::Frozen(f) = &self.weights {
            let groups: Vec<Group> = match &f.blocks {
                Some(blocks) if staircase => blocks.iter().map(|b| b.group).collect(),
                _ => {
                    let (o, i) = f.masked.dims2()?;
                    vec![Group { start: 0, len: o, cols: i }]
                }
            };
            if let Some(ys) = staircase::affine(xs, &f.masked, &self.bias, add, &groups, relu)? {
                return Ok(ys);
            }
        }
        let ys = match &self.weights {
            Weights::Trainable { weight, rule } => masked_linear::forward(xs, weight, rule)?,
            // Staircase: each row group multiplies only the inputs its mask can see.
            Weights::Frozen(Frozen { blocks: Some(blocks), .. }) if staircase => {
                let n = xs.dim(0)?;
                let parts = blocks
                    .iter()
                    .map(|b| match &b.weight_t {
                        Some(w) => xs.narrow(1, 0, b.group.cols)?.matmul(w),
                        None => Tensor::zeros((n, b.group.len), xs.dtype(), xs.device()),
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&parts, 1)?
            }
            Weights::Frozen(f) => xs.matmul(&f.masked.t()?)?,
        };
        self.finish(ys, add, relu)
    }

    /// `act(ys + bias + add)`.
    fn finish(&self, ys: Tensor, add: Option<&Tensor>, relu: bool) -> candle_core::Result<Tensor> {
        let mut ys = add_bias(&ys, &self.bias)?;
        if let Some(a) = add {
            ys = (ys + a)?;
        }
        if relu {
            ys = ys.relu()?;
        }
        Ok(ys)
    }

    /// The bf16 products that need no rounded copy of `xs`: AMX tiles, a GPU's bf16 GEMM.
    fn forward_bf16(
        &self,
        w: &Bf16Weight,
        xs: &Tensor,
        add: Option<&Tensor>,
        relu: bool,
    ) -> candle_core::Result<Option<Tensor>> {
        match w {
            Bf16Weight::Amx(packed) if xs.dim(0)? >= AMX_MIN_ROWS => {
                staircase::affine_bf16(xs, packed, &self.bias, add, relu)
            }
            Bf16Weight::Device(w) => {
                let ys = xs.to_dtype(candle_core::DType::BF16)?.matmul(&w.t()?)?.to_dtype(xs.dtype())?;
                self.finish(ys, add, relu).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// An ordinary linear layer (the context path).
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    /// `order` (new index → stored one) is given for a frozen layer.
    fn new(
        vb: VarBuilder,
        inputs: usize,
        outputs: usize,
        order: Option<Option<&[usize]>>,
    ) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints((outputs, inputs), "weight", torch_default_init(inputs))?;
        let bias = vb.get_with_hints(outputs, "bias", torch_default_init(inputs))?;
        let Some(order) = order else {
            return Ok(Self { weight, bias });
        };
        Ok(Self { weight: reorder(&weight, order, 0)?, bias: reorder(&bias, order, 0)? })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        add_bias(&xs.matmul(&self.weight.t()?)?, &self.bias)
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
    /// A trainable MADE: its parameters are `vb`'s (variables in training), used as stored.
    pub fn new(cfg: &MadeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::build(cfg, vb, false)
    }

    /// A frozen (inference) MADE from fixed weights: it orders its hidden units by degree, an
    /// equivalent network whose masks are staircases, so its layers multiply by blocks.
    pub fn frozen(cfg: &MadeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::build(cfg, vb, true)
    }

    fn build(cfg: &MadeConfig, vb: VarBuilder, frozen: bool) -> candle_core::Result<Self> {
        let (d, h) = (cfg.features, cfg.hidden_features);
        let in_deg = input_degrees(d);
        let stored_deg = hidden_degrees(h, d);
        let order: Option<Vec<usize>> = frozen.then(|| {
            let mut o: Vec<usize> = (0..h).collect();
            o.sort_by_key(|&i| stored_deg[i]);
            o
        });
        let hid_deg: Vec<usize> = match &order {
            Some(o) => o.iter().map(|&i| stored_deg[i]).collect(),
            None => stored_deg,
        };
        let o = order.as_deref();
        // Frozen layers are reordered to `o`; trainable ones use their parameters as stored.
        let fo = frozen.then_some(o);
        let out_deg = output_degrees(d, cfg.output_multiplier);
        let initial = MaskedLinear::new(
            vb.pp("initial"),
            &in_deg,
            &hid_deg,
            false,
            None,
            frozen.then_some(Orders { inputs: None, outputs: o }),
        )?;
        let context = if cfg.context_features > 0 {
            Some(Dense::new(vb.pp("context"), cfg.context_features, h, fo)?)
        } else {
            None
        };
        let hidden = frozen.then_some(Orders { inputs: o, outputs: o });
        let mut layers = Vec::with_capacity(cfg.hidden_layers);
        for i in 0..cfg.hidden_layers {
            let vb = vb.pp("layers").pp(i);
            layers.push(if cfg.residual {
                HiddenLayer::Residual {
                    lin0: MaskedLinear::new(vb.pp("lin0"), &hid_deg, &hid_deg, false, None, hidden)?,
                    lin1: MaskedLinear::new(
                        vb.pp("lin1"),
                        &hid_deg,
                        &hid_deg,
                        false,
                        Some(Init::Uniform { lo: -1e-3, up: 1e-3 }),
                        hidden,
                    )?,
                    context: if cfg.context_features > 0 {
                        Some(Dense::new(vb.pp("context"), cfg.context_features, h, fo)?)
                    } else {
                        None
                    },
                }
            } else {
                HiddenLayer::FeedForward(MaskedLinear::new(vb, &hid_deg, &hid_deg, false, None, hidden)?)
            });
        }
        let last = MaskedLinear::new(
            vb.pp("final"),
            &hid_deg,
            &out_deg,
            true,
            None,
            frozen.then_some(Orders { inputs: o, outputs: None }),
        )?;
        Ok(Self { cfg: cfg.clone(), initial, context, layers, last })
    }

    pub fn config(&self) -> &MadeConfig {
        &self.cfg
    }

    /// Switches a frozen float32 MADE's masked-layer products to `precision` (see
    /// [`MatmulPrecision`]); the context layers keep the model's precision.
    pub fn set_matmul_precision(&mut self, precision: MatmulPrecision) -> candle_core::Result<()> {
        self.initial.set_matmul_precision(precision)?;
        for layer in &mut self.layers {
            match layer {
                HiddenLayer::FeedForward(lin) => lin.set_matmul_precision(precision)?,
                HiddenLayer::Residual { lin0, lin1, .. } => {
                    lin0.set_matmul_precision(precision)?;
                    lin1.set_matmul_precision(precision)?;
                }
            }
        }
        self.last.set_matmul_precision(precision)
    }

    /// `rng` turns dropout on (training); `None` is evaluation.
    pub fn forward(
        &self,
        xs: &Tensor,
        ctx: Option<&Tensor>,
        rng: Option<&mut ChaCha8Rng>,
    ) -> candle_core::Result<Tensor> {
        let terms = self.context_terms(ctx)?;
        let h = self.initial.forward_with(xs, terms.first.as_ref(), !self.cfg.residual)?;
        self.last.forward(&self.hidden(h, &terms, rng)?)
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
        rng: Option<&mut ChaCha8Rng>,
    ) -> candle_core::Result<Tensor> {
        if let Some(c) = &terms.first {
            h = (h + c)?;
        }
        if !self.cfg.residual {
            h = h.relu()?;
        }
        self.hidden(h, terms, rng)
    }

    /// The hidden layers, from the first layer's activation to the last hidden layer's output.
    fn hidden(
        &self,
        mut h: Tensor,
        terms: &ContextTerms,
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> candle_core::Result<Tensor> {
        let p = self.cfg.dropout;
        for (layer, ctx_term) in self.layers.iter().zip(&terms.layers) {
            h = match layer {
                HiddenLayer::FeedForward(lin) => {
                    let t = lin.forward_with(&h, None, true)?;
                    match rng.as_deref_mut() {
                        Some(r) if p > 0.0 => dropout(&t, p, r)?,
                        _ => t,
                    }
                }
                HiddenLayer::Residual { lin0, lin1, .. } => {
                    let mut t = lin0.forward_with(&h.relu()?, ctx_term.as_ref(), true)?;
                    if let Some(r) = rng.as_deref_mut().filter(|_| p > 0.0) {
                        t = dropout(&t, p, r)?;
                    }
                    lin1.forward_with(&t, Some(&h), false)?
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
    fn frozen_made_computes_what_the_trainable_one_does() -> candle_core::Result<()> {
        use candle_core::{DType, Device};
        use candle_nn::VarMap;
        let dev = Device::Cpu;
        for residual in [true, false] {
            let cfg = MadeConfig {
                features: 5,
                context_features: 3,
                hidden_features: 300,
                hidden_layers: 2,
                output_multiplier: 4,
                residual,
                dropout: 0.0,
            };
            let varmap = VarMap::new();
            let vb = super::super::params::SeededInit::var_builder(&varmap, 3, DType::F64, &dev);
            let trainable = Made::new(&cfg, vb)?;
            assert!(matches!(trainable.initial.weights, Weights::Trainable { .. }));
            let tensors =
                varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
            let frozen = Made::frozen(&cfg, VarBuilder::from_tensors(tensors, DType::F64, &dev))?;
            assert!(
                matches!(frozen.initial.weights, Weights::Frozen(Frozen { blocks: Some(_), .. })),
                "staircase blocks"
            );
            // 300 rows: the frozen layers multiply by blocks; 100: by one dense product.
            for n in [300usize, 100] {
                let xs = Tensor::arange(0f64, (5 * n) as f64, &dev)?.reshape((n, 5))?.affine(1e-3, -0.7)?.sin()?;
                let ctx = Tensor::arange(0f64, (3 * n) as f64, &dev)?.reshape((n, 3))?.affine(1e-2, 0.1)?.cos()?;
                let a = trainable.forward(&xs, Some(&ctx), None)?.flatten_all()?.to_vec1::<f64>()?;
                let b = frozen.forward(&xs, Some(&ctx), None)?.flatten_all()?.to_vec1::<f64>()?;
                let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
                assert!(worst < 1e-12, "residual {residual}, {n} rows: largest difference {worst}");
            }
        }
        Ok(())
    }

    /// A frozen layer in bf16 computes the product of bf16-rounded inputs and weights: the tile
    /// kernel (16 rows or more, on AMX CPUs) and the rounded float32 path (below 16 rows, or no
    /// AMX) agree to float32 summation order, and both differ from float32 by bf16's rounding.
    #[test]
    fn bf16_layers_round_inputs_and_weights_alike_on_every_path() -> candle_core::Result<()> {
        use candle_core::{DType, Device};
        use candle_nn::VarMap;
        let dev = Device::Cpu;
        let (d, h) = (40, 96);
        let in_deg = input_degrees(d);
        let mut hid_deg = hidden_degrees(h, d);
        hid_deg.sort();
        let layer = |dtype: DType| -> candle_core::Result<MaskedLinear> {
            let varmap = VarMap::new();
            let vb = super::super::params::SeededInit::var_builder(&varmap, 5, dtype, &dev);
            let orders = Orders { inputs: None, outputs: None };
            MaskedLinear::new(vb, &in_deg, &hid_deg, false, None, Some(orders))
        };
        let full = layer(DType::F32)?;
        let mut low = layer(DType::F32)?;
        low.set_matmul_precision(MatmulPrecision::Bf16)?;
        let n = 300;
        let xs = Tensor::arange(0f32, (n * d) as f32, &dev)?.reshape((n, d))?.affine(0.013, -0.4)?.sin()?;
        let all = low.forward_with(&xs, None, true)?;
        let few = low.forward_with(&xs.narrow(0, 0, 8)?, None, true)?;
        let paths = (all.narrow(0, 0, 8)? - &few)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(paths < 1e-5, "tile and rounded paths differ by {paths}");
        let rounding = (all - full.forward_with(&xs, None, true)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(rounding > 1e-6 && rounding < 2e-2, "bf16 against float32: {rounding}");
        let mut wide = layer(DType::F64)?;
        assert!(wide.set_matmul_precision(MatmulPrecision::Bf16).is_err(), "float64 layers are refused");
        Ok(())
    }

    #[test]
    fn made_masks_are_strict_only_at_the_output() {
        let m = mask(&[1, 2], &[1, 2], false);
        assert_eq!(m, vec![1.0, 0.0, 1.0, 1.0]);
        let m = mask(&[1, 2], &[1, 2], true);
        assert_eq!(m, vec![0.0, 0.0, 1.0, 0.0]);
    }
}
