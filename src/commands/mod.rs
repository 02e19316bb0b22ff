//! Subcommands: one file each, a short function wiring library pieces together. The binary only
//! parses the arguments ([`crate::cli`]) and calls [`run`].
//!
//! Import rules: `commands` may import every library module and [`crate::cli`]'s structs; no
//! library module imports `commands` or `cli` (the demo calls the other commands' functions).

pub(crate) mod bench;
pub(crate) mod demo;
pub(crate) mod distill_student;
pub(crate) mod evaluate;
pub(crate) mod export_onnx;
pub(crate) mod flow;
pub mod generate;
pub(crate) mod import_detector;
pub(crate) mod import_nflows;
pub(crate) mod inspect;
pub(crate) mod log_prob;
pub(crate) mod merge;
pub(crate) mod sample;
pub(crate) mod selftest;
pub(crate) mod train_teacher;

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::{Error, Result};
use crate::train::Summary;

/// Settings every subcommand shares.
#[derive(Clone, Debug)]
pub struct Globals {
    pub device: String,
    pub show_progress: bool,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    crate::util::interrupt::install_cleanup();
    // candle and rayon read this when their pools start (at the first tensor operation). Without it
    // candle looks the core count up again (reading /proc/cpuinfo) in every matrix product.
    let threads = cli.threads.unwrap_or_else(candle_core::utils::get_num_threads);
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let globals = Globals { device: cli.device.clone(), show_progress: !cli.quiet };
    // The command runs on a thread of candle's pool, so the many small parallel operations of a
    // sampling or training loop start there instead of waking the pool from outside each time.
    match candle_core::utils::with_threadpool(|| execute(&cli.command, &globals)) {
        Ok(code) => Ok(code),
        Err(Error::Interrupted) => {
            if let Some(hint) = stopped_hint(&cli.command) {
                eprintln!("{hint}");
            }
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e),
    }
}

/// What a stopped command line can do next: training resumes, the demo starts over. (Told here,
/// for the command the user typed, not by the training steps the demo runs.)
fn stopped_hint(command: &Command) -> Option<String> {
    let resume = |config: &Path, run: &crate::cli::RunArgs| {
        let out = run.output_dir.clone().unwrap_or_else(|| crate::config::default_output_dir(config));
        format!("stopped; resume with the same command plus --resume ({})", out.display())
    };
    match command {
        Command::TrainTeacher(a) => Some(resume(&a.config, &a.run)),
        Command::DistillStudent(a) => Some(resume(&a.config, &a.run)),
        Command::Demo(a) => {
            Some(format!("stopped; the demo does not resume: run it again to start over ({})", a.output_dir.display()))
        }
        _ => None,
    }
}

/// Runs one subcommand, printing what it reports; the exit code of a run that did not fail.
fn execute(command: &Command, g: &Globals) -> Result<ExitCode> {
    match command {
        Command::Generate(a) => generate::run(a, g)?,
        Command::Inspect(a) => inspect::run(a, g)?,
        Command::TrainTeacher(a) => {
            train_teacher::run(a, g)?;
        }
        Command::DistillStudent(a) => {
            distill_student::run(a, g)?;
        }
        Command::Sample(a) => {
            sample::run(a, g)?;
        }
        Command::Merge(a) => merge::run(a, g)?,
        Command::Evaluate(a) => {
            let (_, regressions) = evaluate::run(a, g)?;
            if !regressions.is_empty() {
                return Ok(ExitCode::from(evaluate::REGRESSION));
            }
        }
        Command::Bench(a) => bench::run(a, g)?,
        Command::Demo(a) => demo::run(a, g)?,
        Command::Selftest => selftest::run(g)?,
        Command::ImportNflows(a) if a.detector.detector.is_some() => println!("{}", import_detector::run(a)?),
        Command::ImportNflows(a) => {
            let spec = import_nflows::run(a)?;
            println!(
                "imported a {:?} of {} blocks ({} features, context {}, {} hidden × {} layers, {} bins, {} parameters) into {}",
                spec.kind,
                spec.blocks,
                spec.features,
                spec.context_features,
                spec.hidden_features,
                spec.hidden_layers + 1,
                spec.spline.num_bins,
                spec.parameter_count(),
                a.output_dir.display()
            );
        }
        Command::LogProb(a) => {
            let (n, mean) = log_prob::run(a, &crate::device::open(&g.device)?)?;
            println!("log-prob: {n} events, mean log_prob {mean:.3} → {}", a.output.display());
        }
        Command::Flow(a) => {
            let n = flow::run(a, &crate::device::open(&g.device)?)?;
            eprintln!("flow: {n} rows");
        }
        Command::ExportOnnx(a) => {
            let (unit, bytes) = export_onnx::run(a)?;
            println!("exported unit '{unit}' to {} ({bytes} bytes)", a.output.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the summary lines of a training command.
fn finish_training(summaries: Result<Vec<Summary>>, out: &Path) -> Result<Vec<Summary>> {
    let s = summaries?;
    for line in s.iter().map(crate::models::summary_line) {
        println!("{line}");
    }
    println!("model: {}", out.display());
    Ok(s)
}
