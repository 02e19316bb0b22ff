//! `zdcflow bench`: times the papers' stack shapes (or a config's, or whole showers) on this
//! machine, as a table or as the peer benchmark's JSON lines.

use clap::ValueEnum;

use super::{Context, Report};
use crate::cli::{BenchArgs, BenchWhat};
use crate::diagnostics::perf::{self as bench, What};
use crate::error::{Error, Result};

pub fn run(a: &BenchArgs, ctx: &Context) -> Result<Report> {
    let device = ctx.device()?;
    if let Some(detector) = a.shower {
        let voxels = |ds| crate::data::geometry::CaloGeometry::for_dataset(ds).map_or(0, |g| g.voxels());
        let (shape, values) = match detector {
            crate::config::Detector::Zdc => ("zdc", crate::data::channels::PIXELS),
            crate::config::Detector::Ds2 => ("ds2-flow3", voxels(2)),
            crate::config::Detector::Ds3 => ("ds3-flow3", voxels(3)),
        };
        let shape = bench::shape_by_name(shape)?;
        // The shower's values, its postprocessed copy, the noise and the output buffer.
        check_batch_memory(a.batch_size.unwrap_or(1000), &shape, 4 * values)?;
        let m = bench::measure_showers(
            detector,
            !a.teacher,
            a.batch_size.unwrap_or(1000),
            a.repeats,
            crate::sample::SamplingPrecision::from(a.precision).apply(device)?,
            device,
        )?;
        return Ok(if a.json { Report::line(json(&m)?) } else { Report::text(bench::render(&[m])) });
    }
    let shapes = match (&a.shape, &a.config) {
        (Some(s), _) => vec![bench::shape_by_name(s.to_possible_value().expect("named").get_name())?],
        (None, Some(path)) => bench::config_shapes(&crate::config::Config::load(path, &[])?),
        (None, None) => vec![bench::shape_by_name("ds2-flow3")?],
    };
    if shapes.is_empty() {
        let path = a.config.as_deref().unwrap_or(std::path::Path::new("--config"));
        return Err(Error::format(path, "has no teacher flow section to time (a student config? use its teacher's)"));
    }
    if let Some(b) = a.batch_size {
        for s in &shapes {
            check_batch_memory(b, s, 0)?;
        }
    }
    let whats = match a.what {
        BenchWhat::TrainStep => vec![What::TrainStep],
        BenchWhat::SampleIaf => vec![What::SampleIaf],
        BenchWhat::SampleMaf => vec![What::SampleMaf],
        BenchWhat::All => vec![What::TrainStep, What::SampleIaf, What::SampleMaf],
    };
    let mut all = Vec::new();
    for shape in &shapes {
        for &what in &whats {
            if let Some(m) = bench::measure(shape, what, a.batch_size, a.repeats, device)? {
                if a.json {
                    // Each measurement is printed as it is made (a run of every shape is long).
                    super::print(Report::line(json(&m)?))?;
                }
                all.push(m);
            }
        }
    }
    if all.is_empty() {
        return Err(Error::Invalid("bench: nothing was measured (no batch size for this measurement)".into()));
    }
    Ok(if a.json { Report::default() } else { Report::text(bench::render(&all)) })
}

/// One measurement as a JSON line of the peer benchmark's schema.
fn json(m: &bench::Measurement) -> Result<String> {
    serde_json::to_string(m).map_err(|e| Error::Invalid(e.to_string()))
}

/// A batch of `b` rows through stack `s` (and `extra` more values per row), against the memory
/// budget: the activations of every hidden layer of every block, kept for the backward pass.
fn check_batch_memory(b: usize, s: &bench::Shape, extra: usize) -> Result<()> {
    let per_row = (s.blocks * (s.layers + 2) * s.hidden.max(s.features) + 2 * s.features + extra) as f64;
    crate::util::limits::check_memory(&format!("--batch-size {b} on {}", s.name), 4.0 * 4.0 * b as f64 * per_row)
}
