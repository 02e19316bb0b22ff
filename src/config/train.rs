//! `[train]` and a flow's `train` overrides: the optimisation settings.

use serde::{Deserialize, Serialize};

use super::defaults;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    #[default]
    Constant,
    /// `lr` multiplied by `gamma` at each epoch in `milestones`.
    Multistep,
    /// OneCycle with annihilation (three phases): lr → max_lr → lr → lr/final_div_factor.
    OneCycle,
}

/// Optimisation settings (after a flow's overrides are applied).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Adam learning rate; OneCycle's base rate.
    pub lr: f64,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default)]
    pub milestones: Vec<usize>,
    #[serde(default = "defaults::gamma")]
    pub gamma: f64,
    #[serde(default)]
    pub max_lr: Option<f64>,
    #[serde(default = "defaults::pct_start")]
    pub pct_start: f64,
    #[serde(default = "defaults::final_div_factor")]
    pub final_div_factor: f64,
    /// OneCycle cycles Adam's β1 between these (the published code: 0.85 → 0.95).
    #[serde(default = "defaults::base_momentum")]
    pub base_momentum: f64,
    #[serde(default = "defaults::max_momentum")]
    pub max_momentum: f64,
    #[serde(default = "defaults::beta1")]
    pub beta1: f64,
    #[serde(default = "defaults::beta2")]
    pub beta2: f64,
    #[serde(default = "defaults::eps")]
    pub eps: f64,
    /// Clip the gradient's global norm to this (0: off).
    #[serde(default)]
    pub grad_clip: f64,
    /// Validate (and keep the best checkpoint) every N batches as well as at each epoch's end (0: epoch ends only).
    #[serde(default)]
    pub eval_every: usize,
    /// Cap on batches per epoch (0: the whole training split).
    #[serde(default)]
    pub max_batches: usize,
    /// Cap on validation batches (0: the whole validation split).
    #[serde(default)]
    pub val_batches: usize,
    /// Epochs on each data file in turn (`[data] paths`), e.g. `[20, 20]`: 20 epochs on the
    /// first file's training showers, then 20 on the second's; replaces `epochs` (their sum).
    /// Empty: every epoch visits the whole training split.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs_per_file: Vec<usize>,
}

impl TrainConfig {
    pub(super) fn validate(&self, key: &str) -> Result<()> {
        let bad = |field: &str, msg: &str| Err(Error::config(format!("{key}.{field}"), msg.to_string()));
        if self.epochs == 0 {
            return bad("epochs", "must be ≥ 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "must be ≥ 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", "must be > 0");
        }
        if self.schedule == Schedule::OneCycle {
            match self.max_lr {
                Some(m) if m >= self.lr => {}
                _ => return bad("max_lr", "OneCycle needs max_lr ≥ lr"),
            }
            if !(0.0..0.5).contains(&self.pct_start) || self.pct_start == 0.0 {
                return bad("pct_start", "must be in (0, 0.5) for the three-phase schedule");
            }
            if self.final_div_factor < 1.0 {
                return bad("final_div_factor", "must be ≥ 1");
            }
        }
        if !(0.0 < self.gamma && self.gamma <= 1.0) {
            return bad("gamma", "must be in (0, 1]");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1", "β1 and β2 must be in [0, 1)");
        }
        if self.grad_clip < 0.0 {
            return bad("grad_clip", "must be ≥ 0");
        }
        Ok(())
    }
}
