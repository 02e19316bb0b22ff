//! `zdcflow export-onnx`: one flow unit's sampling direction as an ONNX graph, or (`--postprocess`)
//! a ZDC model's image flow with the detector's pre- and postprocessing.

use crate::cli::ExportOnnxArgs;
use crate::config::Detector;
use crate::error::{Error, Result};
use crate::export::{onnx, zdc};
use crate::flow::io;
use crate::models::manifest::Manifest;
use crate::util::atomic;

pub fn run(a: &ExportOnnxArgs) -> Result<(String, usize)> {
    let units = super::flow_dir::read(&a.model)?;
    let unit = match (a.postprocess, a.unit.as_deref()) {
        (true, None) => Some(crate::models::zdc::FLOW_UNIT),
        (_, u) => u,
    };
    let (name, spec, weights) = units.pick(unit)?;
    let dtype = units.dtype.dtype();
    // Through the loader: names and shapes are checked against the spec.
    io::load_frozen_flow(&spec, &weights, io::PREFIX, dtype, &candle_core::Device::Cpu)?;
    let tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu)
        .map_err(|e| Error::checkpoint(&weights, e.to_string()))?;
    let model = if a.postprocess {
        let fail = |m: &str| Error::checkpoint(&a.model, format!("--postprocess: {m}"));
        let m = Manifest::load(&a.model).map_err(|_| {
            fail("needs a ZDC model directory (train-teacher, distill-student or import-nflows --detector zdc output)")
        })?;
        if m.detector != Detector::Zdc {
            return Err(fail("only ZDC models have it; export a CaloChallenge flow without --postprocess"));
        }
        if name != crate::models::zdc::FLOW_UNIT {
            return Err(fail(&format!("applies to the image flow '{}', not '{name}'", crate::models::zdc::FLOW_UNIT)));
        }
        let prep = crate::models::zdc::preprocessing(&m, &a.model)?;
        let scaler = m.conditions.as_ref().ok_or_else(|| fail("model.json lacks the condition scaler"))?;
        zdc::export(&spec, &tensors, io::PREFIX, dtype, a.opset, &prep, scaler, a.denoise)
            .map_err(|e| fail(&format!("unit '{name}': {e}")))?
    } else {
        onnx::export(&spec, &tensors, io::PREFIX, dtype, a.opset)
            .map_err(|m| Error::checkpoint(&a.model, format!("unit '{name}': {m}")))?
    };
    let bytes = onnx::to_bytes(&model);
    atomic::write_bytes(&a.output, &bytes)?;
    Ok((name, bytes.len()))
}
