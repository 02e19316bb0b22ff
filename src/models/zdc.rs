//! The ZDC model (Majerz et al.): one conditional flow on preprocessed 44×44 responses
//! (1936 features) with 10 conditions — the 9 standardised particle features and the
//! standardised photon sum — and a photon-sum flow (`photon_sum.rs`) from which the 10th
//! condition is drawn at inference (or taken from the conditions file, `sample --photon-sum data`).

use std::collections::BTreeMap;
use std::path::Path;

use candle_nn::VarMap;
use rand_chacha::ChaCha8Rng;

use super::manifest::{DataInfo, Manifest, Preprocessing, Role, Unit};
use super::photon_sum::{self, PhotonSumModel, PhotonSumRows};
use super::{check_resume_matches, teacher_spec, train_unit, NllObjective, RunOptions, UnitJob};
use crate::config::Config;
use crate::data::channels::PIXELS;
use crate::data::preprocess::{Standardizer, ZdcPreprocessing};
use crate::data::split::{split, Particles, Split};
use crate::data::zdc::{ZdcFile, FEATURES};
use crate::error::{Error, Result};
use crate::flow::params::SeededInit;
use crate::flow::{io, Flow};
use crate::train::{RowSource, Rows, Summary};
use crate::util::rng::{derive_seed, tag};

/// Flow conditions: 9 particle features + photon sum.
pub const CONTEXT: usize = FEATURES + 1;
pub const FLOW_UNIT: &str = "flow";
pub const PHOTON_SUM_UNIT: &str = photon_sum::UNIT;

/// The data file with the configured particle group, event cap and split.
pub struct ZdcData {
    pub file: ZdcFile,
    pub split: Split,
    pub used_events: usize,
}

impl ZdcData {
    /// Opens `path`, keeps the `particles` group (its first `max_events`, 0: all) and splits it.
    pub fn open(
        path: &Path,
        particles: Particles,
        max_events: usize,
        fractions: [f64; 3],
        split_seed: u64,
    ) -> Result<Self> {
        let mut file = ZdcFile::open(path)?;
        // Training reads every epoch: a small file is read (and decompressed) once.
        file.cache_if_at_most(crate::train::batches::CACHE_BYTES)?;
        let mut candidates = particles.select(&file.conditions.pdg);
        if max_events > 0 {
            candidates.truncate(max_events);
        }
        if candidates.len() < 3 {
            return Err(Error::config(
                "data.particles",
                format!(
                    "{} holds {} events of group '{}'; need at least 3",
                    path.display(),
                    candidates.len(),
                    particles.name()
                ),
            ));
        }
        let split = split(&candidates, fractions, split_seed);
        Ok(Self { file, split, used_events: candidates.len() })
    }

    /// The data and split a model was trained on (the file at `path` must be that data).
    pub fn open_like(path: &Path, info: &DataInfo) -> Result<Self> {
        let data = Self::open(path, info.particles, info.used_events, info.fractions, info.split_seed)?;
        if data.file.events != info.events || data.used_events != info.used_events {
            return Err(Error::format(
                path,
                format!(
                    "holds {} events; the teacher was trained on a file with {} ({})",
                    data.file.events,
                    info.events,
                    info.path.display()
                ),
            ));
        }
        Ok(data)
    }

    /// The 10 raw condition values of event `i` (9 features, photon sum).
    pub fn raw_condition(&self, i: usize) -> [f32; CONTEXT] {
        raw_condition(&self.file, i)
    }
}

fn raw_condition(file: &ZdcFile, i: usize) -> [f32; CONTEXT] {
    let mut c = [0f32; CONTEXT];
    c[..FEATURES].copy_from_slice(file.conditions.row(i));
    c[FEATURES] = file.conditions.photon_sum[i];
    c
}

/// Fits the condition and photon-sum (log(1 + S)) scalers on the training events.
pub fn fit_scalers(data: &ZdcData) -> (Standardizer, Standardizer) {
    let rows: Vec<f32> = data.split.train.iter().flat_map(|&i| data.raw_condition(i)).collect();
    let targets: Vec<f32> = data.split.train.iter().map(|&i| data.file.conditions.photon_sum[i].ln_1p()).collect();
    (Standardizer::fit(&rows, CONTEXT), Standardizer::fit(&targets, 1))
}

/// Rows for the flow: preprocessed images and standardised conditions (and optional per-event
/// weights, indexed by event).
pub struct FlowRows<'a> {
    pub file: &'a ZdcFile,
    pub prep: &'a ZdcPreprocessing,
    pub conditions: &'a Standardizer,
    pub weights: Option<&'a [f32]>,
}

impl RowSource for FlowRows<'_> {
    fn x_dim(&self) -> usize {
        PIXELS
    }

    fn ctx_dim(&self) -> usize {
        CONTEXT
    }

    fn rows_per_event(&self) -> usize {
        1
    }

    fn block_events(&self) -> usize {
        2048
    }

    fn rows(&self, events: &[usize], rng: &mut ChaCha8Rng) -> Result<Rows> {
        let responses = self.file.read_responses_at(events)?;
        let n = events.len();
        let mut rows = Rows { x: vec![0.0; n * PIXELS], ctx: vec![0.0; n * CONTEXT], weight: Vec::new(), n };
        for (k, &e) in events.iter().enumerate() {
            self.prep.image(&responses[k * PIXELS..(k + 1) * PIXELS], rng, &mut rows.x[k * PIXELS..(k + 1) * PIXELS]);
            self.conditions.apply(&raw_condition(self.file, e), &mut rows.ctx[k * CONTEXT..(k + 1) * CONTEXT]);
        }
        if let Some(w) = self.weights {
            rows.weight = events.iter().map(|&e| w[e]).collect();
        }
        Ok(rows)
    }
}

/// The manifest of a ZDC teacher trained with `cfg`.
fn teacher_manifest(cfg: &Config, data: &ZdcData, seed: u64, split_seed: u64) -> Result<Manifest> {
    let section = cfg.flow.as_ref().ok_or_else(|| Error::config("flow", "missing: the teacher's architecture"))?;
    let ps = cfg.photon_sum.clone().unwrap_or_default();
    let (conditions, target) = fit_scalers(data);
    let mut units = BTreeMap::new();
    units.insert(
        FLOW_UNIT.to_string(),
        Unit {
            dir: FLOW_UNIT.into(),
            flow: Some(teacher_spec(section, PIXELS, CONTEXT, derive_seed(seed, &[tag::INIT, 0]))),
            regressor: None,
        },
    );
    units.insert(
        PHOTON_SUM_UNIT.to_string(),
        Unit {
            dir: PHOTON_SUM_UNIT.into(),
            flow: Some(photon_sum::spec(&ps, derive_seed(seed, &[tag::INIT, 4]))),
            regressor: None,
        },
    );
    Ok(Manifest {
        format: super::manifest::FORMAT.into(),
        zdcflow_version: env!("CARGO_PKG_VERSION").into(),
        detector: cfg.model.detector,
        role: Role::Teacher,
        seed,
        dtype: cfg.model.dtype,
        data: DataInfo {
            path: cfg.data.path.clone(),
            files: Vec::new(),
            events: data.file.events,
            used_events: data.used_events,
            fractions: cfg.data.fractions(cfg.model.detector),
            split_seed,
            particles: cfg.data.particles,
        },
        preprocessing: Preprocessing::Zdc(if section.standardise_pixels {
            pixel_standardised(data, derive_seed(seed, &[tag::NOISE, 15]))?
        } else {
            ZdcPreprocessing::default()
        }),
        conditions: Some(conditions),
        photon_sum_target: Some(target),
        units,
        teacher: None,
        distill: None,
        config: cfg.to_json(),
    })
}

/// The preprocessing with per-pixel logit standardisation fitted on (up to 20 000 of) the training
/// events, with noise drawn from `seed`.
fn pixel_standardised(data: &ZdcData, seed: u64) -> Result<ZdcPreprocessing> {
    let mut prep = ZdcPreprocessing::default();
    let events: Vec<usize> = data.split.train.iter().copied().take(20_000).collect();
    let mut rng = crate::util::rng::derive(seed, &[]);
    let (mut sum, mut sq) = (vec![0f64; PIXELS], vec![0f64; PIXELS]);
    let mut y = vec![0f32; PIXELS];
    let mut sorted = events.clone();
    sorted.sort_unstable();
    for chunk in sorted.chunks(2048) {
        let responses = data.file.read_responses_at(chunk)?;
        for img in responses.chunks(PIXELS) {
            prep.logits(img, &mut rng, &mut y);
            for i in 0..PIXELS {
                sum[i] += y[i] as f64;
                sq[i] += (y[i] as f64).powi(2);
            }
        }
    }
    let n = events.len().max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| {
            let v = (q / n - m * m).max(0.0).sqrt();
            if v > 1e-6 {
                v
            } else {
                1.0
            }
        })
        .collect();
    prep.pixels = Some(Standardizer { mean, std });
    Ok(prep)
}

/// `train-teacher` for the ZDC: the photon-sum flow (with its test-split report), then the MAF.
pub fn train_teacher(cfg: &Config, out: &Path, opts: &RunOptions) -> Result<Vec<Summary>> {
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
    let manifest = teacher_manifest(cfg, &data, seed, split_seed)?;
    if opts.resume {
        check_resume_matches(out, &Manifest::load(out)?, &manifest)?;
    }
    manifest.save(out)?;
    let dtype = cfg.model.dtype.dtype();
    let conditions = manifest.conditions.as_ref().expect("ZDC manifest has scalers");
    let target = manifest.photon_sum_target.as_ref().expect("ZDC manifest has scalers");
    let mut summaries = Vec::new();

    // The photon-sum flow.
    let ps_spec = manifest.units[PHOTON_SUM_UNIT].flow.clone().expect("photon-sum unit");
    let ps_cfg = cfg.photon_sum.clone().unwrap_or_default().train_config(seed);
    let varmap = VarMap::new();
    let vb = SeededInit::var_builder(&varmap, derive_seed(seed, &[tag::INIT, 1]), dtype, &opts.device);
    let ps_flow = Flow::new(&ps_spec, vb.pp(io::PREFIX))?;
    let c = &data.file.conditions;
    let source = PhotonSumRows { particles: &c.particles, sums: &c.photon_sum, conditions, target };
    let ps_dir = out.join(PHOTON_SUM_UNIT);
    let job = UnitJob {
        name: PHOTON_SUM_UNIT,
        dir: &ps_dir,
        cfg: ps_cfg,
        source: &source,
        train_events: &data.split.train,
        val_events: &data.split.val,
        varmap: &varmap,
        dtype,
        flow: Some(&ps_spec),
        regressor: None,
    };
    summaries.push(train_unit(&job, &NllObjective { flow: &ps_flow }, opts)?);
    // The test split's figures come from the kept (best) weights.
    let best = super::student::frozen_flow(out, &manifest, PHOTON_SUM_UNIT, dtype, &opts.device)?;
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
    photon_sum::save_report(&ps_dir, &report)?;

    // The flow.
    let spec = manifest.units[FLOW_UNIT].flow.clone().expect("flow unit");
    let varmap = VarMap::new();
    let vb = SeededInit::var_builder(&varmap, derive_seed(seed, &[tag::INIT, 2]), dtype, &opts.device);
    let flow = Flow::new(&spec, vb.pp(io::PREFIX))?;
    let prep = preprocessing(&manifest, out)?;
    let source = FlowRows { file: &data.file, prep: &prep, conditions, weights: None };
    let job = UnitJob {
        name: FLOW_UNIT,
        dir: &out.join(FLOW_UNIT),
        cfg: flow_train,
        source: &source,
        train_events: &data.split.train,
        val_events: &data.split.val,
        varmap: &varmap,
        dtype,
        flow: Some(&spec),
        regressor: None,
    };
    summaries.push(train_unit(&job, &NllObjective { flow: &flow }, opts)?);
    Ok(summaries)
}

/// `distill-student` for the ZDC: an IAF student of the teacher's flow, with the setup's channel
/// loss and diversity weights; the photon-sum flow is copied from the teacher.
pub fn distill_student(cfg: &Config, teacher_dir: &Path, out: &Path, opts: &RunOptions) -> Result<Vec<Summary>> {
    use super::student::{copy_unit, frozen_flow, load_teacher, new_student, student_spec, terms};
    use crate::distill::{diversity, ChannelLoss, DistillObjective, Distillation};
    let teacher = load_teacher(teacher_dir, cfg.model.detector)?;
    let distill = cfg.distill.clone().unwrap_or_default();
    let section = cfg.student_section(None);
    let tc = cfg.train_config(section.and_then(|s| s.train.as_ref()), "student.flow.train")?;
    let data = ZdcData::open_like(&cfg.data.path, &teacher.data)?;
    let t_spec = teacher.unit(FLOW_UNIT, teacher_dir)?.flow.clone().expect("teacher flow");
    let s_spec = student_spec(&t_spec, section);
    let mut manifest = teacher.clone();
    manifest.role = Role::Student;
    manifest.seed = tc.seed;
    manifest.teacher = Some(std::fs::canonicalize(teacher_dir).unwrap_or_else(|_| teacher_dir.to_path_buf()));
    manifest.distill = Some(distill.clone());
    manifest.config = cfg.to_json();
    manifest.units.get_mut(FLOW_UNIT).expect("flow unit").flow = Some(s_spec.clone());
    if opts.resume {
        check_resume_matches(out, &Manifest::load(out)?, &manifest)?;
    }
    manifest.save(out)?;
    let ps_dir = &teacher.unit(PHOTON_SUM_UNIT, teacher_dir)?.dir;
    copy_unit(&teacher_dir.join(ps_dir), &out.join(ps_dir))?;
    if teacher_dir.join(ps_dir).join(photon_sum::TEST_JSON).exists() {
        std::fs::copy(
            teacher_dir.join(ps_dir).join(photon_sum::TEST_JSON),
            out.join(ps_dir).join(photon_sum::TEST_JSON),
        )
        .map_err(|e| Error::io(&out.join(ps_dir), e))?;
    }

    let dtype = cfg.model.dtype.dtype();
    let teacher_flow = frozen_flow(teacher_dir, &teacher, FLOW_UNIT, dtype, &opts.device)?;
    let weights = if distill.diversity_weights() {
        let mut w =
            diversity::compute_with(&data.file, &data.split.train, distill.diversity_eps, distill.zero_diversity)?;
        // Validation conditions get their own weights, so that selecting on the validation loss
        // weighs them as training does (they would be 0 otherwise).
        let v = diversity::compute_with(&data.file, &data.split.val, distill.diversity_eps, distill.zero_diversity)?;
        for &e in &data.split.val {
            w.per_event[e] = v.per_event[e];
        }
        w.save(&out.join("diversity.json"))?;
        let (lo, hi) = w.weights.iter().fold((f64::INFINITY, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        eprintln!("diversity weights: {} training conditions, weights {lo:.3} – {hi:.3}", w.counts.len());
        Some(w.per_event)
    } else {
        None
    };
    let init = section.filter(|s| s.init_from_teacher).map(|_| teacher.weights(teacher_dir, FLOW_UNIT)).transpose()?;
    let (student, varmap) =
        new_student(&s_spec, init.as_deref(), derive_seed(tc.seed, &[tag::INIT, 3]), dtype, &opts.device)?;
    let channel = distill.channel_loss().then(|| -> Result<ChannelLoss> {
        Ok(ChannelLoss {
            matrix: crate::data::channels::channel_matrix(dtype, &opts.device)?,
            weight: distill.channel_weight,
            weighted: distill.diversity_weights(),
            pixel_affine: match &preprocessing(&teacher, teacher_dir)?.pixels {
                Some(p) => {
                    let row = |v: &[f64]| -> Result<candle_core::Tensor> {
                        Ok(candle_core::Tensor::from_vec(
                            v.iter().map(|&x| x as f32).collect::<Vec<f32>>(),
                            (1, PIXELS),
                            &opts.device,
                        )?
                        .to_dtype(dtype)?)
                    };
                    Some((row(&p.std)?, row(&p.mean)?))
                }
                None => None,
            },
            photon_sum: match distill.channel_units {
                crate::config::ChannelUnits::Photons => {
                    let c = teacher.conditions.as_ref().expect("ZDC manifest has scalers");
                    Some((FEATURES, c.mean[FEATURES], c.std[FEATURES]))
                }
                crate::config::ChannelUnits::Fractions => None,
            },
        })
    });
    let channel = channel.transpose()?;
    let objective = DistillObjective {
        distillation: Distillation {
            teacher: &teacher_flow,
            student: &student,
            terms: terms(&distill, section.and_then(|s| s.beta), channel),
        },
        select_by_kl: distill.selection == crate::config::Selection::Kl,
    };
    let prep = preprocessing(&manifest, out)?;
    let conditions = manifest.conditions.as_ref().expect("ZDC manifest has scalers");
    let source = FlowRows { file: &data.file, prep: &prep, conditions, weights: weights.as_deref() };
    let job = UnitJob {
        name: FLOW_UNIT,
        dir: &out.join(FLOW_UNIT),
        cfg: tc,
        source: &source,
        train_events: &data.split.train,
        val_events: &data.split.val,
        varmap: &varmap,
        dtype,
        flow: Some(&s_spec),
        regressor: None,
    };
    if distill.selection == crate::config::Selection::KlChannel {
        let objective = crate::distill::objective::KlChannelObjective { inner: objective };
        return Ok(vec![train_unit(&job, &objective, opts)?]);
    }
    Ok(vec![train_unit(&job, &objective, opts)?])
}

/// The ZDC preprocessing a model was trained with.
pub fn preprocessing(m: &Manifest, dir: &Path) -> Result<ZdcPreprocessing> {
    match &m.preprocessing {
        Preprocessing::Zdc(p) => Ok(p.clone()),
        Preprocessing::Calo(_) => Err(Error::checkpoint(dir, "is a CaloChallenge model, not a ZDC one")),
    }
}
