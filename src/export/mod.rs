//! Taking zdcflow models out: ONNX graphs of a flow's sampling direction.

pub mod onnx;
