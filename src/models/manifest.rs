//! `model.json`: everything needed to rebuild and use a trained model — detector, role,
//! preprocessing constants, condition scalers, the architecture of every unit (flows, the
//! photon-sum flow), the data split, the seed and the full configuration.
//!
//! A model directory holds `model.json` and one subdirectory per unit (`flow/`, `regressor/`,
//! `flow1/`…), each with its own `model.json`, `best.safetensors`, `last.safetensors`,
//! `checkpoint/` and `metrics.jsonl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

impl DataInfo {
    /// The error for a data file `path` of `events` events that is not the one this model was
    /// trained on.
    pub(crate) fn other_file(&self, path: &Path, events: usize) -> Error {
        Error::format(
            path,
            format!(
                "holds {events} events; the teacher was trained on a file with {} ({})",
                self.events,
                self.path.display()
            ),
        )
    }
}

/// One trained part of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// Subdirectory holding its weights.
    pub dir: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowSpec>,
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
    pub training: Option<&'a Summary>,
}

impl Manifest {
    /// A teacher's description: the one constructor of every trainer's (and `bench`'s random
    /// models') manifest. Scalers (ZDC), teacher and distillation settings (students) are set by
    /// the caller.
    pub fn teacher(
        detector: Detector,
        dtype: Precision,
        seed: u64,
        data: DataInfo,
        preprocessing: Preprocessing,
        units: BTreeMap<String, Unit>,
        config: serde_json::Value,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            zdcflow_version: env!("CARGO_PKG_VERSION").into(),
            detector,
            role: Role::Teacher,
            seed,
            dtype,
            data,
            preprocessing,
            conditions: None,
            photon_sum_target: None,
            units,
            teacher: None,
            distill: None,
            config,
        }
    }

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
        m.check_constants().map_err(|e| Error::checkpoint(&path, e))?;
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

    /// The preprocessing constants and scalers as a whole: lengths against the detector's
    /// architecture and values in the ranges the formulas need (a hand-edited value would
    /// otherwise panic on an index or quietly give all-zero showers).
    fn check_constants(&self) -> std::result::Result<(), String> {
        let range = |key: &str, v: f64, ok: bool, want: &str| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(format!("preprocessing.{key} = {v}: must be {want}"))
            }
        };
        let alpha = |key: &str, a: f64| range(key, a, (0.0..0.5).contains(&a), "in [0, 0.5)");
        match (&self.preprocessing, self.detector) {
            (Preprocessing::Zdc(z), Detector::Zdc) => {
                range("zdc.noise_mul", z.noise_mul, z.noise_mul >= 0.0, "≥ 0")?;
                alpha("zdc.alpha", z.alpha)?;
                if let Some(p) = &z.pixels {
                    check_standardizer("preprocessing.zdc.pixels", p, crate::data::channels::PIXELS)?;
                }
                if let Some(c) = &self.conditions {
                    check_standardizer("conditions", c, crate::detector::zdc::CONTEXT)?;
                }
                if let Some(t) = &self.photon_sum_target {
                    check_standardizer("photon_sum_target", t, 1)?;
                }
            }
            (Preprocessing::Calo(c), Detector::Ds2 | Detector::Ds3) => {
                range("calo.log10_e_inc_offset", c.log10_e_inc_offset, true, "finite")?;
                range("calo.layer_scale_mev", c.layer_scale_mev, c.layer_scale_mev > 0.0, "> 0")?;
                range("calo.noise_mev", c.noise_mev, c.noise_mev >= 0.0, "≥ 0")?;
                alpha("calo.alpha", c.alpha)?;
                range("calo.flow2_e1_divisor", c.flow2_e1_divisor, c.flow2_e1_divisor != 0.0, "non-zero")?;
                range("calo.threshold_mev", c.threshold_mev, c.threshold_mev >= 0.0, "≥ 0")?;
            }
            (_, d) => return Err(format!("the preprocessing is not that of a {d:?} model")),
        }
        Ok(())
    }

    pub fn unit(&self, name: &str, dir: &Path) -> Result<&Unit> {
        self.units
            .get(name)
            .ok_or_else(|| Error::checkpoint(&dir.join(MODEL_JSON), format!("the model has no '{name}' unit")))
    }

    /// The architecture of flow unit `name`.
    pub fn flow(&self, dir: &Path, name: &str) -> Result<&FlowSpec> {
        self.unit(name, dir)?
            .flow
            .as_ref()
            .ok_or_else(|| Error::checkpoint(&dir.join(MODEL_JSON), format!("unit '{name}' is not a flow")))
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

/// A standardiser of `width` columns: that many means and stds, finite, stds above zero.
fn check_standardizer(key: &str, s: &Standardizer, width: usize) -> std::result::Result<(), String> {
    for (name, v) in [("mean", &s.mean), ("std", &s.std)] {
        if v.len() != width {
            return Err(format!("{key}.{name} has {} entries, the model needs {width}", v.len()));
        }
    }
    match s.mean.iter().chain(&s.std).position(|v| !v.is_finite()) {
        Some(_) => Err(format!("{key} holds a non-finite value")),
        None if s.std.iter().any(|&v| v <= 0.0) => Err(format!("{key}.std holds a value ≤ 0")),
        None => Ok(()),
    }
}

/// Writes a unit's own model.json.
pub fn save_unit_file(dir: &Path, file: &UnitFile) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = serde_json::to_string_pretty(file).expect("unit serialises");
    atomic::write_bytes(&dir.join(MODEL_JSON), text.as_bytes())
}

/// What a model-writing command may do with a model already in its `--output-dir`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    /// Nothing (import-nflows).
    Never,
    /// Continue it with `--resume` (the flag's value), else refuse.
    Resume(bool),
    /// Add units to it (CaloChallenge teachers: one config per flow), or continue it with
    /// `--resume`; the caller checks the units.
    Extend(bool),
}

/// The one check of an `--output-dir` before anything is written: it must be a directory or
/// not exist yet, `--resume` needs a model there, and a model there is refused unless `reuse`
/// allows it. Returns whether it holds a model (a model.json).
pub fn check_output_dir(dir: &Path, reuse: Reuse) -> Result<bool> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::checkpoint(dir, "--output-dir is a file, not a directory"));
    }
    let exists = dir.join(MODEL_JSON).exists();
    match reuse {
        Reuse::Resume(true) | Reuse::Extend(true) if !exists => {
            Err(Error::checkpoint(dir, "--resume: no model to resume here (no model.json)"))
        }
        Reuse::Never if exists => Err(Error::checkpoint(dir, "already holds a model; choose another --output-dir")),
        Reuse::Resume(false) if exists => Err(Error::checkpoint(
            dir,
            "already holds a model; pass --resume to continue it, or choose another --output-dir",
        )),
        _ => Ok(exists),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn teacher(units: BTreeMap<String, Unit>) -> Manifest {
        let data = DataInfo {
            path: "data.h5".into(),
            files: Vec::new(),
            events: 10,
            used_events: 10,
            fractions: [0.6, 0.2, 0.2],
            split_seed: 1,
            particles: Particles::default(),
        };
        let prep = Preprocessing::Zdc(ZdcPreprocessing::default());
        Manifest::teacher(Detector::Zdc, Precision::F32, 1, data, prep, units, serde_json::Value::Null)
    }

    /// Constants that would give all-zero showers or wrong ones are refused as a whole.
    #[test]
    fn preprocessing_constants_out_of_range_are_refused() {
        let mut m = teacher(BTreeMap::new());
        assert!(m.check_constants().is_ok());
        m.detector = Detector::Ds2;
        let calo = |edit: &dyn Fn(&mut CaloPreprocessing)| {
            let mut c = CaloPreprocessing::default();
            edit(&mut c);
            Preprocessing::Calo(c)
        };
        m.preprocessing = calo(&|_| {});
        assert!(m.check_constants().is_ok());
        for (edit, want) in [
            (
                &(|c: &mut CaloPreprocessing| c.layer_scale_mev = 0.0) as &dyn Fn(&mut CaloPreprocessing),
                "layer_scale_mev = 0",
            ),
            (&|c: &mut CaloPreprocessing| c.alpha = 0.5, "alpha = 0.5"),
            (&|c: &mut CaloPreprocessing| c.noise_mev = -1.0, "noise_mev = -1"),
            (&|c: &mut CaloPreprocessing| c.threshold_mev = f64::NAN, "threshold_mev = NaN"),
        ] {
            m.preprocessing = calo(edit);
            let e = m.check_constants().unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        m.preprocessing = Preprocessing::Zdc(ZdcPreprocessing::default());
        assert!(m.check_constants().unwrap_err().contains("not that of a Ds2 model"));
    }

    /// A hand-edited model.json without the unit's flow or the ZDC scalers is an error that names
    /// the file, not a panic.
    #[test]
    fn a_model_without_its_flow_or_scalers_is_a_clear_error() {
        let dir = Path::new("runs/t");
        let m = teacher(BTreeMap::from([("flow".to_string(), Unit { dir: "flow".into(), flow: None })]));
        let e = m.flow(dir, "flow").unwrap_err().to_string();
        assert!(e.contains("runs/t/model.json") && e.contains("unit 'flow' is not a flow"), "{e}");
        let e = m.flow(dir, "flow3").unwrap_err().to_string();
        assert!(e.contains("runs/t/model.json") && e.contains("no 'flow3' unit"), "{e}");
        let e = crate::models::zdc::scalers(&m, dir).unwrap_err().to_string();
        assert!(e.contains("runs/t/model.json") && e.contains("condition scaler"), "{e}");
        let mut m = m;
        m.conditions = Some(Standardizer { mean: vec![0.0], std: vec![1.0] });
        let e = crate::models::zdc::scalers(&m, dir).unwrap_err().to_string();
        assert!(e.contains("photon-sum scaler"), "{e}");
        assert!(m.role == Role::Teacher && m.format == FORMAT);
    }

    #[test]
    fn the_output_dir_check_refuses_what_each_command_must_not_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let (empty, model, file) = (tmp.path().join("new"), tmp.path().join("model"), tmp.path().join("file"));
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join(MODEL_JSON), "{}").unwrap();
        std::fs::write(&file, "x").unwrap();
        for reuse in [Reuse::Never, Reuse::Resume(false), Reuse::Extend(false)] {
            assert!(!check_output_dir(&empty, reuse).unwrap());
        }
        for reuse in [Reuse::Resume(true), Reuse::Extend(true)] {
            assert!(check_output_dir(&empty, reuse).unwrap_err().to_string().contains("no model to resume"));
            assert!(check_output_dir(&model, reuse).unwrap());
        }
        assert!(check_output_dir(&model, Reuse::Extend(false)).unwrap());
        let never = check_output_dir(&model, Reuse::Never).unwrap_err().to_string();
        assert!(never.contains("already holds a model; choose another --output-dir"), "{never}");
        let fresh = check_output_dir(&model, Reuse::Resume(false)).unwrap_err().to_string();
        assert!(fresh.contains("pass --resume to continue it"), "{fresh}");
        assert!(check_output_dir(&file, Reuse::Never).unwrap_err().to_string().contains("is a file"));
    }
}
