//! TOML configuration: one file per paper setup. Unknown keys and out-of-range values are
//! rejected with the key's full name; `--set a.b=v` overrides any key (the value is read as TOML,
//! falling back to a string).
//!
//! A file has `[model]`, `[data]`, `[train]` (defaults for every flow it trains), one section per
//! flow (`[flow]` for the ZDC, `[flow1]`/`[flow2]`/`[flow3]` for CaloChallenge) whose optional
//! `train` sub-table overrides `[train]` for that flow, `[photon_sum]` (ZDC photon-sum flow)
//! and `[distill]` (students).
//!
//! - `mod.rs`: the whole file ([`Config`]): loading, per-flow train settings, cross-section checks;
//! - `model.rs`: `[model]`, `[data]`; `flows.rs`: the flow, student and photon-sum sections;
//! - `train.rs`: `[train]`; `distill.rs`: `[distill]`;
//! - `defaults.rs`: key defaults; `set.rs`: `--set`; `errors.rs`: serde errors → key names.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::split::validate_fractions;
use crate::error::{Error, Result};

mod defaults;
mod distill;
mod errors;
mod flows;
mod model;
mod set;
mod train;

pub use distill::{ChannelUnits, DistillSection, Selection, Setup, ZeroDiversity};
pub use flows::{FlowSection, PhotonSumSection, StudentFlowSection};
pub use model::{DataSection, Detector, FlowName, ModelSection, Precision};
pub use set::apply_set;
pub use train::{Schedule, TrainConfig};

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
        errors::deserialize(toml::Value::Table(table), |key, unknown| match unknown {
            // The path may already end with the unknown field (`data.bogus`).
            Some(field) if key == "." => field.to_string(),
            Some(field) if key == field || key.ends_with(&format!(".{field}")) => key.to_string(),
            Some(field) => format!("{key}.{field}"),
            None => key.to_string(),
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
        let tc: TrainConfig = errors::deserialize(toml::Value::Table(table), |path, unknown| match unknown {
            Some(field) => format!("{}.{field}", owner(field)),
            None => format!("{}.{path}", owner(path.split('.').next().unwrap_or_default())),
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
                if let Some(n) = self.model.calo_noise_mev {
                    // Above the 15 keV generation threshold an empty voxel's noise would read as energy.
                    if !(n > 0.0 && n < 1.5e-2) {
                        return Err(Error::config(
                            "model.calo_noise_mev",
                            format!("must be in (0, 0.015) MeV, got {n}"),
                        ));
                    }
                }
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

/// The default output directory of a config: runs/<file stem>.
pub fn default_output_dir(config_path: &Path) -> PathBuf {
    let stem = config_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    PathBuf::from("runs").join(stem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::SplineConfig;

    /// Every shipped config loads, and the fast recipe's files of one dataset share the [model]
    /// settings that the flows of one directory must share.
    #[test]
    fn every_shipped_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 40, "{n} configs");
        for ds in [2, 3] {
            let model = |f: &str| Config::load(&dir.join(format!("ds{ds}-fast-{f}.toml")), &[]).unwrap().model;
            let teacher = model("flow1");
            assert!(teacher.calo_standardise_voxels && teacher.calo_noise_mev.is_some());
            assert_eq!(model("flow2"), teacher);
            let mut flow3 = model("flow3");
            flow3.flows.clear();
            assert_eq!(flow3, teacher);
        }
    }

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
