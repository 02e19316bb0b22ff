//! `model.json`: everything needed to rebuild and use a trained model — detector, role,
//! preprocessing constants, condition scalers, the architecture of every unit (flows, the
//! photon-sum regressor), the data split, the seed and the full configuration.
//!
//! A model directory holds `model.json` and one subdirectory per unit (`flow/`, `regressor/`,
//! `flow1/`…), each with its own `model.json`, `best.safetensors`, `last.safetensors`,
//! `checkpoint/` and `metrics.jsonl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::regressor::RegressorSpec;
use crate::config::{Detector, DistillSection, Precision};
use crate::data::preprocess::{CaloPreprocessing, Standardizer, ZdcPreprocessing};
use crate::data::split::Particles;
use crate::error::{Error, Result};
use crate::flow::FlowSpec;
use crate::train::Summary;
use crate::util::atomic;

pub const MODEL_JSON: &str = "model.json";
pub const FORMAT: &str = "zdcflow-model";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Teacher,
    Student,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preprocessing {
    Zdc(ZdcPreprocessing),
    Calo(CaloPreprocessing),
}

/// The data a model was trained on and how it was split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub path: PathBuf,
    /// CaloChallenge `[data] paths`: every file (path and events) of the union; empty for one file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<crate::data::calo_files::FileInfo>,
    pub events: usize,
    pub used_events: usize,
    pub fractions: [f64; 3],
    pub split_seed: u64,
    pub particles: Particles,
}

/// One trained part of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// Subdirectory holding its weights.
    pub dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regressor: Option<RegressorSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub zdcflow_version: String,
    pub detector: Detector,
    pub role: Role,
    pub seed: u64,
    pub dtype: Precision,
    pub data: DataInfo,
    pub preprocessing: Preprocessing,
    /// ZDC: standardisation of the 9 particle features and the photon sum (10 columns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Standardizer>,
    /// ZDC: standardisation of log(1 + photon sum), the photon-sum flow's variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photon_sum_target: Option<Standardizer>,
    pub units: BTreeMap<String, Unit>,
    /// Students: the teacher's directory as given to distill-student.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillSection>,
    pub config: serde_json::Value,
}

/// A unit's own `model.json`: its architecture and, once trained, the training summary.
#[derive(Clone, Debug, Serialize)]
pub struct UnitFile<'a> {
    pub unit: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<&'a FlowSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regressor: Option<&'a RegressorSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<&'a Summary>,
}

impl Manifest {
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        atomic::write_bytes(&dir.join(MODEL_JSON), text.as_bytes())
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MODEL_JSON);
        if !dir.is_dir() {
            return Err(Error::checkpoint(dir, "not a model directory (does not exist)"));
        }
        let text = std::fs::read_to_string(&path).map_err(|_| {
            Error::checkpoint(
                dir,
                "not a model directory: it has no model.json (train-teacher / distill-student write one)",
            )
        })?;
        let m: Self = serde_json::from_str(&text)
            .map_err(|e| Error::checkpoint(&path, format!("unreadable model description: {e}")))?;
        if m.format != FORMAT {
            return Err(Error::checkpoint(&path, format!("format '{}' is not '{FORMAT}'", m.format)));
        }
        for (name, unit) in &m.units {
            if let Some(f) = &unit.flow {
                f.validate().map_err(|e| Error::checkpoint(&path, format!("unit {name}: {e}")))?;
                // The model is built before its weights are read: its size is checked first.
                let (h, d, c) = (f.hidden_features as f64, f.features as f64, f.context_features as f64);
                let params = f.blocks as f64
                    * (f.hidden_layers as f64 * 2.0 * (h * h + h)
                        + h * (d + c)
                        + h * d * f.spline.params_per_feature() as f64);
                crate::util::limits::check_memory_for(
                    &path,
                    &format!("unit {name} ({params:.3e} parameters)"),
                    8.0 * params,
                )?;
            }
        }
        Ok(m)
    }

    pub fn unit(&self, name: &str, dir: &Path) -> Result<&Unit> {
        self.units
            .get(name)
            .ok_or_else(|| Error::checkpoint(&dir.join(MODEL_JSON), format!("the model has no '{name}' unit")))
    }

    /// The weights file of a unit: best.safetensors, else last.safetensors.
    pub fn weights(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        let unit = self.unit(name, dir)?;
        let d = dir.join(&unit.dir);
        if !d.is_dir() {
            return Err(Error::checkpoint(
                &d,
                format!("unit '{name}' is missing: the model directory has no {}/ (moved or deleted?)", unit.dir),
            ));
        }
        for f in ["best.safetensors", "last.safetensors"] {
            if d.join(f).exists() {
                let role = format!("{:?}", self.role).to_lowercase();
                crate::flow::io::check_identity(&d.join(f), name, &role)?;
                return Ok(d.join(f));
            }
        }
        Err(Error::checkpoint(
            &d,
            format!("unit '{name}' has no weights yet (was its training interrupted before the first epoch ended?)"),
        ))
    }
}

/// Writes a unit's own model.json.
pub fn save_unit_file(dir: &Path, file: &UnitFile) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = serde_json::to_string_pretty(file).expect("unit serialises");
    atomic::write_bytes(&dir.join(MODEL_JSON), text.as_bytes())
}

/// Refuses to start over in a directory that already holds a model, unless resuming.
pub fn check_output_dir(dir: &Path, resume: bool) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::checkpoint(dir, "--output-dir is a file, not a directory"));
    }
    let exists = dir.join(MODEL_JSON).exists();
    if resume && !exists {
        return Err(Error::checkpoint(dir, "--resume: no model to resume here (no model.json)"));
    }
    if !resume && exists {
        return Err(Error::checkpoint(
            dir,
            "already holds a model; pass --resume to continue it, or choose another --output-dir",
        ));
    }
    Ok(())
}
