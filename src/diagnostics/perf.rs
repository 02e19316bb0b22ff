//! What `zdcflow bench` measures: times random-weight stacks of the papers' shapes on this machine — a MAF
//! training step (log-prob + backward + Adam), IAF sampling (one pass per block) and MAF sampling
//! (one pass per feature per block). With `--json` it prints the same JSON lines as the
//! PyTorch+nflows peer benchmark (`impl`, `shape`, `what`, `batch`, `ms_per_batch`,
//! `ms_per_sample`), with the same shapes and default batch sizes, for a line-by-line comparison.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::{Config, Detector, FlowName, FlowSection};
use crate::data::channels::PIXELS;
use crate::data::zdc::FEATURES;
use crate::detector::zdc::CONTEXT;
use crate::distill::objective::latent_noise;
use crate::error::{Error, Result};
use crate::flow::params::SeededInit;
use crate::flow::permutation::{make_permutations, PermutationScheme};
use crate::flow::{io, Flow, FlowKind, FlowSpec, SplineConfig};
use crate::optim::{sorted_vars, Adam};

/// A stack shape and the peer benchmark's batch sizes (train, IAF sampling, MAF sampling).
#[derive(Clone, Debug)]
pub struct Shape {
    pub name: String,
    pub features: usize,
    pub context: usize,
    pub blocks: usize,
    pub hidden: usize,
    pub layers: usize,
    pub batches: (usize, usize, usize),
}

/// The shapes of `../shared/peer/peer_bench.py`.
pub fn paper_shape(name: &str) -> Option<Shape> {
    let s = |features, context, blocks, hidden, layers, batches| Shape {
        name: name.to_string(),
        features,
        context,
        blocks,
        hidden,
        layers,
        batches,
    };
    match name {
        "ds2-flow3" => Some(s(144, 191, 8, 256, 2, (1000, 1000, 100))),
        "ds3-flow3" => Some(s(900, 947, 8, 256, 1, (1000, 1000, 10))),
        "zdc" => Some(s(PIXELS, CONTEXT, 4, 1452, 2, (128, 256, 0))),
        _ => None,
    }
}

/// The teacher shapes of a config's flows.
pub fn config_shapes(cfg: &Config) -> Vec<Shape> {
    let mut out = Vec::new();
    let mut push = |name: &str, section: &FlowSection, features: usize, context: usize| {
        out.push(Shape {
            name: name.to_string(),
            features,
            context,
            blocks: section.blocks,
            hidden: section.hidden_features,
            layers: section.hidden_layers,
            batches: (1000, 1000, 100),
        });
    };
    match cfg.model.detector.dataset() {
        None => {
            if let Some(f) = &cfg.flow {
                push("zdc", f, PIXELS, CONTEXT);
            }
        }
        Some(ds) => {
            let g = crate::data::geometry::CaloGeometry::for_dataset(ds).expect("2 or 3");
            for f in [FlowName::Flow1, FlowName::Flow2, FlowName::Flow3] {
                if let Some(section) = cfg.flow_section(Some(f)) {
                    let (dx, dc) = crate::detector::calo::dims(f, &g);
                    push(&format!("ds{ds}-{}", f.as_str()), section, dx, dc);
                }
            }
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    TrainStep,
    SampleIaf,
    SampleMaf,
}

impl What {
    pub fn name(self) -> &'static str {
        match self {
            What::TrainStep => "train-step",
            What::SampleIaf => "sample-iaf",
            What::SampleMaf => "sample-maf",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    pub shape: String,
    pub what: &'static str,
    pub batch: usize,
    pub ms_per_batch: f64,
    pub ms_per_sample: f64,
    pub threads: usize,
    pub device: String,
}

fn spec(shape: &Shape, kind: FlowKind) -> FlowSpec {
    FlowSpec {
        kind,
        features: shape.features,
        context_features: shape.context,
        blocks: shape.blocks,
        hidden_features: shape.hidden,
        hidden_layers: shape.layers,
        residual: false,
        dropout: 0.0,
        spline: SplineConfig::default(),
        permutations: make_permutations(PermutationScheme::Alternating, shape.features, shape.blocks, 0),
        base: Default::default(),
        fast_spline: None,
    }
}

/// A random-weight stack: trainable (variables) or frozen (plain tensors, as when sampling).
fn stack(shape: &Shape, kind: FlowKind, trainable: bool, device: &Device) -> Result<(Flow, VarMap)> {
    let s = spec(shape, kind);
    let varmap = VarMap::new();
    let flow = Flow::new(&s, SeededInit::var_builder(&varmap, 0, DType::F32, device).pp(io::PREFIX))?;
    if trainable {
        return Ok((flow, varmap));
    }
    let tensors =
        varmap.data().lock().expect("varmap").iter().map(|(k, v)| (k.clone(), v.as_tensor().detach())).collect();
    let frozen = Flow::frozen(&s, candle_nn::VarBuilder::from_tensors(tensors, DType::F32, device).pp(io::PREFIX))?;
    Ok((frozen, varmap))
}

fn sync(device: &Device) -> Result<()> {
    device.synchronize()?;
    Ok(())
}

/// Best time of `repeats` runs after one warm-up, in seconds.
fn best_of(repeats: usize, device: &Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    sync(device)?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        sync(device)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn randn(rng: &mut ChaCha8Rng, n: usize, d: usize, device: &Device) -> Result<Tensor> {
    let like = Tensor::zeros((1, 1), DType::F32, device)?;
    Ok(latent_noise(rng, n, d, 1.0, &like)?)
}

/// Times one measurement.
pub fn measure(
    shape: &Shape,
    what: What,
    batch: Option<usize>,
    repeats: usize,
    device: &Device,
) -> Result<Option<Measurement>> {
    let batch = batch.unwrap_or(match what {
        What::TrainStep => shape.batches.0,
        What::SampleIaf => shape.batches.1,
        What::SampleMaf => shape.batches.2,
    });
    if batch == 0 {
        return Ok(None);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = randn(&mut rng, batch, shape.features, device)?;
    let ctx = randn(&mut rng, batch, shape.context, device)?;
    let secs = match what {
        What::TrainStep => {
            let (flow, varmap) = stack(shape, FlowKind::Maf, true, device)?;
            let mut adam = Adam::new(sorted_vars(&varmap), 1e-4, 0.9, 0.999, 1e-8)?;
            best_of(repeats, device, || {
                let pass = flow.to_latent(&x, Some(&ctx))?;
                let logp = (crate::flow::stack::standard_normal_log_prob(&pass.output)? + pass.ladj)?;
                let grads = logp.mean_all()?.neg()?.backward()?;
                adam.step(&grads, 1.0)?;
                Ok(())
            })?
        }
        What::SampleIaf | What::SampleMaf => {
            let kind = if what == What::SampleIaf { FlowKind::Iaf } else { FlowKind::Maf };
            let (flow, _) = stack(shape, kind, false, device)?;
            let reps = if what == What::SampleMaf { 1 } else { repeats };
            best_of(reps, device, || {
                flow.to_data(&x, Some(&ctx))?;
                Ok(())
            })?
        }
    };
    Ok(Some(Measurement {
        implementation: "zdcflow",
        shape: shape.name.clone(),
        what: what.name(),
        batch,
        ms_per_batch: round(secs * 1e3, 3),
        ms_per_sample: round(secs * 1e3 / batch as f64, 4),
        threads: rayon::current_num_threads(),
        device: crate::device::describe(device),
    }))
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// A table of measurements.
pub fn render(ms: &[Measurement]) -> String {
    let mut out = format!(
        "{:<12} {:<11} {:>7} {:>14} {:>14} {:>12}\n",
        "shape", "what", "batch", "ms/batch", "ms/sample", "samples/s"
    );
    for m in ms {
        out.push_str(&format!(
            "{:<12} {:<11} {:>7} {:>14.3} {:>14.4} {:>12.0}\n",
            m.shape,
            m.what,
            m.batch,
            m.ms_per_batch,
            m.ms_per_sample,
            1e3 / m.ms_per_sample.max(1e-12)
        ));
    }
    out
}

/// Parses a shape name, with the list of valid ones in the error.
pub fn shape_by_name(name: &str) -> Result<Shape> {
    paper_shape(name).ok_or_else(|| Error::Invalid(format!("unknown shape '{name}': use ds2-flow3, ds3-flow3 or zdc")))
}

/// One unit of a paper's model: its flow kind and stack shape.
struct PaperUnit {
    kind: FlowKind,
    shape: Shape,
}

/// The papers' sizes of each unit, teacher or student.
fn paper_units(detector: Detector, student: bool) -> Vec<PaperUnit> {
    use FlowKind::{Iaf, Maf};
    let s = if student { Iaf } else { Maf };
    let unit = |name: &str, kind, features, context, blocks, hidden, layers| PaperUnit {
        kind,
        shape: Shape { name: name.into(), features, context, blocks, hidden, layers, batches: (0, 0, 0) },
    };
    match detector {
        Detector::Ds2 => vec![
            unit("flow1", Maf, 45, 1, 8, 256, 1),
            unit("flow2", s, 144, 2, 8, 256, 2),
            unit("flow3", s, 144, 191, 8, if student { 384 } else { 256 }, 2),
        ],
        Detector::Ds3 => vec![
            unit("flow1", Maf, 45, 1, 8, 256, 1),
            unit("flow2", s, 900, 2, 8, 256, 2),
            unit("flow3", s, 900, 947, 8, 256, 1),
        ],
        Detector::Zdc => vec![unit("flow", s, PIXELS, CONTEXT, 4, 1452, 2)],
    }
}

/// Writes a model directory with random weights of the papers' sizes.
pub fn random_model(
    detector: Detector,
    student: bool,
    dir: &std::path::Path,
) -> Result<crate::models::manifest::Manifest> {
    use crate::data::preprocess::{CaloPreprocessing, Standardizer, ZdcPreprocessing};
    use crate::models::manifest::{DataInfo, Manifest, Preprocessing, Role, Unit};
    let mut units = std::collections::BTreeMap::new();
    for (i, PaperUnit { kind, shape }) in paper_units(detector, student).into_iter().enumerate() {
        let name = shape.name.as_str();
        let s = spec(&shape, kind);
        let varmap = VarMap::new();
        Flow::new(&s, SeededInit::var_builder(&varmap, i as u64, DType::F32, &Device::Cpu).pp(io::PREFIX))?;
        std::fs::create_dir_all(dir.join(name)).map_err(|e| Error::io(dir, e))?;
        io::save_varmap(&varmap, &dir.join(name).join("best.safetensors"))?;
        units.insert(name.to_string(), Unit { dir: name.into(), flow: Some(s) });
    }
    let zdc = detector == Detector::Zdc;
    if zdc {
        use crate::models::photon_sum;
        let spec = photon_sum::spec(&crate::config::PhotonSumSection::default(), 9);
        let varmap = VarMap::new();
        Flow::new(&spec, SeededInit::var_builder(&varmap, 9, DType::F32, &Device::Cpu).pp(io::PREFIX))?;
        std::fs::create_dir_all(dir.join(photon_sum::UNIT)).map_err(|e| Error::io(dir, e))?;
        io::save_varmap(&varmap, &dir.join(photon_sum::UNIT).join("best.safetensors"))?;
        units.insert(photon_sum::UNIT.into(), Unit { dir: photon_sum::UNIT.into(), flow: Some(spec) });
    }
    let unit_scaler = |n: usize, mean: f64| Standardizer { mean: vec![mean; n], std: vec![1.0; n] };
    let data = DataInfo {
        path: "random".into(),
        files: Vec::new(),
        events: 0,
        used_events: 0,
        fractions: [0.7, 0.1, 0.2],
        split_seed: 0,
        particles: Default::default(),
    };
    let preprocessing = if zdc {
        Preprocessing::Zdc(ZdcPreprocessing::default())
    } else {
        Preprocessing::Calo(CaloPreprocessing::default())
    };
    let mut m = Manifest::teacher(
        detector,
        crate::config::Precision::F32,
        0,
        data,
        preprocessing,
        units,
        serde_json::Value::Null,
    );
    if student {
        m.role = Role::Student;
    }
    m.conditions = zdc.then(|| unit_scaler(CONTEXT, 0.0));
    m.photon_sum_target = zdc.then(|| unit_scaler(1, 5.0));
    m.save(dir)?;
    Ok(m)
}

/// Times full-shower generation (everything `sample` does but writing the file).
pub fn measure_showers(
    detector: Detector,
    student: bool,
    batch: usize,
    repeats: usize,
    precision: crate::flow::MatmulPrecision,
    device: &Device,
) -> Result<Measurement> {
    let tmp = std::env::temp_dir().join(format!("zdcflow-bench-{}-{detector:?}-{student}", std::process::id()));
    let m = random_model(detector, student, &tmp)?;
    let secs = match detector {
        Detector::Zdc => {
            let mut sampler = crate::sample::zdc::ZdcSampler::load(&tmp, &m, device)?;
            sampler.set_matmul_precision(precision)?;
            let particles: Vec<f32> = (0..batch * FEATURES).map(|i| ((i % FEATURES) as f32 - 4.0) * 0.3).collect();
            best_of(repeats, device, || {
                let mut noise = crate::detector::noise::BatchNoise::new(1, 0, batch, DType::F32, device)?;
                use crate::sample::{denoise::Denoise, zdc::PhotonSumSource};
                sampler.generate(&particles, &[], PhotonSumSource::Model, Denoise::default(), &mut noise)?;
                Ok(())
            })?
        }
        _ => {
            let mut chain = crate::sample::calo::CaloChain::load(&tmp, &m, device)?;
            chain.set_matmul_precision(precision)?;
            let e_inc: Vec<f32> = (0..batch).map(|i| crate::sample::log_uniform_energy(1, i)).collect();
            best_of(repeats, device, || {
                let mut noise = crate::detector::noise::BatchNoise::new(1, 0, batch, DType::F32, device)?;
                chain.generate(&e_inc, &mut noise)?;
                Ok(())
            })?
        }
    };
    let _ = std::fs::remove_dir_all(&tmp);
    let name = format!(
        "{}-{}{}",
        format!("{detector:?}").to_lowercase(),
        if student { "student" } else { "teacher" },
        if precision == crate::flow::MatmulPrecision::Bf16 { "-bf16" } else { "" }
    );
    Ok(Measurement {
        implementation: "zdcflow",
        shape: name,
        what: "sample-shower",
        batch,
        ms_per_batch: round(secs * 1e3, 3),
        ms_per_sample: round(secs * 1e3 / batch as f64, 4),
        threads: rayon::current_num_threads(),
        device: crate::device::describe(device),
    })
}
