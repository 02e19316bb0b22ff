//! Evaluation: the papers' metrics on generated versus reference showers, figures, and the
//! regression gate that CI jobs run.

pub mod calo;
pub mod calo_features;
pub mod calo_features_out;
pub mod calo_hist;
pub mod calo_plots;
pub mod classifier;
pub mod plots;
pub mod report;
pub mod stats;
pub mod zdc;
pub mod zdc_metrics;

use std::path::{Path, PathBuf};

use crate::data::h5;
use crate::data::open::DataFile;
use crate::error::{Error, Result};
use report::{compare, FileInfo, MetricsFile, Regression};

pub struct Request {
    pub reference: PathBuf,
    /// ZDC: a second reference file for the noise floor (default: halves of the reference).
    pub reference2: Option<PathBuf>,
    pub generated: PathBuf,
    pub output: Option<PathBuf>,
    pub plots: Option<PathBuf>,
    pub baseline: Option<PathBuf>,
    pub tolerance: f64,
    pub classifier: classifier::Settings,
    /// CaloChallenge: classifier tests to run, runs each, showers per class (None: all), features file.
    pub classifier_inputs: Vec<calo::ClassifierInput>,
    pub classifier_runs: usize,
    pub classifier_showers: Option<usize>,
    pub features_out: Option<PathBuf>,
    pub show_progress: bool,
}

fn describe(f: &DataFile) -> String {
    match f {
        DataFile::Calo(c) => format!("CaloChallenge dataset {}", c.geometry.dataset),
        DataFile::Zdc(_) => "ZDC".into(),
    }
}

fn info(path: &Path, events: usize) -> FileInfo {
    let attrs = crate::data::zdc::is_npz(path).then_some(()).map_or_else(|| h5::open(path).ok(), |_| None);
    FileInfo {
        path: path.display().to_string(),
        events,
        model: attrs.as_ref().and_then(|f| h5::get_attr(f, "model")),
        seed: attrs.as_ref().and_then(|f| h5::get_attr(f, "seed")),
    }
}

/// Computes the metrics (and figures), writes them, and applies the gate.
pub fn run(req: &Request, device: &candle_core::Device) -> Result<(MetricsFile, Vec<Regression>)> {
    if let Some(o) = &req.output {
        let mut inputs = vec![("--reference", req.reference.as_path()), ("--generated", req.generated.as_path())];
        inputs.extend(req.baseline.as_deref().map(|b| ("--baseline", b)));
        crate::util::atomic::ensure_not_input(o, "--output", &inputs)?;
    }
    // The baseline is checked before the (long) evaluation: an unusable one fails at once.
    let baseline = req
        .baseline
        .as_deref()
        .map(|b| MetricsFile::load(b).and_then(|m| report::check_baseline(&m, b).map(|()| m)))
        .transpose()?;
    let reference = DataFile::open(&req.reference)?;
    let generated = DataFile::open(&req.generated)?;
    let mut out = MetricsFile::new(
        match &reference {
            DataFile::Zdc(_) => "zdc",
            DataFile::Calo(c) if c.geometry.dataset == 2 => "ds2",
            DataFile::Calo(_) => "ds3",
        },
        info(&req.reference, reference.events()),
        info(&req.generated, generated.events()),
        req.classifier.seed,
    );
    let (metrics, details) = match (&reference, &generated) {
        (DataFile::Zdc(r), DataFile::Zdc(g)) => {
            let r2 = match &req.reference2 {
                Some(p) => match DataFile::open(p)? {
                    DataFile::Zdc(f) => Some(f),
                    _ => return Err(Error::format(p, "--reference2 must be a ZDC file like --reference")),
                },
                None => None,
            };
            zdc::evaluate(r, g, r2.as_ref(), req.plots.as_deref(), req.show_progress)?
        }
        (DataFile::Calo(r), DataFile::Calo(g)) => {
            let opts = calo::Options {
                classifier: req.classifier.clone(),
                inputs: req.classifier_inputs.clone(),
                runs: req.classifier_runs,
                showers: req.classifier_showers,
                features_out: req.features_out.clone(),
                device: device.clone(),
            };
            calo::evaluate(r, g, &opts, req.plots.as_deref(), req.show_progress)?
        }
        (r, g) => {
            return Err(Error::format(
                &req.generated,
                format!(
                    "holds {} data but the reference {} holds {}",
                    describe(g),
                    req.reference.display(),
                    describe(r)
                ),
            ))
        }
    };
    out.metrics = metrics;
    out.details = details;
    if let Some(path) = &req.output {
        out.save(path)?;
    }
    let regressions = match (&req.baseline, baseline) {
        (Some(b), Some(base)) => {
            if base.detector != out.detector {
                return Err(Error::format(
                    b,
                    format!("is a {} baseline; these files are {}", base.detector, out.detector),
                ));
            }
            compare(&out, &base, req.tolerance).map_err(|m| Error::format(b, m))?
        }
        _ => Vec::new(),
    };
    Ok((out, regressions))
}

/// The metrics as an aligned two-column table.
pub fn render(m: &MetricsFile) -> String {
    let rows = report::flatten(&m.metrics);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut s = format!(
        "{} — generated {} ({} events) vs reference {} ({} events)\n",
        m.detector, m.generated.path, m.generated.events, m.reference.path, m.reference.events
    );
    for (k, v) in rows {
        s.push_str(&format!("  {k:<width$}  {v:.6}\n"));
    }
    s.push_str(&zdc::floor_lines(&m.details));
    s
}
