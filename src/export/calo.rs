//! A CaloChallenge student's Flow-2 or Flow-3 with iCaloFlow's pre- and postprocessing as one
//! ONNX graph (`export-onnx --postprocess --unit flow2|flow3`): one layer's voxels in MeV from
//! energies in MeV, computed as `zdcflow sample` computes that layer from the same noise.
//!
//! Inputs (the model's float type unless said): `z` (N, V) standard-normal noise; `e_inc` (N, 1)
//! the incident energy in MeV; `e_layer` (N, 1) the energy of the layer generated (MeV, Flow-1's
//! output); Flow-3 also `e_prev` (N, 1) the previous layer's energy, `prev_layer` (N, V) the
//! previous layer's voxels (MeV), `prev_noise` (N, V) uniform draws U[0, 1) and `layer` (N, 1)
//! int64 the 0-based index t (1..=44) of the layer generated. Output `voxels` (N, V), MeV.
//!
//! 1. E_inc → log10(E_inc) − offset (in float64, rounded to float32 as the sampler does);
//! 2. each energy E: zero below the threshold, then u = logit(E / layer_scale) (α-regularised);
//! 3. Flow-2's context [e_pre, u_1 / divisor]; Flow-3's [e_pre, u_t, u_{t−1}, logit of the previous
//!    layer noised by prev_noise·noise_mev and normalised to unit sum, one-hot(t − 1) of 44];
//! 4. y = f⁻¹(b(z | c) | c), b the flow's base (z itself for the standard normal), times the
//!    voxel standardisation's std plus its mean (of layer t) where the model has one — whose
//!    previous-layer logits in step 3 are standardised with layer t − 1's;
//! 5. voxels = threshold(clip((sigmoid(y) − α)/(1 − 2α), 0, 1) [/ its sum + 1e-16 where the model
//!    renormalises layers] · E_layer).

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_onnx::onnx::{tensor_proto::DataType, ModelProto};

use super::onnx::{builder, data_type, int_attr, value_info, Builder};
use crate::config::FlowName;
use crate::data::geometry::{CaloGeometry, LAYERS};
use crate::data::preprocess::CaloPreprocessing;
use crate::flow::FlowSpec;

pub const INPUT_Z: &str = "z";
pub const INPUT_E_INC: &str = "e_inc";
pub const INPUT_E_LAYER: &str = "e_layer";
pub const INPUT_E_PREV: &str = "e_prev";
pub const INPUT_PREV_LAYER: &str = "prev_layer";
pub const INPUT_PREV_NOISE: &str = "prev_noise";
pub const INPUT_LAYER: &str = "layer";
pub const OUTPUT_VOXELS: &str = "voxels";

/// What the graph of `flow` computes, for its doc_string.
pub fn description(flow: FlowName, voxels: usize) -> String {
    let common = format!(
        "inputs z (N, {voxels}) standard-normal noise, e_inc (N, 1) incident energy in MeV, e_layer (N, 1) the \
         layer's energy in MeV (Flow-1's output)"
    );
    match flow {
        FlowName::Flow3 => format!(
            "{common}, e_prev (N, 1) the previous layer's energy in MeV, prev_layer (N, {voxels}) the previous \
             layer's voxels in MeV, prev_noise (N, {voxels}) uniform draws U[0,1) that noise it, layer (N, 1) int64 \
             the 0-based index (1..=44) of the layer generated; output voxels (N, {voxels}) in MeV, as `zdcflow \
             sample` generates layer `layer` from the same draws"
        ),
        _ => format!("{common}; output voxels (N, {voxels}) of layer 1 in MeV, as `zdcflow sample` generates it"),
    }
}

// The chain's per-layer pre- and postprocessing as graph nodes, shared by the layer graphs and the
// whole-shower graph (`super::shower`): everything between a flow's output and a layer's voxels,
// and between a generated layer and the next flow's context, is written here and only here.

/// Step 1: E_inc (N, 1) in MeV → log10(E_inc) − offset, computed in float64 and rounded to float32
/// (as the sampler does on the host, [`CaloPreprocessing::e_inc`]), then in the graph's dtype.
pub(crate) fn incident(g: &mut Builder, prep: &CaloPreprocessing, e_inc: &str) -> String {
    let dt = g.dtype;
    g.dtype = DataType::Double;
    let e = cast(g, e_inc, DataType::Double);
    let ln = g.op("Log", &[&e], vec![]);
    let e_pre = g.affine(&ln, std::f64::consts::LOG10_E, -prep.log10_e_inc_offset);
    g.dtype = dt;
    let e_pre = cast(g, &e_pre, DataType::Float);
    if dt == DataType::Float {
        e_pre
    } else {
        cast(g, &e_pre, dt)
    }
}

pub(crate) fn cast(g: &mut Builder, x: &str, to: DataType) -> String {
    g.op("Cast", &[x], vec![int_attr("to", to as i64)])
}

/// Flow-1's output (N, 45) → the layer energies in MeV, thresholded.
pub(crate) fn layer_energies(g: &mut Builder, prep: &CaloPreprocessing, x1: &str) -> String {
    let fractions = inverse_logit(g, prep, x1);
    let e = g.affine(&fractions, prep.layer_scale_mev, 0.0);
    threshold(g, prep, &e)
}

/// Step 2: the logit Flow-2 and Flow-3 take of a thresholded layer energy `e` (N, 1) in MeV.
pub(crate) fn energy_logit(g: &mut Builder, prep: &CaloPreprocessing, e: &str) -> String {
    let x = g.affine(e, 1.0 / prep.layer_scale_mev, 0.0);
    logit(g, &x, prep.alpha)
}

/// logit(α + (1 − 2α)·x), as [`crate::data::preprocess::logit_tensor`] computes it.
fn logit(g: &mut Builder, x: &str, alpha: f64) -> String {
    let u = g.affine(x, 1.0 - 2.0 * alpha, alpha);
    let one_minus = g.affine(&u, -1.0, 1.0);
    let ratio = g.div(&u, &one_minus);
    g.op("Log", &[&ratio], vec![])
}

/// clip((sigmoid(y) − α)/(1 − 2α), 0, 1), as [`crate::data::preprocess::inverse_logit_tensor`].
fn inverse_logit(g: &mut Builder, prep: &CaloPreprocessing, y: &str) -> String {
    let s = g.op("Sigmoid", &[y], vec![]);
    let span = 1.0 - 2.0 * prep.alpha;
    let p = g.affine(&s, 1.0 / span, -prep.alpha / span);
    let (zero, one) = (g.scalar(0.0), g.scalar(1.0));
    g.op("Clip", &[&p, &zero, &one], vec![])
}

/// Zero below the generation threshold.
fn threshold(g: &mut Builder, prep: &CaloPreprocessing, x: &str) -> String {
    let t = g.scalar(prep.threshold_mev);
    let keep = g.op("GreaterOrEqual", &[x, &t], vec![]);
    let zero = g.scalar(0.0);
    g.op("Where", &[&keep, x, &zero], vec![])
}

/// A voxel standardisation's (45, V) mean and std tables as graph initializers, stored once.
pub(crate) struct VoxelTables {
    mean: String,
    std: String,
    voxels: usize,
}

/// The tables of `prep`'s voxel standardisation (None without one), checked against `v` voxels.
pub(crate) fn voxel_tables(g: &mut Builder, prep: &CaloPreprocessing, v: usize) -> Result<Option<VoxelTables>, String> {
    let Some(s) = &prep.voxel_standardisation else { return Ok(None) };
    if s.mean.len() != LAYERS * v || s.std.len() != LAYERS * v {
        return Err(format!(
            "the voxel standardisation has {} means and {} stds; {LAYERS} layers of {v} voxels need {}",
            s.mean.len(),
            s.std.len(),
            LAYERS * v
        ));
    }
    let mean = g.floats("voxel_mean", &[LAYERS, v], &s.mean);
    let std = g.floats("voxel_std", &[LAYERS, v], &s.std);
    Ok(Some(VoxelTables { mean, std, voxels: v }))
}

/// The (mean, std) rows of layer `layer` (an int64 scalar → (1, V), or (N, 1) → (N, V)).
fn voxel_rows(g: &mut Builder, tables: &VoxelTables, layer: &str) -> (String, String) {
    let shape = g.ints(&[-1, tables.voxels as i64]);
    let mut row = |table: &str| {
        let picked = g.op("Gather", &[table, layer], vec![int_attr("axis", 0)]);
        g.op("Reshape", &[&picked, &shape], vec![])
    };
    (row(&tables.mean), row(&tables.std))
}

/// Row sums (N, 1) of `x` (N, V).
fn row_sum(g: &mut Builder, x: &str) -> String {
    let axis = g.ints(&[1]);
    g.op("ReduceSum", &[x, &axis], vec![int_attr("keepdims", 1)])
}

/// Step 5, a flow's output → a layer: the flow's output `y` (N, V) for layer `layer` (int64, a
/// scalar or (N, 1)), de-standardised with that layer's rows where the model standardises voxels
/// (y·std + mean), and the layer's thresholded energy `e_layer` (N, 1) → voxels (N, V) in MeV, as
/// `CaloChain`'s `voxels` ([`crate::sample::calo::layer_voxels`]).
pub(crate) fn pattern_to_voxels(
    g: &mut Builder,
    prep: &CaloPreprocessing,
    tables: Option<&VoxelTables>,
    layer: &str,
    y: &str,
    e_layer: &str,
) -> String {
    let mut y = y.to_string();
    if let Some(t) = tables {
        let (mean, std) = voxel_rows(g, t, layer);
        let scaled = g.mul(&y, &std);
        y = g.add(&scaled, &mean);
    }
    let mut pattern = inverse_logit(g, prep, &y);
    if prep.renormalise_layers {
        let sum = row_sum(g, &pattern);
        let sum = g.affine(&sum, 1.0, 1e-16);
        pattern = g.div(&pattern, &sum);
    }
    let scaled = g.mul(&pattern, e_layer);
    threshold(g, prep, &scaled)
}

/// Step 3, a generated layer → Flow-3's view of it: voxels `voxels` (N, V) in MeV of layer `layer`
/// (int64, a scalar or (N, 1)) noised by `uniforms`·noise_mev (U[0, 1) draws), normalised to unit
/// sum, logit ([`crate::detector::calo::layer_pattern_tensor`]), standardised with that layer's
/// rows where the model standardises voxels ((logit − mean) / std).
pub(crate) fn context_pattern(
    g: &mut Builder,
    prep: &CaloPreprocessing,
    tables: Option<&VoxelTables>,
    layer: &str,
    voxels: &str,
    uniforms: &str,
) -> String {
    let noise = g.affine(uniforms, prep.noise_mev, 0.0);
    let noised = g.add(voxels, &noise);
    let sum = row_sum(g, &noised);
    let pattern = g.div(&noised, &sum);
    let logits = logit(g, &pattern, prep.alpha);
    match tables {
        Some(t) => {
            let (mean, std) = voxel_rows(g, t, layer);
            let centred = g.sub(&logits, &mean);
            g.div(&centred, &std)
        }
        None => logits,
    }
}

/// Flow-2's context [e_pre, logit(E_1) / divisor] from the thresholded energy `e1` (N, 1).
pub(crate) fn flow2_context(g: &mut Builder, prep: &CaloPreprocessing, e_pre: &str, e1: &str) -> String {
    let u_layer = energy_logit(g, prep, e1);
    let u = g.affine(&u_layer, 1.0 / prep.flow2_e1_divisor, 0.0);
    g.op("Concat", &[e_pre, &u], vec![int_attr("axis", 1)])
}

/// Flow-3's context [e_pre, logit E_t, logit E_{t−1}, `prev_pattern`, `onehot`] (thresholded
/// energies (N, 1), the previous layer's [`context_pattern`] and one-hot(t − 1) of 44, (N, 44)).
pub(crate) fn flow3_context(
    g: &mut Builder,
    prep: &CaloPreprocessing,
    e_pre: &str,
    (e_t, e_prev): (&str, &str),
    prev_pattern: &str,
    onehot: &str,
) -> String {
    let u_layer = energy_logit(g, prep, e_t);
    let u_prev = energy_logit(g, prep, e_prev);
    g.op("Concat", &[e_pre, &u_layer, &u_prev, prev_pattern, onehot], vec![int_attr("axis", 1)])
}

/// The graph of a student's Flow-2 or Flow-3 `spec` (weights `tensors` under `prefix`).
#[allow(clippy::too_many_arguments)]
pub fn export(
    flow: FlowName,
    spec: &FlowSpec,
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    dtype: DType,
    opset: i64,
    prep: &CaloPreprocessing,
    geometry: &CaloGeometry,
) -> Result<ModelProto, String> {
    let v = geometry.voxels_per_layer();
    let (features, context) = crate::detector::calo::dims(flow, geometry);
    if flow == FlowName::Flow1 {
        return Err("Flow-1 has no voxel postprocessing (it is the layer-energy MAF, sampled by zdcflow): \
                    --postprocess takes --unit flow2 or flow3"
            .into());
    }
    if spec.features != features || spec.context_features != context {
        return Err(format!(
            "the flow has {} features and {} conditions; {} of this dataset has {features} and {context}",
            spec.features,
            spec.context_features,
            flow.as_str()
        ));
    }
    let mut g = builder(spec, dtype, opset)?;
    let dt = data_type(dtype)?;
    let tables = voxel_tables(&mut g, prep, v)?;
    let e_pre = incident(&mut g, prep, INPUT_E_INC);
    let e_layer = threshold(&mut g, prep, INPUT_E_LAYER);
    let ctx = match flow {
        FlowName::Flow2 => flow2_context(&mut g, prep, &e_pre, &e_layer),
        _ => {
            let e_prev = threshold(&mut g, prep, INPUT_E_PREV);
            let one = g.ints(&[1]);
            let prev_layer = g.op("Sub", &[INPUT_LAYER, &one], vec![]);
            let prev = context_pattern(&mut g, prep, tables.as_ref(), &prev_layer, INPUT_PREV_LAYER, INPUT_PREV_NOISE);
            let layers: Vec<i64> = (1..LAYERS as i64).collect();
            let layers = g.ints(&layers);
            let hot = g.op("Equal", &[INPUT_LAYER, &layers], vec![]);
            let onehot = cast(&mut g, &hot, dt);
            flow3_context(&mut g, prep, &e_pre, (&e_layer, &e_prev), &prev, &onehot)
        }
    };
    let z = g.base_from_noise(spec, tensors, prefix, INPUT_Z, &ctx)?;
    let y = g.flow(spec, tensors, prefix, &z, &ctx)?;
    let layer = match flow {
        FlowName::Flow3 => INPUT_LAYER.to_string(),
        _ => g.int_scalar(0),
    };
    let voxels = pattern_to_voxels(&mut g, prep, tables.as_ref(), &layer, &y, &e_layer);
    g.output_as(&voxels, OUTPUT_VOXELS);

    let mut inputs = vec![value_info(INPUT_Z, v, dt), value_info(INPUT_E_INC, 1, dt), value_info(INPUT_E_LAYER, 1, dt)];
    if flow == FlowName::Flow3 {
        inputs.extend([
            value_info(INPUT_E_PREV, 1, dt),
            value_info(INPUT_PREV_LAYER, v, dt),
            value_info(INPUT_PREV_NOISE, v, dt),
            value_info(INPUT_LAYER, 1, DataType::Int64),
        ]);
    }
    let doc = format!(
        "zdcflow iCaloFlow {} layer simulation: {}; flow: {} blocks, {} bins, tail bound {}",
        flow.as_str(),
        description(flow, v),
        spec.blocks,
        spec.spline.num_bins,
        spec.spline.tail_bound
    );
    Ok(g.model(inputs, vec![value_info(OUTPUT_VOXELS, v, dt)], doc, opset))
}

/// The inputs of one layer's graph, row-major, MeV (see the module's doc).
pub struct LayerInputs<'a> {
    pub z: &'a [f32],
    pub e_inc: &'a [f32],
    pub e_layer: &'a [f32],
    /// Flow-3 only (empty for Flow-2).
    pub e_prev: &'a [f32],
    pub prev_layer: &'a [f32],
    pub prev_noise: &'a [f32],
    pub layer: &'a [i64],
}

/// zdcflow's own computation of what the graph of `flow` gives, with the code `sample` runs (the
/// model in `dir`, on the CPU, one row at a time so that each row may have its own layer index).
pub fn layer_voxels(dir: &std::path::Path, flow: FlowName, inputs: &LayerInputs) -> crate::error::Result<Vec<f32>> {
    let m = crate::models::manifest::Manifest::load(dir)?;
    let device = candle_core::Device::Cpu;
    let chain = crate::sample::calo::CaloChain::load(dir, &m, &device)?;
    let v = chain.geometry.voxels_per_layer();
    let dtype = chain.dtype();
    let row = |xs: &[f32], i: usize, cols: usize| -> candle_core::Result<Tensor> {
        Tensor::from_slice(&xs[i * cols..(i + 1) * cols], (1, cols), &device)?.to_dtype(dtype)
    };
    let mut out = Vec::with_capacity(inputs.e_inc.len() * v);
    for i in 0..inputs.e_inc.len() {
        let e_pre = chain.incident(&inputs.e_inc[i..i + 1])?;
        let (z, e) = (row(inputs.z, i, v)?, row(inputs.e_layer, i, 1)?);
        let layer = match flow {
            FlowName::Flow2 => chain.first_layer(&e_pre, &e, &z)?,
            _ => chain.next_layer(
                &e_pre,
                &e,
                &row(inputs.e_prev, i, 1)?,
                &row(inputs.prev_layer, i, v)?,
                &row(inputs.prev_noise, i, v)?,
                inputs.layer[i] as usize,
                &z,
            )?,
        };
        out.extend(layer.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}
