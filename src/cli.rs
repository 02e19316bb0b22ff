//! Command-line interface: only the clap structs, one per subcommand (with shared flattened
//! groups); [`crate::commands`] runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The most hidden layers `--classifier-layers` takes (evaluate.py uses 2; backpropagation through
/// a much deeper network recurses deeper than a thread's stack).
pub const MAX_CLASSIFIER_LAYERS: u64 = 100;

/// Counts and sizes that must be at least 1: 0 is a usage error (exit 2), as a missing argument.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

fn non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a finite number ≥ 0")),
    }
}

fn positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a finite number > 0")),
    }
}

fn shard_arg(s: &str) -> Result<String, String> {
    crate::sample::parse_shard(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

fn device_arg(s: &str) -> Result<String, String> {
    crate::device::parse(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

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
    #[arg(long, global = true, default_value = "cpu", value_parser = device_arg)]
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
    Selftest(SelftestArgs),
    /// Import a trained nflows flow from a PyTorch checkpoint (MAF teachers, IAF students) into a model directory.
    ImportNflows(ImportNflowsArgs),
    /// Each event's log-density: CaloChallenge showers (MeV space, given E_inc) under Flow-1 · Flow-2 · ∏ Flow-3, ZDC responses (photon space, given the particle and photon sum).
    LogProb(LogProbArgs),
    /// One flow's raw passes on .npy arrays: log-prob, to-data (z → x), to-latent (x → z).
    Flow(FlowArgs),
    /// Write a flow's sampling direction (z, context → x) as an ONNX graph for ONNX Runtime (Geant4, O2).
    ExportOnnx(ExportOnnxArgs),
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
        #[arg(long, value_parser = at_least_one())]
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
        #[arg(long, value_parser = at_least_one())]
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

/// What every training command (train-teacher, distill-student) takes after its inputs.
#[derive(Args, Debug)]
pub struct RunArgs {
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
pub struct TrainArgs {
    /// The setup, e.g. configs/zdc-teacher-all.toml.
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug)]
// distill-student's --help leaves --set, --output-dir and --resume to train-teacher's.
#[command(
    mut_arg("set", |a| a.help(None::<&str>)),
    mut_arg("output_dir", |a| a.help(None::<&str>)),
    mut_arg("resume", |a| a.help(None::<&str>))
)]
pub struct DistillArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// The teacher's output directory (from train-teacher).
    #[arg(long)]
    pub teacher: PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
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
    #[arg(long, value_parser = at_least_one())]
    pub events: Option<usize>,
    /// Which events of --conditions to use.
    #[arg(long, value_enum, default_value = "auto")]
    pub split: SplitChoice,
    #[arg(long, default_value_t = 1000, value_parser = at_least_one())]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Generate only slice I of N (1-based), e.g. --shard 3/10 in a SLURM array task.
    #[arg(long, value_name = "I/N", value_parser = shard_arg)]
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
    pub photon_sum: PhotonSumArg,
    /// ZDC: noise removal: sub-floor-fill (default: keeps each image's total at its photon sum),
    /// round, floor, floor-recalc, sub-floor, sub-floor-recalc (src/sample/denoise.rs; chosen on
    /// generated responses, docs/validation.md).
    #[arg(long, value_enum, default_value = "sub-floor-fill")]
    pub denoise: DenoiseArg,
    /// Precision of the flows' masked-layer products (opt-in speed for a small loss of accuracy;
    /// README "Performance" gives the measured effect on the metrics).
    #[arg(long, value_enum, default_value = "model")]
    pub precision: PrecisionArg,
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
    #[arg(long, default_value_t = 0.05, value_parser = non_negative)]
    pub tolerance: f64,
    /// CaloChallenge classifier test: epochs (0 skips it; evaluate.py: 50).
    #[arg(long, default_value_t = 50)]
    pub classifier_epochs: usize,
    /// CaloChallenge classifier test: hidden units per layer, 1–65536 (evaluate.py: 2048).
    #[arg(long, default_value_t = 2048, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
    pub classifier_hidden: usize,
    /// CaloChallenge classifier test: hidden layers after the input layer, 0–100 (evaluate.py's cls_n_layer: 2).
    #[arg(long, default_value_t = 2, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=MAX_CLASSIFIER_LAYERS))]
    pub classifier_layers: usize,
    /// CaloChallenge classifier test: batch size (evaluate.py: 1000).
    #[arg(long, default_value_t = 1000, value_parser = at_least_one())]
    pub classifier_batch: usize,
    /// CaloChallenge classifier test: Adam learning rate (evaluate.py: 2e-4).
    #[arg(long, default_value_t = 2e-4, value_parser = positive)]
    pub classifier_lr: f64,
    /// CaloChallenge classifier tests to run: low (cls-low), low-normed (cls-low-normed), high (cls-high).
    #[arg(long, value_delimiter = ',', default_values = ["low", "high"])]
    pub classifiers: Vec<ClassifierChoice>,
    /// CaloChallenge: independent classifier runs per test; the metrics are their mean (± std in details).
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub classifier_runs: usize,
    /// CaloChallenge: use only the first N showers of each file for the classifier (default: all; the
    /// number used is in the output JSON).
    #[arg(long, value_parser = at_least_one())]
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

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A stack shape of the papers (the same shapes as the PyTorch+nflows peer benchmark).
    #[arg(long, value_enum, conflicts_with_all = ["config", "shower"])]
    pub shape: Option<BenchShape>,
    /// Time whole showers instead: the papers' full models (random weights) for this detector,
    /// everything `sample` does except writing (`--teacher` for the MAF teachers).
    #[arg(long, value_parser = detector_parser(), conflicts_with = "config")]
    pub shower: Option<crate::config::Detector>,
    /// With --shower: the teachers instead of the students.
    #[arg(long, requires = "shower")]
    pub teacher: bool,
    /// Or the flow architecture of a config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "all")]
    pub what: BenchWhat,
    /// Batch size (default: the peer benchmark's for each measurement).
    #[arg(long, value_parser = at_least_one())]
    pub batch_size: Option<usize>,
    /// Timed repetitions (the best is reported).
    #[arg(long, default_value_t = 3, value_parser = at_least_one())]
    pub repeats: usize,
    /// Print JSON lines in the peer benchmark's schema.
    #[arg(long)]
    pub json: bool,
    /// With --shower: the precision of the masked-layer products, as `sample --precision`.
    #[arg(long, value_enum, default_value = "model", requires = "shower")]
    pub precision: PrecisionArg,
}

/// `ds2`, `ds3` or `zdc` as a [`crate::config::Detector`].
fn detector_parser() -> impl clap::builder::TypedValueParser<Value = crate::config::Detector> {
    use crate::config::Detector;
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["ds2", "ds3", "zdc"]).map(|s| match s.as_str() {
        "ds2" => Detector::Ds2,
        "ds3" => Detector::Ds3,
        _ => Detector::Zdc,
    })
}

// `selftest` takes only the global options (a plain comment: a doc comment would be its help).
#[derive(Args, Debug)]
pub struct SelftestArgs {}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where every step's output goes.
    #[arg(long, default_value = "demo-run")]
    pub output_dir: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// nflows `MaskedPiecewiseRationalQuadraticAutoregressiveTransform` blocks as they are (teachers).
    Maf,
    /// Each block in nflows' `InverseTransform`: one-pass sampling, spline evaluated forward.
    Iaf,
    /// inductive-caloflow's `InverseTransform(IAFRQS)` students: one-pass sampling, spline evaluated inverse.
    IcaloflowIaf,
}

impl From<KindArg> for crate::flow::nflows::NflowsKind {
    fn from(k: KindArg) -> Self {
        use crate::flow::nflows::NflowsKind;
        match k {
            KindArg::Maf => NflowsKind::Maf,
            KindArg::Iaf => NflowsKind::Iaf,
            KindArg::IcaloflowIaf => NflowsKind::IcaloflowIaf,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    F64,
}

impl From<DtypeArg> for crate::config::Precision {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => crate::config::Precision::F32,
            DtypeArg::F64 => crate::config::Precision::F64,
        }
    }
}

#[derive(Args, Debug)]
pub struct ImportNflowsArgs {
    /// The checkpoint (`torch.save` zip file) holding a `Flow.state_dict()`, plain or in a dict under --key.
    pub checkpoint: PathBuf,
    /// How the blocks are read (the state dict does not say).
    #[arg(long, value_enum)]
    pub kind: KindArg,
    /// The dict key holding the state dict (default: `model_state_dict` where the file has it, else the whole file).
    #[arg(long)]
    pub key: Option<String>,
    /// The spline's tail bound B (linear tails outside [−B, B]); both papers use 14.
    #[arg(long, default_value_t = 14.0)]
    pub tail_bound: f64,
    #[arg(long, default_value_t = 1e-6)]
    pub min_bin_width: f64,
    #[arg(long, default_value_t = 1e-6)]
    pub min_bin_height: f64,
    #[arg(long, default_value_t = 1e-6)]
    pub min_derivative: f64,
    /// The precision to store and run the flow in (default: the checkpoint's).
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// The unit's name in the model directory.
    #[arg(long, default_value = "flow")]
    pub unit: String,
    /// The model directory to write (must not already hold a model).
    #[arg(long)]
    pub output_dir: PathBuf,
    #[command(flatten)]
    pub detector: DetectorArgs,
}

#[derive(Args, Debug)]
pub struct FlowArgs {
    #[command(subcommand)]
    pub pass: FlowPass,
}

#[derive(Subcommand, Debug)]
pub enum FlowPass {
    /// log p(x | c) per row (N): the base density (conditional where the flow's base is) plus log|det ∂z/∂x|.
    LogProb(PassArgs),
    /// Base-space points z (N, D) → data x (N, D) (the sampling direction, without drawing z).
    ToData(PassArgs),
    /// Data x (N, D) → base-space points z (N, D).
    ToLatent(PassArgs),
}

#[derive(Args, Debug)]
pub struct PassArgs {
    /// A model directory (import-nflows, train-teacher or distill-student output).
    #[arg(long)]
    pub model: PathBuf,
    /// Which flow unit (default: the only one; e.g. flow1, flow2, flow3 for a CaloChallenge model).
    #[arg(long)]
    pub unit: Option<String>,
    /// Input array (N, D), float32 or float64 `.npy`.
    #[arg(long)]
    pub input: PathBuf,
    /// Conditions (N, C) `.npy`, for a flow with context.
    #[arg(long)]
    pub context: Option<PathBuf>,
    /// Output `.npy`, in the input's dtype: (N) for log-prob, (N, D) otherwise.
    #[arg(long)]
    pub output: PathBuf,
    /// Rows per batch.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one())]
    pub batch_size: usize,
}

#[derive(Args, Debug)]
pub struct ExportOnnxArgs {
    /// A model directory (import-nflows or distill-student output).
    #[arg(long)]
    pub model: PathBuf,
    /// Which flow unit (default: the only one; flow1, flow2 or flow3 for a CaloChallenge model).
    #[arg(long)]
    pub unit: Option<String>,
    /// The ONNX file to write: inputs `z` (N, D) and `context` (N, C), output `x` (N, D) (for
    /// --postprocess, see there).
    #[arg(long)]
    pub output: PathBuf,
    /// ONNX operator set (13 to 21).
    #[arg(long, default_value_t = 17, value_parser = clap::value_parser!(i64).range(*crate::export::onnx::OPSETS.start()..=*crate::export::onnx::OPSETS.end()))]
    pub opset: i64,
    /// Include the detector's pre- and postprocessing, so that the graph simulates directly.
    /// ZDC models (the image flow `flow`): inputs `z` (N, 1936) standard-normal noise,
    /// `particle` (N, 9) RAW particle features as in the data file's conditions (the condition
    /// scaler is in the graph) and `photon_sum` (N, 1); output `photons` (N, 1936) float32 photon
    /// counts, what `sample --photon-sum data --denoise D` gives for the same noise (all six
    /// noise removals are in the graph; `round` rounds halves away from zero, as zdcflow does; a
    /// conditional base maps the noise to μ(c) + σ(c)·z in the graph, as `sample` does).
    /// CaloChallenge students (`--unit flow3`, the default, or `flow2`): one layer's voxels in MeV
    /// from `z` (N, V), `e_inc` (N, 1) and `e_layer` (N, 1) in MeV, and for Flow-3 `e_prev`
    /// (N, 1), `prev_layer` (N, V) in MeV, `prev_noise` (N, V) U[0,1) draws and `layer` (N, 1)
    /// int64, the 0-based index 1..=44 of the layer generated; output `voxels` (N, V): what
    /// `sample` generates for that layer from the same draws. Flow-1 (the layer-energy MAF) is
    /// not exported. Inputs are in the model's float type.
    #[arg(long)]
    pub postprocess: bool,
    /// With --postprocess: the noise removal written into the graph (as `sample --denoise`).
    #[arg(long, value_enum, default_value_t, requires = "postprocess")]
    pub denoise: DenoiseArg,
    /// CaloChallenge models (dataset 2 or 3): the whole shower in one graph (Flow-1, Flow-2 and
    /// the 44 Flow-3 steps with their pre- and postprocessing). Inputs, N any batch size, in the
    /// model's float type: `e_inc` (N, 1) MeV, `noise_energies` (N, 45) and `noise_first_layer`
    /// (N, V) standard normals, `noise_layers` (N, 44, V) standard normals (`[:, t-1]` for layer
    /// t) and `noise_patterns` (N, 44, V) U[0,1) draws (`[:, t-1]` noise layer t-1 as it
    /// conditions layer t); output `showers` (N, 45·V) MeV, layer-major, after the threshold:
    /// what `sample` generates from the same draws. See docs/onnx.md.
    #[arg(long, conflicts_with_all = ["postprocess", "unit"])]
    pub whole_shower: bool,
    /// With --whole-shower: how a MAF's D sequential passes per block are written (one ONNX
    /// Loop per block, or written out: same results, see docs/performance.md for the speed).
    #[arg(long, value_enum, default_value_t, requires = "whole_shower")]
    pub maf_passes: MafPassesArg,
}

/// `sample --precision`, `bench --precision` (mapped to `sample::SamplingPrecision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum PrecisionArg {
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

impl From<PrecisionArg> for crate::sample::SamplingPrecision {
    fn from(p: PrecisionArg) -> Self {
        use crate::sample::SamplingPrecision;
        match p {
            PrecisionArg::Model => SamplingPrecision::Model,
            PrecisionArg::Bf16 => SamplingPrecision::Bf16,
            PrecisionArg::Tf32 => SamplingPrecision::Tf32,
        }
    }
}

/// `sample --photon-sum` (mapped to `sample::zdc::PhotonSumSource`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum PhotonSumArg {
    /// The conditions file's `photon_sum` (the published evaluation protocol).
    Data,
    /// Drawn per response from the model's photon-sum flow (what a user without sums has).
    #[default]
    Model,
}

impl From<PhotonSumArg> for crate::sample::zdc::PhotonSumSource {
    fn from(p: PhotonSumArg) -> Self {
        use crate::sample::zdc::PhotonSumSource;
        match p {
            PhotonSumArg::Data => PhotonSumSource::Data,
            PhotonSumArg::Model => PhotonSumSource::Model,
        }
    }
}

/// `sample --denoise`, `export-onnx --denoise` (mapped to `sample::denoise::Denoise`; the table
/// of what each does is there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum DenoiseArg {
    /// Subtract the mean noise (noise_mul/2), floor (the former default).
    SubFloor,
    /// `sub-floor`, then renormalise to the photon sum and floor again.
    SubFloorRecalc,
    /// Floor only (the noise is in [0, noise_mul) < 1 photon).
    Floor,
    /// `floor`, then renormalise to the photon sum and floor again.
    FloorRecalc,
    /// Subtract the mean noise, round to the nearest photon.
    Round,
    /// `sub-floor`, then one photon more for each of the pixels with the largest fractional parts
    /// until the total is round(S) (the photons that flooring sub-photon values loses).
    #[default]
    SubFloorFill,
}

impl From<DenoiseArg> for crate::sample::denoise::Denoise {
    fn from(d: DenoiseArg) -> Self {
        use crate::sample::denoise::Denoise;
        match d {
            DenoiseArg::SubFloor => Denoise::SubFloor,
            DenoiseArg::SubFloorRecalc => Denoise::SubFloorRecalc,
            DenoiseArg::Floor => Denoise::Floor,
            DenoiseArg::FloorRecalc => Denoise::FloorRecalc,
            DenoiseArg::Round => Denoise::Round,
            DenoiseArg::SubFloorFill => Denoise::SubFloorFill,
        }
    }
}

/// `export-onnx --maf-passes` (mapped to `export::onnx::MafPasses` by the command).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MafPassesArg {
    /// One ONNX Loop per block, its body one pass.
    #[default]
    Loop,
    /// The D passes written out (same shared weights).
    Unrolled,
}

/// `log-prob --help`'s closing text: what `log_prob` is for each kind of model (the definitions
/// written into the output file with the numbers).
fn log_prob_help() -> String {
    use crate::models::log_prob::{calo, zdc};
    format!("CaloChallenge models: {}\n\nZDC models: {}", calo::DEFINITION, zdc::DEFINITION)
}

#[derive(Args, Debug)]
#[command(after_long_help = log_prob_help())]
pub struct LogProbArgs {
    /// A model directory: CaloChallenge (flow1, flow2 and flow3: train-teacher, distill-student or
    /// import-nflows --detector ds2|ds3 output) or ZDC (its image flow `flow`).
    #[arg(long)]
    pub model: PathBuf,
    /// Events to score: a CaloChallenge HDF5 file of the model's dataset (`incident_energies`,
    /// `showers` in MeV), or for a ZDC model a ZDC data file (responses, particles, photon sums).
    #[arg(long)]
    pub showers: PathBuf,
    /// Output HDF5 with the definition as the attribute `definition`. CaloChallenge: `log_prob`
    /// (N) and its parts `log_q_flow1`, `log_q_flow2`, `log_q_flow3`, `log_det` (N),
    /// `incident_energies` (N, MeV). ZDC: `log_prob`, `log_q`, `log_det`, `photon_sum` (N).
    #[arg(long)]
    pub output: PathBuf,
    /// Seed of the uniform noise added to the voxels or pixels (the density is of the noised event).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Showers per batch.
    #[arg(long, default_value_t = 256, value_parser = at_least_one())]
    pub batch_size: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DetectorArg {
    Zdc,
    Ds2,
    Ds3,
}

impl From<DetectorArg> for crate::config::Detector {
    fn from(d: DetectorArg) -> Self {
        use crate::config::Detector;
        match d {
            DetectorArg::Zdc => Detector::Zdc,
            DetectorArg::Ds2 => Detector::Ds2,
            DetectorArg::Ds3 => Detector::Ds3,
        }
    }
}

/// The flags of `import-nflows --detector`.
#[derive(Args, Debug, Clone)]
pub struct DetectorArgs {
    /// Wrap the imported flow(s) into a detector model that `sample`, `evaluate` and
    /// `distill-student --teacher` take: zdc (the checkpoint is the image flow; needs --data, and
    /// --condition-scaler replaces the refitted scaler), ds2/ds3 (the checkpoint is Flow-1; needs
    /// --flow2 and --flow3).
    #[arg(long, value_enum, help_heading = "Detector model")]
    pub detector: Option<DetectorArg>,
    /// With --detector: the data file the model belongs to (ZDC: conditions and responses, from which
    /// the condition scaler is refitted; DS2/DS3: a CaloChallenge file of that dataset). It is
    /// recorded as the model's data, which `distill-student` and `sample --split` use.
    #[arg(long, help_heading = "Detector model")]
    pub data: Option<PathBuf>,
    /// ZDC: the condition scaler as JSON `{"mean": [10 numbers], "std": [10 numbers]}` (sklearn's
    /// `scaler.mean_` and `scaler.scale_`; the 9 particle features, then the photon sum) instead of
    /// refitting it from --data by the published rule (--data is still needed: the model records
    /// its data file and split).
    #[arg(long, help_heading = "Detector model")]
    pub condition_scaler: Option<PathBuf>,
    /// ZDC: the particle group of --data the model is for: all, n, lambda, k0s, sigma+.
    #[arg(long, default_value = "all", help_heading = "Detector model")]
    pub particles: String,
    /// ZDC: the uniform noise U[0, noise_mul) added to each pixel count in training (`noise_mul`).
    #[arg(long, default_value_t = 0.5, help_heading = "Detector model")]
    pub noise_mul: f64,
    /// ZDC and DS2/DS3: α of the logit transform.
    #[arg(long, default_value_t = 1e-6, help_heading = "Detector model")]
    pub alpha: f64,
    /// DS2/DS3: the Flow-2 checkpoint.
    #[arg(long, help_heading = "Detector model")]
    pub flow2: Option<PathBuf>,
    /// DS2/DS3: the Flow-3 checkpoint.
    #[arg(long, help_heading = "Detector model")]
    pub flow3: Option<PathBuf>,
    /// DS2/DS3: how Flow-2's blocks are read (default: --kind).
    #[arg(long, value_enum, help_heading = "Detector model")]
    pub flow2_kind: Option<KindArg>,
    /// DS2/DS3: how Flow-3's blocks are read (default: --kind).
    #[arg(long, value_enum, help_heading = "Detector model")]
    pub flow3_kind: Option<KindArg>,
    /// DS2/DS3: the layer-energy scale in MeV (`run.py`'s `args.normalization`).
    #[arg(long, default_value_t = 6.5e4, help_heading = "Detector model")]
    pub layer_scale_mev: f64,
    /// DS2/DS3: the uniform noise U[0, noise) in MeV added in training (`run.py --noise_level`).
    #[arg(long, default_value_t = 5e-3, help_heading = "Detector model")]
    pub noise_mev: f64,
    /// DS2/DS3: generated voxels below this (MeV) are set to zero (`run.py --threshold_cut`).
    #[arg(long, default_value_t = 1.5e-2, help_heading = "Detector model")]
    pub threshold_mev: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::denoise::Denoise;
    use crate::sample::zdc::PhotonSumSource;

    #[test]
    fn enum_flags_name_the_library_values_they_map_to() {
        let denoise: Vec<Denoise> = DenoiseArg::value_variants().iter().map(|&d| d.into()).collect();
        assert_eq!(denoise, Denoise::ALL, "every noise removal, in the library's order");
        for &d in DenoiseArg::value_variants() {
            assert_eq!(d.to_possible_value().expect("named").get_name(), Denoise::from(d).name());
        }
        for &p in PhotonSumArg::value_variants() {
            // `sample` records the source in its output file by this name.
            let recorded = format!("{:?}", PhotonSumSource::from(p)).to_lowercase();
            assert_eq!(p.to_possible_value().expect("named").get_name(), recorded);
        }
        assert_eq!(Denoise::from(DenoiseArg::default()), Denoise::default());
        assert_eq!(PhotonSumSource::from(PhotonSumArg::default()), PhotonSumSource::default());
    }
}
