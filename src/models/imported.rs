//! Imported nflows flows written as model directories: one flow as a directory of imported flows
//! (`zdcflow-flows`, [`save_flows_dir`]; `zdcflow import-nflows`), or flows wrapped into a
//! detector model directory ([`save`]; `zdcflow import-nflows --detector …`) — the same
//! `model.json` (`zdcflow-model`) that `train-teacher` writes — so that `sample`, `evaluate` and
//! `distill-student --teacher` take it unchanged.
//!
//! - ZDC (zdc-fast-simulations): one flow on the logits of the noised, sum-normalised 44×44 image
//!   (1936 features) given 10 conditions, the 9 particle features and the photon sum, standardised
//!   by sklearn's `StandardScaler` (mean and population standard deviation). The scaler is refitted
//!   from the data file by that rule on the training split of the model's recorded split (the
//!   published code fits it on its own 80 % split, sklearn's `train_test_split(random_state=42)`,
//!   which is not reproduced here), or read from a file ([`read_scaler`]: `scaler.mean_`,
//!   `scaler.scale_`). The model has no photon-sum flow: sums come from the conditions file
//!   (`sample --photon-sum data`, the published protocol).
//! - DS2/DS3 (inductive-caloflow): Flow-1, Flow-2 and Flow-3 checkpoints into one directory, with
//!   the preprocessing of inductive-caloflow's `run.py`/`data.py`.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Var};
use candle_nn::VarMap;

use super::flow_dir::{FlowsManifest, Source, FLOWS_FORMAT};
use super::manifest::{save_unit_file, DataInfo, Manifest, Preprocessing, Role, Unit, UnitFile};
use crate::config::{Detector, Precision};
use crate::data::geometry::CaloGeometry;
use crate::data::preprocess::Standardizer;
use crate::data::pth::read_state_dict;
use crate::data::split::Particles;
use crate::error::{Error, Result};
use crate::flow::nflows::{self, ImportOptions, NflowsKind};
use crate::flow::{io, FlowKind, FlowSpec};

/// The split `train-teacher` uses by default for a detector (config `[data] split`), recorded
/// in an imported model.
pub fn default_fractions(detector: Detector) -> [f64; 3] {
    match detector {
        Detector::Zdc => [0.7, 0.1, 0.2],
        _ => [0.7, 0.3, 0.0],
    }
}

/// The split seed recorded in an imported model.
pub const SPLIT_SEED: u64 = 42;

/// One checkpoint to import as a unit.
pub struct Part<'a> {
    pub unit: &'a str,
    pub checkpoint: &'a Path,
    pub kind: NflowsKind,
    /// Expected (features, context).
    pub dims: (usize, usize),
}

/// An imported flow: its spec, its tensors (names under the flow prefix) and the checkpoint's dtype.
pub type ImportedPart = (FlowSpec, Vec<(String, candle_core::Tensor)>, DType);

/// Imports a checkpoint's flow (with `options`, its kind the part's) and checks its shape
/// against the detector's.
pub fn import_part(p: &Part, options: &ImportOptions, key: Option<&str>) -> Result<ImportedPart> {
    let opts = ImportOptions { kind: p.kind, ..*options };
    let state = read_state_dict(p.checkpoint, key)?;
    let imported = nflows::import(state, &opts).map_err(|m| Error::checkpoint(p.checkpoint, m))?;
    let (f, c) = (imported.spec.features, imported.spec.context_features);
    if (f, c) != p.dims {
        return Err(Error::checkpoint(
            p.checkpoint,
            format!(
                "is a flow of {f} features with {c} conditions; the {} of this detector has {} features and {} conditions",
                p.unit, p.dims.0, p.dims.1
            ),
        ));
    }
    Ok((imported.spec, imported.tensors.into_iter().collect(), imported.dtype))
}

/// Writes one unit of imported tensors into `dir` in `precision`: the weights, loaded back to
/// check their names and shapes against `spec`, and the unit file. A detector model's weights
/// record the unit and the model's `role`; a directory of plain imported flows (`role` None)
/// records neither, as it always has.
fn write_unit(
    dir: &Path,
    unit: &str,
    spec: &FlowSpec,
    tensors: &[(String, candle_core::Tensor)],
    precision: Precision,
    role: Option<Role>,
) -> Result<()> {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for (name, t) in tensors {
            let t = t.to_dtype(precision.dtype())?.contiguous()?;
            data.insert(format!("{}.{name}", io::PREFIX), Var::from_tensor(&t)?);
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let weights = dir.join("best.safetensors");
    let role = role.map(|r| format!("{r:?}").to_lowercase());
    let unit_of_role = role.is_some().then_some(unit);
    io::save_varmap_as(&varmap, &weights, unit_of_role, role.as_deref())?;
    io::load_frozen_flow(spec, &weights, io::PREFIX, precision.dtype(), &candle_core::Device::Cpu)?;
    save_unit_file(dir, &UnitFile { unit, flow: Some(spec), training: None })
}

/// The precision imported tensors are stored in: the one `asked` for, else float64 where a
/// checkpoint is float64, else float32.
fn storage_precision(asked: Option<Precision>, checkpoints: impl IntoIterator<Item = DType>) -> Precision {
    match asked {
        Some(p) => p,
        None if checkpoints.into_iter().any(|dt| dt == DType::F64) => Precision::F64,
        None => Precision::F32,
    }
}

/// One nflows checkpoint to import as a plain flow unit (`import-nflows` without `--detector`).
pub struct FlowImport<'a> {
    pub checkpoint: &'a Path,
    /// The dict key holding the state dict (None: `model_state_dict` where the file has it).
    pub key: Option<&'a str>,
    pub options: ImportOptions,
    /// The precision asked for; `None`: float64 when the checkpoint is, else float32.
    pub dtype: Option<Precision>,
    /// The unit's directory name inside the model directory.
    pub unit: &'a str,
}

/// Imports `f` into a directory of imported flows (`zdcflow-flows`, [`super::flow_dir`]) at
/// `out`: the unit's weights and unit file, then `model.json`. Returns the flow's spec.
pub fn save_flows_dir(out: &Path, f: &FlowImport) -> Result<FlowSpec> {
    let state = read_state_dict(f.checkpoint, f.key)?;
    let imported = nflows::import(state, &f.options).map_err(|m| Error::checkpoint(f.checkpoint, m))?;
    let precision = storage_precision(f.dtype, [imported.dtype]);
    let tensors: Vec<_> = imported.tensors.into_iter().collect();
    write_unit(&out.join(f.unit), f.unit, &imported.spec, &tensors, precision, None)?;
    let unit = f.unit.to_string();
    let checkpoint = f.checkpoint.canonicalize().unwrap_or_else(|_| f.checkpoint.to_path_buf());
    let source = Source { checkpoint, kind: f.options.kind, key: f.key.map(str::to_string) };
    let manifest = FlowsManifest {
        format: FLOWS_FORMAT.into(),
        zdcflow_version: env!("CARGO_PKG_VERSION").into(),
        dtype: precision,
        units: BTreeMap::from([(unit.clone(), Unit { dir: unit.clone(), flow: Some(imported.spec.clone()) })]),
        sources: BTreeMap::from([(unit, source)]),
    };
    manifest.save(out)?;
    Ok(imported.spec)
}

/// Reads a ZDC condition scaler file (`{"mean": [...], "std": [...]}`, 10 each).
pub fn read_scaler(path: &Path) -> Result<Standardizer> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let s: Standardizer = serde_json::from_str(&text)
        .map_err(|e| Error::format(path, format!("not a condition scaler {{\"mean\": [...], \"std\": [...]}}: {e}")))?;
    let n = super::zdc::CONTEXT;
    if s.mean.len() != n || s.std.len() != n {
        return Err(Error::format(path, format!("the scaler needs {n} means and {n} stds (9 features, photon sum)")));
    }
    if s.std.iter().chain(&s.mean).any(|v| !v.is_finite()) || s.std.iter().any(|&v| v <= 0.0) {
        return Err(Error::format(path, "the scaler's values must be finite and its stds positive"));
    }
    Ok(s)
}

/// The ZDC data file an imported model belongs to, split by default, and its condition scaler:
/// read from `scaler` when given, else refitted on the training split.
pub fn zdc_data(data: &Path, particles: Particles, scaler: Option<&Path>) -> Result<(DataInfo, Standardizer)> {
    let fractions = default_fractions(Detector::Zdc);
    let zd = super::zdc::ZdcData::open(data, particles, 0, fractions, SPLIT_SEED)?;
    let conditions = match scaler {
        Some(p) => read_scaler(p)?,
        None => super::zdc::fit_scalers(&zd).0,
    };
    let info = DataInfo {
        path: data.to_path_buf(),
        files: Vec::new(),
        events: zd.file.events,
        used_events: zd.used_events,
        fractions,
        split_seed: SPLIT_SEED,
        particles,
    };
    Ok((info, conditions))
}

/// The CaloChallenge data file an imported model belongs to, split by default, and its geometry.
pub fn calo_data(data: &Path, detector: Detector) -> Result<(DataInfo, CaloGeometry)> {
    let fractions = default_fractions(detector);
    let paths = [data.to_path_buf()];
    let cd = super::calo::CaloData::open(&paths, detector, 0, fractions, SPLIT_SEED)?;
    let info = DataInfo {
        path: data.to_path_buf(),
        files: Vec::new(),
        events: cd.file.events,
        used_events: cd.used_events,
        fractions,
        split_seed: SPLIT_SEED,
        particles: Particles::default(),
    };
    Ok((info, cd.file.geometry.clone()))
}

/// What an imported detector model is made of, besides its flows.
pub struct ImportedModel<'a> {
    pub detector: Detector,
    /// The precision asked for; `None`: float64 when a checkpoint is, else float32.
    pub dtype: Option<Precision>,
    pub preprocessing: Preprocessing,
    pub conditions: Option<Standardizer>,
    pub data: DataInfo,
    pub options: ImportOptions,
    pub key: Option<&'a str>,
    /// Where the condition scaler came from: a file, or `None` (refitted for ZDC).
    pub condition_scaler: Option<&'a Path>,
}

/// Writes the imported flows `imported` of `parts` and their `model.json` into `out`; returns
/// the model's role (a model of MAFs only is a teacher, one with an IAF a student).
pub fn save(out: &Path, model: ImportedModel, parts: &[Part], imported: &[ImportedPart]) -> Result<Role> {
    let detector = model.detector;
    let precision = storage_precision(model.dtype, imported.iter().map(|(_, _, dt)| *dt));
    // A model of MAFs only is a teacher (distill-student takes it); one with an IAF is a student.
    let role = if imported.iter().all(|(s, _, _)| s.kind == FlowKind::Maf) { Role::Teacher } else { Role::Student };
    let mut units = BTreeMap::new();
    let mut sources = serde_json::Map::new();
    for (p, (spec, tensors, _)) in parts.iter().zip(imported) {
        write_unit(&out.join(p.unit), p.unit, spec, tensors, precision, Some(role))?;
        units.insert(p.unit.to_string(), Unit { dir: p.unit.into(), flow: Some(spec.clone()) });
        let ck = p.checkpoint.canonicalize().unwrap_or_else(|_| p.checkpoint.to_path_buf());
        sources.insert(p.unit.into(), serde_json::json!({"checkpoint": ck, "kind": p.kind, "key": model.key}));
    }
    let scaler_source = match (model.condition_scaler, detector) {
        (Some(p), _) => serde_json::json!(p.canonicalize().unwrap_or_else(|_| p.to_path_buf())),
        (None, Detector::Zdc) => serde_json::json!("refitted from data (training split)"),
        _ => serde_json::Value::Null,
    };
    let o = &model.options;
    let config = serde_json::json!({"imported_from_nflows": {
        "sources": sources,
        "condition_scaler": scaler_source,
        "tail_bound": o.tail_bound,
        "min_bin_width": o.min_bin_width,
        "min_bin_height": o.min_bin_height,
        "min_derivative": o.min_derivative,
    }});
    let mut manifest = Manifest::teacher(detector, precision, 0, model.data, model.preprocessing, units, config);
    manifest.role = role;
    manifest.conditions = model.conditions;
    manifest.save(out)?;
    Ok(role)
}
