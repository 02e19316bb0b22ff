//! `zdcflow export-onnx`: one flow unit's sampling direction as an ONNX graph, or (`--postprocess`)
//! a ZDC model's image flow with the detector's pre- and postprocessing.

use crate::cli::ExportOnnxArgs;
use crate::error::{Error, Result};
use crate::export::{onnx, zdc};
use crate::flow::io;
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
        let (prep, scaler) = zdc::model_processing(&a.model)?;
        if name != crate::models::zdc::FLOW_UNIT {
            return Err(fail(&format!("applies to the image flow '{}', not '{name}'", crate::models::zdc::FLOW_UNIT)));
        }
        zdc::export(&spec, &tensors, io::PREFIX, dtype, a.opset, &prep, &scaler, a.denoise)
            .map_err(|e| fail(&format!("unit '{name}': {e}")))?
    } else {
        onnx::export(&spec, &tensors, io::PREFIX, dtype, a.opset)
            .map_err(|m| Error::checkpoint(&a.model, format!("unit '{name}': {m}")))?
    };
    let bytes = onnx::to_bytes(&model);
    atomic::write_bytes(&a.output, &bytes)?;
    Ok((name, bytes.len()))
}
