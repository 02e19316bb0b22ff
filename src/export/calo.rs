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
//! 1. E_inc → log10(E_inc) − offset (in float64, then cast);
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

/// Step 2: the logit Flow-2 and Flow-3 take of a thresholded layer energy `e` (N, 1) in MeV.
fn energy_logit(g: &mut Builder, prep: &CaloPreprocessing, e: &str) -> String {
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

/// Zero below the generation threshold.
fn threshold(g: &mut Builder, prep: &CaloPreprocessing, x: &str) -> String {
    let t = g.scalar(prep.threshold_mev);
    let keep = g.op("GreaterOrEqual", &[x, &t], vec![]);
    let zero = g.scalar(0.0);
    g.op("Where", &[&keep, x, &zero], vec![])
}

/// The voxel standardisation's (mean, std) rows (N, V) — or (1, V) for layer 0 — of the layer
/// `index` (N, 1) int64 (None: layer 0), minus `back` layers; None without a standardisation.
fn standardisation(
    g: &mut Builder,
    prep: &CaloPreprocessing,
    v: usize,
    index: Option<&str>,
    back: i64,
) -> Option<(String, String)> {
    let s = prep.voxel_standardisation.as_ref()?;
    let mut rows = |stem: &str, values: &[f64]| match index {
        None => g.floats(stem, &[1, v], &values[..v]),
        Some(index) => {
            let table = g.floats(stem, &[LAYERS, v], values);
            let offset = g.ints(&[back]);
            let layer = g.op("Sub", &[index, &offset], vec![]);
            let picked = g.op("Gather", &[&table, &layer], vec![int_attr("axis", 0)]);
            let shape = g.ints(&[-1, v as i64]);
            g.op("Reshape", &[&picked, &shape], vec![])
        }
    };
    Some((rows("voxel_mean", &s.mean), rows("voxel_std", &s.std)))
}

/// Row sums (N, 1) of `x` (N, V).
fn row_sum(g: &mut Builder, x: &str) -> String {
    let axis = g.ints(&[1]);
    g.op("ReduceSum", &[x, &axis], vec![int_attr("keepdims", 1)])
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
    let cast = |g: &mut Builder, x: &str, to: DataType| g.op("Cast", &[x], vec![int_attr("to", to as i64)]);

    // 1. log10(E_inc) − offset in float64, as the sampler computes it on the host.
    g.dtype = DataType::Double;
    let e_inc = cast(&mut g, INPUT_E_INC, DataType::Double);
    let ln = g.op("Log", &[&e_inc], vec![]);
    let e_pre = g.affine(&ln, std::f64::consts::LOG10_E, -prep.log10_e_inc_offset);
    let e_pre = cast(&mut g, &e_pre, dt);
    g.dtype = dt;

    // 2–3. The flow's context.
    let e_layer = threshold(&mut g, prep, INPUT_E_LAYER);
    let u_layer = energy_logit(&mut g, prep, &e_layer);
    let ctx = match flow {
        FlowName::Flow2 => {
            let u = g.affine(&u_layer, 1.0 / prep.flow2_e1_divisor, 0.0);
            g.op("Concat", &[&e_pre, &u], vec![int_attr("axis", 1)])
        }
        _ => {
            let e_prev = threshold(&mut g, prep, INPUT_E_PREV);
            let u_prev = energy_logit(&mut g, prep, &e_prev);
            let noise = g.affine(INPUT_PREV_NOISE, prep.noise_mev, 0.0);
            let noised = g.add(INPUT_PREV_LAYER, &noise);
            let sum = row_sum(&mut g, &noised);
            let pattern = g.div(&noised, &sum);
            let mut prev = logit(&mut g, &pattern, prep.alpha);
            if let Some((mean, std)) = standardisation(&mut g, prep, v, Some(INPUT_LAYER), 1) {
                let centred = g.sub(&prev, &mean);
                prev = g.div(&centred, &std);
            }
            let layers: Vec<i64> = (1..LAYERS as i64).collect();
            let layers = g.ints(&layers);
            let hot = g.op("Equal", &[INPUT_LAYER, &layers], vec![]);
            let onehot = cast(&mut g, &hot, dt);
            g.op("Concat", &[&e_pre, &u_layer, &u_prev, &prev, &onehot], vec![int_attr("axis", 1)])
        }
    };

    // 4. Base and flow.
    let z = g.base_from_noise(spec, tensors, prefix, INPUT_Z, &ctx)?;
    let mut y = g.flow(spec, tensors, prefix, &z, &ctx)?;
    let index = (flow == FlowName::Flow3).then_some(INPUT_LAYER);
    if let Some((mean, std)) = standardisation(&mut g, prep, v, index, 0) {
        let scaled = g.mul(&y, &std);
        y = g.add(&scaled, &mean);
    }

    // 5. Voxels in MeV.
    let s = g.op("Sigmoid", &[&y], vec![]);
    let span = 1.0 - 2.0 * prep.alpha;
    let p = g.affine(&s, 1.0 / span, -prep.alpha / span);
    let (zero, one) = (g.scalar(0.0), g.scalar(1.0));
    let mut pattern = g.op("Clip", &[&p, &zero, &one], vec![]);
    if prep.renormalise_layers {
        let sum = row_sum(&mut g, &pattern);
        let sum = g.affine(&sum, 1.0, 1e-16);
        pattern = g.div(&pattern, &sum);
    }
    let scaled = g.mul(&pattern, &e_layer);
    let voxels = threshold(&mut g, prep, &scaled);
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
