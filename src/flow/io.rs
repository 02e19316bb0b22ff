//! A stack on disk: `<stem>.safetensors` (weights, keys `flow.<block>.made.…`) and
//! `<stem>.json` (its [`FlowSpec`]). Both are written atomically; loading checks that the
//! weights are those of the spec's architecture.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarMap;

use super::params::load_frozen_model;
use super::stack::{Flow, FlowSpec};
use crate::error::{Error, Result};
use crate::util::atomic;

/// The prefix of a stack's parameters in a weights file.
pub const PREFIX: &str = "flow";

fn paths(stem: &Path) -> (PathBuf, PathBuf) {
    (stem.with_extension("json"), stem.with_extension("safetensors"))
}

/// Saves the spec and the variables of a stack built from `varmap`.
pub fn save(spec: &FlowSpec, varmap: &VarMap, stem: &Path) -> Result<()> {
    let (json, weights) = paths(stem);
    let text = serde_json::to_string_pretty(spec).map_err(|e| Error::Invalid(e.to_string()))?;
    atomic::write_bytes(&json, text.as_bytes())?;
    save_varmap(varmap, &weights)
}

/// Atomically writes a `VarMap` as safetensors.
pub fn save_varmap(varmap: &VarMap, path: &Path) -> Result<()> {
    atomic::write_with(path, |tmp| varmap.save(tmp).map_err(|e| Error::checkpoint(path, e.to_string())))
}

/// Reads a spec from JSON, validating it.
pub fn read_spec(path: &Path) -> Result<FlowSpec> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let spec: FlowSpec =
        serde_json::from_str(&text).map_err(|e| Error::checkpoint(path, format!("not a flow spec: {e}")))?;
    spec.validate().map_err(|e| Error::checkpoint(path, e))?;
    Ok(spec)
}

/// Builds a frozen (inference) stack of `spec` from the tensors under `prefix` in `weights`.
pub fn load_frozen_flow(spec: &FlowSpec, weights: &Path, prefix: &str, dtype: DType, device: &Device) -> Result<Flow> {
    load_frozen_model(weights, dtype, device, |vb| Flow::new(spec, vb.pp(prefix)))
}

/// Loads a stack saved by [`save`].
pub fn load(stem: &Path, dtype: DType, device: &Device) -> Result<Flow> {
    let (json, weights) = paths(stem);
    let spec = read_spec(&json)?;
    load_frozen_flow(&spec, &weights, PREFIX, dtype, device)
}
