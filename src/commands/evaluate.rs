//! `zdcflow evaluate`: the papers' metrics of generated against reference showers, figures,
//! and the regression gate (`--baseline`).

use std::path::PathBuf;

use super::{Context, Report};
use crate::cli::{ClassifierChoice, EvaluateArgs};
use crate::data::open::DataFile;
use crate::error::{Error, Result};
use crate::eval::report::{compare, MetricsFile, Regression};
use crate::eval::{self, classifier};

/// Exit code of `evaluate --baseline` when a metric got worse (2 is clap's usage error, 1 any
/// other error).
pub const REGRESSION: u8 = 3;

pub fn run(a: &EvaluateArgs, ctx: &Context) -> Result<Report> {
    run_with_metrics(a, ctx).map(|(_, report)| report)
}

/// Runs `evaluate`; the metrics (the demo tabulates them) and its report.
pub(super) fn run_with_metrics(a: &EvaluateArgs, ctx: &Context) -> Result<(MetricsFile, Report)> {
    let req = Request {
        reference: a.reference.clone(),
        reference2: a.reference2.clone(),
        generated: a.generated.clone(),
        output: a.output.clone(),
        plots: a.plots.clone(),
        baseline: a.baseline.clone(),
        tolerance: a.tolerance,
        classifier: classifier::Settings {
            epochs: a.classifier_epochs,
            hidden: a.classifier_hidden,
            layers: a.classifier_layers,
            batch_size: a.classifier_batch,
            lr: a.classifier_lr,
            seed: a.seed,
        },
        classifier_inputs: if a.classifier_epochs == 0 {
            Vec::new()
        } else {
            let mut v: Vec<eval::calo::ClassifierInput> = a
                .classifiers
                .iter()
                .map(|c| match c {
                    ClassifierChoice::Low => eval::calo::ClassifierInput::Low,
                    ClassifierChoice::LowNormed => eval::calo::ClassifierInput::LowNormed,
                    ClassifierChoice::High => eval::calo::ClassifierInput::High,
                })
                .collect();
            v.dedup();
            v
        },
        classifier_runs: a.classifier_runs,
        classifier_showers: a.classifier_showers,
        features_out: a.features_out.clone(),
        show_progress: ctx.show_progress,
    };
    let (metrics, regressions) = evaluate(&req, ctx.device()?)?;
    let mut report = Report::text(eval::render(&metrics));
    if let Some(p) = &a.output {
        report.out(format!("metrics: {}", p.display()));
    }
    if let Some(p) = &a.plots {
        report.out(format!("plots: {}", p.display()));
    }
    if let Some(b) = &a.baseline {
        if regressions.is_empty() {
            report.out(format!("gate: no metric worse than {} by more than {:.1} %", b.display(), 100.0 * a.tolerance));
        } else {
            for r in &regressions {
                report.err(format!(
                    "gate: {} got worse: {:.6} → {:.6} ({:+.1} %)",
                    r.metric,
                    r.baseline,
                    r.current,
                    100.0 * r.worse_by
                ));
            }
            report.err(format!(
                "gate: {} metric(s) worse than {} by more than {:.1} %",
                regressions.len(),
                b.display(),
                100.0 * a.tolerance
            ));
            report = report.exit_with(REGRESSION);
        }
    }
    Ok((metrics, report))
}

struct Request {
    reference: PathBuf,
    /// ZDC: a second reference file for the noise floor (default: halves of the reference).
    reference2: Option<PathBuf>,
    generated: PathBuf,
    output: Option<PathBuf>,
    plots: Option<PathBuf>,
    baseline: Option<PathBuf>,
    tolerance: f64,
    classifier: classifier::Settings,
    /// CaloChallenge: classifier tests to run, runs each, showers per class (None: all), features file.
    classifier_inputs: Vec<eval::calo::ClassifierInput>,
    classifier_runs: usize,
    classifier_showers: Option<usize>,
    features_out: Option<PathBuf>,
    show_progress: bool,
}

/// Refuses, before anything is computed, outputs that would replace an input, each other, or
/// something that is not a regular file (`--plots` is a directory).
fn check_outputs(req: &Request) -> Result<()> {
    use crate::util::output_guard::{check_output, Input};
    let mut inputs = vec![Input::File("--reference", &req.reference), Input::File("--generated", &req.generated)];
    inputs.extend(req.reference2.as_deref().map(|p| Input::File("--reference2", p)));
    inputs.extend(req.baseline.as_deref().map(|b| Input::File("--baseline", b)));
    if let Some(o) = &req.output {
        check_output(o, "--output", &inputs)?;
        inputs.push(Input::File("--output", o));
    }
    if let Some(o) = &req.features_out {
        check_output(o, "--features-out", &inputs)?;
    }
    match &req.plots {
        Some(p) if p.exists() && !p.is_dir() => {
            Err(Error::format(p, "--plots is a directory for the figures, and this path exists and is not one"))
        }
        _ => Ok(()),
    }
}

/// Computes the metrics (and figures), writes them, and applies the gate.
fn evaluate(req: &Request, device: &candle_core::Device) -> Result<(MetricsFile, Vec<Regression>)> {
    check_outputs(req)?;
    // The baseline is checked before the (long) evaluation: an unusable one fails at once.
    let baseline = req
        .baseline
        .as_deref()
        .map(|b| MetricsFile::load(b).and_then(|m| eval::report::check_baseline(&m, b).map(|()| m)))
        .transpose()?;
    let reference = DataFile::open(&req.reference)?;
    let generated = DataFile::open(&req.generated)?;
    let mut out = MetricsFile::new(
        match &reference {
            DataFile::Zdc(_) => "zdc",
            DataFile::Calo(c) if c.geometry.dataset == 2 => "ds2",
            DataFile::Calo(_) => "ds3",
        },
        eval::info(&req.reference, reference.events()),
        eval::info(&req.generated, generated.events()),
        req.classifier.seed,
    );
    let (metrics, details) = match (&reference, &generated) {
        (DataFile::Zdc(r), DataFile::Zdc(g)) => {
            if let Some(o) = &req.features_out {
                return Err(Error::format(
                    o,
                    "--features-out writes the CaloChallenge classifier's features; ZDC files have none",
                ));
            }
            let r2 = match &req.reference2 {
                Some(p) => match DataFile::open(p)? {
                    DataFile::Zdc(f) => Some(f),
                    _ => return Err(Error::format(p, "--reference2 must be a ZDC file like --reference")),
                },
                None => None,
            };
            eval::zdc::evaluate(r, g, r2.as_ref(), req.plots.as_deref(), req.show_progress)?
        }
        (DataFile::Calo(r), DataFile::Calo(g)) => {
            let opts = eval::calo::Options {
                classifier: req.classifier.clone(),
                inputs: req.classifier_inputs.clone(),
                runs: req.classifier_runs,
                showers: req.classifier_showers,
                features_out: req.features_out.clone(),
                device: device.clone(),
            };
            eval::calo::evaluate(r, g, &opts, req.plots.as_deref(), req.show_progress)?
        }
        (r, g) => {
            return Err(Error::format(
                &req.generated,
                format!(
                    "holds {} data but the reference {} holds {}",
                    eval::describe(g),
                    req.reference.display(),
                    eval::describe(r)
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
