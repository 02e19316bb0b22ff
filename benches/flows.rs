//! `cargo bench`: the same measurements as `zdcflow bench`, for every paper shape — a MAF training
//! step (log-prob + backward + Adam), IAF sampling and MAF sampling of random-weight stacks, then
//! whole student showers (everything `sample` does but writing the file), each also with bf16
//! products (`sample --precision bf16`, the `-bf16` rows) — printed as one table.
//!
//! `cargo bench -- FILTER` keeps the rows whose "shape what" contains FILTER (e.g. `ds2`, `sample-iaf`);
//! `ZDCFLOW_BENCH_REPEATS=N` sets the timed runs per row (best of N after one warm-up, default 3);
//! `ZDCFLOW_BENCH_SHOWER_BATCH=B` the batch of the whole-shower rows (default 1000 for DS2 and the ZDC,
//! a tenth of it for DS3, whose student costs ~10× more per shower).
//! Compare with `../shared/peer/peer_bench.py` run on the same idle machine; the ratio is the figure.

use candle_core::Device;
use zdcflow::config::Detector;
use zdcflow::diagnostics::perf::{self as bench, Measurement, What};
use zdcflow::flow::MatmulPrecision;

fn env_usize(name: &str, default: usize) -> zdcflow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|_| zdcflow::Error::Invalid(format!("{name}={v}: expected a whole number"))),
        Err(_) => Ok(default),
    }
}

fn main() -> zdcflow::Result<()> {
    // Cargo passes `--bench`; any other argument is a row filter.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let keep = |label: &str| filter.as_deref().is_none_or(|f| label.contains(f));
    let repeats = env_usize("ZDCFLOW_BENCH_REPEATS", 3)?;
    let shower_batch = env_usize("ZDCFLOW_BENCH_SHOWER_BATCH", 1000)?;
    let device = Device::Cpu;
    let mut rows: Vec<Measurement> = Vec::new();
    let mut record = |m: Measurement| {
        eprintln!("{} {} (batch {}): {:.4} ms/sample", m.shape, m.what, m.batch, m.ms_per_sample);
        rows.push(m);
    };
    for name in ["ds2-flow3", "ds3-flow3", "zdc"] {
        let shape = bench::shape_by_name(name)?;
        for what in [What::TrainStep, What::SampleIaf, What::SampleMaf] {
            if !keep(&format!("{name} {}", what.name())) {
                continue;
            }
            if let Some(m) = bench::measure(&shape, what, None, repeats, &device)? {
                record(m);
            }
        }
    }
    for (detector, label, batch) in [
        (Detector::Ds2, "ds2-student", shower_batch),
        (Detector::Ds3, "ds3-student", (shower_batch / 10).max(1)),
        (Detector::Zdc, "zdc-student", shower_batch),
    ] {
        for (precision, suffix) in [(MatmulPrecision::Full, ""), (MatmulPrecision::Bf16, "-bf16")] {
            if keep(&format!("{label}{suffix} sample-shower")) {
                record(bench::measure_showers(detector, true, batch, repeats, precision, &device)?);
            }
        }
    }
    println!("\nzdcflow {} on {}", env!("CARGO_PKG_VERSION"), zdcflow::device::describe(&device));
    print!("{}", bench::render(&rows));
    Ok(())
}
