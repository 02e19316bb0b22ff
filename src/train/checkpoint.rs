//! Resume state in one safetensors file (`checkpoint/state.safetensors`): the weights
//! (`model.*`), Adam's moments (`adam.*`) and, in the header's metadata, where the run stands.
//! One file written to a temporary name and renamed, so a kill at any moment leaves the previous
//! checkpoint whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::util::atomic;

const META_KEY: &str = "zdcflow_state";

/// Where a run stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The model this checkpoint belongs to (e.g. "flow3", "regressor").
    pub unit: String,
    /// Epoch in progress (0-based) and how many of its batches are done.
    pub epoch: usize,
    pub batch_in_epoch: usize,
    pub step: u64,
    pub samples: u64,
    pub best_metric: Option<f64>,
    pub best_epoch: usize,
    pub best_step: u64,
    pub seed: u64,
    /// Seconds of training before this checkpoint.
    pub wall_s: f64,
    /// The run's `epochs_per_file` schedule, and the data file (1-based) of the epoch in progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs_per_file: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<usize>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("checkpoint").join("state.safetensors")
}

pub fn save(
    dir: &Path,
    state: &State,
    weights: &HashMap<String, Tensor>,
    adam: &HashMap<String, Tensor>,
) -> Result<()> {
    let file = path(dir);
    let parent = file.parent().expect("checkpoint/ has a parent");
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(weights.len() + adam.len());
    tensors.extend(weights.iter().map(|(k, v)| (format!("model.{k}"), v.clone())));
    tensors.extend(adam.iter().map(|(k, v)| (format!("adam.{k}"), v.clone())));
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string(state).expect("state serialises"))]);
    atomic::write_with(&file, |tmp| {
        safetensors::tensor::serialize_to_file(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta), tmp)
            .map_err(|e| Error::checkpoint(&file, format!("cannot write: {e}")))
    })
}

/// Loaded checkpoint: state, weights (names without the `model.` prefix), optimiser moments.
pub struct Loaded {
    pub state: State,
    pub weights: HashMap<String, Tensor>,
    pub adam: HashMap<String, Tensor>,
}

pub fn load(dir: &Path, device: &Device) -> Result<Loaded> {
    let file = path(dir);
    let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::checkpoint(&file, format!("not a checkpoint (corrupt safetensors?): {e}")))?;
    let state: State = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| Error::checkpoint(&file, "not a zdcflow checkpoint (no run state in its header)"))
        .and_then(|s| {
            serde_json::from_str(s).map_err(|e| Error::checkpoint(&file, format!("unreadable run state: {e}")))
        })?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| Error::checkpoint(&file, format!("unreadable tensors: {e}")))?;
    let mut weights = HashMap::new();
    let mut adam = HashMap::new();
    for (k, v) in tensors {
        if let Some(name) = k.strip_prefix("model.") {
            weights.insert(name.to_string(), v);
        } else if let Some(name) = k.strip_prefix("adam.") {
            adam.insert(name.to_string(), v);
        }
    }
    Ok(Loaded { state, weights, adam })
}
