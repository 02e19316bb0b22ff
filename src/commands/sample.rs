//! `zdcflow sample`: a trained model's showers for the events of a conditions file (or for
//! log-uniform incident energies), generated in batches and written in chunks, so that memory
//! stays flat in the number of events; `--shard I/N` writes one deterministic slice.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;

use super::{Context, Report};
use crate::cli::{SampleArgs, SplitChoice};
use crate::config::Detector;
use crate::data::calo::{CaloChunk, CaloFile, CaloWriter};
use crate::data::split::Part;
use crate::data::zdc::{ZdcFile, ZdcWriter};
use crate::detector::noise::BatchNoise;
use crate::error::{Error, Result};
use crate::eval::photon_total::PhotonTotalTally;
use crate::models::manifest::Manifest;
use crate::sample::calo::CaloChain;
use crate::sample::zdc::ZdcSampler;
use crate::sample::{
    check_shard, denoise, log_uniform_energy, parse_shard, resolve_model, select, shard_range, summary, zdc,
    SamplingPrecision, Subset, Summary,
};
use crate::util::output_guard::{check_output, Input};
use crate::util::progress;

pub fn run(a: &SampleArgs, ctx: &Context) -> Result<Report> {
    run_with_summary(a, ctx).map(|(_, report)| report)
}

/// Runs `sample`; what it generated (the demo tabulates it) and its report.
pub(super) fn run_with_summary(a: &SampleArgs, ctx: &Context) -> Result<(Summary, Report)> {
    let subset = match a.split {
        SplitChoice::Auto => Subset::Auto,
        SplitChoice::All => Subset::All,
        SplitChoice::Train => Subset::Part(Part::Train),
        SplitChoice::Val => Subset::Part(Part::Val),
        SplitChoice::Test => Subset::Part(Part::Test),
    };
    let req = Request {
        model: a.model.clone(),
        conditions: a.conditions.clone(),
        events: a.events,
        subset,
        batch_size: a.batch_size,
        seed: a.seed,
        shard: a.shard.as_deref().map(parse_shard).transpose()?,
        use_teacher: a.teacher,
        output: a.output.clone(),
        gzip: a.gzip,
        show_progress: ctx.show_progress,
        photon_sum: a.photon_sum.into(),
        denoise: a.denoise.into(),
        precision: a.precision.into(),
    };
    let mut report = Report::default();
    let s = generate(&req, ctx.device()?, &mut report)?;
    report.out(format!(
        "generated {} events in {:.2} s: {:.4} ms/sample ({:.2} s with writing) → {}",
        s.events,
        s.generate_s,
        s.ms_per_sample,
        s.total_s,
        s.output.display()
    ));
    Ok((s, report))
}

struct Request {
    model: PathBuf,
    conditions: Option<PathBuf>,
    events: Option<usize>,
    subset: Subset,
    batch_size: usize,
    seed: u64,
    /// (i, n), 1-based.
    shard: Option<(usize, usize)>,
    use_teacher: bool,
    output: PathBuf,
    /// gzip level of CaloChallenge outputs (0: uncompressed).
    gzip: u8,
    show_progress: bool,
    /// ZDC: where the conditioning photon sums come from.
    photon_sum: zdc::PhotonSumSource,
    /// The flows' masked-layer products.
    precision: SamplingPrecision,
    /// ZDC: how the noise is removed from generated images.
    denoise: denoise::Denoise,
}

fn attrs(req: &Request, dir: &Path, m: &Manifest, source: Option<(&Path, usize)>) -> Vec<(&'static str, String)> {
    let mut a = vec![
        ("generator", format!("zdcflow {} sample", env!("CARGO_PKG_VERSION"))),
        ("model", dir.display().to_string()),
        ("model_role", format!("{:?}", m.role).to_lowercase()),
        ("seed", req.seed.to_string()),
        ("selection", format!("{:?}", req.subset).to_lowercase()),
        ("precision", req.precision.name().to_string()),
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

/// Generates into `req.output`; what the run reports besides its summary goes into `report`.
fn generate(req: &Request, device: &Device, report: &mut Report) -> Result<Summary> {
    if req.batch_size == 0 {
        return Err(Error::Invalid("--batch-size must be ≥ 1".into()));
    }
    if let Some(n) = req.events {
        // E_inc of every event is held in memory; the showers are written in chunks.
        crate::util::limits::check_memory(&format!("--events {n}"), 4.0 * n as f64)?;
    }
    let (dir, m) = resolve_model(&req.model, req.use_teacher)?;
    let mut inputs = vec![Input::ModelDir("--model", &req.model), Input::ModelDir("--model", &dir)];
    inputs.extend(m.teacher.as_deref().map(|t| Input::ModelDir("teacher", t)));
    inputs.extend(req.conditions.as_deref().map(|c| Input::File("--conditions", c)));
    check_output(&req.output, "--output", &inputs)?;
    match m.detector {
        Detector::Zdc => run_zdc(req, &dir, &m, device, report),
        Detector::Ds2 | Detector::Ds3 => run_calo(req, &dir, &m, device),
    }
}

/// What `--precision` asks of the flows, refused in one line where the model cannot do it.
fn matmul_precision(
    p: SamplingPrecision,
    dir: &Path,
    m: &Manifest,
    device: &Device,
) -> Result<crate::flow::MatmulPrecision> {
    if p == SamplingPrecision::Bf16 && m.dtype != crate::config::Precision::F32 {
        return Err(Error::checkpoint(dir, "is a float64 model: --precision bf16 needs a float32 one"));
    }
    p.apply(device)
}

fn run_zdc(req: &Request, dir: &Path, m: &Manifest, device: &Device, report: &mut Report) -> Result<Summary> {
    let path = req
        .conditions
        .as_ref()
        .ok_or_else(|| Error::Invalid("ZDC sampling needs --conditions FILE (the particles to simulate)".into()))?;
    let mut sampler = ZdcSampler::load(dir, m, device)?;
    sampler.set_matmul_precision(matmul_precision(req.precision, dir, m, device)?)?;
    let file = ZdcFile::open(path)?;
    let rows = select(file.events, m, req.subset, path, Some(&file.conditions.pdg))?;
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
    let mut totals = PhotonTotalTally::default();
    for (b, batch) in mine.chunks(req.batch_size).enumerate() {
        let cond = file.conditions.select(batch);
        let t = Instant::now();
        let mut noise =
            BatchNoise::new(req.seed, range.start + b * req.batch_size, batch.len(), m.dtype.dtype(), device)?;
        let (responses, sums) =
            sampler.generate(&cond.particles, &cond.photon_sum, req.photon_sum, req.denoise, &mut noise)?;
        generating += t.elapsed().as_secs_f64();
        totals.add(&responses, &sums);
        writer.write_with_sums(&responses, &cond, &sums, Some(batch))?;
        pb.inc(batch.len() as u64);
    }
    pb.finish_and_clear();
    let totals = totals.summary();
    writer.set_attr(PHOTON_TOTAL_ERROR_MEDIAN, &totals.median.to_string())?;
    writer.set_attr(PHOTON_TOTAL_ERROR_P90, &totals.p90.to_string())?;
    writer.finish()?;
    report.out(&totals);
    Ok(summary(mine.len(), generating, start, &req.output))
}

/// Attributes of generated ZDC files: the photon-total error (|Σ image − S| / S) of its responses.
pub const PHOTON_TOTAL_ERROR_MEDIAN: &str = "photon_total_error_median";
pub const PHOTON_TOTAL_ERROR_P90: &str = "photon_total_error_p90";

fn run_calo(req: &Request, dir: &Path, m: &Manifest, device: &Device) -> Result<Summary> {
    let mut chain = CaloChain::load(dir, m, device)?;
    chain.set_matmul_precision(matmul_precision(req.precision, dir, m, device)?)?;
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
            let rows = select(f.events, m, req.subset, path, None)?;
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
    Ok(summary(mine.len(), generating, start, &req.output))
}
