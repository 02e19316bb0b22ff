//! `[model]` and `[data]`: which detector, which flows, which precision; the input file and
//! its split.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::split::Particles;
use crate::error::{Error, Result};

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
    /// CaloChallenge: standardise every (layer, voxel) logit that Flow-2 and Flow-3 see — their
    /// targets and Flow-3's previous-layer context — by its mean and std over the training split
    /// (saved in model.json, undone at sampling). Not in the paper: the fast recipe's main step.
    #[serde(default)]
    pub calo_standardise_voxels: bool,
    /// CaloChallenge: the dequantisation noise U[0, noise) in MeV added to every voxel and layer
    /// energy in training (and in `log-prob`'s definition); default iCaloFlow's 5 keV.
    #[serde(default)]
    pub calo_noise_mev: Option<f64>,
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
    pub(super) fn check_files(&self, detector: Detector) -> Result<()> {
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
