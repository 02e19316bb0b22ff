//! `zdcflow import-nflows --detector zdc|ds2|ds3 …`: imported nflows flows wrapped into a detector
//! model directory — the same `model.json` (`zdcflow-model`) that `train-teacher` writes — so that
//! `sample`, `evaluate` and `distill-student --teacher` take it unchanged.
//!
//! - ZDC (zdc-fast-simulations): one flow on the logits of the noised, sum-normalised 44×44 image
//!   (1936 features) given 10 conditions, the 9 particle features and the photon sum, standardised
//!   by sklearn's `StandardScaler` (mean and population standard deviation). The scaler is refitted
//!   from `--data` by that rule on the training split of the model's recorded split (the published
//!   code fits it on its own 80 % split, sklearn's `train_test_split(random_state=42)`, which is not
//!   reproduced here), or given exactly with `--condition-scaler` (`scaler.mean_`, `scaler.scale_`).
//!   The model has no photon-sum flow: sums come from the conditions file (`sample --photon-sum
//!   data`, the published protocol).
//! - DS2/DS3 (inductive-caloflow): Flow-1, Flow-2 and Flow-3 checkpoints into one directory, with
//!   the preprocessing of inductive-caloflow's `run.py`/`data.py` (log10(E_inc) − 4.5; layer
//!   energies + U[0, 5 keV] over 6.5e4 MeV; Flow-2's E_1 logit / 4; voxels + U[0, 5 keV] over the
//!   layer sum; α = 1e-6; generated voxels below 15 keV → 0) — zdcflow's defaults are those values;
//!   the flags below set the ones a user may have changed (`--normalization`, `--noise_level`,
//!   `--threshold_cut` of `run.py`).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Var};
use candle_nn::VarMap;

use crate::cli::{DetectorArg, ImportNflowsArgs, KindArg};
use crate::config::{Detector, FlowName, Precision};
use crate::data::channels::PIXELS;
use crate::data::geometry::CaloGeometry;
use crate::data::preprocess::{CaloPreprocessing, Standardizer, ZdcPreprocessing};
use crate::data::pth::read_state_dict;
use crate::data::split::Particles;
use crate::error::{Error, Result};
use crate::flow::nflows::{self, ImportOptions, NflowsKind};
use crate::flow::{io, FlowKind, FlowSpec};
use crate::models::manifest::{
    check_output_dir, save_unit_file, DataInfo, Manifest, Preprocessing, Reuse, Role, Unit, UnitFile,
};

fn kind_of(k: KindArg) -> NflowsKind {
    match k {
        KindArg::Maf => NflowsKind::Maf,
        KindArg::Iaf => NflowsKind::Iaf,
        KindArg::IcaloflowIaf => NflowsKind::IcaloflowIaf,
    }
}

/// One checkpoint to import as a unit.
struct Part<'a> {
    unit: &'a str,
    checkpoint: &'a Path,
    kind: KindArg,
    /// Expected (features, context).
    dims: (usize, usize),
}

/// An imported flow: its spec, its tensors (names under the flow prefix) and the checkpoint's dtype.
type ImportedPart = (FlowSpec, Vec<(String, candle_core::Tensor)>, DType);

/// Imports a checkpoint's flow and checks its shape against the detector's.
fn import_part(a: &ImportNflowsArgs, p: &Part) -> Result<ImportedPart> {
    let opts = ImportOptions {
        kind: kind_of(p.kind),
        tail_bound: a.tail_bound,
        min_bin_width: a.min_bin_width,
        min_bin_height: a.min_bin_height,
        min_derivative: a.min_derivative,
    };
    let state = read_state_dict(p.checkpoint, a.key.as_deref())?;
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

fn write_unit(
    out: &Path,
    unit: &str,
    spec: &FlowSpec,
    tensors: &[(String, candle_core::Tensor)],
    precision: Precision,
    role: Role,
) -> Result<()> {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for (name, t) in tensors {
            let t = t.to_dtype(precision.dtype())?.contiguous()?;
            data.insert(format!("{}.{name}", io::PREFIX), Var::from_tensor(&t)?);
        }
    }
    let dir = out.join(unit);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let weights = dir.join("best.safetensors");
    let role = format!("{role:?}").to_lowercase();
    io::save_varmap_as(&varmap, &weights, Some(unit), Some(&role))?;
    io::load_frozen_flow(spec, &weights, io::PREFIX, precision.dtype(), &candle_core::Device::Cpu)?;
    save_unit_file(&dir, &UnitFile { unit, flow: Some(spec), training: None })
}

fn read_scaler(path: &Path) -> Result<Standardizer> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let s: Standardizer = serde_json::from_str(&text)
        .map_err(|e| Error::format(path, format!("not a condition scaler {{\"mean\": [...], \"std\": [...]}}: {e}")))?;
    let n = crate::models::zdc::CONTEXT;
    if s.mean.len() != n || s.std.len() != n {
        return Err(Error::format(path, format!("the scaler needs {n} means and {n} stds (9 features, photon sum)")));
    }
    if s.std.iter().chain(&s.mean).any(|v| !v.is_finite()) || s.std.iter().any(|&v| v <= 0.0) {
        return Err(Error::format(path, "the scaler's values must be finite and its stds positive"));
    }
    Ok(s)
}

fn parse_particles(s: &str) -> Result<Particles> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| Error::Invalid(format!("--particles '{s}': expected all, n, lambda, k0s or sigma+")))
}

/// `import-nflows --detector …`; returns one line describing the model written.
pub fn run(a: &ImportNflowsArgs) -> Result<String> {
    let d = &a.detector;
    let detector = match d.detector.expect("called with --detector") {
        DetectorArg::Zdc => Detector::Zdc,
        DetectorArg::Ds2 => Detector::Ds2,
        DetectorArg::Ds3 => Detector::Ds3,
    };
    let out = &a.output_dir;
    check_output_dir(out, Reuse::Never)?;
    if !(d.alpha > 0.0 && d.alpha < 0.5) {
        return Err(Error::Invalid(format!("--alpha {}: must lie in (0, 0.5)", d.alpha)));
    }
    let data_path = d.data.clone().ok_or_else(|| {
        Error::Invalid(
            "--detector needs --data FILE: the data file the model belongs to (recorded in model.json)".into(),
        )
    })?;
    // The splits train-teacher uses by default (config `[data] split`).
    let default_fractions = match detector {
        Detector::Zdc => [0.7, 0.1, 0.2],
        _ => [0.7, 0.3, 0.0],
    };
    let split_seed = 42;
    let (parts, preprocessing, conditions, data) = match detector {
        Detector::Zdc => {
            if d.flow2.is_some() || d.flow3.is_some() {
                return Err(Error::Invalid("--flow2/--flow3 are for --detector ds2|ds3".into()));
            }
            let particles = parse_particles(&d.particles)?;
            let zd = crate::models::zdc::ZdcData::open(&data_path, particles, 0, default_fractions, split_seed)?;
            let conditions = match &d.condition_scaler {
                Some(p) => read_scaler(p)?,
                None => crate::models::zdc::fit_scalers(&zd).0,
            };
            if !(d.noise_mul >= 0.0 && d.noise_mul.is_finite()) {
                return Err(Error::Invalid(format!("--noise-mul {}: must be ≥ 0", d.noise_mul)));
            }
            let prep = ZdcPreprocessing { noise_mul: d.noise_mul, alpha: d.alpha, pixels: None };
            let info = DataInfo {
                path: data_path.clone(),
                files: Vec::new(),
                events: zd.file.events,
                used_events: zd.used_events,
                fractions: default_fractions,
                split_seed,
                particles,
            };
            let parts = vec![Part {
                unit: crate::models::zdc::FLOW_UNIT,
                checkpoint: &a.checkpoint,
                kind: a.kind,
                dims: (PIXELS, crate::models::zdc::CONTEXT),
            }];
            (parts, Preprocessing::Zdc(prep), Some(conditions), info)
        }
        Detector::Ds2 | Detector::Ds3 => {
            if d.condition_scaler.is_some() {
                return Err(Error::Invalid("--condition-scaler is for --detector zdc".into()));
            }
            let missing =
                |f: &str| Error::Invalid(format!("--detector {detector:?} needs --{f} CHECKPOINT").to_lowercase());
            let flow2 = d.flow2.as_deref().ok_or_else(|| missing("flow2"))?;
            let flow3 = d.flow3.as_deref().ok_or_else(|| missing("flow3"))?;
            for (name, v) in [("--layer-scale-mev", d.layer_scale_mev), ("--noise-mev", d.noise_mev)] {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(Error::Invalid(format!("{name} {v}: must be positive")));
                }
            }
            let cd = crate::models::calo::CaloData::open(
                std::slice::from_ref(&data_path),
                detector,
                0,
                default_fractions,
                split_seed,
            )?;
            let g: CaloGeometry = cd.file.geometry.clone();
            let dims = |f| crate::detector::calo::dims(f, &g);
            let prep = CaloPreprocessing {
                layer_scale_mev: d.layer_scale_mev,
                noise_mev: d.noise_mev,
                alpha: d.alpha,
                threshold_mev: d.threshold_mev,
                ..CaloPreprocessing::default()
            };
            let info = DataInfo {
                path: data_path.clone(),
                files: Vec::new(),
                events: cd.file.events,
                used_events: cd.used_events,
                fractions: default_fractions,
                split_seed,
                particles: Particles::default(),
            };
            let parts = vec![
                Part {
                    unit: FlowName::Flow1.as_str(),
                    checkpoint: &a.checkpoint,
                    kind: a.kind,
                    dims: dims(FlowName::Flow1),
                },
                Part {
                    unit: FlowName::Flow2.as_str(),
                    checkpoint: flow2,
                    kind: d.flow2_kind.unwrap_or(a.kind),
                    dims: dims(FlowName::Flow2),
                },
                Part {
                    unit: FlowName::Flow3.as_str(),
                    checkpoint: flow3,
                    kind: d.flow3_kind.unwrap_or(a.kind),
                    dims: dims(FlowName::Flow3),
                },
            ];
            (parts, Preprocessing::Calo(prep), None, info)
        }
    };
    let mut imported = Vec::new();
    for p in &parts {
        imported.push(import_part(a, p)?);
    }
    let precision = match a.dtype {
        Some(crate::cli::DtypeArg::F32) => Precision::F32,
        Some(crate::cli::DtypeArg::F64) => Precision::F64,
        None if imported.iter().any(|(_, _, dt)| *dt == DType::F64) => Precision::F64,
        None => Precision::F32,
    };
    // A model of MAFs only is a teacher (distill-student takes it); one with an IAF is a student.
    let role = if imported.iter().all(|(s, _, _)| s.kind == FlowKind::Maf) { Role::Teacher } else { Role::Student };
    let mut units = BTreeMap::new();
    let mut sources = serde_json::Map::new();
    for (p, (spec, tensors, _)) in parts.iter().zip(&imported) {
        write_unit(out, p.unit, spec, tensors, precision, role)?;
        units.insert(p.unit.to_string(), Unit { dir: p.unit.into(), flow: Some(spec.clone()) });
        let ck = p.checkpoint.canonicalize().unwrap_or_else(|_| p.checkpoint.to_path_buf());
        sources.insert(p.unit.into(), serde_json::json!({"checkpoint": ck, "kind": kind_of(p.kind), "key": a.key}));
    }
    let scaler_source = match (&d.condition_scaler, detector) {
        (Some(p), _) => serde_json::json!(p.canonicalize().unwrap_or_else(|_| p.clone())),
        (None, Detector::Zdc) => serde_json::json!("refitted from data (training split)"),
        _ => serde_json::Value::Null,
    };
    let config = serde_json::json!({"imported_from_nflows": {
        "sources": sources,
        "condition_scaler": scaler_source,
        "tail_bound": a.tail_bound,
        "min_bin_width": a.min_bin_width,
        "min_bin_height": a.min_bin_height,
        "min_derivative": a.min_derivative,
    }});
    let mut manifest = Manifest::teacher(detector, precision, 0, data.clone(), preprocessing, units, config);
    manifest.role = role;
    manifest.conditions = conditions;
    manifest.save(out)?;
    let role_name = format!("{role:?}").to_lowercase();
    let summary: Vec<String> = parts
        .iter()
        .zip(&imported)
        .map(|(p, (s, _, _))| {
            format!("{} ({:?}, {} blocks, {} parameters)", p.unit, s.kind, s.blocks, s.parameter_count())
        })
        .collect();
    Ok(format!(
        "imported a {detector:?} {role_name} ({}) into {}; data {} ({} events)",
        summary.join(", "),
        out.display(),
        data.path.display(),
        data.events
    ))
}
