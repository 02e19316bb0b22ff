//! `zdcflow generate`: synthetic data files in the real formats.

use std::path::Path;
use std::time::Instant;

use crate::data::calo::CaloWriter;
use crate::data::geometry::CaloGeometry;
use crate::data::synth;
use crate::data::zdc::{ZdcConditions, ZdcWriter};
use crate::error::{Error, Result};
use crate::util::progress;

/// Events generated and written per step.
const CALO_CHUNK_BYTES: usize = 64 << 20;

fn attrs(kind: &str, seed: u64) -> Vec<(&'static str, String)> {
    vec![("generator", format!("zdcflow {} generate {kind}", env!("CARGO_PKG_VERSION"))), ("seed", seed.to_string())]
}

/// Writes `events` synthetic CaloChallenge showers; returns showers per second.
pub fn calo(dataset: u8, events: usize, seed: u64, output: &Path, show_progress: bool) -> Result<f64> {
    if events == 0 {
        return Err(Error::Invalid("--events must be ≥ 1".into()));
    }
    let g = CaloGeometry::for_dataset(dataset)
        .ok_or_else(|| Error::Invalid(format!("--dataset {dataset}: only 2 and 3 exist")))?;
    let chunk = (CALO_CHUNK_BYTES / (4 * g.voxels())).max(1);
    let mut writer = CaloWriter::create(output, &g, events, &attrs(&format!("calo --dataset {dataset}"), seed))?;
    let pb = progress::bar(events as u64, "generating", "showers", show_progress);
    let start = Instant::now();
    for first in (0..events).step_by(chunk) {
        let n = chunk.min(events - first);
        let c = synth::calo::generate_calo(&g, seed, first, n);
        writer.write(&c)?;
        pb.inc(n as u64);
    }
    let rate = events as f64 / start.elapsed().as_secs_f64().max(1e-9);
    pb.finish_and_clear();
    writer.finish()?;
    Ok(rate)
}

/// Writes `events` synthetic ZDC responses with their conditions.
pub fn zdc(events: usize, seed: u64, output: &Path) -> Result<()> {
    if events == 0 {
        return Err(Error::Invalid("--events must be ≥ 1".into()));
    }
    let e = synth::zdc::generate_zdc(seed, events);
    let mut writer = ZdcWriter::create(output, events, &attrs("zdc", seed), false)?;
    let photon_sum = e.responses.chunks(crate::data::channels::PIXELS).map(|r| r.iter().sum()).collect();
    writer.write(&e.responses, &ZdcConditions { particles: e.particles, pdg: e.pdg, photon_sum }, None)?;
    writer.finish()
}
