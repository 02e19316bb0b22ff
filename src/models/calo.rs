//! iCaloFlow (Buckley, Pang, Shih, Krause): three flows for CaloChallenge datasets 2 and 3.
//!
//! - Flow-1 p(E_1..45 | E_inc): 45 layer-energy logits, context log10(E_inc) − 4.5.
//! - Flow-2 p(Î_1 | E_inc, E_1): layer 1's normalised voxel logits, context (E_inc, logit(E_1)/4).
//! - Flow-3 p(Î_i | E_inc, E_i, E_{i−1}, Î_{i−1}, i): every later layer, context
//!   (E_inc, logit E_i, logit E_{i−1}, layer i−1's logits, one-hot(i) of 44) — 191 (DS2) or 947 (DS3).
//!
//! Each shower is preprocessed once per visit (one noise draw per voxel and per layer energy) and
//! Flow-3's 44 pairs are built from it, as the published code does.

use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;

use super::manifest::{DataInfo, Manifest, Preprocessing, MODEL_JSON};
use crate::config::{Config, Detector, FlowName};
use crate::data::calo_files::CaloFiles;
use crate::data::geometry::{CaloGeometry, LAYERS};
use crate::data::preprocess::CaloPreprocessing;
use crate::data::split::{split, Split};
use crate::detector::calo::{dims, flow2_context, flow3_context, layer_pattern};
use crate::error::{Error, Result};
use crate::train::{RowSource, Rows};

/// Index of a flow (for derived seeds).
pub fn index(flow: FlowName) -> u64 {
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
            return Err(info.other_file(path, data.file.events));
        }
        Ok(data)
    }
}

/// One shower, preprocessed: E_inc, layer-energy logits (noised), per-layer voxel logits
/// (standardised when the preprocessing has a voxel standardisation).
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
            let out = &mut voxel_logits[l * v..(l + 1) * v];
            layer_pattern(prep, layer, rng, out);
            prep.standardise_layer(l, out);
        }
    }
    Ok(Processed { e_inc: prep.e_inc(e_inc), layer_logits, voxel_logits })
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

/// What a model records of the data it was trained on.
pub fn data_info(cfg: &Config, data: &CaloData, split_seed: u64) -> DataInfo {
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

/// The preprocessing a teacher of `cfg` is trained with, before any voxel standardisation is fitted.
pub fn configured_preprocessing(cfg: &Config) -> CaloPreprocessing {
    let default = CaloPreprocessing::default();
    CaloPreprocessing {
        renormalise_layers: cfg.model.calo_renormalise_layers,
        noise_mev: cfg.model.calo_noise_mev.unwrap_or(default.noise_mev),
        ..default
    }
}

/// Training showers the voxel standardisation is fitted on at most (its means and stds are
/// settled well before; a DS3 pass over 70 000 showers would take minutes).
pub const STANDARDISATION_SHOWERS: usize = 20_000;

/// Per-(layer, voxel) mean and std of the pattern logits (one noise draw per voxel, from `seed`)
/// over the first [`STANDARDISATION_SHOWERS`] training showers `events`.
pub fn fit_voxel_standardisation(
    prep: &CaloPreprocessing,
    data: &CaloData,
    events: &[usize],
    seed: u64,
) -> Result<crate::data::preprocess::Standardizer> {
    let g = &data.file.geometry;
    let (v, width) = (g.voxels_per_layer(), g.voxels());
    let mut chosen: Vec<usize> = events.iter().copied().take(STANDARDISATION_SHOWERS).collect();
    chosen.sort_unstable();
    if chosen.is_empty() {
        return Err(Error::config("model.calo_standardise_voxels", "needs training showers; the split has none"));
    }
    let mut rng = crate::util::rng::derive(seed, &[crate::util::rng::tag::STANDARDISE]);
    let mut sums = crate::data::preprocess::Standardizer::accumulate(width);
    let mut logits = vec![0f32; width];
    let block = ((64 << 20) / (4 * width)).max(1);
    for part in chosen.chunks(block) {
        let chunk = data.file.read_at(part)?;
        for shower in chunk.showers.chunks(width) {
            for (layer, out) in shower.chunks(v).zip(logits.chunks_mut(v)) {
                layer_pattern(prep, layer, &mut rng, out);
            }
            sums.add(&logits);
        }
    }
    Ok(sums.finish())
}

/// The preprocessing of a teacher directory: `configured` with the voxel standardisation fitted
/// on the training split when `[model] calo_standardise_voxels` asks for it — or the one already in
/// `out`'s model.json, so flows trained into one directory by several configs share it.
pub fn teacher_preprocessing(cfg: &Config, out: &Path, data: &CaloData, seed: u64) -> Result<CaloPreprocessing> {
    let mut prep = configured_preprocessing(cfg);
    if !cfg.model.calo_standardise_voxels {
        return Ok(prep);
    }
    if out.join(MODEL_JSON).is_file() {
        if let Ok(Manifest { preprocessing: Preprocessing::Calo(existing), .. }) = Manifest::load(out) {
            let mut same = existing.clone();
            same.voxel_standardisation = None;
            if same == prep && existing.voxel_standardisation.is_some() {
                return Ok(existing);
            }
        }
    }
    prep.voxel_standardisation = Some(fit_voxel_standardisation(&prep, data, &data.split.train, seed)?);
    Ok(prep)
}

/// A teacher directory may gain flows from further configs (one config per flow): the existing
/// manifest (in `out`, which holds one) must describe the same data and preprocessing, and new
/// flows must not replace trained ones unless resuming.
pub fn merge_with_existing(out: &Path, mut manifest: Manifest, resume: bool) -> Result<Manifest> {
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
        Preprocessing::Calo(p) => {
            if let Some(g) = m.detector.dataset().and_then(CaloGeometry::for_dataset) {
                p.check_voxel_standardisation(g.voxels_per_layer())
                    .map_err(|e| Error::checkpoint(&dir.join(MODEL_JSON), e))?;
            }
            Ok(p.clone())
        }
        Preprocessing::Zdc(_) => Err(Error::checkpoint(dir, "is a ZDC model, not a CaloChallenge one")),
    }
}
