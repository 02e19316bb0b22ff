//! The ZDC model (Majerz et al.): one conditional flow on preprocessed 44×44 responses
//! (1936 features) with 10 conditions — the 9 standardised particle features and the
//! standardised photon sum — and a photon-sum flow (`photon_sum.rs`) from which the 10th
//! condition is drawn at inference (or taken from the conditions file, `sample --photon-sum data`).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;

use super::manifest::{DataInfo, Manifest, Preprocessing, Unit, MODEL_JSON};
use super::photon_sum;
use super::teacher_spec;
use crate::config::{ChannelUnits, Config, DistillSection};
use crate::data::channels::PIXELS;
use crate::data::preprocess::{Standardizer, ZdcPreprocessing};
use crate::data::split::{split, Particles, Split};
use crate::data::zdc::{ZdcFile, FEATURES};
pub use crate::detector::zdc::CONTEXT;
use crate::distill::{diversity, ChannelLoss};
use crate::error::{Error, Result};
use crate::train::{RowSource, Rows};
use crate::util::rng::{derive_seed, tag};

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
            return Err(info.other_file(path, data.file.events));
        }
        Ok(data)
    }

    /// The 10 raw condition values of event `i` (9 features, photon sum).
    pub fn raw_condition(&self, i: usize) -> [f32; CONTEXT] {
        raw_condition(&self.file, i)
    }
}

fn raw_condition(file: &ZdcFile, i: usize) -> [f32; CONTEXT] {
    crate::detector::zdc::raw_condition(file.conditions.row(i), file.conditions.photon_sum[i])
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
pub fn teacher_manifest(cfg: &Config, data: &ZdcData, seed: u64, split_seed: u64) -> Result<Manifest> {
    let section = cfg.flow.as_ref().ok_or_else(|| Error::config("flow", "missing: the teacher's architecture"))?;
    let ps = cfg.photon_sum.clone().unwrap_or_default();
    let (conditions, target) = fit_scalers(data);
    let mut units = BTreeMap::new();
    units.insert(
        FLOW_UNIT.to_string(),
        Unit {
            dir: FLOW_UNIT.into(),
            flow: Some(teacher_spec(section, PIXELS, CONTEXT, derive_seed(seed, &[tag::INIT, 0]))),
        },
    );
    units.insert(
        PHOTON_SUM_UNIT.to_string(),
        Unit { dir: PHOTON_SUM_UNIT.into(), flow: Some(photon_sum::spec(&ps, derive_seed(seed, &[tag::INIT, 4]))) },
    );
    let data_info = DataInfo {
        path: cfg.data.path.clone(),
        files: Vec::new(),
        events: data.file.events,
        used_events: data.used_events,
        fractions: cfg.data.fractions(cfg.model.detector),
        split_seed,
        particles: cfg.data.particles,
    };
    let preprocessing = Preprocessing::Zdc(if section.standardise_pixels {
        pixel_standardised(data, derive_seed(seed, &[tag::NOISE, 15]))?
    } else {
        ZdcPreprocessing::default()
    });
    let mut m =
        Manifest::teacher(cfg.model.detector, cfg.model.dtype, seed, data_info, preprocessing, units, cfg.to_json());
    m.conditions = Some(conditions);
    m.photon_sum_target = Some(target);
    Ok(m)
}

/// The preprocessing with per-pixel logit standardisation fitted on (up to 20 000 of) the training
/// events, with noise drawn from `seed`.
fn pixel_standardised(data: &ZdcData, seed: u64) -> Result<ZdcPreprocessing> {
    let mut prep = ZdcPreprocessing::default();
    let mut sorted: Vec<usize> = data.split.train.iter().copied().take(20_000).collect();
    sorted.sort_unstable();
    let mut rng = crate::util::rng::derive(seed, &[]);
    let mut sums = Standardizer::accumulate(PIXELS);
    let mut y = vec![0f32; PIXELS];
    for chunk in sorted.chunks(2048) {
        let responses = data.file.read_responses_at(chunk)?;
        for img in responses.chunks(PIXELS) {
            prep.logits(img, &mut rng, &mut y);
            sums.add(&y);
        }
    }
    prep.pixels = Some(sums.finish());
    Ok(prep)
}

/// The ZDC preprocessing a model was trained with.
pub fn preprocessing(m: &Manifest, dir: &Path) -> Result<ZdcPreprocessing> {
    match &m.preprocessing {
        Preprocessing::Zdc(p) => Ok(p.clone()),
        Preprocessing::Calo(_) => Err(Error::checkpoint(dir, "is a CaloChallenge model, not a ZDC one")),
    }
}

fn missing(dir: &Path, what: &str) -> Error {
    Error::checkpoint(&dir.join(MODEL_JSON), format!("lacks the {what} of a ZDC model"))
}

/// The condition and photon-sum scalers of a ZDC model (in `dir`).
pub fn scalers<'m>(m: &'m Manifest, dir: &Path) -> Result<(&'m Standardizer, &'m Standardizer)> {
    Ok((condition_scaler(m, dir)?, m.photon_sum_target.as_ref().ok_or_else(|| missing(dir, "photon-sum scaler"))?))
}

/// The condition scaler of a ZDC model (one without a photon-sum flow, imported, has no other).
pub fn condition_scaler<'m>(m: &'m Manifest, dir: &Path) -> Result<&'m Standardizer> {
    m.conditions.as_ref().ok_or_else(|| missing(dir, "condition scaler"))
}

/// Per-event diversity weights of the training and validation events (saved to
/// `out/diversity.json`): validation conditions get their own weights, so that selecting on the
/// validation loss weighs them as training does (they would be 0 otherwise).
pub fn diversity_weights(distill: &DistillSection, data: &ZdcData, out: &Path) -> Result<Vec<f32>> {
    let mut w = diversity::compute_with(&data.file, &data.split.train, distill.diversity_eps, distill.zero_diversity)?;
    let v = diversity::compute_with(&data.file, &data.split.val, distill.diversity_eps, distill.zero_diversity)?;
    for &e in &data.split.val {
        w.per_event[e] = v.per_event[e];
    }
    w.save(&out.join("diversity.json"))?;
    let (lo, hi) = w.weights.iter().fold((f64::INFINITY, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    eprintln!("diversity weights: {} training conditions, weights {lo:.3} – {hi:.3}", w.counts.len());
    Ok(w.per_event)
}

/// The channel loss of a `+ch` setup, in the teacher's pixel space.
pub fn channel_loss(
    distill: &DistillSection,
    teacher: &Manifest,
    teacher_dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<ChannelLoss> {
    let row = |v: &[f64]| -> Result<Tensor> {
        Ok(Tensor::from_vec(v.iter().map(|&x| x as f32).collect::<Vec<f32>>(), (1, PIXELS), device)?.to_dtype(dtype)?)
    };
    Ok(ChannelLoss {
        matrix: crate::data::channels::channel_matrix(dtype, device)?,
        weight: distill.channel_weight,
        weighted: distill.diversity_weights(),
        pixel_affine: match &preprocessing(teacher, teacher_dir)?.pixels {
            Some(p) => Some((row(&p.std)?, row(&p.mean)?)),
            None => None,
        },
        photon_sum: match distill.channel_units {
            ChannelUnits::Photons => {
                let c = condition_scaler(teacher, teacher_dir)?;
                Some((FEATURES, c.mean[FEATURES], c.std[FEATURES]))
            }
            ChannelUnits::Fractions => None,
        },
    })
}
