//! iCaloFlow (Buckley, Pang, Shih, Krause): three flows for CaloChallenge datasets 2 and 3.
//!
//! - Flow-1 p(E_1..45 | E_inc): 45 layer-energy logits, context log10(E_inc) − 4.5.
//! - Flow-2 p(Î_1 | E_inc, E_1): layer 1's normalised voxel logits, context (E_inc, logit(E_1)/4).
//! - Flow-3 p(Î_i | E_inc, E_i, E_{i−1}, Î_{i−1}, i): every later layer, context
//!   (E_inc, logit E_i, logit E_{i−1}, layer i−1's logits, one-hot(i) of 44) — 191 (DS2) or 947 (DS3).
//!
//! Each shower is preprocessed once per visit (one noise draw per voxel and per layer energy) and
//! Flow-3's 44 pairs are built from it, as the published code does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_nn::VarMap;
use rand_chacha::ChaCha8Rng;

use super::manifest::{DataInfo, Manifest, Preprocessing, Role, Unit, MODEL_JSON};
use super::{teacher_spec, train_unit, NllObjective, RunOptions, UnitJob};
use crate::config::{Config, Detector, FlowName};
use crate::data::calo_files::CaloFiles;
use crate::data::geometry::{CaloGeometry, LAYERS};
use crate::data::preprocess::CaloPreprocessing;
use crate::data::split::{split, Split};
use crate::error::{Error, Result};
use crate::flow::params::SeededInit;
use crate::flow::{io, Flow};
use crate::train::{RowSource, Rows, Summary};
use crate::util::rng::{derive_seed, tag};

/// Feature and context sizes of a flow.
pub fn dims(flow: FlowName, g: &CaloGeometry) -> (usize, usize) {
    let v = g.voxels_per_layer();
    match flow {
        FlowName::Flow1 => (LAYERS, 1),
        FlowName::Flow2 => (v, 2),
        FlowName::Flow3 => (v, 3 + v + (LAYERS - 1)),
    }
}

/// Index of a flow (for derived seeds).
fn index(flow: FlowName) -> u64 {
    match flow {
        FlowName::Flow1 => 1,
        FlowName::Flow2 => 2,
        FlowName::Flow3 => 3,
    }
}

/// The data file(s) with the configured event cap and split (one split over the union).
pub struct CaloData {
    pub file: CaloFiles,
    pub split: Split,
    pub used_events: usize,
}

impl CaloData {
    /// Opens `paths` (which must hold `detector`'s dataset), keeps the first `max_events` (0: all)
    /// of their union and splits them.
    pub fn open(
        paths: &[PathBuf],
        detector: Detector,
        max_events: usize,
        fractions: [f64; 3],
        split_seed: u64,
    ) -> Result<Self> {
        let mut file = CaloFiles::open(paths)?;
        // Training reads every epoch: small files are read (and decompressed) once.
        file.cache_if_at_most(crate::train::batches::CACHE_BYTES)?;
        if Some(file.geometry.dataset) != detector.dataset() {
            return Err(Error::config(
                "model.detector",
                format!("is {detector:?} but {} holds dataset {}", paths[0].display(), file.geometry.dataset),
            ));
        }
        let used = if max_events > 0 { max_events.min(file.events) } else { file.events };
        let candidates: Vec<usize> = (0..used).collect();
        let split = split(&candidates, fractions, split_seed);
        Ok(Self { file, split, used_events: used })
    }

    /// The data and split a model was trained on.
    pub fn open_like(paths: &[PathBuf], detector: Detector, info: &DataInfo) -> Result<Self> {
        let data = Self::open(paths, detector, info.used_events, info.fractions, info.split_seed)?;
        let sizes = |files: Vec<usize>| files.into_iter().map(|e| e.to_string()).collect::<Vec<_>>().join(" + ");
        let trained: Vec<usize> = info.files.iter().map(|f| f.events).collect();
        let now: Vec<usize> = data.file.files.iter().map(|f| f.events).collect();
        if !trained.is_empty() && trained != now {
            return Err(Error::format(
                &paths[0],
                format!(
                    "the data files hold {} events; the teacher was trained on files with {}",
                    sizes(now),
                    sizes(trained)
                ),
            ));
        }
        let path = &paths[0];
        if data.file.events != info.events {
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
}

/// One shower, preprocessed: E_inc, layer-energy logits (noised), per-layer voxel logits.
pub struct Processed {
    pub e_inc: f32,
    pub layer_logits: Vec<f32>,
    pub voxel_logits: Vec<f32>,
}

/// Preprocesses a shower (voxels in MeV) with fresh noise, the voxels of the first
/// `voxel_layers` layers only (Flow-1 needs none, Flow-2 one, Flow-3 all). A layer holding more
/// than the preprocessing's layer scale (65 GeV; the paper chose it above every layer of the real
/// data) cannot be represented: `Err(layer index, energy in MeV)`.
pub fn process(
    prep: &CaloPreprocessing,
    g: &CaloGeometry,
    e_inc: f32,
    shower: &[f32],
    voxel_layers: usize,
    rng: &mut ChaCha8Rng,
) -> std::result::Result<Processed, (usize, f64)> {
    let v = g.voxels_per_layer();
    let mut voxel_logits = vec![0.0; voxel_layers * v];
    let mut layer_logits = Vec::with_capacity(LAYERS);
    for (l, layer) in shower.chunks(v).enumerate() {
        let e: f64 = layer.iter().map(|&x| x as f64).sum::<f64>() + prep.noise(rng);
        if e >= prep.layer_scale_mev {
            return Err((l, e));
        }
        layer_logits.push(prep.layer_energy(e));
        if l < voxel_layers {
            prep.voxels(layer, rng, &mut voxel_logits[l * v..(l + 1) * v]);
        }
    }
    Ok(Processed { e_inc: prep.e_inc(e_inc), layer_logits, voxel_logits })
}

/// Flow-2's context from preprocessed values.
pub fn flow2_context(prep: &CaloPreprocessing, e_inc: f32, e1_logit: f32) -> [f32; 2] {
    [e_inc, (e1_logit as f64 / prep.flow2_e1_divisor) as f32]
}

/// Writes Flow-3's context for target layer `t` (1..45, 0-based) into `out`.
pub fn flow3_context(e_inc: f32, e_t: f32, e_prev: f32, prev_logits: &[f32], t: usize, out: &mut [f32]) {
    let v = prev_logits.len();
    out[0] = e_inc;
    out[1] = e_t;
    out[2] = e_prev;
    out[3..3 + v].copy_from_slice(prev_logits);
    let onehot = &mut out[3 + v..];
    onehot.iter_mut().for_each(|x| *x = 0.0);
    onehot[t - 1] = 1.0;
}

/// Rows of one flow from a CaloChallenge file.
pub struct CaloRows<'a> {
    pub file: &'a CaloFiles,
    pub prep: &'a CaloPreprocessing,
    pub flow: FlowName,
}

impl RowSource for CaloRows<'_> {
    fn x_dim(&self) -> usize {
        dims(self.flow, &self.file.geometry).0
    }

    fn ctx_dim(&self) -> usize {
        dims(self.flow, &self.file.geometry).1
    }

    fn rows_per_event(&self) -> usize {
        match self.flow {
            FlowName::Flow3 => LAYERS - 1,
            _ => 1,
        }
    }

    fn block_events(&self) -> usize {
        let shower = 4 * self.file.geometry.voxels();
        let rows = 4 * self.rows_per_event() * (self.x_dim() + self.ctx_dim());
        ((32 << 20) / shower.max(rows)).max(1)
    }

    fn by_file(&self, events: &[usize]) -> Vec<Vec<usize>> {
        self.file.by_file(events)
    }

    fn rows(&self, events: &[usize], rng: &mut ChaCha8Rng) -> Result<Rows> {
        let g = &self.file.geometry;
        let chunk = self.file.read_at(events)?;
        let (dx, dc) = (self.x_dim(), self.ctx_dim());
        let n = events.len() * self.rows_per_event();
        let mut rows = Rows { x: vec![0.0; n * dx], ctx: vec![0.0; n * dc], weight: Vec::new(), n };
        let v = g.voxels_per_layer();
        let mut r = 0;
        for (k, e_inc) in chunk.incident_energies.iter().enumerate() {
            let voxel_layers = match self.flow {
                FlowName::Flow1 => 0,
                FlowName::Flow2 => 1,
                FlowName::Flow3 => LAYERS,
            };
            let shower = &chunk.showers[k * g.voxels()..(k + 1) * g.voxels()];
            let p = process(self.prep, g, *e_inc, shower, voxel_layers, rng).map_err(|(l, e)| {
                Error::data(
                    self.file.path_of(events[k]),
                    crate::data::calo::SHOWERS,
                    format!(
                        "event {}: layer {} holds {:.1} GeV, above the {:.0} GeV layer scale of the iCaloFlow preprocessing",
                        self.file.locate(events[k]).1,
                        l + 1,
                        e / 1e3,
                        self.prep.layer_scale_mev / 1e3
                    ),
                )
            })?;
            match self.flow {
                FlowName::Flow1 => {
                    rows.x[r * dx..(r + 1) * dx].copy_from_slice(&p.layer_logits);
                    rows.ctx[r] = p.e_inc;
                    r += 1;
                }
                FlowName::Flow2 => {
                    rows.x[r * dx..(r + 1) * dx].copy_from_slice(&p.voxel_logits[..v]);
                    rows.ctx[r * dc..(r + 1) * dc].copy_from_slice(&flow2_context(
                        self.prep,
                        p.e_inc,
                        p.layer_logits[0],
                    ));
                    r += 1;
                }
                FlowName::Flow3 => {
                    for t in 1..LAYERS {
                        rows.x[r * dx..(r + 1) * dx].copy_from_slice(&p.voxel_logits[t * v..(t + 1) * v]);
                        let prev = &p.voxel_logits[(t - 1) * v..t * v];
                        flow3_context(
                            p.e_inc,
                            p.layer_logits[t],
                            p.layer_logits[t - 1],
                            prev,
                            t,
                            &mut rows.ctx[r * dc..(r + 1) * dc],
                        );
                        r += 1;
                    }
                }
            }
        }
        Ok(rows)
    }
}

fn data_info(cfg: &Config, data: &CaloData, split_seed: u64) -> DataInfo {
    DataInfo {
        path: data.file.files[0].path.clone(),
        files: if data.file.files.len() > 1 { data.file.infos() } else { Vec::new() },
        events: data.file.events,
        used_events: data.used_events,
        fractions: cfg.data.fractions(cfg.model.detector),
        split_seed,
        particles: Default::default(),
    }
}

/// `train-teacher` for CaloChallenge: every flow the config names, in order.
pub fn train_teacher(cfg: &Config, out: &Path, opts: &RunOptions) -> Result<Vec<Summary>> {
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
        let (dx, dc) = dims(f, &g);
        let spec = teacher_spec(section, dx, dc, derive_seed(tc.seed, &[tag::INIT, index(f)]));
        units.insert(f.as_str().to_string(), Unit { dir: f.as_str().into(), flow: Some(spec), regressor: None });
    }
    let manifest = Manifest {
        format: super::manifest::FORMAT.into(),
        zdcflow_version: env!("CARGO_PKG_VERSION").into(),
        detector: cfg.model.detector,
        role: Role::Teacher,
        seed: base.seed,
        dtype: cfg.model.dtype,
        data: data_info(cfg, &data, split_seed),
        preprocessing: Preprocessing::Calo(CaloPreprocessing {
            renormalise_layers: cfg.model.calo_renormalise_layers,
            ..CaloPreprocessing::default()
        }),
        conditions: None,
        photon_sum_target: None,
        units,
        teacher: None,
        distill: None,
        config: cfg.to_json(),
    };
    let manifest = merge_with_existing(out, manifest, opts.resume)?;
    manifest.save(out)?;
    let prep = preprocessing(&manifest, out)?;
    let dtype = cfg.model.dtype.dtype();
    let mut summaries = Vec::new();
    for &f in &flows {
        let section = cfg.flow_section(Some(f)).expect("checked above");
        let tc = cfg.train_config(section.train.as_ref(), &format!("{}.train", f.as_str()))?;
        let spec = manifest.units[f.as_str()].flow.clone().expect("flow unit");
        let varmap = VarMap::new();
        let vb =
            SeededInit::var_builder(&varmap, derive_seed(tc.seed, &[tag::INIT, 10 + index(f)]), dtype, &opts.device);
        let flow = Flow::new(&spec, vb.pp(io::PREFIX))?;
        let source = CaloRows { file: &data.file, prep: &prep, flow: f };
        let job = UnitJob {
            name: f.as_str(),
            dir: &out.join(f.as_str()),
            cfg: tc,
            source: &source,
            train_events: &data.split.train,
            val_events: &data.split.val,
            varmap: &varmap,
            dtype,
            flow: Some(&spec),
            regressor: None,
        };
        summaries.push(train_unit(&job, &NllObjective { flow: &flow }, opts)?);
    }
    Ok(summaries)
}

/// A teacher directory may gain flows from further configs (one config per flow): the existing
/// manifest must describe the same data and preprocessing, and new flows must not replace
/// trained ones unless resuming.
fn merge_with_existing(out: &Path, mut manifest: Manifest, resume: bool) -> Result<Manifest> {
    if !out.join(MODEL_JSON).exists() {
        if resume {
            return Err(Error::checkpoint(out, "--resume: no model to resume here (no model.json)"));
        }
        return Ok(manifest);
    }
    let existing = Manifest::load(out)?;
    let path = out.join(MODEL_JSON);
    if existing.detector != manifest.detector
        || existing.preprocessing != manifest.preprocessing
        || existing.data != manifest.data
    {
        return Err(Error::checkpoint(&path, "holds a model of other data or settings; choose another --output-dir"));
    }
    for (name, unit) in &existing.units {
        match manifest.units.get(name) {
            Some(new) if resume && new != unit => {
                return Err(Error::checkpoint(
                    &path,
                    format!("--resume: {name} is configured differently from the run being resumed"),
                ));
            }
            Some(_) if !resume => {
                return Err(Error::checkpoint(
                    &path,
                    format!(
                        "already holds a trained {name}; pass --resume to continue it, or choose another --output-dir"
                    ),
                ));
            }
            _ => {
                manifest.units.insert(name.clone(), unit.clone());
            }
        }
    }
    Ok(manifest)
}

/// The CaloChallenge preprocessing a model was trained with.
pub fn preprocessing(m: &Manifest, dir: &Path) -> Result<CaloPreprocessing> {
    match &m.preprocessing {
        Preprocessing::Calo(p) => Ok(p.clone()),
        Preprocessing::Zdc(_) => Err(Error::checkpoint(dir, "is a ZDC model, not a CaloChallenge one")),
    }
}

/// `distill-student` for CaloChallenge: IAF students of Flow-2 and Flow-3 (those the config
/// names); Flow-1 stays the teacher's MAF and is copied, so the student directory samples alone.
pub fn distill_student(cfg: &Config, teacher_dir: &Path, out: &Path, opts: &RunOptions) -> Result<Vec<Summary>> {
    use super::student::{copy_unit, frozen_flow, load_teacher, new_student, student_spec, terms};
    use crate::distill::{DistillObjective, Distillation};
    let teacher = load_teacher(teacher_dir, cfg.model.detector)?;
    let distill = cfg.distill.clone().unwrap_or_default();
    let flows: Vec<FlowName> = cfg.calo_flows().into_iter().filter(|&f| f != FlowName::Flow1).collect();
    if flows.is_empty() {
        return Err(Error::config("student", "name the students to distil: [student.flow2] and/or [student.flow3]"));
    }
    let data = CaloData::open_like(&cfg.data.files(), cfg.model.detector, &teacher.data)?;
    let mut manifest = teacher.clone();
    manifest.role = Role::Student;
    manifest.teacher = Some(std::fs::canonicalize(teacher_dir).unwrap_or_else(|_| teacher_dir.to_path_buf()));
    manifest.distill = Some(distill.clone());
    manifest.config = cfg.to_json();
    let mut jobs = Vec::new();
    for &f in &flows {
        let section = cfg.student_section(Some(f));
        let tc = cfg.train_config(section.and_then(|s| s.train.as_ref()), &format!("student.{}.train", f.as_str()))?;
        let t_spec = teacher.unit(f.as_str(), teacher_dir)?.flow.clone().expect("teacher flow");
        let s_spec = student_spec(&t_spec, section);
        manifest.units.get_mut(f.as_str()).expect("unit exists").flow = Some(s_spec.clone());
        jobs.push((f, section, tc, s_spec));
    }
    manifest.seed = jobs[0].2.seed;
    if opts.resume {
        super::check_resume_matches(out, &Manifest::load(out)?, &manifest)?;
    }
    manifest.save(out)?;
    for name in teacher.units.keys().filter(|n| !flows.iter().any(|f| f.as_str() == n.as_str())) {
        copy_unit(&teacher_dir.join(&teacher.units[name].dir), &out.join(name))?;
    }
    let prep = preprocessing(&teacher, teacher_dir)?;
    let dtype = cfg.model.dtype.dtype();
    let mut summaries = Vec::new();
    for (f, section, tc, s_spec) in jobs {
        let teacher_flow = frozen_flow(teacher_dir, &teacher, f.as_str(), dtype, &opts.device)?;
        let init =
            section.filter(|s| s.init_from_teacher).map(|_| teacher.weights(teacher_dir, f.as_str())).transpose()?;
        let (student, varmap) = new_student(
            &s_spec,
            init.as_deref(),
            derive_seed(tc.seed, &[tag::INIT, 20 + index(f)]),
            dtype,
            &opts.device,
        )?;
        let objective = DistillObjective {
            distillation: Distillation {
                teacher: &teacher_flow,
                student: &student,
                terms: terms(&distill, section.and_then(|s| s.beta), None),
            },
            select_by_kl: distill.selection == crate::config::Selection::Kl,
        };
        let source = CaloRows { file: &data.file, prep: &prep, flow: f };
        let job = UnitJob {
            name: f.as_str(),
            dir: &out.join(f.as_str()),
            cfg: tc,
            source: &source,
            train_events: &data.split.train,
            val_events: &data.split.val,
            varmap: &varmap,
            dtype,
            flow: Some(&s_spec),
            regressor: None,
        };
        summaries.push(train_unit(&job, &objective, opts)?);
    }
    Ok(summaries)
}
