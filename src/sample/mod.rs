//! Generation: the detectors' samplers ([`zdc`], [`calo`]) and their noise removal ([`denoise`]),
//! which events of a conditions file to generate for, deterministic shards for job arrays and
//! their merging ([`merge`]). `zdcflow sample` and `zdcflow merge` ([`crate::commands`]) write
//! them in chunks.

pub mod calo;
pub mod denoise;
pub(crate) mod merge;
pub mod zdc;

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::Rng;
use serde::Serialize;

use crate::config::Detector;
use crate::data::split::{split, Part};
use crate::error::{Error, Result};
use crate::models::manifest::{Manifest, Role};
use crate::util::rng::{derive, tag};

/// Which events of a conditions file to generate for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subset {
    /// ZDC: the model's test split when the file is its training file, else every event;
    /// CaloChallenge: every event.
    Auto,
    All,
    Part(Part),
}

/// The precision of the flows' masked-layer products when sampling (`--precision`, parsed as
/// `cli::PrecisionArg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplingPrecision {
    /// The model's own (float32 or float64).
    #[default]
    Model,
    /// bf16 inputs and weights, float32 sums, in the masked layers of a float32 model: on AMX
    /// tiles where the CPU has them (Intel Xeon 4th generation and later), by cuBLAS in bf16 on
    /// CUDA; on other CPUs the same numbers, but slower than float32.
    Bf16,
    /// CUDA only: every float32 matrix product on TF32 tensor cores (10-bit significands).
    Tf32,
}

impl SamplingPrecision {
    pub fn name(self) -> &'static str {
        match self {
            SamplingPrecision::Model => "model",
            SamplingPrecision::Bf16 => "bf16",
            SamplingPrecision::Tf32 => "tf32",
        }
    }

    /// Sets what is process-wide (TF32 on CUDA) and returns what the flows are to use.
    pub fn apply(self, device: &candle_core::Device) -> Result<crate::flow::MatmulPrecision> {
        use crate::flow::MatmulPrecision;
        match self {
            SamplingPrecision::Model => Ok(MatmulPrecision::Full),
            SamplingPrecision::Bf16 => Ok(MatmulPrecision::Bf16),
            SamplingPrecision::Tf32 if device.is_cuda() => {
                candle_core::cuda::set_gemm_reduced_precision_f32(true);
                Ok(MatmulPrecision::Full)
            }
            SamplingPrecision::Tf32 => Err(Error::Invalid(
                "--precision tf32 is a CUDA tensor-core format (use it with --device cuda); on a CPU use bf16".into(),
            )),
        }
    }
}

/// What a sampling run generated, and how fast.
#[derive(Debug, Serialize)]
pub struct Summary {
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
pub fn check_shard(total: usize, mine: usize, shard: Option<(usize, usize)>) -> Result<()> {
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

/// The model to sample with: the directory given, or its teacher with `use_teacher`.
pub fn resolve_model(model: &Path, use_teacher: bool) -> Result<(PathBuf, Manifest)> {
    let m = Manifest::load(model)?;
    if use_teacher && m.role == Role::Student {
        let t = m.teacher.clone().ok_or_else(|| Error::checkpoint(model, "records no teacher"))?;
        let tm = Manifest::load(&t)?;
        return Ok((t, tm));
    }
    Ok((model.to_path_buf(), m))
}

/// Events of a conditions file for `subset`, using the model's split where asked.
pub fn select(
    file_events: usize,
    m: &Manifest,
    subset: Subset,
    path: &Path,
    pdg: Option<&[i32]>,
) -> Result<Vec<usize>> {
    let is_training_file = file_events == m.data.events;
    let part = match subset {
        Subset::All => return Ok((0..file_events).collect()),
        Subset::Auto if m.detector == Detector::Zdc && is_training_file => Part::Test,
        Subset::Auto => return Ok((0..file_events).collect()),
        Subset::Part(p) => p,
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

/// E_inc of generated event `i`: log-uniform in 1 GeV – 1 TeV (MeV), from the event's own stream.
pub fn log_uniform_energy(seed: u64, i: usize) -> f32 {
    let u: f64 = derive(seed, &[tag::SAMPLE, i as u64, 0]).random();
    10f64.powf(3.0 + 3.0 * u) as f32
}

/// The summary of a run that generated `events` in `generating` seconds (of the time since `start`).
pub fn summary(events: usize, generating: f64, start: Instant, output: &Path) -> Summary {
    Summary {
        events,
        generate_s: generating,
        total_s: start.elapsed().as_secs_f64(),
        ms_per_sample: 1e3 * generating / events.max(1) as f64,
        output: output.to_path_buf(),
    }
}
