//! `zdcflow sample` and `zdcflow merge`: batched generation written in chunks (memory flat in
//! the number of events), deterministic shards for job arrays, and joining the shards.

pub mod calo;
pub mod denoise;
pub mod noise;
pub mod zdc;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use rand::Rng;
use serde::Serialize;

use crate::config::Detector;
use crate::data::calo::{CaloChunk, CaloFile, CaloWriter};
use crate::data::h5;
use crate::data::open::DataFile;
use crate::data::split::{split, Part};
use crate::data::zdc::{ZdcConditions, ZdcFile, ZdcWriter, FEATURES};
use crate::error::{Error, Result};
use crate::models::manifest::{Manifest, Role};
use crate::util::progress;
use crate::util::rng::{derive, tag};
use noise::BatchNoise;

/// Which events of a conditions file to generate for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// ZDC: the model's test split when the file is its training file, else every event;
    /// CaloChallenge: every event.
    Auto,
    All,
    Part(Part),
}

pub struct Request {
    pub model: PathBuf,
    pub conditions: Option<PathBuf>,
    pub events: Option<usize>,
    pub selection: Selection,
    pub batch_size: usize,
    pub seed: u64,
    /// (i, n), 1-based.
    pub shard: Option<(usize, usize)>,
    pub use_teacher: bool,
    pub output: PathBuf,
    /// gzip level of CaloChallenge outputs (0: uncompressed).
    pub gzip: u8,
    pub show_progress: bool,
    /// ZDC: where the conditioning photon sums come from.
    pub photon_sum: zdc::PhotonSumSource,
    /// ZDC: how the noise is removed from generated images.
    pub denoise: denoise::Denoise,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub events: usize,
    pub generate_s: f64,
    pub total_s: f64,
    pub ms_per_sample: f64,
    pub output: PathBuf,
}

/// Parses `I/N` (1 ≤ I ≤ N).
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::Invalid(format!("--shard '{s}': expected I/N with 1 ≤ I ≤ N, e.g. 3/10"));
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if i == 0 || n == 0 || i > n {
        return Err(bad());
    }
    Ok((i, n))
}

/// A shard must own at least one event: an empty file is one that `inspect` and `evaluate`
/// refuse, so it is refused here instead.
fn check_shard(total: usize, mine: usize, shard: Option<(usize, usize)>) -> Result<()> {
    match shard {
        Some((i, n)) if mine == 0 => Err(Error::Invalid(format!(
            "--shard {i}/{n}: {total} events split {n} ways leave this shard none; use at most {total} shards"
        ))),
        _ => Ok(()),
    }
}

/// The slice of `total` items that shard `(i, n)` owns.
pub fn shard_range(total: usize, shard: Option<(usize, usize)>) -> std::ops::Range<usize> {
    match shard {
        None => 0..total,
        Some((i, n)) => (total * (i - 1) / n)..(total * i / n),
    }
}

/// The model to sample with: the directory given, or its teacher with `--teacher`.
fn resolve_model(req: &Request) -> Result<(PathBuf, Manifest)> {
    let m = Manifest::load(&req.model)?;
    if req.use_teacher && m.role == Role::Student {
        let t = m.teacher.clone().ok_or_else(|| Error::checkpoint(&req.model, "records no teacher"))?;
        let tm = Manifest::load(&t)?;
        return Ok((t, tm));
    }
    Ok((req.model.clone(), m))
}

fn attrs(req: &Request, dir: &Path, m: &Manifest, source: Option<(&Path, usize)>) -> Vec<(&'static str, String)> {
    let mut a = vec![
        ("generator", format!("zdcflow {} sample", env!("CARGO_PKG_VERSION"))),
        ("model", dir.display().to_string()),
        ("model_role", format!("{:?}", m.role).to_lowercase()),
        ("seed", req.seed.to_string()),
        ("selection", format!("{:?}", req.selection).to_lowercase()),
    ];
    if m.detector == Detector::Zdc {
        a.push(("photon_sum_source", format!("{:?}", req.photon_sum).to_lowercase()));
        a.push(("denoise", req.denoise.name().to_string()));
    }
    if let Some((i, n)) = req.shard {
        a.push(("shard", format!("{i}/{n}")));
    }
    if let Some((path, events)) = source {
        a.push(("source_file", path.display().to_string()));
        a.push(("source_events", events.to_string()));
    }
    a
}

pub fn run(req: &Request, device: &Device) -> Result<Report> {
    if req.batch_size == 0 {
        return Err(Error::Invalid("--batch-size must be ≥ 1".into()));
    }
    if let Some(c) = &req.conditions {
        crate::util::atomic::ensure_not_input(&req.output, "--output", &[("--conditions", c.as_path())])?;
    }
    if let Some(n) = req.events {
        // E_inc of every event is held in memory; the showers are written in chunks.
        crate::util::limits::check_memory(&format!("--events {n}"), 4.0 * n as f64)?;
    }
    let (dir, m) = resolve_model(req)?;
    match m.detector {
        Detector::Zdc => run_zdc(req, &dir, &m, device),
        Detector::Ds2 | Detector::Ds3 => run_calo(req, &dir, &m, device),
    }
}

/// Events of a conditions file for `selection`, using the model's split where asked.
fn select(
    file_events: usize,
    m: &Manifest,
    selection: Selection,
    path: &Path,
    pdg: Option<&[i32]>,
) -> Result<Vec<usize>> {
    let is_training_file = file_events == m.data.events;
    let part = match selection {
        Selection::All => return Ok((0..file_events).collect()),
        Selection::Auto if m.detector == Detector::Zdc && is_training_file => Part::Test,
        Selection::Auto => return Ok((0..file_events).collect()),
        Selection::Part(p) => p,
    };
    if !is_training_file {
        return Err(Error::format(
            path,
            format!(
                "has {file_events} events, the model's training file had {}: --split {part:?} needs that file",
                m.data.events
            ),
        ));
    }
    let mut candidates: Vec<usize> = match pdg {
        Some(pdg) => m.data.particles.select(pdg),
        None => (0..file_events).collect(),
    };
    candidates.truncate(m.data.used_events);
    let s = split(&candidates, m.data.fractions, m.data.split_seed);
    let rows = s.part(part).to_vec();
    if rows.is_empty() {
        return Err(Error::format(path, format!("the model's {part:?} split of this file is empty; use --split all")));
    }
    Ok(rows)
}

fn run_zdc(req: &Request, dir: &Path, m: &Manifest, device: &Device) -> Result<Report> {
    let path = req
        .conditions
        .as_ref()
        .ok_or_else(|| Error::Invalid("ZDC sampling needs --conditions FILE (the particles to simulate)".into()))?;
    let sampler = zdc::ZdcSampler::load(dir, m, device)?;
    let file = ZdcFile::open(path)?;
    let rows = select(file.events, m, req.selection, path, Some(&file.conditions.pdg))?;
    let range = shard_range(rows.len(), req.shard);
    check_shard(rows.len(), range.len(), req.shard)?;
    let mine = &rows[range.clone()];
    crate::util::limits::check_disk(
        &req.output,
        mine.len() as f64 * 4.0 * (crate::data::channels::PIXELS + 11) as f64,
        true,
    )?;
    let mut writer = ZdcWriter::create(&req.output, mine.len(), &attrs(req, dir, m, Some((path, file.events))), true)?;
    let pb = progress::bar(mine.len() as u64, "sampling", "events", req.show_progress);
    let start = Instant::now();
    let mut generating = 0.0;
    for (b, batch) in mine.chunks(req.batch_size).enumerate() {
        let cond = file.conditions.select(batch);
        let t = Instant::now();
        let mut noise =
            BatchNoise::new(req.seed, range.start + b * req.batch_size, batch.len(), m.dtype.dtype(), device)?;
        let (responses, sums) =
            sampler.generate(&cond.particles, &cond.photon_sum, req.photon_sum, req.denoise, &mut noise)?;
        generating += t.elapsed().as_secs_f64();
        writer.write_with_sums(&responses, &cond, &sums, Some(batch))?;
        pb.inc(batch.len() as u64);
    }
    pb.finish_and_clear();
    writer.finish()?;
    Ok(report(mine.len(), generating, start, &req.output))
}

fn run_calo(req: &Request, dir: &Path, m: &Manifest, device: &Device) -> Result<Report> {
    let chain = calo::CaloChain::load(dir, m, device)?;
    let (energies, source) = match (&req.conditions, req.events) {
        (Some(path), _) => {
            let f = CaloFile::open(path)?;
            if f.geometry != chain.geometry {
                return Err(Error::format(
                    path,
                    format!("is dataset {}, the model is for dataset {}", f.geometry.dataset, chain.geometry.dataset),
                ));
            }
            let all = f.read_incident_energies()?;
            let rows = select(f.events, m, req.selection, path, None)?;
            (rows.iter().map(|&i| all[i]).collect::<Vec<f32>>(), Some((path.as_path(), f.events)))
        }
        (None, Some(n)) => ((0..n).map(|i| log_uniform_energy(req.seed, i)).collect(), None),
        (None, None) => return Err(Error::Invalid("give --conditions FILE or --events N".into())),
    };
    if energies.is_empty() {
        return Err(Error::Invalid("nothing to generate (0 events)".into()));
    }
    let range = shard_range(energies.len(), req.shard);
    check_shard(energies.len(), range.len(), req.shard)?;
    let mine = &energies[range.clone()];
    crate::util::limits::check_disk(
        &req.output,
        mine.len() as f64 * 4.0 * (chain.geometry.voxels() + 1) as f64,
        req.gzip > 0,
    )?;
    let mut writer =
        CaloWriter::create(&req.output, &chain.geometry, mine.len(), &attrs(req, dir, m, source), req.gzip)?;
    let pb = progress::bar(mine.len() as u64, "sampling", "showers", req.show_progress);
    let start = Instant::now();
    let mut generating = 0.0;
    for (b, batch) in mine.chunks(req.batch_size).enumerate() {
        let t = Instant::now();
        let mut noise =
            BatchNoise::new(req.seed, range.start + b * req.batch_size, batch.len(), m.dtype.dtype(), device)?;
        let showers = chain.generate(batch, &mut noise)?;
        generating += t.elapsed().as_secs_f64();
        writer.write(&CaloChunk { incident_energies: batch.to_vec(), showers })?;
        pb.inc(batch.len() as u64);
    }
    pb.finish_and_clear();
    writer.finish()?;
    Ok(report(mine.len(), generating, start, &req.output))
}

/// E_inc of generated event `i`: log-uniform in 1 GeV – 1 TeV (MeV), from the event's own stream.
pub fn log_uniform_energy(seed: u64, i: usize) -> f32 {
    let u: f64 = derive(seed, &[tag::SAMPLE, i as u64, 0]).random();
    10f64.powf(3.0 + 3.0 * u) as f32
}

fn report(events: usize, generating: f64, start: Instant, output: &Path) -> Report {
    Report {
        events,
        generate_s: generating,
        total_s: start.elapsed().as_secs_f64(),
        ms_per_sample: 1e3 * generating / events.max(1) as f64,
        output: output.to_path_buf(),
    }
}

/// `zdcflow merge`: joins shard files (any order; their `shard` attributes order them).
pub fn merge(inputs: &[PathBuf], output: &Path, show_progress: bool) -> Result<usize> {
    let named: Vec<(&str, &Path)> = inputs.iter().map(|p| ("shard", p.as_path())).collect();
    crate::util::atomic::ensure_not_input(output, "--output", &named)?;
    let mut shards = Vec::new();
    for p in inputs {
        let f = h5::open(p)?;
        let tag = h5::get_attr(&f, "shard")
            .ok_or_else(|| Error::format(p, "is not a shard (no 'shard' attribute from sample --shard)"))?;
        let (i, n) =
            parse_shard(&tag).map_err(|_| Error::format(p, format!("has an unreadable shard attribute '{tag}'")))?;
        let key = (h5::get_attr(&f, "model"), h5::get_attr(&f, "seed"), h5::get_attr(&f, "source_file"));
        shards.push((i, n, key, p.clone()));
    }
    shards.sort_by_key(|s| s.0);
    let n = shards[0].1;
    if let Some(s) = shards.iter().find(|s| s.1 != n) {
        return Err(Error::format(
            &s.3,
            format!(
                "is shard {}/{} but {} is shard {}/{n}: shards of different jobs (another --shard N)",
                s.0,
                s.1,
                shards[0].3.display(),
                shards[0].0
            ),
        ));
    }
    let have: Vec<usize> = shards.iter().map(|s| s.0).collect();
    if let Some(w) = have.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::Invalid(format!("merge: shard {}/{n} is given twice", w[0])));
    }
    if have != (1..=n).collect::<Vec<_>>() {
        let missing: Vec<String> = (1..=n).filter(|i| !have.contains(i)).map(|i| format!("{i}/{n}")).collect();
        return Err(Error::Invalid(format!("merge needs shards 1..{n} of one job; missing {}", missing.join(", "))));
    }
    if let Some(s) = shards.iter().find(|s| s.2 != shards[0].2) {
        return Err(Error::format(&s.3, "comes from another model, seed or conditions file than the first shard"));
    }
    let files: Vec<DataFile> = shards.iter().map(|s| DataFile::open(&s.3)).collect::<Result<_>>()?;
    let total: usize = files.iter().map(|f| f.events()).sum();
    let pb = progress::bar(total as u64, "merging", "events", show_progress);
    let first = h5::open(&shards[0].3)?;
    let mut attrs: Vec<(&str, String)> = Vec::new();
    for k in [
        "generator",
        "model",
        "model_role",
        "seed",
        "selection",
        "source_file",
        "source_events",
        "photon_sum_source",
        "denoise",
    ] {
        if let Some(v) = h5::get_attr(&first, k) {
            attrs.push((k, v));
        }
    }
    attrs.push(("merged_shards", n.to_string()));
    match &files[0] {
        DataFile::Calo(c) => {
            let mut w = CaloWriter::create(output, &c.geometry, total, &attrs, h5::DEFAULT_GZIP)?;
            for f in &files {
                let DataFile::Calo(f) = f else { return Err(Error::Invalid("shards of different formats".into())) };
                for chunk in f.chunks(f.default_chunk_events()) {
                    let (_, c) = chunk?;
                    pb.inc(c.len() as u64);
                    w.write(&c)?;
                }
            }
            w.finish()?;
        }
        DataFile::Zdc(_) => {
            let mut w = ZdcWriter::create(output, total, &attrs, true)?;
            for f in &files {
                let DataFile::Zdc(f) = f else { return Err(Error::Invalid("shards of different formats".into())) };
                let step = 4096;
                for s in (0..f.events).step_by(step) {
                    let e = (s + step).min(f.events);
                    let rows: Vec<usize> = (s..e).collect();
                    let cond: ZdcConditions = f.conditions.select(&rows);
                    let src: Option<Vec<usize>> = f.source.as_ref().map(|src| src.index[s..e].to_vec());
                    w.write_with_sums(&f.read_responses(s, e)?, &cond, &cond.photon_sum, src.as_deref())?;
                    pb.inc((e - s) as u64);
                }
            }
            w.finish()?;
        }
    }
    pb.finish_and_clear();
    let _ = FEATURES;
    Ok(total)
}
