//! The ZDC image flow with the detector's pre- and postprocessing as one ONNX graph
//! (`export-onnx --postprocess`): raw particle features and a photon sum in, photon counts out,
//! computed as `zdcflow sample --photon-sum data` computes them from the same noise:
//!
//! 1. context = (concat(particle, max(photon_sum, 0)) − mean) / std (the model's condition
//!    scaler, in float64, then cast to the flow's dtype);
//! 2. y = f⁻¹(b(z | context) | context): z is standard-normal noise, b the flow's base (z itself
//!    for the standard normal, μ(c) + σ(c)·z for a conditional base), f⁻¹ the sampling direction;
//! 3. in float64: y·std + mean per pixel (where the model standardises pixels), sigmoid,
//!    (· − α)/(1 − 2α) clipped to [0, 1], divided by its sum, × (S + 1936·noise_mul/2);
//! 4. the noise removal `--denoise` ([`Denoise`]), with round-half-away-from-zero written as
//!    ⌊v + 1/2⌋ (equal for the non-negative values that survive the clamp at 0);
//! 5. photon counts, float32 (N, 1936).

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_onnx::onnx::{tensor_proto::DataType, ModelProto};

use super::onnx::{builder, data_type, int_attr, value_info};
use crate::data::channels::PIXELS;
use crate::data::preprocess::{Standardizer, ZdcPreprocessing};
use crate::data::zdc::FEATURES;
use crate::detector::zdc::CONTEXT;
use crate::flow::FlowSpec;
pub use crate::sample::denoise::Denoise;

pub const INPUT_Z: &str = "z";
pub const INPUT_PARTICLE: &str = "particle";
pub const INPUT_PHOTON_SUM: &str = "photon_sum";
pub const OUTPUT_PHOTONS: &str = "photons";

/// What the graph computes, for `--help` and the graph's doc_string.
pub fn description(variant: Denoise) -> String {
    format!(
        "inputs z (N, {PIXELS}) standard-normal noise, particle (N, {FEATURES}) raw particle features (as in the \
         data file's conditions; the model's condition scaler is inside the graph), photon_sum (N, 1) photons; \
         output photons (N, {PIXELS}) float32 photon counts per channel (row-major 44x44), as `zdcflow sample \
         --photon-sum data --denoise {}` computes them from the same noise (inputs in the model's dtype)",
        variant.name()
    )
}

/// The ZDC graph of the image flow `spec` (weights `tensors` under `prefix`).
#[allow(clippy::too_many_arguments)]
pub fn export(
    spec: &FlowSpec,
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    dtype: DType,
    opset: i64,
    prep: &ZdcPreprocessing,
    scaler: &Standardizer,
    variant: Denoise,
) -> Result<ModelProto, String> {
    if spec.features != PIXELS || spec.context_features != CONTEXT {
        return Err(format!(
            "the flow has {} features and {} conditions, a ZDC image flow {PIXELS} and {CONTEXT}",
            spec.features, spec.context_features
        ));
    }
    if scaler.mean.len() != CONTEXT || scaler.std.len() != CONTEXT {
        return Err(format!("the condition scaler has {} columns, not {CONTEXT}", scaler.mean.len()));
    }
    let mut g = builder(spec, dtype, opset)?;
    let dt = data_type(dtype)?;
    let f64_ = DataType::Double;
    let cast =
        |g: &mut super::onnx::Builder, x: &str, to: DataType| g.op("Cast", &[x], vec![int_attr("to", to as i64)]);

    // 1. The standardised context, in float64.
    g.dtype = f64_;
    let sum = cast(&mut g, INPUT_PHOTON_SUM, f64_);
    let sum = g.relu(&sum);
    let particle = cast(&mut g, INPUT_PARTICLE, f64_);
    let raw = g.op("Concat", &[&particle, &sum], vec![int_attr("axis", 1)]);
    let mean = g.floats("condition_mean", &[CONTEXT], &scaler.mean);
    let std = g.floats("condition_std", &[CONTEXT], &scaler.std);
    let centred = g.sub(&raw, &mean);
    let ctx = g.div(&centred, &std);
    let ctx = cast(&mut g, &ctx, dt);

    // 2. The base (a conditional one maps the noise to μ(c) + σ(c)·z), then the flow.
    g.dtype = dt;
    let z = g.base_from_noise(spec, tensors, prefix, INPUT_Z, &ctx)?;
    let y = g.flow(spec, tensors, prefix, &z, &ctx)?;

    // 3. Back to the noised photon-scaled image, in float64.
    g.dtype = f64_;
    let mut y = cast(&mut g, &y, f64_);
    if let Some(p) = &prep.pixels {
        let s = g.floats("pixel_std", &[PIXELS], &p.std);
        let m = g.floats("pixel_mean", &[PIXELS], &p.mean);
        let ys = g.mul(&y, &s);
        y = g.add(&ys, &m);
    }
    let sig = g.op("Sigmoid", &[&y], vec![]);
    let alpha = g.scalar(prep.alpha);
    let span = g.scalar(1.0 - 2.0 * prep.alpha);
    let shifted = g.sub(&sig, &alpha);
    let unclipped = g.div(&shifted, &span);
    let (zero, one) = (g.scalar(0.0), g.scalar(1.0));
    let x = g.op("Clip", &[&unclipped, &zero, &one], vec![]);
    let axis = g.ints(&[1]);
    let total = g.op("ReduceSum", &[&x, &axis], vec![int_attr("keepdims", 1)]);
    let tiny = g.scalar(f64::MIN_POSITIVE);
    let total = g.op("Max", &[&total, &tiny], vec![]);
    let normalised = g.div(&x, &total);
    let noise_total = g.scalar(PIXELS as f64 * 0.5 * prep.noise_mul);
    let scale = g.add(&sum, &noise_total);
    let pixels = g.mul(&normalised, &scale);

    // 4. Noise removal.
    let half = g.scalar(0.5 * prep.noise_mul);
    let counts = match variant {
        Denoise::SubFloor | Denoise::SubFloorRecalc => {
            let v = g.sub(&pixels, &half);
            g.op("Floor", &[&v], vec![])
        }
        Denoise::Floor | Denoise::FloorRecalc => g.op("Floor", &[&pixels], vec![]),
        Denoise::Round => {
            let v = g.sub(&pixels, &half);
            let p = g.scalar(0.5);
            let v = g.add(&v, &p);
            g.op("Floor", &[&v], vec![])
        }
        Denoise::SubFloorFill => fill_to_photon_sum(&mut g, &pixels, &sum, &half),
    };
    let mut counts = g.relu(&counts);
    if matches!(variant, Denoise::SubFloorRecalc | Denoise::FloorRecalc) {
        // Renormalise to sum 1 (+1e-16, as published), × S, floor, clamp at 0.
        let abs = g.op("Abs", &[&counts], vec![]);
        let t = g.op("ReduceSum", &[&abs, &axis], vec![int_attr("keepdims", 1)]);
        let eps = g.scalar(1e-16);
        let t = g.add(&t, &eps);
        let r = g.div(&counts, &t);
        let r = g.mul(&r, &sum);
        let f = g.op("Floor", &[&r], vec![]);
        counts = g.relu(&f);
    }
    let counts = cast(&mut g, &counts, DataType::Float);
    g.output_as(&counts, OUTPUT_PHOTONS);

    let inputs = vec![
        value_info(INPUT_Z, PIXELS, dt),
        value_info(INPUT_PARTICLE, FEATURES, dt),
        value_info(INPUT_PHOTON_SUM, 1, dt),
    ];
    let doc = format!(
        "zdcflow ZDC simulation: {}; flow: {} blocks, {} bins, tail bound {}",
        description(variant),
        spec.blocks,
        spec.spline.num_bins,
        spec.spline.tail_bound
    );
    Ok(g.model(inputs, vec![value_info(OUTPUT_PHOTONS, PIXELS, DataType::Float)], doc, opset))
}

/// `sub-floor-fill` in the graph, step for step as [`crate::sample::denoise`] computes it
/// (float64): v = max(x − half, 0) (x itself where that is all 0), scaled by T / Σv only where
/// Σ⌊v⌋ > T = ⌊S + 1/2⌋, floored, and one photon more for the T − Σ⌊·⌋ largest fractional parts
/// (TopK orders equal fractions by the lower index first, as zdcflow does).
fn fill_to_photon_sum(g: &mut super::onnx::Builder, pixels: &str, sum: &str, half: &str) -> String {
    let axis = g.ints(&[1]);
    let reduce = |g: &mut super::onnx::Builder, x: &str| g.op("ReduceSum", &[x, &axis], vec![int_attr("keepdims", 1)]);
    let shifted = g.sub(pixels, half);
    let v = g.relu(&shifted);
    let total = reduce(g, &v);
    let zero = g.scalar(0.0);
    let nothing_above = g.op("Equal", &[&total, &zero], vec![]);
    let v = g.op("Where", &[&nothing_above, pixels, &v], vec![]);
    let total = reduce(g, &v);
    let tiny = g.scalar(1e-300);
    let total = g.op("Max", &[&total, &tiny], vec![]);
    let p = g.scalar(0.5);
    let target = g.add(sum, &p);
    let target = g.op("Floor", &[&target], vec![]);
    let floors = g.op("Floor", &[&v], vec![]);
    let floors = reduce(g, &floors);
    let overshoot = g.op("Greater", &[&floors, &target], vec![]);
    let ratio = g.div(&target, &total);
    let one = g.scalar(1.0);
    let ratio = g.op("Where", &[&overshoot, &ratio, &one], vec![]);
    let scaled = g.mul(&v, &ratio);
    let whole = g.op("Floor", &[&scaled], vec![]);
    let fraction = g.sub(&scaled, &whole);
    let kept = reduce(g, &whole);
    let missing = g.sub(&target, &kept);
    let missing = g.add(&missing, &p);
    let missing = g.op("Floor", &[&missing], vec![]);
    let k = g.ints(&[PIXELS as i64]);
    let order = g.op_with_outputs(
        "TopK",
        &[&fraction, &k],
        vec![int_attr("axis", 1), int_attr("largest", 1), int_attr("sorted", 1)],
        2,
    );
    let ranks: Vec<f64> = (0..PIXELS).map(|r| r as f64).collect();
    let ranks = g.floats("rank", &[1, PIXELS], &ranks);
    let chosen = g.op("Less", &[&ranks, &missing], vec![]);
    let extra = g.op("Cast", &[&chosen], vec![int_attr("to", DataType::Double as i64)]);
    let zeros = g.sub(&fraction, &fraction);
    let extra = g.op("ScatterElements", &[&zeros, &order[1], &extra], vec![int_attr("axis", 1)]);
    g.add(&whole, &extra)
}

/// zdcflow's own computation of what the graph's step 1 gives: the standardised flow conditions
/// (n × 10) of `particles` (n × 9) and their photon sums (clamped at 0), as `sample` makes them.
pub fn flow_conditions(scaler: &Standardizer, particles: &[f32], photon_sums: &[f32]) -> Vec<f32> {
    let sums: Vec<f32> = photon_sums.iter().map(|&s| s.max(0.0)).collect();
    crate::detector::zdc::conditions(scaler, particles, &sums)
}

/// zdcflow's own computation of the graph's step 2, with the code `sample` runs: the image flow of
/// the model in `dir` (in its dtype, on the CPU) applied through its base to standard-normal
/// noise `z` (n × 1936) given the standardised conditions `ctx` (n × 10).
pub fn flow_output(dir: &std::path::Path, z: &[f32], ctx: &[f32]) -> crate::error::Result<Vec<f32>> {
    let m = crate::models::manifest::Manifest::load(dir)?;
    let dtype = m.dtype.dtype();
    let device = candle_core::Device::Cpu;
    let flow = crate::models::student::frozen_flow(dir, &m, crate::models::zdc::FLOW_UNIT, dtype, &device)?;
    let n = ctx.len() / CONTEXT;
    let z = Tensor::from_slice(z, (n, PIXELS), &device)?.to_dtype(dtype)?;
    let ctx = Tensor::from_slice(ctx, (n, CONTEXT), &device)?.to_dtype(dtype)?;
    let y = flow.sample_from(&z, Some(&ctx))?.0;
    Ok(y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// zdcflow's own computation of the graph's steps 3–5: flow outputs `ys` (n × 1936) → photon
/// counts, with the code `sample` uses ([`crate::sample::denoise::image_inverse`]).
pub fn photons_from_flow_output(
    prep: &ZdcPreprocessing,
    variant: Denoise,
    ys: &[f32],
    photon_sums: &[f32],
) -> Vec<f32> {
    let mut out = vec![0f32; ys.len()];
    for ((o, y), &s) in out.chunks_mut(PIXELS).zip(ys.chunks(PIXELS)).zip(photon_sums) {
        crate::sample::denoise::image_inverse(prep, variant, y, s.max(0.0), o);
    }
    out
}

/// The noised photon-scaled pixel values before the rounding of `variant` (for locating rounding
/// ties): x − noise_mul/2 for `round` and `sub-floor*`, x for `floor*`.
pub fn values_before_rounding(prep: &ZdcPreprocessing, variant: Denoise, ys: &[f32], photon_sums: &[f32]) -> Vec<f64> {
    let shift = match variant {
        Denoise::Floor | Denoise::FloorRecalc => 0.0,
        _ => 0.5 * prep.noise_mul,
    };
    ys.chunks(PIXELS)
        .zip(photon_sums)
        .flat_map(|(y, &s)| {
            crate::sample::denoise::noised_pixels(prep, y, s.max(0.0)).into_iter().map(move |v| v - shift)
        })
        .collect()
}

/// The preprocessing and the condition scaler of the ZDC model in `dir` (what the graph folds in).
pub fn model_processing(dir: &std::path::Path) -> crate::error::Result<(ZdcPreprocessing, Standardizer)> {
    use crate::error::Error;
    let fail = |m: &str| Error::checkpoint(dir, format!("--postprocess: {m}"));
    let m = crate::models::manifest::Manifest::load(dir).map_err(|_| {
        fail("needs a ZDC model directory (train-teacher, distill-student or import-nflows --detector zdc output)")
    })?;
    if m.detector != crate::config::Detector::Zdc {
        return Err(fail("only ZDC models have it; export a CaloChallenge flow without --postprocess"));
    }
    let prep = crate::models::zdc::preprocessing(&m, dir)?;
    let scaler = m.conditions.ok_or_else(|| fail("model.json lacks the condition scaler"))?;
    Ok((prep, scaler))
}
