//! Taking zdcflow models out: ONNX graphs of a flow's sampling direction, and of a detector's
//! flow with its pre- and postprocessing (the ZDC image flow: `zdc`; a CaloChallenge student's
//! Flow-2 or Flow-3: `calo`), and of a CaloChallenge model's whole shower (`shower`).

pub mod calo;
pub mod onnx;
pub mod shower;
pub mod zdc;
