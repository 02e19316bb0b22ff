//! Taking zdcflow models out: ONNX graphs of a flow's sampling direction, and of the ZDC image
//! flow with the detector's pre- and postprocessing (`zdc`).

pub mod onnx;
pub mod zdc;
