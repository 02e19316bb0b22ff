//! `zdcflow export-onnx`: one flow unit's sampling direction as an ONNX graph.

use crate::cli::ExportOnnxArgs;
use crate::error::{Error, Result};
use crate::export::onnx;
use crate::flow::io;
use crate::util::atomic;

pub fn run(a: &ExportOnnxArgs) -> Result<(String, usize)> {
    let units = super::flow_dir::read(&a.model)?;
    let (name, spec, weights) = units.pick(a.unit.as_deref())?;
    let dtype = units.dtype.dtype();
    // Through the loader: names and shapes are checked against the spec.
    io::load_frozen_flow(&spec, &weights, io::PREFIX, dtype, &candle_core::Device::Cpu)?;
    let tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu)
        .map_err(|e| Error::checkpoint(&weights, e.to_string()))?;
    let model = onnx::export(&spec, &tensors, io::PREFIX, dtype, a.opset)
        .map_err(|m| Error::checkpoint(&a.model, format!("unit '{name}': {m}")))?;
    let bytes = onnx::to_bytes(&model);
    atomic::write_bytes(&a.output, &bytes)?;
    Ok((name, bytes.len()))
}
