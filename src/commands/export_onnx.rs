//! `zdcflow export-onnx`: one flow unit's sampling direction as an ONNX graph, or (`--postprocess`)
//! a ZDC model's image flow, or a CaloChallenge model's Flow-2 or Flow-3, with the detector's pre-
//! and postprocessing, or (`--whole-shower`) a CaloChallenge model's whole shower.

use super::{Context, Report};
use crate::cli::ExportOnnxArgs;
use crate::config::FlowName;
use crate::error::{Error, Result};
use crate::export::{calo, onnx, shower, zdc};
use crate::flow::io;
use crate::util::atomic;
use crate::util::output_guard::{check_output, Input};

pub fn run(a: &ExportOnnxArgs, _: &Context) -> Result<Report> {
    check_output(&a.output, "--output", &[Input::ModelDir("--model", &a.model)])?;
    let (unit, bytes) = if a.whole_shower { whole_shower(a)? } else { one_unit(a)? };
    Ok(Report::line(format!("exported unit '{unit}' to {} ({bytes} bytes)", a.output.display())))
}

/// One flow unit, with `--postprocess` the detector's processing too; (its name, bytes written).
fn one_unit(a: &ExportOnnxArgs) -> Result<(String, usize)> {
    let units = crate::models::flow_dir::read(&a.model)?;
    let manifest = crate::models::manifest::Manifest::load(&a.model).ok();
    let dataset = manifest.as_ref().and_then(|m| m.detector.dataset());
    let unit = match (a.postprocess, a.unit.as_deref()) {
        (true, None) if dataset.is_some() => Some(FlowName::Flow3.as_str()),
        (true, None) => Some(crate::models::zdc::FLOW_UNIT),
        (_, u) => u,
    };
    let (name, spec, weights) = units.pick(unit)?;
    let dtype = units.dtype.dtype();
    // Through the loader: names and shapes are checked against the spec.
    io::load_frozen_flow(&spec, &weights, io::PREFIX, dtype, &candle_core::Device::Cpu)?;
    let tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu)
        .map_err(|e| Error::checkpoint(&weights, e.to_string()))?;
    let model = if let (true, Some(dataset), Some(m)) = (a.postprocess, dataset, manifest.as_ref()) {
        let fail = |m: &str| Error::checkpoint(&a.model, format!("--postprocess: {m}"));
        let flow = [FlowName::Flow1, FlowName::Flow2, FlowName::Flow3]
            .into_iter()
            .find(|f| f.as_str() == name)
            .ok_or_else(|| fail(&format!("unit '{name}' is not an iCaloFlow flow")))?;
        let prep = crate::models::calo::preprocessing(m, &a.model)?;
        let geometry = crate::data::geometry::CaloGeometry::for_dataset(dataset).expect("dataset 2 or 3");
        calo::export(flow, &spec, &tensors, io::PREFIX, dtype, a.opset, &prep, &geometry)
            .map_err(|e| fail(&format!("unit '{name}': {e}")))?
    } else if a.postprocess {
        let fail = |m: &str| Error::checkpoint(&a.model, format!("--postprocess: {m}"));
        let (prep, scaler) = zdc::model_processing(&a.model)?;
        if name != crate::models::zdc::FLOW_UNIT {
            return Err(fail(&format!("applies to the image flow '{}', not '{name}'", crate::models::zdc::FLOW_UNIT)));
        }
        zdc::export(&spec, &tensors, io::PREFIX, dtype, a.opset, &prep, &scaler, a.denoise.into())
            .map_err(|e| fail(&format!("unit '{name}': {e}")))?
    } else {
        onnx::export(&spec, &tensors, io::PREFIX, dtype, a.opset)
            .map_err(|m| Error::checkpoint(&a.model, format!("unit '{name}': {m}")))?
    };
    let bytes = onnx::to_bytes(&model);
    atomic::write_bytes(&a.output, &bytes)?;
    Ok((name, bytes.len()))
}

/// `--whole-shower`: Flow-1, Flow-2 and Flow-3 of a CaloChallenge model in one graph.
fn whole_shower(a: &ExportOnnxArgs) -> Result<(String, usize)> {
    let fail = |m: &str| Error::checkpoint(&a.model, format!("--whole-shower: {m}"));
    let m = crate::models::manifest::Manifest::load(&a.model)
        .map_err(|_| fail("needs a CaloChallenge model directory (train-teacher, distill-student or import-nflows)"))?;
    let dataset = m.detector.dataset().ok_or_else(|| fail("only CaloChallenge models (dataset 2 or 3) have one"))?;
    let units = crate::models::flow_dir::read(&a.model)?;
    let dtype = units.dtype.dtype();
    let mut loaded = Vec::new();
    for flow in [FlowName::Flow1, FlowName::Flow2, FlowName::Flow3] {
        if !units.units.contains_key(flow.as_str()) {
            return Err(fail(&format!("the model has no {} (the chain needs all three flows)", flow.as_str())));
        }
        let (_, spec, weights) = units.pick(Some(flow.as_str()))?;
        io::load_frozen_flow(&spec, &weights, io::PREFIX, dtype, &candle_core::Device::Cpu)?;
        let tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu)
            .map_err(|e| Error::checkpoint(&weights, e.to_string()))?;
        loaded.push((spec, tensors));
    }
    let prep = crate::models::calo::preprocessing(&m, &a.model)?;
    let geometry = crate::data::geometry::CaloGeometry::for_dataset(dataset).expect("dataset 2 or 3");
    let flows = [0, 1, 2].map(|i| shower::FlowWeights { spec: &loaded[i].0, tensors: &loaded[i].1 });
    let passes = match a.maf_passes {
        crate::cli::MafPassesArg::Loop => onnx::MafPasses::Loop,
        crate::cli::MafPassesArg::Unrolled => onnx::MafPasses::Unrolled,
    };
    let model = shower::export(flows, io::PREFIX, dtype, a.opset, &prep, &geometry, passes).map_err(|e| fail(&e))?;
    let bytes = onnx::to_bytes(&model);
    atomic::write_bytes(&a.output, &bytes)?;
    Ok(("flow1+flow2+flow3 (whole shower)".into(), bytes.len()))
}
