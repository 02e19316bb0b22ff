//! The flow sections: a teacher's architecture (`[flow]`, `[flow1]`…), a student's
//! (`[student.flow]`…), and the ZDC photon-sum flow (`[photon_sum]`).

use serde::{Deserialize, Serialize};

use super::defaults;
use super::train::TrainConfig;
use crate::error::{Error, Result};
use crate::flow::permutation::PermutationScheme;
use crate::flow::SplineConfig;

/// A flow's architecture (MADE-RQS stack).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSection {
    #[serde(default = "defaults::blocks")]
    pub blocks: usize,
    pub hidden_features: usize,
    /// Masked hidden layers after the first ("2×256" → 2).
    #[serde(default = "defaults::hidden_layers")]
    pub hidden_layers: usize,
    #[serde(default = "defaults::bins")]
    pub bins: usize,
    #[serde(default = "defaults::tail_bound")]
    pub tail_bound: f64,
    #[serde(default = "defaults::min_bin_width")]
    pub min_bin_width: f64,
    #[serde(default = "defaults::min_bin_height")]
    pub min_bin_height: f64,
    #[serde(default = "defaults::min_derivative")]
    pub min_derivative: f64,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub residual: bool,
    #[serde(default)]
    pub permutations: PermutationScheme,
    /// ZDC only: standardise every pixel's logit by its training-split mean and std (not in the
    /// published code; the demo uses it so that its small teacher learns the showers in minutes).
    #[serde(default)]
    pub standardise_pixels: bool,
    /// Overrides of `[train]` for this flow.
    #[serde(default)]
    pub train: Option<toml::Table>,
}

impl FlowSection {
    pub fn spline(&self) -> SplineConfig {
        SplineConfig {
            num_bins: self.bins,
            tail_bound: self.tail_bound,
            min_bin_width: self.min_bin_width,
            min_bin_height: self.min_bin_height,
            min_derivative: self.min_derivative,
        }
    }

    pub(super) fn validate(&self, key: &str) -> Result<()> {
        let bad = |field: &str, msg: String| Err(Error::config(format!("{key}.{field}"), msg));
        if self.blocks == 0 {
            return bad("blocks", "must be ≥ 1".into());
        }
        if self.hidden_features == 0 {
            return bad("hidden_features", "must be ≥ 1".into());
        }
        // The hidden layers alone (before the data's dimension is known): weights, gradients
        // and Adam's moments of blocks × (layers + 1) square matrices.
        let h = self.hidden_features as f64;
        let bytes = 16.0 * self.blocks as f64 * (self.hidden_layers as f64 + 1.0) * h * h;
        if let Err(e) = crate::util::limits::check_memory(&format!("hidden_features = {}", self.hidden_features), bytes)
        {
            return bad("hidden_features", e.to_string());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("must be in [0, 1), got {}", self.dropout));
        }
        if let Err((field, msg)) = self.spline().validate() {
            return bad(spline_key(field), msg);
        }
        Ok(())
    }
}

/// A student's architecture: the teacher's blocks, spline and permutations; its own hidden sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentFlowSection {
    /// Default: the teacher's.
    #[serde(default)]
    pub hidden_features: Option<usize>,
    #[serde(default)]
    pub hidden_layers: Option<usize>,
    #[serde(default)]
    pub residual: Option<bool>,
    #[serde(default)]
    pub dropout: f64,
    /// Start from the teacher's weights (possible when the hidden sizes match).
    #[serde(default)]
    pub init_from_teacher: bool,
    /// Overrides `distill.beta` for this flow (iCaloFlow trains Flow-3 students with the data loop only).
    #[serde(default)]
    pub beta: Option<f64>,
    #[serde(default)]
    pub train: Option<toml::Table>,
}

/// The ZDC photon-sum model: a 1-D conditional RQS flow (MAF) of log(1 + photon sum) given the 9
/// standardised particle features, trained by `train-teacher` before the image flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhotonSumSection {
    pub blocks: usize,
    pub hidden_features: usize,
    pub hidden_layers: usize,
    pub bins: usize,
    /// The spline's range in standardised log(1 + S) (identity outside).
    pub tail_bound: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
}

impl Default for PhotonSumSection {
    /// Every key's default.
    fn default() -> Self {
        Self {
            blocks: 2,
            hidden_features: 64,
            hidden_layers: defaults::hidden_layers(),
            bins: 8,
            tail_bound: 6.0,
            epochs: 30,
            batch_size: 256,
            lr: 3e-3,
        }
    }
}

impl PhotonSumSection {
    /// Its optimisation settings (Adam, constant rate, best validation NLL kept).
    pub fn train_config(&self, seed: u64) -> TrainConfig {
        let text =
            format!("epochs = {}\nbatch_size = {}\nlr = {:e}\nseed = {seed}", self.epochs, self.batch_size, self.lr);
        toml::from_str(&text).expect("photon-sum settings form a valid train config")
    }

    pub(super) fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: &str| Err(Error::config(format!("photon_sum.{field}"), msg.to_string()));
        if self.blocks == 0 || self.hidden_features == 0 || self.epochs == 0 || self.batch_size == 0 {
            return bad("blocks", "blocks, hidden_features, epochs and batch_size must be ≥ 1");
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return bad("lr", "must be > 0");
        }
        let spline = SplineConfig { num_bins: self.bins, tail_bound: self.tail_bound, ..SplineConfig::default() };
        if let Err((field, msg)) = spline.validate() {
            return bad(spline_key(field), &msg);
        }
        Ok(())
    }
}

/// The config key of a [`SplineConfig`] field.
fn spline_key(field: &str) -> &str {
    match field {
        "num_bins" => "bins",
        f => f,
    }
}
