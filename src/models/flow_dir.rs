//! Model directories as the flow commands see them: a trained or distilled model (`zdcflow-model`,
//! see [`crate::models::manifest`]) or a directory of imported flows (`zdcflow-flows`, written by
//! `import-nflows`), each holding named flow units with a spec and weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use super::manifest::{Manifest, Unit, MODEL_JSON};
use crate::config::Precision;
use crate::error::{Error, Result};
use crate::flow::{io, Flow, FlowSpec};
use crate::util::atomic;

/// The `format` of a directory of imported flows.
pub const FLOWS_FORMAT: &str = "zdcflow-flows";

/// Where an imported flow came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub checkpoint: PathBuf,
    pub kind: crate::flow::nflows::NflowsKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `model.json` of a directory of imported flows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowsManifest {
    pub format: String,
    pub zdcflow_version: String,
    pub dtype: Precision,
    pub units: BTreeMap<String, Unit>,
    #[serde(default)]
    pub sources: BTreeMap<String, Source>,
}

impl FlowsManifest {
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        atomic::write_bytes(&dir.join(MODEL_JSON), text.as_bytes())
    }
}

/// The flow units of a model directory, with the precision it was saved in.
pub struct FlowUnits {
    pub dir: PathBuf,
    pub dtype: Precision,
    pub units: BTreeMap<String, Unit>,
}

/// Reads either kind of model directory.
pub fn read(dir: &Path) -> Result<FlowUnits> {
    let path = dir.join(MODEL_JSON);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Error::checkpoint(dir, "not a model directory: it has no model.json (import-nflows / train-teacher write one)")
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&path, format!("unreadable model description: {e}")))?;
    if value.get("format").and_then(|f| f.as_str()) == Some(FLOWS_FORMAT) {
        let m: FlowsManifest = serde_json::from_value(value)
            .map_err(|e| Error::checkpoint(&path, format!("unreadable model description: {e}")))?;
        for (name, unit) in &m.units {
            if let Some(f) = &unit.flow {
                f.validate().map_err(|e| Error::checkpoint(&path, format!("unit {name}: {e}")))?;
            }
        }
        return Ok(FlowUnits { dir: dir.to_path_buf(), dtype: m.dtype, units: m.units });
    }
    let m = Manifest::load(dir)?;
    Ok(FlowUnits { dir: dir.to_path_buf(), dtype: m.dtype, units: m.units })
}

impl FlowUnits {
    /// The named flow unit, or the only one when `name` is None.
    pub fn pick(&self, name: Option<&str>) -> Result<(String, FlowSpec, PathBuf)> {
        let flows: Vec<&String> = self.units.iter().filter(|(_, u)| u.flow.is_some()).map(|(n, _)| n).collect();
        let names = flows.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        let name = match name {
            Some(n) => n.to_string(),
            None if flows.len() == 1 => flows[0].clone(),
            None => {
                return Err(Error::checkpoint(
                    &self.dir,
                    format!("holds several flows ({names}): choose one with --unit"),
                ))
            }
        };
        let unit =
            self.units.get(&name).filter(|u| u.flow.is_some()).ok_or_else(|| {
                Error::checkpoint(&self.dir, format!("has no flow unit '{name}' (its flows: {names})"))
            })?;
        let d = self.dir.join(&unit.dir);
        let weights = ["best.safetensors", "last.safetensors"].iter().map(|f| d.join(f)).find(|p| p.exists());
        let weights = weights.ok_or_else(|| Error::checkpoint(&d, format!("unit '{name}' has no weights")))?;
        Ok((name, unit.flow.clone().expect("filtered on flow"), weights))
    }

    /// Loads a frozen flow unit in the directory's precision (or `dtype`).
    pub fn load(&self, name: Option<&str>, dtype: Option<DType>, device: &Device) -> Result<(String, Flow)> {
        let (name, spec, weights) = self.pick(name)?;
        let dtype = dtype.unwrap_or(self.dtype.dtype());
        Ok((name, io::load_frozen_flow(&spec, &weights, io::PREFIX, dtype, device)?))
    }
}
