//! A CaloChallenge model's whole shower as one ONNX graph (`export-onnx --whole-shower`): the
//! incident energy and the noise the sampler consumes in, the 45 layers' voxels in MeV out, as
//! `zdcflow sample` computes them ([`crate::sample::calo::CaloChain::generate`]) from that noise.
//!
//! Inputs (the model's float type; N is symbolic, any batch runs through one file):
//! - `e_inc` (N, 1): incident energies in MeV;
//! - `noise_energies` (N, 45): standard normals, Flow-1's noise (the layer energies);
//! - `noise_first_layer` (N, V): standard normals, Flow-2's noise (layer 0);
//! - `noise_layers` (N, 44, V): standard normals, `[:, t − 1, :]` Flow-3's noise for layer t;
//! - `noise_patterns` (N, 44, V): uniforms on [0, 1), `[:, t − 1, :]` the noise added to layer
//!   t − 1 (× noise_mev) before it conditions layer t.
//!
//! Output `showers` (N, 45·V) in MeV, the official voxel order (layer-major), after the threshold.
//!
//! Inside: Flow-1 (a MAF: per block D sequential passes, one ONNX `Loop` or written out, see
//! [`MafPasses`]; an IAF in one pass) → layer energies; Flow-2 → layer 0; one `Loop` of 44
//! iterations runs Flow-3 (its weights stored once, referred to from the loop body) on the
//! previous layer. The per-layer pre- and postprocessing is [`super::calo`]'s, with the model's
//! voxel standardisation where it has one (`[model] calo_standardise_voxels`: layer t's flow output
//! de-standardised with layer t's mean and std, layer t − 1's context logits standardised with
//! layer t − 1's; the (45, V) tables stored once).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_onnx::onnx::ModelProto;

use super::calo::{
    cast, context_pattern, flow2_context, flow3_context, incident, layer_energies, pattern_to_voxels, voxel_tables,
};
use super::onnx::{data_type, empty, int_attr, ints_attr, value_info_dims, MafPasses};
use crate::data::geometry::{CaloGeometry, LAYERS};
use crate::data::preprocess::CaloPreprocessing;
use crate::detector::noise::{BatchNoise, NoiseSource};
use crate::flow::FlowSpec;

pub const INPUT_E_INC: &str = "e_inc";
pub const INPUT_NOISE_ENERGIES: &str = "noise_energies";
pub const INPUT_NOISE_FIRST_LAYER: &str = "noise_first_layer";
pub const INPUT_NOISE_LAYERS: &str = "noise_layers";
pub const INPUT_NOISE_PATTERNS: &str = "noise_patterns";
pub const OUTPUT_SHOWERS: &str = "showers";

/// One flow of the chain: its spec and its weights (names as in the weights file, under `prefix`).
pub struct FlowWeights<'a> {
    pub spec: &'a FlowSpec,
    pub tensors: &'a HashMap<String, Tensor>,
}

/// The graph's inputs and output, for the doc_string and `--help`.
pub fn description(voxels: usize) -> String {
    format!(
        "inputs e_inc (N, 1) incident energies in MeV; noise_energies (N, 45) standard normals (Flow-1); \
         noise_first_layer (N, {voxels}) standard normals (Flow-2, layer 0); noise_layers (N, 44, {voxels}) \
         standard normals ([:, t-1, :] Flow-3 for layer t); noise_patterns (N, 44, {voxels}) uniforms on [0, 1) \
         ([:, t-1, :] the noise on layer t-1 that conditions layer t); output showers (N, {}) in MeV, layer-major, \
         after the threshold: what `zdcflow sample` generates from the same draws",
        LAYERS * voxels
    )
}

/// The whole-shower graph of the chain `flows` = [Flow-1, Flow-2, Flow-3].
pub fn export(
    flows: [FlowWeights; 3],
    prefix: &str,
    dtype: DType,
    opset: i64,
    prep: &CaloPreprocessing,
    geometry: &CaloGeometry,
    passes: MafPasses,
) -> Result<ModelProto, String> {
    let v = geometry.voxels_per_layer();
    let names = [crate::config::FlowName::Flow1, crate::config::FlowName::Flow2, crate::config::FlowName::Flow3];
    for (f, flow) in flows.iter().zip(names) {
        let (features, context) = crate::detector::calo::dims(flow, geometry);
        if f.spec.features != features || f.spec.context_features != context {
            return Err(format!(
                "{} has {} features and {} conditions; dataset {} needs {features} and {context}",
                flow.as_str(),
                f.spec.features,
                f.spec.context_features,
                geometry.dataset
            ));
        }
    }
    let mut g = empty(dtype, opset)?;
    let dt = data_type(dtype)?;
    let [f1, f2, f3] = flows;
    let tables = voxel_tables(&mut g, prep, v)?;

    // Flow-1: the layer energies (N, 45).
    let e_pre = incident(&mut g, prep, INPUT_E_INC);
    let z1 = g.base_from_noise(f1.spec, f1.tensors, prefix, INPUT_NOISE_ENERGIES, &e_pre)?;
    let x1 = g.flow_with(f1.spec, f1.tensors, prefix, &z1, &e_pre, passes)?;
    let energies = layer_energies(&mut g, prep, &x1);
    let energy = |g: &mut super::onnx::Builder, t: &str| g.op("Gather", &[&energies, t], vec![int_attr("axis", 1)]);

    // Flow-2: layer 0.
    let first = g.ints(&[0]);
    let e1 = energy(&mut g, &first);
    let ctx2 = flow2_context(&mut g, prep, &e_pre, &e1);
    let z2 = g.base_from_noise(f2.spec, f2.tensors, prefix, INPUT_NOISE_FIRST_LAYER, &ctx2)?;
    let y2 = g.flow_with(f2.spec, f2.tensors, prefix, &z2, &ctx2, passes)?;
    let zero = g.int_scalar(0);
    let layer0 = pattern_to_voxels(&mut g, prep, tables.as_ref(), &zero, &y2, &e1);

    // Flow-3: layers 1..45, iteration i generating layer t = i + 1 from layer t − 1.
    let batch = {
        let shape = g.op("Shape", &[&e_pre], vec![]);
        let (zero, one) = (g.ints(&[0]), g.ints(&[1]));
        g.op("Slice", &[&shape, &zero, &one], vec![])
    };
    let onehot_shape = {
        let cols = g.ints(&[LAYERS as i64 - 1]);
        g.op("Concat", &[&batch, &cols], vec![int_attr("axis", 0)])
    };
    let layer_numbers: Vec<i64> = (1..LAYERS as i64).collect();
    let layer_numbers = g.ints(&layer_numbers);
    let (_, scans) = g.repeat(LAYERS - 1, &[(layer0.as_str(), dt)], 1, |g, i, carried| {
        let one = g.int_scalar(1);
        let t = g.add(i, &one);
        let axis0 = g.ints(&[0]);
        let (t1, i1) = (g.op("Unsqueeze", &[&t, &axis0], vec![]), g.op("Unsqueeze", &[i, &axis0], vec![]));
        let (e_t, e_prev) = (energy(g, &t1), energy(g, &i1));
        let uniforms = g.op("Gather", &[INPUT_NOISE_PATTERNS, i], vec![int_attr("axis", 1)]);
        let prev = context_pattern(g, prep, tables.as_ref(), i, &carried[0], &uniforms);
        let hot = g.op("Equal", &[&t, &layer_numbers], vec![]);
        let hot = cast(g, &hot, dt);
        let onehot = g.op("Expand", &[&hot, &onehot_shape], vec![]);
        let ctx3 = flow3_context(g, prep, &e_pre, (&e_t, &e_prev), &prev, &onehot);
        let eps = g.op("Gather", &[INPUT_NOISE_LAYERS, i], vec![int_attr("axis", 1)]);
        let z3 = g.base_from_noise(f3.spec, f3.tensors, prefix, &eps, &ctx3)?;
        let y3 = g.flow_with(f3.spec, f3.tensors, prefix, &z3, &ctx3, passes)?;
        let layer = pattern_to_voxels(g, prep, tables.as_ref(), &t, &y3, &e_t);
        Ok((vec![layer.clone()], vec![layer]))
    })?;
    // (44, N, V) → (N, 44·V), after layer 0.
    let rest = g.op("Transpose", &[&scans[0]], vec![ints_attr("perm", &[1, 0, 2])]);
    let rest = g.op("Flatten", &[&rest], vec![int_attr("axis", 1)]);
    let showers = g.op("Concat", &[&layer0, &rest], vec![int_attr("axis", 1)]);
    g.output_as(&showers, OUTPUT_SHOWERS);

    let inputs = vec![
        value_info_dims(INPUT_E_INC, &[1], dt),
        value_info_dims(INPUT_NOISE_ENERGIES, &[LAYERS], dt),
        value_info_dims(INPUT_NOISE_FIRST_LAYER, &[v], dt),
        value_info_dims(INPUT_NOISE_LAYERS, &[LAYERS - 1, v], dt),
        value_info_dims(INPUT_NOISE_PATTERNS, &[LAYERS - 1, v], dt),
    ];
    let doc = format!(
        "zdcflow iCaloFlow whole-shower simulation, CaloChallenge dataset {}: {}; Flow-1 {:?} ({} blocks), Flow-2 \
         {:?} ({} blocks), Flow-3 {:?} ({} blocks, in a Loop over layers 1..44)",
        geometry.dataset,
        description(v),
        f1.spec.kind,
        f1.spec.blocks,
        f2.spec.kind,
        f2.spec.blocks,
        f3.spec.kind,
        f3.spec.blocks
    );
    Ok(g.model(inputs, vec![value_info_dims(OUTPUT_SHOWERS, &[LAYERS * v], dt)], doc, opset))
}

/// The noise of N showers, row-major, in the graph's input layouts (see the module's doc).
#[derive(Clone, Debug, PartialEq)]
pub struct ShowerNoise {
    pub events: usize,
    pub voxels: usize,
    /// (N, 45)
    pub energies: Vec<f32>,
    /// (N, V)
    pub first_layer: Vec<f32>,
    /// (N, 44, V)
    pub layers: Vec<f32>,
    /// (N, 44, V)
    pub patterns: Vec<f32>,
}

/// Records what a [`NoiseSource`] hands out, in order.
struct Recorder<S> {
    inner: S,
    draws: Vec<(bool, usize, Vec<f32>)>,
}

impl<S: NoiseSource> NoiseSource for Recorder<S> {
    fn normal(&mut self, d: usize) -> candle_core::Result<Tensor> {
        let t = self.inner.normal(d)?;
        self.draws.push((true, d, t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?));
        Ok(t)
    }
    fn uniform(&mut self, d: usize) -> candle_core::Result<Tensor> {
        let t = self.inner.uniform(d)?;
        self.draws.push((false, d, t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?));
        Ok(t)
    }
}

impl ShowerNoise {
    /// Standard normals and uniforms of `events` showers from `rng` (a caller's own noise).
    pub fn from_fn(
        events: usize,
        voxels: usize,
        mut normal: impl FnMut() -> f32,
        mut uniform: impl FnMut() -> f32,
    ) -> Self {
        let per = (LAYERS - 1) * voxels;
        Self {
            events,
            voxels,
            energies: (0..events * LAYERS).map(|_| normal()).collect(),
            first_layer: (0..events * voxels).map(|_| normal()).collect(),
            layers: (0..events * per).map(|_| normal()).collect(),
            patterns: (0..events * per).map(|_| uniform()).collect(),
        }
    }

    /// Rearranges draws in the order [`crate::sample::calo::CaloChain::generate`] takes them.
    fn from_draws(events: usize, voxels: usize, draws: Vec<(bool, usize, Vec<f32>)>) -> crate::error::Result<Self> {
        let expected = 2 + 2 * (LAYERS - 1);
        if draws.len() != expected {
            return Err(crate::error::Error::Invalid(format!(
                "the sampler drew {} times, the whole-shower graph takes {expected} draws",
                draws.len()
            )));
        }
        let mut it = draws.into_iter();
        let mut next = |normal: bool, d: usize| -> crate::error::Result<Vec<f32>> {
            let (n, dd, v) = it.next().expect("counted");
            if n != normal || dd != d {
                return Err(crate::error::Error::Invalid(format!(
                    "the sampler drew {} of {dd}, the graph expects {} of {d}",
                    if n { "normals" } else { "uniforms" },
                    if normal { "normals" } else { "uniforms" }
                )));
            }
            Ok(v)
        };
        let energies = next(true, LAYERS)?;
        let first_layer = next(true, voxels)?;
        let per = (LAYERS - 1) * voxels;
        let (mut layers, mut patterns) = (vec![0f32; events * per], vec![0f32; events * per]);
        for i in 0..LAYERS - 1 {
            let u = next(false, voxels)?;
            let z = next(true, voxels)?;
            for e in 0..events {
                let at = e * per + i * voxels;
                patterns[at..at + voxels].copy_from_slice(&u[e * voxels..(e + 1) * voxels]);
                layers[at..at + voxels].copy_from_slice(&z[e * voxels..(e + 1) * voxels]);
            }
        }
        Ok(Self { events, voxels, energies, first_layer, layers, patterns })
    }
}

/// Hands out a [`ShowerNoise`] in the order the sampler draws it.
struct Replay<'a> {
    noise: &'a ShowerNoise,
    draw: usize,
    dtype: DType,
}

impl Replay<'_> {
    fn next(&mut self, normal: bool, d: usize) -> candle_core::Result<Tensor> {
        let (n, v) = (self.noise.events, self.noise.voxels);
        let k = self.draw;
        self.draw += 1;
        let (is_normal, cols, values): (bool, usize, Vec<f32>) = match k {
            0 => (true, LAYERS, self.noise.energies.clone()),
            1 => (true, v, self.noise.first_layer.clone()),
            k if k < 2 + 2 * (LAYERS - 1) => {
                let i = (k - 2) / 2;
                let src = if k % 2 == 0 { &self.noise.patterns } else { &self.noise.layers };
                let per = (LAYERS - 1) * v;
                let rows = (0..n).flat_map(|e| src[e * per + i * v..e * per + (i + 1) * v].iter().copied()).collect();
                (k % 2 == 1, v, rows)
            }
            _ => return Err(candle_core::Error::Msg(format!("draw {k}: the shower noise is used up"))),
        };
        if is_normal != normal || cols != d {
            return Err(candle_core::Error::Msg(format!("draw {k}: the sampler asks for another kind or size")));
        }
        Tensor::from_vec(values, (n, d), &Device::Cpu)?.to_dtype(self.dtype)
    }
}

impl NoiseSource for Replay<'_> {
    fn normal(&mut self, d: usize) -> candle_core::Result<Tensor> {
        self.next(true, d)
    }
    fn uniform(&mut self, d: usize) -> candle_core::Result<Tensor> {
        self.next(false, d)
    }
}

/// What `zdcflow sample --seed seed` generates on the CPU for the events `first..first + e_inc.len()`
/// of incident energies `e_inc` (MeV) with the model in `dir` (any batching gives the same
/// numbers), with the noise it drew.
pub fn sample_with_noise(
    dir: &std::path::Path,
    e_inc: &[f32],
    seed: u64,
    first: usize,
) -> crate::error::Result<(Vec<f32>, ShowerNoise)> {
    let m = crate::models::manifest::Manifest::load(dir)?;
    let chain = crate::sample::calo::CaloChain::load(dir, &m, &Device::Cpu)?;
    let n = e_inc.len();
    let inner = BatchNoise::new(seed, first, n, chain.dtype(), &Device::Cpu)?;
    let mut rec = Recorder { inner, draws: Vec::new() };
    let showers = chain.generate(e_inc, &mut rec)?;
    Ok((showers, ShowerNoise::from_draws(n, chain.geometry.voxels_per_layer(), rec.draws)?))
}

/// What the sampler generates from the given noise (the model in `dir`, on the CPU): showers
/// (N × 45·V, MeV).
pub fn sample_from_noise(dir: &std::path::Path, e_inc: &[f32], noise: &ShowerNoise) -> crate::error::Result<Vec<f32>> {
    let m = crate::models::manifest::Manifest::load(dir)?;
    let chain = crate::sample::calo::CaloChain::load(dir, &m, &Device::Cpu)?;
    if noise.events != e_inc.len() || noise.voxels != chain.geometry.voxels_per_layer() {
        return Err(crate::error::Error::Invalid(format!(
            "noise for {} events of {} voxels per layer; {} energies and {} voxels per layer given",
            noise.events,
            noise.voxels,
            e_inc.len(),
            chain.geometry.voxels_per_layer()
        )));
    }
    chain.generate(e_inc, &mut Replay { noise, draw: 0, dtype: chain.dtype() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layouts round-trip: what a recorder saw, rearranged, is handed back in the same order.
    #[test]
    fn replay_hands_back_the_recorded_draws_in_order() {
        let (n, v) = (3, 4);
        let mut k = 0f32;
        let mut draws = Vec::new();
        let mut push = |normal: bool, d: usize| {
            let vals: Vec<f32> = (0..n * d)
                .map(|_| {
                    k += 1.0;
                    k
                })
                .collect();
            draws.push((normal, d, vals));
        };
        push(true, LAYERS);
        push(true, v);
        for _ in 1..LAYERS {
            push(false, v);
            push(true, v);
        }
        let noise = ShowerNoise::from_draws(n, v, draws.clone()).unwrap();
        let mut r = Replay { noise: &noise, draw: 0, dtype: DType::F32 };
        for (normal, d, vals) in draws {
            let t = if normal { r.normal(d) } else { r.uniform(d) }.unwrap();
            assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vals);
        }
        assert!(r.normal(v).is_err(), "the noise is used up after the last draw");
        let mut r = Replay { noise: &noise, draw: 0, dtype: DType::F32 };
        assert!(r.uniform(LAYERS).is_err(), "a uniform where a normal was drawn is refused");
    }
}
