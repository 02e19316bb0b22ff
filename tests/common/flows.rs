//! Flows built in-process for the flow-library tests: a spec, its seeded weights, Gaussian inputs.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use zdcflow::flow::params::SeededInit;
use zdcflow::flow::permutation::{make_permutations, PermutationScheme};
use zdcflow::flow::{io, Flow, FlowKind, FlowSpec, SplineConfig};

pub const DEV: Device = Device::Cpu;

/// An RQS spline of 8 bins on [−bound, bound] with floors 1e-3.
pub fn spline(bound: f64) -> SplineConfig {
    SplineConfig { num_bins: 8, tail_bound: bound, min_bin_width: 1e-3, min_bin_height: 1e-3, min_derivative: 1e-3 }
}

/// A small stack: 16 hidden features in 2 layers, no residual blocks, no dropout, [`spline`]`(3)`,
/// alternating permutations drawn from `permutation_seed` (change fields with `..spec(…)`).
pub fn spec(kind: FlowKind, features: usize, context: usize, blocks: usize, permutation_seed: u64) -> FlowSpec {
    FlowSpec {
        kind,
        features,
        context_features: context,
        blocks,
        hidden_features: 16,
        hidden_layers: 2,
        residual: false,
        dropout: 0.0,
        spline: spline(3.0),
        permutations: make_permutations(PermutationScheme::Alternating, features, blocks, permutation_seed),
        base: Default::default(),
        fast_spline: None,
    }
}

/// The flow of `spec` with seeded weights (names under the flow prefix) and its variables.
pub fn build(spec: &FlowSpec, seed: u64, dtype: DType) -> (Flow, VarMap) {
    let varmap = VarMap::new();
    let flow = Flow::new(spec, SeededInit::var_builder(&varmap, seed, dtype, &DEV).pp(io::PREFIX)).unwrap();
    (flow, varmap)
}

/// `shape` standard-normal values times `scale`.
pub fn randn(rng: &mut ChaCha8Rng, shape: (usize, usize), scale: f64, dtype: DType) -> Tensor {
    let v: Vec<f64> =
        (0..shape.0 * shape.1).map(|_| scale * rng.sample::<f64, _>(rand_distr::StandardNormal)).collect();
    Tensor::from_vec(v, shape, &DEV).unwrap().to_dtype(dtype).unwrap()
}
