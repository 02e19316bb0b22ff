//! iCaloFlow's flow inputs that training and sampling both build:
//!
//! - Flow-2's context (E_inc, logit(E_1)/4), Flow-3's context for layer i (E_inc, logit E_i,
//!   logit E_{i−1}, layer i−1's pattern logits, one-hot(i) of 44), and their sizes;
//! - a layer's pattern: its voxels noised (U[0, noise) MeV each), normalised to unit sum, logit.
//!
//! Training builds them on the host, row by row ([`flow2_context`], [`flow3_context`],
//! [`layer_pattern`]); sampling builds them as tensors from the layer it just generated
//! ([`flow2_context_tensor`], [`flow3_context_tensor`], [`layer_pattern_tensor`]).

use candle_core::Tensor;
use rand::Rng;

use crate::config::FlowName;
use crate::data::geometry::{CaloGeometry, LAYERS};
use crate::data::preprocess::{logit, logit_tensor, CaloPreprocessing};

/// Feature and context sizes of a flow.
pub fn dims(flow: FlowName, g: &CaloGeometry) -> (usize, usize) {
    let v = g.voxels_per_layer();
    match flow {
        FlowName::Flow1 => (LAYERS, 1),
        FlowName::Flow2 => (v, 2),
        FlowName::Flow3 => (v, 3 + v + (LAYERS - 1)),
    }
}

/// Flow-2's context from preprocessed values.
pub fn flow2_context(prep: &CaloPreprocessing, e_inc: f32, e1_logit: f32) -> [f32; 2] {
    [e_inc, (e1_logit as f64 / prep.flow2_e1_divisor) as f32]
}

/// Writes Flow-3's context for target layer `t` (1..45, 0-based) into `out`.
pub fn flow3_context(e_inc: f32, e_t: f32, e_prev: f32, prev_logits: &[f32], t: usize, out: &mut [f32]) {
    let v = prev_logits.len();
    out[0] = e_inc;
    out[1] = e_t;
    out[2] = e_prev;
    out[3..3 + v].copy_from_slice(prev_logits);
    let onehot = &mut out[3 + v..];
    onehot.iter_mut().for_each(|x| *x = 0.0);
    onehot[t - 1] = 1.0;
}

/// A layer's voxels (MeV) → logit of the noised, sum-normalised pattern, written to `out`
/// (one uniform draw per voxel, in order).
pub fn layer_pattern<R: Rng>(prep: &CaloPreprocessing, layer: &[f32], rng: &mut R, out: &mut [f32]) {
    let noised: Vec<f64> = layer.iter().map(|&v| v as f64 + prep.noise(rng)).collect();
    let sum: f64 = noised.iter().sum();
    for (o, v) in out.iter_mut().zip(&noised) {
        *o = logit(v / sum, prep.alpha) as f32;
    }
}

/// A voxel standardisation (`CaloPreprocessing::voxel_standardisation`) as (45, voxels) tensors:
/// what sampling applies to the previous layer's logits and undoes on the flows' outputs.
pub struct StandardisationTables {
    mean: Tensor,
    std: Tensor,
}

impl StandardisationTables {
    /// The tables of `prep`'s standardisation (None without one); `Err` with a message when it
    /// does not fit `v` voxels per layer or holds a non-finite mean or a std ≤ 0.
    pub fn new(
        prep: &CaloPreprocessing,
        v: usize,
        device: &candle_core::Device,
        dtype: candle_core::DType,
    ) -> std::result::Result<Option<Self>, String> {
        prep.check_voxel_standardisation(v)?;
        let Some(s) = &prep.voxel_standardisation else { return Ok(None) };
        let table = |x: &[f64]| Tensor::from_slice(x, (LAYERS, v), device)?.to_dtype(dtype);
        let tables = (|| Ok::<_, candle_core::Error>(Self { mean: table(&s.mean)?, std: table(&s.std)? }))();
        tables.map(Some).map_err(|e| e.to_string())
    }

    /// Logits (n, voxels) of layer `t` → the standardised values the flows see.
    pub fn standardise(&self, logits: &Tensor, t: usize) -> candle_core::Result<Tensor> {
        logits.broadcast_sub(&self.mean.narrow(0, t, 1)?)?.broadcast_div(&self.std.narrow(0, t, 1)?)
    }

    /// A flow's output (n, voxels) for layer `t` → pattern logits.
    pub fn destandardise(&self, y: &Tensor, t: usize) -> candle_core::Result<Tensor> {
        y.broadcast_mul(&self.std.narrow(0, t, 1)?)?.broadcast_add(&self.mean.narrow(0, t, 1)?)
    }
}

/// [`flow2_context`] of a batch: `e_inc` (n, 1) preprocessed, `e1_logits` (n, 1).
pub fn flow2_context_tensor(
    prep: &CaloPreprocessing,
    e_inc: &Tensor,
    e1_logits: &Tensor,
) -> candle_core::Result<Tensor> {
    Tensor::cat(&[e_inc, &(e1_logits / prep.flow2_e1_divisor)?], 1)
}

/// [`flow3_context`] of a batch: `e_inc`, `e_t`, `e_prev` (n, 1), `prev` (n, voxels).
pub fn flow3_context_tensor(
    e_inc: &Tensor,
    e_t: &Tensor,
    e_prev: &Tensor,
    prev: &Tensor,
    t: usize,
) -> candle_core::Result<Tensor> {
    let n = e_inc.dim(0)?;
    let mut onehot = vec![0f32; LAYERS - 1];
    onehot[t - 1] = 1.0;
    let onehot = Tensor::from_vec(onehot, (1, LAYERS - 1), e_inc.device())?
        .to_dtype(e_inc.dtype())?
        .broadcast_as((n, LAYERS - 1))?;
    Tensor::cat(&[e_inc, e_t, e_prev, prev, &onehot.contiguous()?], 1)
}

/// [`layer_pattern`] of a batch of layers (n, voxels) with its uniform draws `u` (n, voxels).
pub fn layer_pattern_tensor(prep: &CaloPreprocessing, layer: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
    let noised = (layer + (u * prep.noise_mev)?)?;
    let normalised = noised.broadcast_div(&noised.sum_keepdim(1)?)?;
    logit_tensor(&normalised, prep.alpha)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn tensor(v: &[f32], cols: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (v.len() / cols, cols), &Device::Cpu).unwrap()
    }

    fn rows(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "value {i}: tensor {x} vs host {y}");
        }
    }

    /// Random layers, energies and noise: the tensor contexts and patterns that sampling builds
    /// are the host ones that training builds.
    #[test]
    fn host_and_tensor_versions_agree_on_random_inputs() {
        let prep = CaloPreprocessing::default();
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let (n, v) = (5, 144);
        let e_inc: Vec<f32> = (0..n).map(|_| rng.random_range(-1.5f32..1.5)).collect();
        let e_t: Vec<f32> = (0..n).map(|_| rng.random_range(-8f32..3.0)).collect();
        let e_prev: Vec<f32> = (0..n).map(|_| rng.random_range(-8f32..3.0)).collect();
        // Sparse layers (most voxels empty, as in real showers), energies in MeV.
        let layer: Vec<f32> =
            (0..n * v).map(|_| if rng.random::<f64>() < 0.7 { 0.0 } else { rng.random_range(0f32..500.0) }).collect();

        // Layer patterns with the same uniform draws: the host draws them itself, in order.
        let mut draw = ChaCha8Rng::seed_from_u64(5);
        let mut host = vec![0f32; n * v];
        for (l, o) in layer.chunks(v).zip(host.chunks_mut(v)) {
            layer_pattern(&prep, l, &mut draw, o);
        }
        let mut draw = ChaCha8Rng::seed_from_u64(5);
        let u: Vec<f32> = (0..n * v).map(|_| draw.random::<f64>() as f32).collect();
        let pattern = layer_pattern_tensor(&prep, &tensor(&layer, v), &tensor(&u, v)).unwrap();
        close(&rows(&pattern), &host, 1e-4);

        let host2: Vec<f32> = (0..n).flat_map(|k| flow2_context(&prep, e_inc[k], e_t[k])).collect();
        let t2 = flow2_context_tensor(&prep, &tensor(&e_inc, 1), &tensor(&e_t, 1)).unwrap();
        close(&rows(&t2), &host2, 1e-6);

        for t in [1, 17, LAYERS - 1] {
            let (_, dc) = dims(FlowName::Flow3, &CaloGeometry::for_dataset(2).unwrap());
            let mut host3 = vec![0f32; n * dc];
            for k in 0..n {
                flow3_context(
                    e_inc[k],
                    e_t[k],
                    e_prev[k],
                    &host[k * v..(k + 1) * v],
                    t,
                    &mut host3[k * dc..(k + 1) * dc],
                );
            }
            let t3 =
                flow3_context_tensor(&tensor(&e_inc, 1), &tensor(&e_t, 1), &tensor(&e_prev, 1), &pattern, t).unwrap();
            assert_eq!(t3.dims(), &[n, dc]);
            close(&rows(&t3), &host3, 1e-4);
        }
    }
}
