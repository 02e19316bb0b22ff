//! A stack of MADE-RQS blocks with permutations between them and a standard-normal base.
//!
//! The stack is written once for both kinds: x → z runs block 0 first and permutes after each
//! block; z → x runs the blocks in reverse order and undoes the permutations. Each block uses its
//! fast pass where the kind allows it (MAF: x → z, IAF: z → x) and its D-pass solve otherwise.
//! The traced variants report every block's data-side and latent-side tensors and MADE outputs
//! (what distillation compares) from the same loop as the untraced ones.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::autoregressive::{BlockPass, MadeRqs};
use super::base::{Base, BaseSpec};
use super::made::MadeConfig;
use super::permutation::{is_permutation, Permutation};
use super::spline::{Direction, SplineConfig};

/// Which pass is fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowKind {
    /// Masked autoregressive flow: density in one pass, sampling in D passes (the teacher).
    Maf,
    /// Inverse autoregressive flow: sampling in one pass, density in D passes (the student).
    Iaf,
}

/// Everything needed to rebuild a stack (saved as JSON beside its weights).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpec {
    pub kind: FlowKind,
    pub features: usize,
    pub context_features: usize,
    pub blocks: usize,
    pub hidden_features: usize,
    pub hidden_layers: usize,
    pub residual: bool,
    pub dropout: f64,
    pub spline: SplineConfig,
    /// `blocks − 1` index vectors; permutation i is applied after block i on the way to z.
    pub permutations: Vec<Vec<usize>>,
    /// The base distribution (absent in model.json: the standard normal).
    #[serde(default, skip_serializing_if = "BaseSpec::is_standard")]
    pub base: BaseSpec,
    /// The spline direction of each block's one-MADE-pass direction, where it differs from the
    /// kind's own (MAF: forward; IAF: inverse, the CaloFlow/iCaloFlow student). nflows' plain IAF
    /// (`InverseTransform` of a MAF block) is an IAF with `forward` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_spline: Option<Direction>,
}

impl FlowSpec {
    pub fn made_config(&self) -> MadeConfig {
        MadeConfig {
            features: self.features,
            context_features: self.context_features,
            hidden_features: self.hidden_features,
            hidden_layers: self.hidden_layers,
            output_multiplier: self.spline.params_per_feature(),
            residual: self.residual,
            dropout: self.dropout,
        }
    }

    /// Checks the internal consistency of a spec (e.g. one read from a model.json).
    pub fn validate(&self) -> Result<(), String> {
        if self.features == 0 || self.blocks == 0 || self.hidden_features == 0 {
            return Err("features, blocks and hidden_features must be ≥ 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        self.spline.validate().map_err(|(field, why)| format!("spline.{field}: {why}"))?;
        if self.permutations.len() != self.blocks - 1 {
            return Err(format!(
                "{} permutations for {} blocks (need blocks − 1)",
                self.permutations.len(),
                self.blocks
            ));
        }
        if let Some(i) = self.permutations.iter().position(|p| !is_permutation(p, self.features)) {
            return Err(format!("permutation {i} is not a permutation of 0..{}", self.features));
        }
        self.base.validate(self.context_features).map_err(|e| format!("base: {e}"))
    }

    /// Parameters in the stack.
    pub fn parameter_count(&self) -> usize {
        let (d, h, c) = (self.features, self.hidden_features, self.context_features);
        let out = d * self.spline.params_per_feature();
        let ctx = if c > 0 { c * h + h } else { 0 };
        let hidden = if self.residual { 2 * (h * h + h) + ctx } else { h * h + h };
        self.blocks * (d * h + h + ctx + self.hidden_layers * hidden + h * out + out) + self.base.parameter_count(d, c)
    }

    /// The spline direction of the blocks' one-MADE-pass direction.
    pub fn fast_direction(&self) -> Direction {
        self.fast_spline.unwrap_or(match self.kind {
            FlowKind::Maf => Direction::Forward,
            FlowKind::Iaf => Direction::Inverse,
        })
    }
}

/// Every block's tensors from one pass, indexed by block (not by order of application).
#[derive(Default)]
pub struct Trace {
    /// Block i's tensor on the data side (its input on the way to z).
    pub data_side: Vec<Tensor>,
    /// Block i's tensor on the latent side (its output on the way to z).
    pub latent_side: Vec<Tensor>,
    /// Block i's raw MADE output.
    pub made: Vec<Tensor>,
}

/// The result of a pass: its output, log|∂output/∂input| per sample, and optionally a trace.
pub struct Pass {
    pub output: Tensor,
    pub ladj: Tensor,
    pub trace: Option<Trace>,
}

pub struct Flow {
    spec: FlowSpec,
    blocks: Vec<MadeRqs>,
    perms: Vec<Permutation>,
    base: Base,
    device: Device,
    dtype: DType,
}

/// log N(z; 0, I) per row.
pub fn standard_normal_log_prob(zs: &Tensor) -> candle_core::Result<Tensor> {
    let d = zs.dim(1)? as f64;
    zs.sqr()?.sum(1)?.affine(-0.5, -0.5 * d * (2.0 * std::f64::consts::PI).ln())
}

/// What a pass does beyond mapping its input: dropout drawn from `rng` (training), and a
/// [`Trace`] of every block (distillation). The default is neither.
#[derive(Default)]
pub struct PassOptions<'a> {
    pub rng: Option<&'a mut ChaCha8Rng>,
    pub traced: bool,
}

impl PassOptions<'_> {
    /// A traced pass without dropout.
    pub fn traced() -> Self {
        Self { rng: None, traced: true }
    }
}

impl Flow {
    /// Builds a trainable stack; parameters come from `vb` under `<prefix>.<i>.made.…`.
    pub fn new(spec: &FlowSpec, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::build(spec, vb, MadeRqs::new)
    }

    /// Builds a frozen (inference) stack from fixed weights (see [`super::made::Made::frozen`]).
    pub fn frozen(spec: &FlowSpec, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::build(spec, vb, MadeRqs::frozen)
    }

    fn build(
        spec: &FlowSpec,
        vb: VarBuilder,
        block: fn(&MadeConfig, &SplineConfig, Direction, VarBuilder) -> candle_core::Result<MadeRqs>,
    ) -> candle_core::Result<Self> {
        spec.validate().map_err(candle_core::Error::Msg)?;
        let fast = spec.fast_direction();
        let made = spec.made_config();
        let blocks = (0..spec.blocks)
            .map(|i| block(&made, &spec.spline, fast, vb.pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let perms = spec
            .permutations
            .iter()
            .map(|p| Permutation::new(p, vb.device()))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let base = Base::new(&spec.base, spec.features, spec.context_features, vb.pp("base"))?;
        Ok(Self { spec: spec.clone(), blocks, perms, base, device: vb.device().clone(), dtype: vb.dtype() })
    }

    pub fn spec(&self) -> &FlowSpec {
        &self.spec
    }

    /// Switches a frozen float32 stack's masked-layer products to `precision` (an opt-in for
    /// sampling: see [`super::MatmulPrecision`]); a trainable or float64 stack is refused.
    pub fn set_matmul_precision(&mut self, precision: super::MatmulPrecision) -> candle_core::Result<()> {
        self.blocks.iter_mut().try_for_each(|b| b.set_matmul_precision(precision))
    }

    fn block_to_latent(
        &self,
        i: usize,
        xs: &Tensor,
        ctx: Option<&Tensor>,
        rng: Option<&mut ChaCha8Rng>,
        traced: bool,
    ) -> candle_core::Result<BlockPass> {
        match self.spec.kind {
            FlowKind::Maf => self.blocks[i].fast_pass(xs, ctx, rng),
            FlowKind::Iaf => self.blocks[i].slow_pass(xs, ctx, traced),
        }
    }

    fn block_to_data(
        &self,
        i: usize,
        zs: &Tensor,
        ctx: Option<&Tensor>,
        rng: Option<&mut ChaCha8Rng>,
        traced: bool,
    ) -> candle_core::Result<BlockPass> {
        match self.spec.kind {
            FlowKind::Iaf => self.blocks[i].fast_pass(zs, ctx, rng),
            FlowKind::Maf => self.blocks[i].slow_pass(zs, ctx, traced),
        }
    }

    fn new_trace(&self, traced: bool) -> Option<Trace> {
        traced.then(|| Trace {
            data_side: Vec::with_capacity(self.blocks.len()),
            latent_side: Vec::with_capacity(self.blocks.len()),
            made: Vec::with_capacity(self.blocks.len()),
        })
    }

    /// x → z, without dropout or trace.
    pub fn to_latent(&self, xs: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<Pass> {
        self.to_latent_with(xs, ctx, PassOptions::default())
    }

    /// z → x, without dropout or trace; `ladj` is log|∂x/∂z|.
    pub fn to_data(&self, zs: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<Pass> {
        self.to_data_with(zs, ctx, PassOptions::default())
    }

    /// x → z. `opts.rng` enables dropout (training); `opts.traced` keeps every block's tensors.
    pub fn to_latent_with(&self, xs: &Tensor, ctx: Option<&Tensor>, opts: PassOptions) -> candle_core::Result<Pass> {
        let PassOptions { mut rng, traced } = opts;
        let mut trace = self.new_trace(traced);
        let mut h = xs.clone();
        let mut ladj: Option<Tensor> = None;
        for i in 0..self.blocks.len() {
            let pass = self.block_to_latent(i, &h, ctx, rng.as_deref_mut(), traced)?;
            if let Some(t) = trace.as_mut() {
                t.data_side.push(h.clone());
                t.latent_side.push(pass.output.clone());
                t.made.push(pass.made.clone().expect("traced passes keep the MADE output"));
            }
            ladj = Some(match ladj {
                None => pass.ladj,
                Some(l) => (l + pass.ladj)?,
            });
            h = match self.perms.get(i) {
                Some(p) => p.apply(&pass.output)?,
                None => pass.output,
            };
        }
        Ok(Pass { output: h, ladj: ladj.expect("a flow has at least one block"), trace })
    }

    /// z → x; `ladj` is log|∂x/∂z|. Options as [`Self::to_latent_with`].
    pub fn to_data_with(&self, zs: &Tensor, ctx: Option<&Tensor>, opts: PassOptions) -> candle_core::Result<Pass> {
        let PassOptions { mut rng, traced } = opts;
        let n = self.blocks.len();
        let mut data_side = vec![None; n];
        let mut latent_side = vec![None; n];
        let mut made = vec![None; n];
        let mut h = zs.clone();
        let mut ladj: Option<Tensor> = None;
        for i in (0..n).rev() {
            if let Some(p) = self.perms.get(i) {
                h = p.undo(&h)?;
            }
            let pass = self.block_to_data(i, &h, ctx, rng.as_deref_mut(), traced)?;
            if traced {
                latent_side[i] = Some(h.clone());
                data_side[i] = Some(pass.output.clone());
                made[i] = pass.made.clone();
            }
            ladj = Some(match ladj {
                None => pass.ladj,
                Some(l) => (l + pass.ladj)?,
            });
            h = pass.output;
        }
        let trace = traced.then(|| Trace {
            data_side: data_side.into_iter().flatten().collect(),
            latent_side: latent_side.into_iter().flatten().collect(),
            made: made.into_iter().flatten().collect(),
        });
        Ok(Pass { output: h, ladj: ladj.expect("a flow has at least one block"), trace })
    }

    /// log p(x | c) per row (with the base's density, conditional where the base is).
    pub fn log_prob(&self, xs: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let pass = self.to_latent(xs, ctx)?;
        self.base.log_prob(&pass.output, ctx)? + pass.ladj
    }

    /// Maps standard-normal noise `eps` through the base (z = μ(c) + σ(c)·ε for a conditional
    /// base, z = ε otherwise) and the transform to data; returns `(xs, log q(xs))`.
    pub fn sample_from(&self, eps: &Tensor, ctx: Option<&Tensor>) -> candle_core::Result<(Tensor, Tensor)> {
        let (zs, ladj_base) = self.base.from_noise(eps, ctx)?;
        let pass = self.to_data(&zs, ctx)?;
        let log_q = ((standard_normal_log_prob(eps)? - ladj_base)? - pass.ladj)?;
        Ok((pass.output, log_q))
    }

    /// The base distribution.
    pub fn base(&self) -> &Base {
        &self.base
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
}
