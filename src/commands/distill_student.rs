//! `zdcflow distill-student`: IAF students of a trained teacher, by probability density
//! distillation — the ZDC flow (with the setup's channel loss and diversity weights), or
//! iCaloFlow's Flow-2 and Flow-3.

use std::path::Path;

use super::{Context, Report};
use crate::cli::DistillArgs;
use crate::config::{default_output_dir, Config, Detector, FlowName, Selection};
use crate::distill::{DistillObjective, Distillation};
use crate::error::{Error, Result};
use crate::models::calo::{self, CaloData, CaloRows};
use crate::models::manifest::{self, Manifest, Reuse, Role};
use crate::models::student::{copy_unit, frozen_flow, load_teacher, new_student, student_spec, terms};
use crate::models::zdc::{self, FlowRows, ZdcData, FLOW_UNIT, PHOTON_SUM_UNIT};
use crate::models::{check_resume_matches, photon_sum, RunOptions, Units};
use crate::train::{Summary, METRICS};
use crate::util::rng::{derive_seed, tag};

pub fn run(a: &DistillArgs, ctx: &Context) -> Result<Report> {
    let cfg = Config::load(&a.config, &a.run.set)?;
    let out = a.run.output_dir.clone().unwrap_or_else(|| default_output_dir(&a.config));
    // CaloChallenge students are distilled one flow per config (the papers' configs), into one
    // directory, as teachers are trained; a ZDC student is one run.
    let reuse = match cfg.model.detector {
        Detector::Zdc => Reuse::Resume(a.run.resume),
        Detector::Ds2 | Detector::Ds3 => Reuse::Extend(a.run.resume),
    };
    manifest::check_output_dir(&out, reuse)?;
    crate::util::output_guard::check_output_dir(&out, "--output-dir", &[("--teacher", &a.teacher)])?;
    let opts = RunOptions { resume: a.run.resume, device: ctx.device()?.clone(), show_progress: ctx.show_progress };
    crate::util::interrupt::install();
    eprintln!(
        "distill-student: {} (teacher {}) → {} on {}",
        a.config.display(),
        a.teacher.display(),
        out.display(),
        crate::device::describe(&opts.device)
    );
    let summaries = match cfg.model.detector {
        Detector::Zdc => zdc_student(&cfg, &a.teacher, &out, &opts),
        Detector::Ds2 | Detector::Ds3 => calo_students(&cfg, &a.teacher, &out, &opts),
    };
    Ok(super::training_report(&summaries?, &out))
}

/// Where `out` already holds a student of the same teacher (flow2 distilled by one config, flow3
/// to come from another), the flows distilled there by other runs stay in `manifest`; returns their
/// names. Without `resume`, a flow of this run that was distilled there already is refused, as a
/// teacher's flow is.
fn keep_distilled_flows(out: &Path, flows: &[FlowName], manifest: &mut Manifest, resume: bool) -> Result<Vec<String>> {
    let path = out.join(manifest::MODEL_JSON);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let existing = Manifest::load(out)?;
    if existing.role != Role::Student || existing.teacher != manifest.teacher || existing.detector != manifest.detector
    {
        return Err(Error::checkpoint(
            &path,
            "holds a model other than a student of this teacher; choose another --output-dir",
        ));
    }
    let distilled = |name: &str| existing.units.get(name).is_some_and(|u| out.join(&u.dir).join(METRICS).exists());
    if let Some(f) = flows.iter().find(|f| !resume && distilled(f.as_str())) {
        return Err(Error::checkpoint(
            &path,
            format!(
                "already holds a distilled {}; pass --resume to continue it, or choose another --output-dir",
                f.as_str()
            ),
        ));
    }
    let kept: Vec<String> =
        existing.units.keys().filter(|n| distilled(n) && !names_one_of(flows, n)).cloned().collect();
    for name in &kept {
        manifest.units.insert(name.clone(), existing.units[name].clone());
    }
    Ok(kept)
}

/// Whether the unit `name` is one of `flows`.
fn names_one_of(flows: &[FlowName], name: &str) -> bool {
    flows.iter().any(|f| f.as_str() == name)
}

/// A student's manifest: the teacher's, with the student's role, seed and settings.
fn student_manifest(teacher: &Manifest, teacher_dir: &Path, cfg: &Config) -> Manifest {
    let mut m = teacher.clone();
    m.role = Role::Student;
    m.teacher = Some(std::fs::canonicalize(teacher_dir).unwrap_or_else(|_| teacher_dir.to_path_buf()));
    m.distill = Some(cfg.distill.clone().unwrap_or_default());
    m.config = cfg.to_json();
    m
}

/// Puts the student's architecture in place of the teacher's (the unit exists: its spec was read).
fn replace_flow(m: &mut Manifest, unit: &str, spec: &crate::flow::FlowSpec) {
    if let Some(u) = m.units.get_mut(unit) {
        u.flow = Some(spec.clone());
    }
}

/// The ZDC: an IAF student of the teacher's flow; the photon-sum flow is copied from the teacher.
fn zdc_student(cfg: &Config, teacher_dir: &Path, out: &Path, opts: &RunOptions) -> Result<Vec<Summary>> {
    let teacher = load_teacher(teacher_dir, cfg.model.detector)?;
    let distill = cfg.distill.clone().unwrap_or_default();
    let section = cfg.student_section(None);
    let tc = cfg.train_config(section.and_then(|s| s.train.as_ref()), "student.flow.train")?;
    let data = ZdcData::open_like(&cfg.data.path, &teacher.data)?;
    let s_spec = student_spec(teacher.flow(teacher_dir, FLOW_UNIT)?, section);
    let mut manifest = student_manifest(&teacher, teacher_dir, cfg);
    manifest.seed = tc.seed;
    replace_flow(&mut manifest, FLOW_UNIT, &s_spec);
    if opts.resume {
        check_resume_matches(out, &Manifest::load(out)?, &manifest)?;
    }
    manifest.save(out)?;
    // An imported nflows teacher has no photon-sum flow: its student samples with --photon-sum data.
    if teacher.units.contains_key(PHOTON_SUM_UNIT) {
        let ps_dir = &teacher.unit(PHOTON_SUM_UNIT, teacher_dir)?.dir;
        copy_unit(&teacher_dir.join(ps_dir), &out.join(ps_dir))?;
        if teacher_dir.join(ps_dir).join(photon_sum::TEST_JSON).exists() {
            std::fs::copy(
                teacher_dir.join(ps_dir).join(photon_sum::TEST_JSON),
                out.join(ps_dir).join(photon_sum::TEST_JSON),
            )
            .map_err(|e| Error::io(&out.join(ps_dir), e))?;
        }
    }

    let dtype = cfg.model.dtype.dtype();
    let teacher_flow = frozen_flow(teacher_dir, &teacher, FLOW_UNIT, dtype, &opts.device)?;
    let weights = if distill.diversity_weights() { Some(zdc::diversity_weights(&distill, &data, out)?) } else { None };
    let (student, varmap) = new_student(
        &s_spec,
        &teacher.weights(teacher_dir, FLOW_UNIT)?,
        section.is_some_and(|s| s.init_from_teacher),
        derive_seed(tc.seed, &[tag::INIT, 3]),
        dtype,
        &opts.device,
    )?;
    let channel = if distill.channel_loss() {
        Some(zdc::channel_loss(&distill, &teacher, teacher_dir, dtype, &opts.device)?)
    } else {
        None
    };
    let objective = DistillObjective {
        distillation: Distillation {
            teacher: &teacher_flow,
            student: &student,
            terms: terms(&distill, section.and_then(|s| s.beta), channel),
        },
        select_by_kl: distill.selection == Selection::Kl,
    };
    let prep = zdc::preprocessing(&manifest, out)?;
    let conditions = zdc::condition_scaler(&manifest, out)?;
    let source = FlowRows { file: &data.file, prep: &prep, conditions, weights: weights.as_deref() };
    let units = Units { out, split: &data.split, dtype, opts };
    let summary = if distill.selection == Selection::KlChannel {
        let objective = crate::distill::objective::KlChannelObjective { inner: objective };
        units.train(FLOW_UNIT, tc, &s_spec, &source, &varmap, &objective)?
    } else {
        units.train(FLOW_UNIT, tc, &s_spec, &source, &varmap, &objective)?
    };
    Ok(vec![summary])
}

/// CaloChallenge: IAF students of Flow-2 and Flow-3 (those the config names); Flow-1 stays the
/// teacher's MAF and is copied, so the student directory samples alone.
fn calo_students(cfg: &Config, teacher_dir: &Path, out: &Path, opts: &RunOptions) -> Result<Vec<Summary>> {
    let teacher = load_teacher(teacher_dir, cfg.model.detector)?;
    let distill = cfg.distill.clone().unwrap_or_default();
    let flows: Vec<FlowName> = cfg.calo_flows().into_iter().filter(|&f| f != FlowName::Flow1).collect();
    if flows.is_empty() {
        return Err(Error::config("student", "name the students to distil: [student.flow2] and/or [student.flow3]"));
    }
    let data = CaloData::open_like(&cfg.data.files(), cfg.model.detector, &teacher.data)?;
    let mut manifest = student_manifest(&teacher, teacher_dir, cfg);
    let mut jobs = Vec::new();
    for &f in &flows {
        let section = cfg.student_section(Some(f));
        let tc = cfg.train_config(section.and_then(|s| s.train.as_ref()), &format!("student.{}.train", f.as_str()))?;
        let s_spec = student_spec(teacher.flow(teacher_dir, f.as_str())?, section);
        replace_flow(&mut manifest, f.as_str(), &s_spec);
        jobs.push((f, section, tc, s_spec));
    }
    manifest.seed = jobs[0].2.seed;
    let distilled_before = keep_distilled_flows(out, &flows, &mut manifest, opts.resume)?;
    if opts.resume {
        check_resume_matches(out, &Manifest::load(out)?, &manifest)?;
    }
    manifest.save(out)?;
    let distilled_here = |n: &String| names_one_of(&flows, n) || distilled_before.contains(n);
    for name in teacher.units.keys().filter(|n| !distilled_here(n)) {
        copy_unit(&teacher_dir.join(&teacher.units[name].dir), &out.join(name))?;
    }
    let prep = calo::preprocessing(&teacher, teacher_dir)?;
    let dtype = cfg.model.dtype.dtype();
    let units = Units { out, split: &data.split, dtype, opts };
    let mut summaries = Vec::new();
    for (f, section, tc, s_spec) in jobs {
        let teacher_flow = frozen_flow(teacher_dir, &teacher, f.as_str(), dtype, &opts.device)?;
        let (student, varmap) = new_student(
            &s_spec,
            &teacher.weights(teacher_dir, f.as_str())?,
            section.is_some_and(|s| s.init_from_teacher),
            derive_seed(tc.seed, &[tag::INIT, 20 + calo::index(f)]),
            dtype,
            &opts.device,
        )?;
        let objective = DistillObjective {
            distillation: Distillation {
                teacher: &teacher_flow,
                student: &student,
                terms: terms(&distill, section.and_then(|s| s.beta), None),
            },
            select_by_kl: distill.selection == Selection::Kl,
        };
        let source = CaloRows { file: &data.file, prep: &prep, flow: f };
        summaries.push(units.train(f.as_str(), tc, &s_spec, &source, &varmap, &objective)?);
    }
    Ok(summaries)
}
