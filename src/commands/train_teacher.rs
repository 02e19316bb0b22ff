//! `zdcflow train-teacher`: the MAF teachers of a config — the ZDC flow and its photon-sum flow,
//! or the iCaloFlow flows the config names.

use std::collections::BTreeMap;
use std::path::Path;

use candle_nn::VarMap;

use super::{Context, Report};
use crate::cli::TrainArgs;
use crate::config::{default_output_dir, Config, Detector};
use crate::error::{Error, Result};
use crate::flow::params::SeededInit;
use crate::flow::{io, Flow};
use crate::models::calo::{self, CaloData, CaloRows};
use crate::models::manifest::{self, Manifest, Preprocessing, Reuse, Unit};
use crate::models::photon_sum::{self, PhotonSumModel, PhotonSumRows};
use crate::models::zdc::{self, FlowRows, ZdcData, FLOW_UNIT, PHOTON_SUM_UNIT};
use crate::models::{check_resume_matches, teacher_spec, NllObjective, RunOptions, Units};
use crate::train::Summary;
use crate::util::output_guard;
use crate::util::rng::{derive_seed, tag};

pub fn run(a: &TrainArgs, ctx: &Context) -> Result<Report> {
    let cfg = Config::load(&a.config, &a.run.set)?;
    let out = a.run.output_dir.clone().unwrap_or_else(|| default_output_dir(&a.config));
    let (key, files) = (if cfg.data.paths.is_empty() { "data.path" } else { "data.paths" }, cfg.data.files());
    let inputs: Vec<(&str, &Path)> = files.iter().map(|f| (key, f.as_path())).collect();
    output_guard::check_dir_holds_no_input(&out, "--output-dir", &inputs)?;
    let opts = RunOptions { resume: a.run.resume, device: ctx.device()?.clone(), show_progress: ctx.show_progress };
    crate::util::interrupt::install();
    eprintln!("train-teacher: {} → {} on {}", a.config.display(), out.display(), crate::device::describe(&opts.device));
    let summaries = match cfg.model.detector {
        Detector::Zdc => {
            manifest::check_output_dir(&out, Reuse::Resume(a.run.resume))?;
            zdc_teacher(&cfg, &out, &opts)
        }
        Detector::Ds2 | Detector::Ds3 => calo_teacher(&cfg, &out, &opts),
    };
    Ok(super::training_report(&summaries?, &out))
}

/// The ZDC: the photon-sum flow (with its test-split report), then the MAF.
fn zdc_teacher(cfg: &Config, out: &Path, opts: &RunOptions) -> Result<Vec<Summary>> {
    let section = cfg.flow.as_ref().ok_or_else(|| Error::config("flow", "missing: the teacher's architecture"))?;
    let flow_train = cfg.train_config(section.train.as_ref(), "flow.train")?;
    let seed = flow_train.seed;
    let split_seed = cfg.split_seed(&flow_train);
    let data = ZdcData::open(
        &cfg.data.path,
        cfg.data.particles,
        cfg.data.max_events,
        cfg.data.fractions(cfg.model.detector),
        split_seed,
    )?;
    if data.split.val.is_empty() && data.split.test.is_empty() {
        return Err(Error::config(
            "data.split",
            format!(
                "{:?}: the validation split is empty, and so is the test split; the photon-sum flow is reported on one of them, e.g. data.split=[0.8, 0.1, 0.1]",
                cfg.data.fractions(cfg.model.detector)
            ),
        ));
    }
    let manifest = zdc::teacher_manifest(cfg, &data, seed, split_seed)?;
    if opts.resume {
        check_resume_matches(out, &Manifest::load(out)?, &manifest)?;
    }
    manifest.save(out)?;
    let dtype = cfg.model.dtype.dtype();
    let (conditions, target) = zdc::scalers(&manifest, out)?;
    let units = Units { out, split: &data.split, dtype, opts };
    let mut summaries = Vec::new();

    // The photon-sum flow.
    let ps_spec = manifest.flow(out, PHOTON_SUM_UNIT)?.clone();
    let ps_cfg = cfg.photon_sum.clone().unwrap_or_default().train_config(seed);
    let varmap = VarMap::new();
    let vb = SeededInit::var_builder(&varmap, derive_seed(seed, &[tag::INIT, 1]), dtype, &opts.device);
    let ps_flow = Flow::new(&ps_spec, vb.pp(io::PREFIX))?;
    let c = &data.file.conditions;
    let source = PhotonSumRows { particles: &c.particles, sums: &c.photon_sum, conditions, target };
    summaries.push(units.train(
        PHOTON_SUM_UNIT,
        ps_cfg,
        &ps_spec,
        &source,
        &varmap,
        &NllObjective { flow: &ps_flow },
    )?);
    // The test split's figures come from the kept (best) weights.
    let best = crate::models::student::frozen_flow(out, &manifest, PHOTON_SUM_UNIT, dtype, &opts.device)?;
    let model = PhotonSumModel {
        flow: best,
        conditions: conditions.clone(),
        target: target.clone(),
        dtype,
        device: opts.device.clone(),
    };
    let test: &[usize] = if data.split.test.is_empty() { &data.split.val } else { &data.split.test };
    let report = photon_sum::test_report(&model, &source, test, seed)?;
    eprintln!("{}", report.line());
    photon_sum::save_report(&out.join(PHOTON_SUM_UNIT), &report)?;

    // The flow.
    let spec = manifest.flow(out, FLOW_UNIT)?.clone();
    let varmap = VarMap::new();
    let vb = SeededInit::var_builder(&varmap, derive_seed(seed, &[tag::INIT, 2]), dtype, &opts.device);
    let flow = Flow::new(&spec, vb.pp(io::PREFIX))?;
    let prep = zdc::preprocessing(&manifest, out)?;
    let source = FlowRows { file: &data.file, prep: &prep, conditions, weights: None };
    summaries.push(units.train(FLOW_UNIT, flow_train, &spec, &source, &varmap, &NllObjective { flow: &flow })?);
    Ok(summaries)
}

/// CaloChallenge: every flow the config names, in order.
fn calo_teacher(cfg: &Config, out: &Path, opts: &RunOptions) -> Result<Vec<Summary>> {
    let flows = cfg.calo_flows();
    let first = cfg.flow_section(Some(flows[0])).ok_or_else(|| Error::config(flows[0].as_str(), "missing"))?;
    let base = cfg.train_config(first.train.as_ref(), &format!("{}.train", flows[0].as_str()))?;
    let split_seed = cfg.split_seed(&base);
    let data = CaloData::open(
        &cfg.data.files(),
        cfg.model.detector,
        cfg.data.max_events,
        cfg.data.fractions(cfg.model.detector),
        split_seed,
    )?;
    let g = data.file.geometry.clone();
    let mut units = BTreeMap::new();
    for &f in &flows {
        let section =
            cfg.flow_section(Some(f)).ok_or_else(|| Error::config(f.as_str(), "missing: the flow's architecture"))?;
        let tc = cfg.train_config(section.train.as_ref(), &format!("{}.train", f.as_str()))?;
        let (dx, dc) = crate::detector::calo::dims(f, &g);
        let spec = teacher_spec(section, dx, dc, derive_seed(tc.seed, &[tag::INIT, calo::index(f)]));
        units.insert(f.as_str().to_string(), Unit { dir: f.as_str().into(), flow: Some(spec) });
    }
    let prep = calo::teacher_preprocessing(cfg, out, &data, base.seed)?;
    let manifest = Manifest::teacher(
        cfg.model.detector,
        cfg.model.dtype,
        base.seed,
        calo::data_info(cfg, &data, split_seed),
        Preprocessing::Calo(prep),
        units,
        cfg.to_json(),
    );
    let manifest = if manifest::check_output_dir(out, Reuse::Extend(opts.resume))? {
        calo::merge_with_existing(out, manifest, opts.resume)?
    } else {
        manifest
    };
    manifest.save(out)?;
    let prep = calo::preprocessing(&manifest, out)?;
    let dtype = cfg.model.dtype.dtype();
    let trainer = Units { out, split: &data.split, dtype, opts };
    let mut summaries = Vec::new();
    for &f in &flows {
        let section = cfg.flow_section(Some(f)).ok_or_else(|| Error::config(f.as_str(), "missing"))?;
        let tc = cfg.train_config(section.train.as_ref(), &format!("{}.train", f.as_str()))?;
        let spec = manifest.flow(out, f.as_str())?.clone();
        let varmap = VarMap::new();
        let vb = SeededInit::var_builder(
            &varmap,
            derive_seed(tc.seed, &[tag::INIT, 10 + calo::index(f)]),
            dtype,
            &opts.device,
        );
        let flow = Flow::new(&spec, vb.pp(io::PREFIX))?;
        let source = CaloRows { file: &data.file, prep: &prep, flow: f };
        summaries.push(trainer.train(f.as_str(), tc, &spec, &source, &varmap, &NllObjective { flow: &flow })?);
    }
    Ok(summaries)
}
