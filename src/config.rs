//! TOML configuration: one file per paper setup. Unknown keys and out-of-range values are
//! rejected with the key's full name; `--set a.b=v` overrides any key (the value is read as TOML,
//! falling back to a string).
//!
//! A file has `[model]`, `[data]`, `[train]` (defaults for every flow it trains), one section per
//! flow (`[flow]` for the ZDC, `[flow1]`/`[flow2]`/`[flow3]` for CaloChallenge) whose optional
//! `train` sub-table overrides `[train]` for that flow, `[photon_sum]` (ZDC photon-sum flow)
//! and `[distill]` (students).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::split::{validate_fractions, Particles};
use crate::error::{Error, Result};
use crate::flow::permutation::PermutationScheme;
use crate::flow::SplineConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Detector {
    Zdc,
    Ds2,
    Ds3,
}

impl Detector {
    pub fn dataset(self) -> Option<u8> {
        match self {
            Detector::Zdc => None,
            Detector::Ds2 => Some(2),
            Detector::Ds3 => Some(3),
        }
    }
}

/// The iCaloFlow flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowName {
    /// p(E_1..45 | E_inc)
    Flow1,
    /// p(layer 1 | E_inc, E_1)
    Flow2,
    /// p(layer i | E_inc, E_i, E_{i−1}, layer i−1, i)
    Flow3,
}

impl FlowName {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowName::Flow1 => "flow1",
            FlowName::Flow2 => "flow2",
            FlowName::Flow3 => "flow3",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F64,
}

impl Precision {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::F64 => candle_core::DType::F64,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub detector: Detector,
    #[serde(default)]
    pub dtype: Precision,
    /// CaloChallenge: the flows this file trains (default: all that have a section).
    #[serde(default)]
    pub flows: Vec<FlowName>,
    /// CaloChallenge: at generation, scale every layer's voxel pattern to sum 1 before multiplying
    /// by Flow-1's layer energy (default false, as the published sampler; saved in model.json).
    #[serde(default)]
    pub calo_renormalise_layers: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The input file (HDF5, or a ZDC `…responses.npz`).
    #[serde(default)]
    pub path: PathBuf,
    /// CaloChallenge: several files of one dataset read as one (instead of `path`), e.g. DS3's
    /// `dataset_3_1.hdf5` and `dataset_3_2.hdf5`; one split over their union.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathBuf>,
    /// ZDC particle group: all, n, lambda, k0s, sigma+.
    #[serde(default)]
    pub particles: Particles,
    /// Train/validation/test fractions (default ZDC 0.7/0.1/0.2, CaloChallenge 0.7/0.3/0).
    #[serde(default)]
    pub split: Option<[f64; 3]>,
    /// Seed of the split (default: the training seed).
    #[serde(default)]
    pub split_seed: Option<u64>,
    /// Use only the first N events (0: all) — for quick runs.
    #[serde(default)]
    pub max_events: usize,
}

impl DataSection {
    /// The data files: `paths`, or `path` alone.
    pub fn files(&self) -> Vec<PathBuf> {
        if self.paths.is_empty() {
            vec![self.path.clone()]
        } else {
            self.paths.clone()
        }
    }

    /// Exactly one of `path` and `paths`; `paths` only for CaloChallenge.
    fn check_files(&self, detector: Detector) -> Result<()> {
        let has_path = !self.path.as_os_str().is_empty();
        match (has_path, self.paths.is_empty()) {
            (false, true) => Err(Error::config("data.path", "is empty")),
            (true, false) => {
                Err(Error::config("data.paths", "give either data.path (one file) or data.paths, not both"))
            }
            _ if detector == Detector::Zdc && !self.paths.is_empty() => {
                Err(Error::config("data.paths", "the ZDC model reads one file: use data.path"))
            }
            _ if self.paths.iter().any(|p| p.as_os_str().is_empty()) => {
                Err(Error::config("data.paths", "holds an empty path"))
            }
            _ => Ok(()),
        }
    }

    pub fn fractions(&self, detector: Detector) -> [f64; 3] {
        self.split.unwrap_or(match detector {
            Detector::Zdc => [0.7, 0.1, 0.2],
            _ => [0.7, 0.3, 0.0],
        })
    }
}

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
    #[serde(default = "defaults::minimum")]
    pub min_bin_width: f64,
    #[serde(default = "defaults::minimum")]
    pub min_bin_height: f64,
    #[serde(default = "defaults::minimum")]
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

    fn validate(&self, key: &str) -> Result<()> {
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
            let field = match field {
                "num_bins" => "bins",
                f => f,
            };
            return bad(field, msg);
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
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
    #[serde(default = "defaults::schedule")]
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
    fn validate(&self, key: &str) -> Result<()> {
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

/// The ZDC photon-sum model: a 1-D conditional RQS flow (MAF) of log(1 + photon sum) given the 9
/// standardised particle features, trained by `train-teacher` before the image flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhotonSumSection {
    #[serde(default = "defaults::photon_sum_blocks")]
    pub blocks: usize,
    #[serde(default = "defaults::photon_sum_hidden")]
    pub hidden_features: usize,
    #[serde(default = "defaults::hidden_layers")]
    pub hidden_layers: usize,
    #[serde(default = "defaults::photon_sum_bins")]
    pub bins: usize,
    /// The spline's range in standardised log(1 + S) (identity outside).
    #[serde(default = "defaults::photon_sum_tail_bound")]
    pub tail_bound: f64,
    #[serde(default = "defaults::photon_sum_epochs")]
    pub epochs: usize,
    #[serde(default = "defaults::photon_sum_batch")]
    pub batch_size: usize,
    #[serde(default = "defaults::photon_sum_lr")]
    pub lr: f64,
}

impl Default for PhotonSumSection {
    fn default() -> Self {
        Self {
            blocks: defaults::photon_sum_blocks(),
            hidden_features: defaults::photon_sum_hidden(),
            hidden_layers: defaults::hidden_layers(),
            bins: defaults::photon_sum_bins(),
            tail_bound: defaults::photon_sum_tail_bound(),
            epochs: defaults::photon_sum_epochs(),
            batch_size: defaults::photon_sum_batch(),
            lr: defaults::photon_sum_lr(),
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

    fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: &str| Err(Error::config(format!("photon_sum.{field}"), msg.to_string()));
        if self.blocks == 0 || self.hidden_features == 0 || self.epochs == 0 || self.batch_size == 0 {
            return bad("blocks", "blocks, hidden_features, epochs and batch_size must be ≥ 1");
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return bad("lr", "must be > 0");
        }
        let spline = SplineConfig { num_bins: self.bins, tail_bound: self.tail_bound, ..SplineConfig::default() };
        if let Err((field, msg)) = spline.validate() {
            return bad(if field == "num_bins" { "bins" } else { field }, &msg);
        }
        Ok(())
    }
}

/// The four setups of the ZDC paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Setup {
    #[default]
    #[serde(rename = "bs")]
    Baseline,
    #[serde(rename = "bs+div")]
    Diversity,
    #[serde(rename = "bs+ch")]
    Channel,
    #[serde(rename = "bs+ch+div")]
    ChannelDiversity,
}

/// Units of the ZDC channel loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelUnits {
    #[default]
    Photons,
    Fractions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// Lowest validation KL(student ‖ teacher) estimate (iCaloFlow).
    #[default]
    Kl,
    /// Lowest validation distillation loss.
    ValLoss,
    /// ZDC: lowest validation KL + the weighted channel loss (diversity-weighted for +div), so that
    /// +ch setups are selected on what they optimise too.
    #[serde(rename = "kl+ch")]
    KlChannel,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSection {
    #[serde(default)]
    pub setup: Setup,
    /// Weight of the data loop; the latent loop gets 1 − beta.
    #[serde(default = "defaults::beta")]
    pub beta: f64,
    /// Standard deviation of the latent loop's z.
    #[serde(default = "defaults::one")]
    pub latent_width: f64,
    /// Squared errors between every block's intermediate tensors.
    #[serde(default = "defaults::yes")]
    pub step_terms: bool,
    /// Squared errors between every block's MADE outputs.
    #[serde(default = "defaults::yes")]
    pub made_terms: bool,
    /// Refines `setup`: the ZDC channel loss (eq. 2).
    #[serde(default)]
    pub channel_loss: Option<bool>,
    /// Refines `setup`: inverse-diversity sample weights (eq. 1, 3).
    #[serde(default)]
    pub diversity_weights: Option<bool>,
    #[serde(default = "defaults::channel_weight")]
    pub channel_weight: f64,
    /// Units of the channel values in the channel loss: photons (default; mean over the channels of
    /// the squared error in photons²) or fractions (the paper's eq. 2 on unit-sum images).
    #[serde(default)]
    pub channel_units: ChannelUnits,
    /// ε of eq. 3.
    #[serde(default = "defaults::diversity_eps")]
    pub diversity_eps: f64,
    /// Weight of a condition with f_div = 0 (seen once, or identical responses): "top" (the
    /// normalised maximum, default) or "eps" (ε only).
    #[serde(default)]
    pub zero_diversity: crate::eval::zdc_metrics::ZeroDiversity,
    #[serde(default)]
    pub selection: Selection,
}

impl Default for DistillSection {
    fn default() -> Self {
        toml::from_str("").expect("all distill keys have defaults")
    }
}

impl DistillSection {
    pub fn channel_loss(&self) -> bool {
        self.channel_loss.unwrap_or(matches!(self.setup, Setup::Channel | Setup::ChannelDiversity))
    }

    pub fn diversity_weights(&self) -> bool {
        self.diversity_weights.unwrap_or(matches!(self.setup, Setup::Diversity | Setup::ChannelDiversity))
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(Error::config("distill.beta", format!("must be in [0, 1], got {}", self.beta)));
        }
        if self.latent_width.is_nan() || self.latent_width <= 0.0 {
            return Err(Error::config("distill.latent_width", "must be > 0"));
        }
        if self.channel_weight < 0.0 || self.diversity_eps < 0.0 {
            return Err(Error::config("distill.channel_weight", "channel_weight and diversity_eps must be ≥ 0"));
        }
        Ok(())
    }
}

/// A whole configuration file, after `--set` overrides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelSection,
    pub data: DataSection,
    #[serde(default)]
    pub train: toml::Table,
    #[serde(default)]
    pub flow: Option<FlowSection>,
    #[serde(default)]
    pub flow1: Option<FlowSection>,
    #[serde(default)]
    pub flow2: Option<FlowSection>,
    #[serde(default)]
    pub flow3: Option<FlowSection>,
    #[serde(default)]
    pub student: Option<StudentSections>,
    #[serde(default)]
    pub photon_sum: Option<PhotonSumSection>,
    /// The former point regressor's section: refused with a pointer to `[photon_sum]`.
    #[serde(default, skip_serializing)]
    pub regressor: Option<toml::Value>,
    #[serde(default)]
    pub distill: Option<DistillSection>,
}

/// Student architectures: `[student.flow]` (ZDC) or `[student.flow2]`, `[student.flow3]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StudentSections {
    #[serde(default)]
    pub flow: Option<StudentFlowSection>,
    #[serde(default)]
    pub flow2: Option<StudentFlowSection>,
    #[serde(default)]
    pub flow3: Option<StudentFlowSection>,
}

impl Config {
    /// Reads `path`, applies `--set` overrides and validates everything.
    pub fn load(path: &Path, sets: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if text.trim().is_empty() {
            return Err(Error::format(
                path,
                "the config file is empty (it needs [model], [data], [train] and a flow section)",
            ));
        }
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| Error::format(path, format!("not valid TOML: {}", e.message())))?;
        for s in sets {
            apply_set(&mut table, s)?;
        }
        // Errors of the file's keys name the file too.
        let in_file = |e: Error| match e {
            Error::Config { .. } => Error::format(path, e.to_string()),
            other => other,
        };
        let config = Self::from_table(table).map_err(in_file)?;
        config.validate().map_err(in_file)?;
        Ok(config)
    }

    fn from_table(table: toml::Table) -> Result<Self> {
        let value = toml::Value::Table(table);
        serde_path_to_error::deserialize::<_, Self>(value).map_err(|e| {
            let key = e.path().to_string();
            let msg = e.inner().message().to_string();
            match unknown_field(&msg) {
                Some(field) => {
                    // The path may already end with the unknown field (`data.bogus`).
                    let full = if key == "." {
                        field
                    } else if key == field || key.ends_with(&format!(".{field}")) {
                        key
                    } else {
                        format!("{key}.{field}")
                    };
                    Error::config(full, format!("unknown key ({msg})"))
                }
                None => Error::config(key, msg),
            }
        })
    }

    /// The flow section for `name` (`[flow]` on the ZDC).
    pub fn flow_section(&self, name: Option<FlowName>) -> Option<&FlowSection> {
        match name {
            None => self.flow.as_ref(),
            Some(FlowName::Flow1) => self.flow1.as_ref(),
            Some(FlowName::Flow2) => self.flow2.as_ref(),
            Some(FlowName::Flow3) => self.flow3.as_ref(),
        }
    }

    pub fn student_section(&self, name: Option<FlowName>) -> Option<&StudentFlowSection> {
        let s = self.student.as_ref()?;
        match name {
            None => s.flow.as_ref(),
            Some(FlowName::Flow2) => s.flow2.as_ref(),
            Some(FlowName::Flow3) => s.flow3.as_ref(),
            Some(FlowName::Flow1) => None,
        }
    }

    /// The CaloChallenge flows this file names (all sections present when `model.flows` is empty).
    pub fn calo_flows(&self) -> Vec<FlowName> {
        if !self.model.flows.is_empty() {
            return self.model.flows.clone();
        }
        [FlowName::Flow1, FlowName::Flow2, FlowName::Flow3]
            .into_iter()
            .filter(|&f| self.flow_section(Some(f)).is_some() || self.student_section(Some(f)).is_some())
            .collect()
    }

    /// `[train]` with `overrides` applied on top, validated. `key` names the overrides in errors.
    pub fn train_config(&self, overrides: Option<&toml::Table>, key: &str) -> Result<TrainConfig> {
        let mut table = self.train.clone();
        for (k, v) in overrides.into_iter().flatten() {
            table.insert(k.clone(), v.clone());
        }
        // A key set in this flow's overrides is named `{key}.…`; one from `[train]` as `train.…`.
        let owner = |field: &str| {
            if overrides.is_some_and(|o| o.contains_key(field)) {
                key.to_string()
            } else {
                "train".to_string()
            }
        };
        let tc: TrainConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let msg = e.inner().message().to_string();
            match unknown_field(&msg) {
                Some(field) => Error::config(format!("{}.{field}", owner(&field)), format!("unknown key ({msg})")),
                None => {
                    let path = e.path().to_string();
                    let field = path.split('.').next().unwrap_or_default().to_string();
                    Error::config(format!("{}.{path}", owner(&field)), msg)
                }
            }
        })?;
        let mut tc = tc;
        if !tc.epochs_per_file.is_empty() {
            if tc.epochs_per_file.contains(&0) {
                return Err(Error::config(format!("{key}.epochs_per_file"), "every entry must be ≥ 1"));
            }
            tc.epochs = tc.epochs_per_file.iter().sum();
        }
        tc.validate(key)?;
        Ok(tc)
    }

    fn validate(&self) -> Result<()> {
        let detector = self.model.detector;
        validate_fractions(self.data.fractions(detector)).map_err(|m| Error::config("data.split", m))?;
        self.data.check_files(detector)?;
        match detector {
            Detector::Zdc => {
                if !self.model.flows.is_empty() || self.flow1.is_some() || self.flow2.is_some() || self.flow3.is_some()
                {
                    return Err(Error::config("model.flows", "the ZDC model has one flow, configured in [flow]"));
                }
                if let Some(f) = &self.flow {
                    f.validate("flow")?;
                    self.train_config(f.train.as_ref(), "flow.train")?;
                }
                if self.regressor.is_some() {
                    return Err(Error::config(
                        "regressor",
                        "the point regressor was replaced by a photon-sum flow: rename [regressor] to [photon_sum] \
                         (keys blocks, hidden_features, hidden_layers, bins, tail_bound, epochs, batch_size, lr)",
                    ));
                }
                if let Some(p) = &self.photon_sum {
                    p.validate()?;
                }
                if self.flow.is_none() && self.student.as_ref().and_then(|s| s.flow.as_ref()).is_none() {
                    return Err(Error::config(
                        "flow",
                        "missing: a ZDC config needs [flow] (teacher) or [student.flow]",
                    ));
                }
            }
            Detector::Ds2 | Detector::Ds3 => {
                if self.flow.is_some() {
                    return Err(Error::config("flow", "CaloChallenge configs use [flow1], [flow2], [flow3]"));
                }
                let flows = self.calo_flows();
                if flows.is_empty() {
                    return Err(Error::config("model.flows", "no flow section ([flow1], [flow2], [flow3]) found"));
                }
                for f in [FlowName::Flow1, FlowName::Flow2, FlowName::Flow3] {
                    if let Some(s) = self.flow_section(Some(f)) {
                        s.validate(f.as_str())?;
                        self.train_config(s.train.as_ref(), &format!("{}.train", f.as_str()))?;
                    }
                }
            }
        }
        if let Some(s) = &self.student {
            for (name, sec) in [("flow", &s.flow), ("flow2", &s.flow2), ("flow3", &s.flow3)] {
                if let Some(sec) = sec {
                    let key = format!("student.{name}");
                    if !(0.0..1.0).contains(&sec.dropout) {
                        return Err(Error::config(format!("{key}.dropout"), "must be in [0, 1)"));
                    }
                    if sec.hidden_features == Some(0) {
                        return Err(Error::config(format!("{key}.hidden_features"), "must be ≥ 1"));
                    }
                    if let Some(h) = sec.hidden_features {
                        let layers = sec.hidden_layers.unwrap_or(1) as f64 + 1.0;
                        crate::util::limits::check_memory(
                            &format!("hidden_features = {h}"),
                            16.0 * layers * (h as f64).powi(2),
                        )
                        .map_err(|e| Error::config(format!("{key}.hidden_features"), e.to_string()))?;
                    }
                    self.train_config(sec.train.as_ref(), &format!("{key}.train"))?;
                }
            }
        }
        if let Some(d) = &self.distill {
            d.validate()?;
        }
        if self.train.is_empty() && self.flow_sections_without_train() {
            return Err(Error::config("train", "missing: [train] needs at least epochs, batch_size and lr"));
        }
        Ok(())
    }

    fn flow_sections_without_train(&self) -> bool {
        [&self.flow, &self.flow1, &self.flow2, &self.flow3]
            .iter()
            .any(|f| f.as_ref().is_some_and(|f| f.train.is_none()))
    }

    /// The configuration as JSON (saved in model.json).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Seed of the data split.
    pub fn split_seed(&self, train: &TrainConfig) -> u64 {
        self.data.split_seed.unwrap_or(train.seed)
    }
}

fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// Applies `a.b.c=value` to a TOML table (value parsed as TOML, else taken as a string).
pub fn apply_set(table: &mut toml::Table, set: &str) -> Result<()> {
    let (key, raw) =
        set.split_once('=').ok_or_else(|| Error::config(set, "--set needs KEY=VALUE, e.g. --set train.epochs=2"))?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::config(key, "empty key segment"));
    }
    let value = parse_value(raw.trim());
    let mut t = table;
    for p in &parts[..parts.len() - 1] {
        let entry = t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(Error::config(key, format!("'{p}' is not a table"))),
        };
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// The default output directory of a config: runs/<file stem>.
pub fn default_output_dir(config_path: &Path) -> PathBuf {
    let stem = config_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    PathBuf::from("runs").join(stem)
}

mod defaults {
    use super::Schedule;

    pub fn blocks() -> usize {
        8
    }
    pub fn hidden_layers() -> usize {
        2
    }
    pub fn bins() -> usize {
        8
    }
    pub fn tail_bound() -> f64 {
        14.0
    }
    pub fn minimum() -> f64 {
        1e-6
    }
    pub fn seed() -> u64 {
        1
    }
    pub fn schedule() -> Schedule {
        Schedule::Constant
    }
    pub fn gamma() -> f64 {
        0.5
    }
    pub fn pct_start() -> f64 {
        0.4
    }
    pub fn final_div_factor() -> f64 {
        10.0
    }
    pub fn base_momentum() -> f64 {
        0.85
    }
    pub fn max_momentum() -> f64 {
        0.95
    }
    pub fn beta1() -> f64 {
        0.9
    }
    pub fn beta2() -> f64 {
        0.999
    }
    pub fn eps() -> f64 {
        1e-8
    }
    pub fn photon_sum_blocks() -> usize {
        2
    }
    pub fn photon_sum_hidden() -> usize {
        64
    }
    pub fn photon_sum_bins() -> usize {
        8
    }
    pub fn photon_sum_tail_bound() -> f64 {
        6.0
    }
    pub fn photon_sum_epochs() -> usize {
        30
    }
    pub fn photon_sum_batch() -> usize {
        256
    }
    pub fn photon_sum_lr() -> f64 {
        3e-3
    }
    pub fn beta() -> f64 {
        0.5
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn yes() -> bool {
        true
    }
    /// The one default of `distill.channel_weight` (README "Distillation loss"): with the channel
    /// loss in photons², a mean channel error of 10 photons then costs 1, about the whole PDD loss
    /// of a student started from its teacher.
    pub fn channel_weight() -> f64 {
        0.01
    }
    pub fn diversity_eps() -> f64 {
        1e-3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZDC: &str = r#"
[model]
detector = "zdc"
[data]
path = "zdc.h5"
[train]
epochs = 2
batch_size = 64
lr = 1e-3
[flow]
blocks = 2
hidden_features = 32
"#;

    fn load_str(text: &str, sets: &[&str]) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(&p, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn config_loads_with_defaults_and_overrides() {
        let c = load_str(ZDC, &["train.epochs=5", "data.path=other.h5", "flow.dropout=0.05"]).unwrap();
        let t = c.train_config(c.flow.as_ref().unwrap().train.as_ref(), "flow.train").unwrap();
        assert_eq!(t.epochs, 5);
        assert_eq!(c.data.path, PathBuf::from("other.h5"));
        assert_eq!(c.flow.as_ref().unwrap().dropout, 0.05);
        assert_eq!(c.flow.as_ref().unwrap().spline(), SplineConfig::default());
        assert_eq!(c.data.fractions(Detector::Zdc), [0.7, 0.1, 0.2]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load_str(ZDC, &["train.no_such_key=1"]).unwrap_err().to_string();
        assert!(e.contains("train.no_such_key"), "{e}");
        let e = load_str(&format!("{ZDC}\nbogus = 3\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = load_str(ZDC, &["flow.hidden_featurez=3"]).unwrap_err().to_string();
        assert!(e.contains("flow.hidden_featurez"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_named() {
        for (set, key) in [
            ("train.epochs=0", "train.epochs"),
            ("flow.dropout=1.5", "flow.dropout"),
            ("flow.bins=1", "flow.bins"),
            ("data.split=[0.9, 0.2, 0.1]", "data.split"),
            ("train.batch_size=-3", "batch_size"),
        ] {
            let e = load_str(ZDC, &[set]).unwrap_err().to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
    }

    #[test]
    fn per_flow_train_overrides_apply() {
        let text = r#"
[model]
detector = "ds2"
[data]
path = "ds2.h5"
[train]
epochs = 3
batch_size = 100
lr = 1e-4
[flow1]
hidden_features = 16
[flow3]
hidden_features = 16
train = { epochs = 7, schedule = "onecycle", max_lr = 1e-3 }
"#;
        let c = load_str(text, &[]).unwrap();
        assert_eq!(c.calo_flows(), vec![FlowName::Flow1, FlowName::Flow3]);
        let t3 = c.train_config(c.flow3.as_ref().unwrap().train.as_ref(), "flow3.train").unwrap();
        assert_eq!((t3.epochs, t3.batch_size, t3.schedule), (7, 100, Schedule::OneCycle));
        let e = load_str(text, &["flow3.train.max_lr=1e-6"]).unwrap_err().to_string();
        assert!(e.contains("flow3.train.max_lr"), "{e}");
    }

    #[test]
    fn distill_setup_sets_the_switches_and_explicit_keys_refine_it() {
        let d: DistillSection = toml::from_str(r#"setup = "bs+ch+div""#).unwrap();
        assert!(d.channel_loss() && d.diversity_weights());
        let d: DistillSection = toml::from_str("setup = \"bs+ch+div\"\ndiversity_weights = false").unwrap();
        assert!(d.channel_loss() && !d.diversity_weights());
        assert!(!DistillSection::default().channel_loss());
    }
}
