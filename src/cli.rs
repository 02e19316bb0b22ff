//! Command-line interface: one clap struct per subcommand; [`run`] dispatches to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "zdcflow",
    version,
    about = "Fast calorimeter simulation with normalizing flows (MAF teachers, IAF students)",
    long_about = "Fast calorimeter simulation with normalizing flows.\n\n\
        Trains masked autoregressive flows (MAF teachers) on the ALICE Zero Degree Calorimeter and on \
        CaloChallenge datasets 2 and 3 (iCaloFlow), distils them into inverse autoregressive flows \
        (IAF students) that sample in one pass, samples showers into the official file formats and \
        evaluates them with the papers' metrics.\n\n\
        Typical session:\n  \
        zdcflow generate zdc --events 20000 --seed 1 --output zdc.h5\n  \
        zdcflow train-teacher --config configs/smoke-zdc.toml --set data.path=zdc.h5 --output-dir runs/teacher\n  \
        zdcflow distill-student --config configs/smoke-zdc-student.toml --teacher runs/teacher --set data.path=zdc.h5 --output-dir runs/student\n  \
        zdcflow sample --model runs/student --conditions zdc.h5 --output gen.h5\n  \
        zdcflow evaluate --reference zdc.h5 --generated gen.h5 --output metrics.json --plots plots/",
    after_help = "Exit codes: 0 done; 1 error (bad input, a limit exceeded, an unusable baseline); \
        2 usage error (unknown flag, missing argument); 3 regression (evaluate --baseline: a metric got worse); \
        130 interrupted (SIGINT/SIGTERM; training saves a checkpoint first).\n\
        Memory: sizes from files, configs and flags are checked against 80 % of physical memory before \
        anything is allocated; ZDCFLOW_MEMORY_LIMIT=SIZE (e.g. 200G) sets another limit."
)]
pub struct Cli {
    /// Where tensors live: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, global = true, default_value = "cpu")]
    pub device: String,

    /// CPU threads for tensor work, 1–1024 (default: all cores).
    #[arg(long, global = true, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=crate::util::limits::MAX_THREADS as u64))]
    pub threads: Option<usize>,

    /// No progress bars (logs and summaries are still printed).
    #[arg(long, short, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write synthetic data in the real formats (CaloChallenge HDF5, zdcflow's ZDC HDF5).
    Generate(GenerateArgs),
    /// Detect a file's format, validate it completely (streaming) and summarise it.
    Inspect(InspectArgs),
    /// Train MAF teachers (ZDC flow + photon-sum regressor, or iCaloFlow Flow-1/2/3) from a TOML config.
    TrainTeacher(TrainArgs),
    /// Distil IAF students from a trained teacher by probability density distillation.
    DistillStudent(DistillArgs),
    /// Generate showers with a trained model into the official layout, in chunks.
    Sample(SampleArgs),
    /// Join the shard files of a `sample --shard` job array into one file.
    Merge(MergeArgs),
    /// Compare generated with reference showers: the papers' metrics, plots, and a regression gate.
    Evaluate(EvaluateArgs),
    /// Time training steps and sampling of random-weight stacks on this machine.
    Bench(BenchArgs),
    /// Run the whole chain on small generated data (about 5 minutes on 2 CPU cores).
    Demo(DemoArgs),
    /// Check this build on the chosen device: the spline against nflows' reference values,
    /// invertibility of MAF and IAF stacks, and agreement with the CPU (how a GPU node verifies the
    /// `cuda` build).
    Selftest,
    /// Import a trained nflows flow from a PyTorch checkpoint (MAF teachers, IAF students) into a model directory.
    ImportNflows(crate::commands::import_nflows::ImportNflowsArgs),
    /// Each CaloChallenge shower's log-density (MeV space, given E_inc) under a model's Flow-1 · Flow-2 · ∏ Flow-3.
    LogProb(crate::commands::log_prob::LogProbArgs),
    /// One flow's raw passes on .npy arrays: log-prob, to-data (z → x), to-latent (x → z).
    Flow(crate::commands::flow::FlowArgs),
    /// Write a flow's sampling direction (z, context → x) as an ONNX graph for ONNX Runtime (Geant4, O2).
    ExportOnnx(crate::commands::export_onnx::ExportOnnxArgs),
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: GenerateWhat,
}

#[derive(Subcommand, Debug)]
pub enum GenerateWhat {
    /// Electromagnetic showers in CaloChallenge dataset 2 or 3 geometry.
    Calo {
        /// CaloChallenge dataset: 2 (45×16×9 voxels) or 3 (45×50×18).
        #[arg(long, value_parser = clap::value_parser!(u8).range(2..=3))]
        dataset: u8,
        /// Number of showers.
        #[arg(long)]
        events: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        output: PathBuf,
        /// gzip level, 0 (none: fastest) to 9. gzip makes files 3× smaller but, on 2 cores,
        /// generation 3–4× slower; the official files use 4.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=9))]
        gzip: u8,
    },
    /// ZDC neutron-calorimeter responses (44×44 photon counts) with particle conditions.
    Zdc {
        /// Number of responses (conditions repeat, so unique conditions are fewer).
        #[arg(long)]
        events: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        output: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// An HDF5 file (CaloChallenge or zdcflow ZDC layout) or a ZDC `…responses.npz`.
    pub file: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The setup, e.g. configs/zdc-teacher-all.toml.
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config key, e.g. --set train.epochs=2 --set data.path=zdc.h5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where model.json, best/last.safetensors, checkpoint/ and metrics.jsonl go
    /// (default: runs/<config name>).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Continue from the checkpoint in the output directory.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Args, Debug)]
pub struct DistillArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// The teacher's output directory (from train-teacher).
    #[arg(long)]
    pub teacher: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    #[arg(long)]
    pub resume: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitChoice {
    /// ZDC: the test split of the model's split; CaloChallenge: every event.
    Auto,
    All,
    Train,
    Val,
    Test,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A trained model directory (student or teacher).
    #[arg(long)]
    pub model: PathBuf,
    /// Take the conditions (ZDC particles, CaloChallenge incident energies) from this file.
    #[arg(long, conflicts_with = "events", required_unless_present = "events")]
    pub conditions: Option<PathBuf>,
    /// CaloChallenge only: this many showers with E_inc log-uniform in 1 GeV – 1 TeV.
    #[arg(long)]
    pub events: Option<usize>,
    /// Which events of --conditions to use.
    #[arg(long, value_enum, default_value = "auto")]
    pub split: SplitChoice,
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Generate only slice I of N (1-based), e.g. --shard 3/10 in a SLURM array task.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Use the teacher (MAF) even where the model directory holds a student (slow).
    #[arg(long)]
    pub teacher: bool,
    #[arg(long)]
    pub output: PathBuf,
    /// gzip level of a CaloChallenge output, 0 (none, fastest) to 9; the official files use 4.
    #[arg(long, default_value_t = crate::data::h5::DEFAULT_GZIP, value_parser = clap::value_parser!(u8).range(0..=9))]
    pub gzip: u8,
    /// ZDC: photon sums from the conditions file (data, the published protocol) or drawn from the
    /// model's photon-sum flow (model).
    #[arg(long, value_enum, default_value = "model")]
    pub photon_sum: crate::sample::zdc::PhotonSumSource,
    /// ZDC: noise removal: round (default), floor, floor-recalc, sub-floor, sub-floor-recalc.
    #[arg(long, value_enum, default_value = "round")]
    pub denoise: crate::sample::denoise::Denoise,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The merged file.
    #[arg(long)]
    pub output: PathBuf,
    /// Shard files, in any order (their shard numbers decide the order).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    #[arg(long)]
    pub reference: PathBuf,
    /// ZDC: a second reference file for the noise floor (default: two halves of --reference).
    #[arg(long)]
    pub reference2: Option<PathBuf>,
    #[arg(long)]
    pub generated: PathBuf,
    /// Write the metrics as JSON here.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Draw PNG figures into this directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// An earlier metrics JSON: exit with 3 if any metric got worse by more than --tolerance
    /// (1 if the baseline is empty, malformed, or names a metric this run lacks).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Allowed relative worsening per metric for --baseline.
    #[arg(long, default_value_t = 0.05)]
    pub tolerance: f64,
    /// CaloChallenge classifier test: epochs (0 skips it; evaluate.py: 50).
    #[arg(long, default_value_t = 50)]
    pub classifier_epochs: usize,
    /// CaloChallenge classifier test: hidden units per layer, 1–65536 (evaluate.py: 2048).
    #[arg(long, default_value_t = 2048, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
    pub classifier_hidden: usize,
    /// CaloChallenge classifier test: hidden layers after the input layer (evaluate.py's cls_n_layer: 2).
    #[arg(long, default_value_t = 2)]
    pub classifier_layers: usize,
    /// CaloChallenge classifier test: batch size (evaluate.py: 1000).
    #[arg(long, default_value_t = 1000)]
    pub classifier_batch: usize,
    /// CaloChallenge classifier test: Adam learning rate (evaluate.py: 2e-4).
    #[arg(long, default_value_t = 2e-4)]
    pub classifier_lr: f64,
    /// CaloChallenge classifier tests to run: low (cls-low), low-normed (cls-low-normed), high (cls-high).
    #[arg(long, value_delimiter = ',', default_values = ["low", "high"])]
    pub classifiers: Vec<ClassifierChoice>,
    /// CaloChallenge: independent classifier runs per test; the metrics are their mean (± std in details).
    #[arg(long, default_value_t = 1)]
    pub classifier_runs: usize,
    /// CaloChallenge: use only the first N showers of each file for the classifier (default: all; the
    /// number used is in the output JSON).
    #[arg(long)]
    pub classifier_showers: Option<usize>,
    /// CaloChallenge: write per-shower high-level features (HighLevelFeatures.py names) to this HDF5 file.
    #[arg(long)]
    pub features_out: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClassifierChoice {
    Low,
    LowNormed,
    High,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchShape {
    #[value(name = "ds2-flow3")]
    Ds2Flow3,
    #[value(name = "ds3-flow3")]
    Ds3Flow3,
    Zdc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchWhat {
    TrainStep,
    SampleIaf,
    SampleMaf,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchDetector {
    Ds2,
    Ds3,
    Zdc,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A stack shape of the papers (the same shapes as the PyTorch+nflows peer benchmark).
    #[arg(long, value_enum, conflicts_with_all = ["config", "shower"])]
    pub shape: Option<BenchShape>,
    /// Time whole showers instead: the papers' full models (random weights) for this detector,
    /// everything `sample` does except writing (`--teacher` for the MAF teachers).
    #[arg(long, value_enum, conflicts_with = "config")]
    pub shower: Option<BenchDetector>,
    /// With --shower: the teachers instead of the students.
    #[arg(long, requires = "shower")]
    pub teacher: bool,
    /// Or the flow architecture of a config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "all")]
    pub what: BenchWhat,
    /// Batch size (default: the peer benchmark's for each measurement).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Timed repetitions (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Print JSON lines in the peer benchmark's schema.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where every step's output goes.
    #[arg(long, default_value = "demo-run")]
    pub output_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Settings every subcommand shares.
#[derive(Clone, Debug)]
pub struct Globals {
    pub device: String,
    pub show_progress: bool,
}

/// What a subcommand produced (the demo reads these; `run` turns them into an exit code).
pub enum Outcome {
    Done,
    Trained(Vec<crate::train::Summary>),
    Sampled(crate::sample::Report),
    Evaluated(Box<crate::eval::report::MetricsFile>, Vec<crate::eval::report::Regression>),
}

/// Exit code of `evaluate --baseline` when a metric got worse (2 is clap's usage error, 1 any
/// other error).
pub const REGRESSION: u8 = 3;

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    crate::util::interrupt::install_cleanup();
    if let Some(n) = cli.threads {
        // candle and rayon read this when their pools start (at the first tensor operation).
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let globals = Globals { device: cli.device.clone(), show_progress: !cli.quiet };
    match execute(&cli.command, &globals) {
        Ok(Outcome::Evaluated(_, regressions)) if !regressions.is_empty() => Ok(ExitCode::from(REGRESSION)),
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(Error::Interrupted) => Ok(ExitCode::from(130)),
        Err(e) => Err(e),
    }
}

/// Runs one subcommand, printing what it reports.
pub fn execute(command: &Command, g: &Globals) -> Result<Outcome> {
    match command {
        Command::Generate(a) => generate(a, g),
        Command::Inspect(a) => {
            let summary = crate::inspect::inspect(&a.file, g.show_progress)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| Error::Invalid(e.to_string()))?);
            } else {
                print!("{}", crate::inspect::render(&summary));
            }
            Ok(Outcome::Done)
        }
        Command::TrainTeacher(a) => train_teacher(a, g),
        Command::DistillStudent(a) => distill_student(a, g),
        Command::Sample(a) => sample(a, g),
        Command::Merge(a) => {
            let n = crate::sample::merge(&a.inputs, &a.output, g.show_progress)?;
            println!("merged {} shards ({n} events) into {}", a.inputs.len(), a.output.display());
            Ok(Outcome::Done)
        }
        Command::Evaluate(a) => evaluate(a, g),
        Command::Bench(a) => bench(a, g),
        Command::Demo(a) => crate::demo::run(a, g).map(|()| Outcome::Done),
        Command::ImportNflows(a) if a.detector.detector.is_some() => {
            println!("{}", crate::commands::import_detector::run(a)?);
            Ok(Outcome::Done)
        }
        Command::ImportNflows(a) => {
            let spec = crate::commands::import_nflows::run(a)?;
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
            Ok(Outcome::Done)
        }
        Command::LogProb(a) => {
            let (n, mean) = crate::commands::log_prob::run(a, &crate::device::open(&g.device)?)?;
            println!("log-prob: {n} showers, mean log_prob {mean:.3} → {}", a.output.display());
            Ok(Outcome::Done)
        }
        Command::Flow(a) => {
            let n = crate::commands::flow::run(a, &crate::device::open(&g.device)?)?;
            eprintln!("flow: {n} rows");
            Ok(Outcome::Done)
        }
        Command::ExportOnnx(a) => {
            let (unit, bytes) = crate::commands::export_onnx::run(a)?;
            println!("exported unit '{unit}' to {} ({bytes} bytes)", a.output.display());
            Ok(Outcome::Done)
        }
        Command::Selftest => {
            let device = crate::device::open(&g.device)?;
            let checks = crate::selftest::run(&device)?;
            for c in &checks {
                println!("{} {} — {}", if c.passed { "PASS" } else { "FAIL" }, c.name, c.detail);
            }
            let failed = checks.iter().filter(|c| !c.passed).count();
            if failed > 0 {
                return Err(Error::Invalid(format!(
                    "selftest: {failed} check(s) failed on {}",
                    crate::device::describe(&device)
                )));
            }
            println!("selftest: all {} checks passed on {}", checks.len(), crate::device::describe(&device));
            Ok(Outcome::Done)
        }
    }
}

fn generate(a: &GenerateArgs, g: &Globals) -> Result<Outcome> {
    match &a.what {
        GenerateWhat::Calo { dataset, events, seed, output, gzip } => {
            let r = crate::generate::calo(*dataset, *events, *seed, output, *gzip, g.show_progress)?;
            println!(
                "wrote {events} dataset-{dataset} showers to {} ({:.0} showers/s simulated, {:.0}/s with writing)",
                output.display(),
                r.simulated_per_s,
                r.written_per_s
            );
        }
        GenerateWhat::Zdc { events, seed, output } => {
            crate::generate::zdc(*events, *seed, output)?;
            println!("wrote {events} ZDC responses to {}", output.display());
        }
    }
    Ok(Outcome::Done)
}

fn train_teacher(a: &TrainArgs, g: &Globals) -> Result<Outcome> {
    use crate::config::{default_output_dir, Config, Detector};
    use crate::models::{self, manifest, RunOptions};
    let cfg = Config::load(&a.config, &a.set)?;
    let out = a.output_dir.clone().unwrap_or_else(|| default_output_dir(&a.config));
    let opts = RunOptions { resume: a.resume, device: crate::device::open(&g.device)?, show_progress: g.show_progress };
    crate::util::interrupt::install();
    eprintln!("train-teacher: {} → {} on {}", a.config.display(), out.display(), crate::device::describe(&opts.device));
    let summaries = match cfg.model.detector {
        Detector::Zdc => {
            manifest::check_output_dir(&out, a.resume)?;
            models::zdc::train_teacher(&cfg, &out, &opts)
        }
        Detector::Ds2 | Detector::Ds3 => models::calo::train_teacher(&cfg, &out, &opts),
    };
    finish_training(summaries, &out)
}

/// Prints the summary lines of a training command (and how to resume after an interrupt).
fn finish_training(summaries: Result<Vec<crate::train::Summary>>, out: &std::path::Path) -> Result<Outcome> {
    match summaries {
        Ok(s) => {
            for line in s.iter().map(crate::models::summary_line) {
                println!("{line}");
            }
            println!("model: {}", out.display());
            Ok(Outcome::Trained(s))
        }
        Err(Error::Interrupted) => {
            eprintln!("stopped; resume with the same command plus --resume ({})", out.display());
            Err(Error::Interrupted)
        }
        Err(e) => Err(e),
    }
}

fn distill_student(a: &DistillArgs, g: &Globals) -> Result<Outcome> {
    use crate::config::{default_output_dir, Config, Detector};
    use crate::models::{self, manifest, RunOptions};
    let cfg = Config::load(&a.config, &a.set)?;
    let out = a.output_dir.clone().unwrap_or_else(|| default_output_dir(&a.config));
    manifest::check_output_dir(&out, a.resume)?;
    let opts = RunOptions { resume: a.resume, device: crate::device::open(&g.device)?, show_progress: g.show_progress };
    crate::util::interrupt::install();
    eprintln!(
        "distill-student: {} (teacher {}) → {} on {}",
        a.config.display(),
        a.teacher.display(),
        out.display(),
        crate::device::describe(&opts.device)
    );
    let summaries = match cfg.model.detector {
        Detector::Zdc => models::zdc::distill_student(&cfg, &a.teacher, &out, &opts),
        Detector::Ds2 | Detector::Ds3 => models::calo::distill_student(&cfg, &a.teacher, &out, &opts),
    };
    finish_training(summaries, &out)
}

fn bench(a: &BenchArgs, g: &Globals) -> Result<Outcome> {
    use crate::bench::{self, What};
    if a.batch_size == Some(0) {
        return Err(Error::Invalid("--batch-size must be ≥ 1".into()));
    }
    if a.repeats == 0 {
        return Err(Error::Invalid("--repeats must be ≥ 1".into()));
    }
    let device = crate::device::open(&g.device)?;
    if let Some(d) = a.shower {
        let detector = match d {
            BenchDetector::Ds2 => bench::Detector::Ds2,
            BenchDetector::Ds3 => bench::Detector::Ds3,
            BenchDetector::Zdc => bench::Detector::Zdc,
        };
        let m = bench::measure_showers(detector, !a.teacher, a.batch_size.unwrap_or(1000), a.repeats, &device)?;
        if a.json {
            println!("{}", serde_json::to_string(&m).map_err(|e| Error::Invalid(e.to_string()))?);
        } else {
            print!("{}", bench::render(&[m]));
        }
        return Ok(Outcome::Done);
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
            // Activations of every hidden layer of every block, kept for the backward pass.
            let per_row = (s.blocks * (s.layers + 2) * s.hidden.max(s.features) + 2 * s.features) as f64;
            crate::util::limits::check_memory(
                &format!("--batch-size {b} on {}", s.name),
                4.0 * 4.0 * b as f64 * per_row,
            )?;
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
            if let Some(m) = bench::measure(shape, what, a.batch_size, a.repeats, &device)? {
                if a.json {
                    println!("{}", serde_json::to_string(&m).map_err(|e| Error::Invalid(e.to_string()))?);
                }
                all.push(m);
            }
        }
    }
    if all.is_empty() {
        return Err(Error::Invalid("bench: nothing was measured (no batch size for this measurement)".into()));
    }
    if !a.json {
        print!("{}", bench::render(&all));
    }
    Ok(Outcome::Done)
}

fn sample(a: &SampleArgs, g: &Globals) -> Result<Outcome> {
    use crate::data::split::Part;
    use crate::sample::{parse_shard, run, Request, Selection};
    let selection = match a.split {
        SplitChoice::Auto => Selection::Auto,
        SplitChoice::All => Selection::All,
        SplitChoice::Train => Selection::Part(Part::Train),
        SplitChoice::Val => Selection::Part(Part::Val),
        SplitChoice::Test => Selection::Part(Part::Test),
    };
    let req = Request {
        model: a.model.clone(),
        conditions: a.conditions.clone(),
        events: a.events,
        selection,
        batch_size: a.batch_size,
        seed: a.seed,
        shard: a.shard.as_deref().map(parse_shard).transpose()?,
        use_teacher: a.teacher,
        output: a.output.clone(),
        gzip: a.gzip,
        show_progress: g.show_progress,
        photon_sum: a.photon_sum,
        denoise: a.denoise,
    };
    let r = run(&req, &crate::device::open(&g.device)?)?;
    println!(
        "generated {} events in {:.2} s: {:.4} ms/sample ({:.2} s with writing) → {}",
        r.events,
        r.generate_s,
        r.ms_per_sample,
        r.total_s,
        r.output.display()
    );
    Ok(Outcome::Sampled(r))
}

fn evaluate(a: &EvaluateArgs, g: &Globals) -> Result<Outcome> {
    use crate::eval::{self, classifier, Request};
    if a.baseline.is_some() && (a.tolerance.is_nan() || a.tolerance < 0.0) {
        return Err(Error::Invalid("--tolerance must be ≥ 0".into()));
    }
    if a.classifier_hidden == 0
        || a.classifier_batch == 0
        || a.classifier_runs == 0
        || a.classifier_lr.is_nan()
        || a.classifier_lr <= 0.0
    {
        return Err(Error::Invalid(
            "--classifier-hidden, --classifier-batch, --classifier-runs and --classifier-lr must be > 0".into(),
        ));
    }
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
        show_progress: g.show_progress,
    };
    let (metrics, regressions) = eval::run(&req, &crate::device::open(&g.device)?)?;
    print!("{}", eval::render(&metrics));
    if let Some(p) = &a.output {
        println!("metrics: {}", p.display());
    }
    if let Some(p) = &a.plots {
        println!("plots: {}", p.display());
    }
    if let Some(b) = &a.baseline {
        if regressions.is_empty() {
            println!("gate: no metric worse than {} by more than {:.1} %", b.display(), 100.0 * a.tolerance);
        } else {
            for r in &regressions {
                eprintln!(
                    "gate: {} got worse: {:.6} → {:.6} ({:+.1} %)",
                    r.metric,
                    r.baseline,
                    r.current,
                    100.0 * r.worse_by
                );
            }
            eprintln!(
                "gate: {} metric(s) worse than {} by more than {:.1} %",
                regressions.len(),
                b.display(),
                100.0 * a.tolerance
            );
        }
    }
    Ok(Outcome::Evaluated(Box::new(metrics), regressions))
}
