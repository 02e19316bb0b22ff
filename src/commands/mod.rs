//! Subcommands: one file each, a short function wiring library pieces together. The binary only
//! parses the arguments ([`crate::cli`]) and calls [`run`].
//!
//! Every subcommand is `run(&XArgs, &Context) -> Result<Report>`: the [`Context`] holds what all
//! of them share (the device, opened once, and whether to draw progress bars); the [`Report`] is
//! what it tells the user when it is done, printed in one place ([`print`]). What a command logs
//! while it runs (progress bars, the training log, warnings) goes to standard error as it happens.
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

use std::fmt::Display;
use std::path::Path;
use std::process::ExitCode;
use std::sync::OnceLock;

use candle_core::Device;

use crate::cli::{Cli, Command};
use crate::error::{Error, Result};
use crate::train::Summary;

/// What every subcommand is given besides its own arguments.
#[derive(Clone, Debug)]
pub struct Context {
    /// `--device` as given: cpu, cuda or cuda:N.
    pub device_name: String,
    /// Whether progress bars are drawn (not `--quiet`).
    pub show_progress: bool,
    device: OnceLock<Device>,
}

impl Context {
    pub fn new(device_name: String, show_progress: bool) -> Self {
        Context { device_name, show_progress, device: OnceLock::new() }
    }

    /// The device `--device` names, opened when a command first asks for it (commands that need
    /// none never open it) and then kept.
    pub fn device(&self) -> Result<&Device> {
        if let Some(d) = self.device.get() {
            return Ok(d);
        }
        let opened = crate::device::open(&self.device_name)?;
        Ok(self.device.get_or_init(|| opened))
    }

    /// The same context without progress bars (the demo's steps), sharing the device.
    fn without_progress(&self) -> Self {
        Context { show_progress: false, ..self.clone() }
    }
}

/// What a subcommand tells the user when it is done: text for standard output, then for standard
/// error, and how the process ends. [`print`] prints it.
#[derive(Debug, Default)]
#[must_use]
pub struct Report {
    stdout: String,
    stderr: String,
    /// The exit code of a run that did not fail: 0, or `evaluate`'s [`evaluate::REGRESSION`].
    exit_code: u8,
    /// A failure found once the report was made (a selftest check failed), printed after it.
    failure: Option<Error>,
}

impl Report {
    /// A report of one line on standard output.
    pub fn line(line: impl Display) -> Self {
        let mut r = Report::default();
        r.out(line);
        r
    }

    /// A report of text, ending its own lines, on standard output.
    pub fn text(text: String) -> Self {
        Report { stdout: text, ..Report::default() }
    }

    /// Adds a line to standard output.
    pub fn out(&mut self, line: impl Display) {
        self.stdout.push_str(&format!("{line}\n"));
    }

    /// Adds a line to standard error.
    pub fn err(&mut self, line: impl Display) {
        self.stderr.push_str(&format!("{line}\n"));
    }

    /// Ends the process with `code` (not 0) once the report is printed.
    pub fn exit_with(mut self, code: u8) -> Self {
        self.exit_code = code;
        self
    }

    /// Fails with `e` once the report is printed.
    pub fn fail_with(mut self, e: Error) -> Self {
        self.failure = Some(e);
        self
    }
}

/// Prints a report; the exit code of a run that did not fail.
fn print(report: Report) -> Result<ExitCode> {
    print!("{}", report.stdout);
    eprint!("{}", report.stderr);
    match report.failure {
        Some(e) => Err(e),
        None => Ok(ExitCode::from(report.exit_code)),
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    crate::util::interrupt::install_cleanup();
    // candle and rayon read this when their pools start (at the first tensor operation). Without it
    // candle looks the core count up again (reading /proc/cpuinfo) in every matrix product.
    let threads = cli.threads.unwrap_or_else(candle_core::utils::get_num_threads);
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let ctx = Context::new(cli.device.clone(), !cli.quiet);
    // The command runs on a thread of candle's pool, so the many small parallel operations of a
    // sampling or training loop start there instead of waking the pool from outside each time.
    match candle_core::utils::with_threadpool(|| execute(&cli.command, &ctx)) {
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

/// Runs one subcommand and prints its report; the exit code of a run that did not fail.
fn execute(command: &Command, ctx: &Context) -> Result<ExitCode> {
    let report = match command {
        Command::Generate(a) => generate::run(a, ctx)?,
        Command::Inspect(a) => inspect::run(a, ctx)?,
        Command::TrainTeacher(a) => train_teacher::run(a, ctx)?,
        Command::DistillStudent(a) => distill_student::run(a, ctx)?,
        Command::Sample(a) => sample::run(a, ctx)?,
        Command::Merge(a) => merge::run(a, ctx)?,
        Command::Evaluate(a) => evaluate::run(a, ctx)?,
        Command::Bench(a) => bench::run(a, ctx)?,
        Command::Demo(a) => demo::run(a, ctx)?,
        Command::Selftest(a) => selftest::run(a, ctx)?,
        Command::ImportNflows(a) if a.detector.detector.is_some() => import_detector::run(a, ctx)?,
        Command::ImportNflows(a) => import_nflows::run(a, ctx)?,
        Command::LogProb(a) => log_prob::run(a, ctx)?,
        Command::Flow(a) => flow::run(a, ctx)?,
        Command::ExportOnnx(a) => export_onnx::run(a, ctx)?,
    };
    print(report)
}

/// The report of a training command: its units' summary lines and the model directory.
fn training_report(summaries: &[Summary], out: &Path) -> Report {
    let mut r = Report::default();
    for line in summaries.iter().map(crate::models::summary_line) {
        r.out(line);
    }
    r.out(format!("model: {}", out.display()));
    r
}
