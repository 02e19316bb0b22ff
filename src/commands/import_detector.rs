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

use super::{Context, Report};
use crate::cli::ImportNflowsArgs;
use crate::config::{Detector, FlowName};
use crate::data::channels::PIXELS;
use crate::data::preprocess::{CaloPreprocessing, ZdcPreprocessing};
use crate::data::split::Particles;
use crate::error::{Error, Result};
use crate::flow::nflows::ImportOptions;
use crate::models::imported::{self, ImportedModel, Part};
use crate::models::manifest::{check_output_dir, Preprocessing, Reuse};

fn parse_particles(s: &str) -> Result<Particles> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| Error::Invalid(format!("--particles '{s}': expected all, n, lambda, k0s or sigma+")))
}

/// `import-nflows --detector …`.
pub fn run(a: &ImportNflowsArgs, _: &Context) -> Result<Report> {
    let d = &a.detector;
    let detector: Detector = d.detector.expect("called with --detector").into();
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
    let (parts, preprocessing, conditions, data) = match detector {
        Detector::Zdc => {
            if d.flow2.is_some() || d.flow3.is_some() {
                return Err(Error::Invalid("--flow2/--flow3 are for --detector ds2|ds3".into()));
            }
            let particles = parse_particles(&d.particles)?;
            let (info, conditions) = imported::zdc_data(&data_path, particles, d.condition_scaler.as_deref())?;
            if !(d.noise_mul >= 0.0 && d.noise_mul.is_finite()) {
                return Err(Error::Invalid(format!("--noise-mul {}: must be ≥ 0", d.noise_mul)));
            }
            let prep = ZdcPreprocessing { noise_mul: d.noise_mul, alpha: d.alpha, pixels: None };
            let parts = vec![Part {
                unit: crate::models::zdc::FLOW_UNIT,
                checkpoint: &a.checkpoint,
                kind: a.kind.into(),
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
            let (info, g) = imported::calo_data(&data_path, detector)?;
            let dims = |f| crate::detector::calo::dims(f, &g);
            let prep = CaloPreprocessing {
                layer_scale_mev: d.layer_scale_mev,
                noise_mev: d.noise_mev,
                alpha: d.alpha,
                threshold_mev: d.threshold_mev,
                ..CaloPreprocessing::default()
            };
            let parts = vec![
                Part {
                    unit: FlowName::Flow1.as_str(),
                    checkpoint: &a.checkpoint,
                    kind: a.kind.into(),
                    dims: dims(FlowName::Flow1),
                },
                Part {
                    unit: FlowName::Flow2.as_str(),
                    checkpoint: flow2,
                    kind: d.flow2_kind.unwrap_or(a.kind).into(),
                    dims: dims(FlowName::Flow2),
                },
                Part {
                    unit: FlowName::Flow3.as_str(),
                    checkpoint: flow3,
                    kind: d.flow3_kind.unwrap_or(a.kind).into(),
                    dims: dims(FlowName::Flow3),
                },
            ];
            (parts, Preprocessing::Calo(prep), None, info)
        }
    };
    let options = ImportOptions {
        kind: a.kind.into(),
        tail_bound: a.tail_bound,
        min_bin_width: a.min_bin_width,
        min_bin_height: a.min_bin_height,
        min_derivative: a.min_derivative,
    };
    let mut parts_imported = Vec::new();
    for p in &parts {
        parts_imported.push(imported::import_part(p, &options, a.key.as_deref())?);
    }
    let dtype = a.dtype.map(Into::into);
    let (data_file, data_events) = (data.path.clone(), data.events);
    let model = ImportedModel {
        detector,
        dtype,
        preprocessing,
        conditions,
        data,
        options,
        key: a.key.as_deref(),
        condition_scaler: d.condition_scaler.as_deref(),
    };
    let role = imported::save(out, model, &parts, &parts_imported)?;
    let role_name = format!("{role:?}").to_lowercase();
    let summary: Vec<String> = parts
        .iter()
        .zip(&parts_imported)
        .map(|(p, (s, _, _))| {
            format!("{} ({:?}, {} blocks, {} parameters)", p.unit, s.kind, s.blocks, s.parameter_count())
        })
        .collect();
    Ok(Report::line(format!(
        "imported a {detector:?} {role_name} ({}) into {}; data {} ({} events)",
        summary.join(", "),
        out.display(),
        data_file.display(),
        data_events
    )))
}
