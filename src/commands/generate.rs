//! `zdcflow generate`: synthetic data files in the real formats.

use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use super::{Context, Report};
use crate::cli::{GenerateArgs, GenerateWhat};
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

pub fn run(a: &GenerateArgs, ctx: &Context) -> Result<Report> {
    match &a.what {
        GenerateWhat::Calo { dataset, events, seed, output, gzip } => {
            let r = calo(*dataset, *events, *seed, output, *gzip, ctx.show_progress)?;
            Ok(Report::line(format!(
                "wrote {events} dataset-{dataset} showers to {} ({:.0} showers/s simulated, {:.0}/s with writing)",
                output.display(),
                r.simulated_per_s,
                r.written_per_s
            )))
        }
        GenerateWhat::Zdc { events, seed, output } => {
            zdc(*events, *seed, output)?;
            Ok(Report::line(format!("wrote {events} ZDC responses to {}", output.display())))
        }
    }
}

/// Throughput of [`calo`].
pub struct CaloRates {
    /// Showers simulated per second of simulation time.
    pub simulated_per_s: f64,
    /// Showers per second of wall time, writing (and compressing) included.
    pub written_per_s: f64,
}

/// Writes `events` synthetic CaloChallenge showers at gzip level `gzip`. The next chunk is
/// simulated while the previous one is compressed and written.
pub fn calo(dataset: u8, events: usize, seed: u64, output: &Path, gzip: u8, show_progress: bool) -> Result<CaloRates> {
    if events == 0 {
        return Err(Error::Invalid("--events must be ≥ 1".into()));
    }
    let g = CaloGeometry::for_dataset(dataset)
        .ok_or_else(|| Error::Invalid(format!("--dataset {dataset}: only 2 and 3 exist")))?;
    let chunk = (CALO_CHUNK_BYTES / (4 * g.voxels())).max(1);
    crate::util::limits::check_disk(output, events as f64 * 4.0 * (g.voxels() + 1) as f64, gzip > 0)?;
    let mut writer = CaloWriter::create(output, &g, events, &attrs(&format!("calo --dataset {dataset}"), seed), gzip)?;
    let pb = progress::bar(events as u64, "generating", "showers", show_progress);
    let start = Instant::now();
    let (tx, rx) = mpsc::sync_channel(1);
    let simulating = std::thread::scope(|scope| -> Result<f64> {
        let producer = scope.spawn(|| {
            let mut busy = 0.0;
            for first in (0..events).step_by(chunk) {
                let t = Instant::now();
                let c = synth::calo::generate_calo(&g, seed, first, chunk.min(events - first));
                busy += t.elapsed().as_secs_f64();
                if tx.send(c).is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            drop(tx);
            busy
        });
        let written = rx.iter().try_for_each(|c| {
            writer.write(&c)?;
            pb.inc(c.len() as u64);
            Ok(())
        });
        drop(rx);
        let busy = producer.join().expect("the shower simulation does not panic");
        written.map(|()| busy)
    })?;
    pb.finish_and_clear();
    writer.finish()?;
    let per_s = |s: f64| events as f64 / s.max(1e-9);
    Ok(CaloRates { simulated_per_s: per_s(simulating), written_per_s: per_s(start.elapsed().as_secs_f64()) })
}

/// Writes `events` synthetic ZDC responses with their conditions.
pub fn zdc(events: usize, seed: u64, output: &Path) -> Result<()> {
    if events == 0 {
        return Err(Error::Invalid("--events must be ≥ 1".into()));
    }
    // Every response is simulated in memory before it is written.
    let per_event = 4.0 * (crate::data::channels::PIXELS + 12) as f64;
    crate::util::limits::check_memory(&format!("--events {events}"), 2.0 * per_event * events as f64)?;
    crate::util::limits::check_disk(output, per_event * events as f64, true)?;
    let e = synth::zdc::generate_zdc(seed, events);
    let mut writer = ZdcWriter::create(output, events, &attrs("zdc", seed), false)?;
    let photon_sum = e.responses.chunks(crate::data::channels::PIXELS).map(|r| r.iter().sum()).collect();
    writer.write(&e.responses, &ZdcConditions { particles: e.particles, pdg: e.pdg, photon_sum }, None)?;
    writer.finish()
}
