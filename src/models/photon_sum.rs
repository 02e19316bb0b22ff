//! The ZDC photon-sum model: a 1-D conditional rational-quadratic-spline MAF (from our own flow
//! library) of the distribution of y = log(1 + S + u) given the 9 standardised particle features,
//! where S is a response's total photon count and u ~ U[0, 1) dequantises the integer count.
//! At inference a sum is *drawn* per response, S = max(⌊exp(y) − 1⌋, 0), so responses of one
//! condition get different totals (the published protocol's Bayesian photon-sum network plays
//! the same role); the point regressor it replaces gave every response of a condition one sum.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::config::PhotonSumSection;
use crate::data::preprocess::Standardizer;
use crate::data::zdc::FEATURES;
use crate::error::Result;
use crate::flow::permutation::{make_permutations, PermutationScheme};
use crate::flow::{Flow, FlowKind, FlowSpec, SplineConfig};
use crate::train::{RowSource, Rows};
use crate::util::atomic;

/// The unit's name (and subdirectory) in a ZDC model directory.
pub const UNIT: &str = "photon_sum";
/// The test-split report written beside the unit's weights.
pub const TEST_JSON: &str = "test.json";

/// The flow's architecture from its config section.
pub fn spec(section: &PhotonSumSection, seed: u64) -> FlowSpec {
    FlowSpec {
        kind: FlowKind::Maf,
        features: 1,
        context_features: FEATURES,
        blocks: section.blocks,
        hidden_features: section.hidden_features,
        hidden_layers: section.hidden_layers,
        residual: false,
        dropout: 0.0,
        spline: SplineConfig { num_bins: section.bins, tail_bound: section.tail_bound, ..SplineConfig::default() },
        permutations: make_permutations(PermutationScheme::None, 1, section.blocks, seed),
        base: Default::default(),
        fast_spline: None,
    }
}

/// Standardised features of `particles` (n × 9 raw) with the first 9 columns of `conditions`.
fn standardised(particles: &[f32], conditions: &Standardizer) -> Vec<f32> {
    let mut out = vec![0f32; particles.len()];
    for (row, o) in particles.chunks(FEATURES).zip(out.chunks_mut(FEATURES)) {
        conditions.apply(row, o);
    }
    out
}

/// Training rows: x = standardised log(1 + S + u), context = the standardised particle features.
pub struct PhotonSumRows<'a> {
    /// All events' raw particle features (events × 9).
    pub particles: &'a [f32],
    /// All events' photon sums.
    pub sums: &'a [f32],
    /// Its first 9 columns standardise the features.
    pub conditions: &'a Standardizer,
    /// Standardises log(1 + S).
    pub target: &'a Standardizer,
}

impl RowSource for PhotonSumRows<'_> {
    fn x_dim(&self) -> usize {
        1
    }

    fn ctx_dim(&self) -> usize {
        FEATURES
    }

    fn rows_per_event(&self) -> usize {
        1
    }

    fn block_events(&self) -> usize {
        1 << 16
    }

    fn rows(&self, events: &[usize], rng: &mut ChaCha8Rng) -> Result<Rows> {
        let n = events.len();
        let mut rows = Rows { x: vec![0.0; n], ctx: vec![0.0; n * FEATURES], weight: Vec::new(), n };
        for (k, &e) in events.iter().enumerate() {
            let y = (self.sums[e].max(0.0) as f64 + rng.random::<f64>()).ln_1p() as f32;
            self.target.apply(&[y], &mut rows.x[k..k + 1]);
            self.conditions.apply(
                &self.particles[e * FEATURES..(e + 1) * FEATURES],
                &mut rows.ctx[k * FEATURES..(k + 1) * FEATURES],
            );
        }
        Ok(rows)
    }
}

/// A trained photon-sum flow with its scalers.
pub struct PhotonSumModel {
    pub flow: Flow,
    pub conditions: Standardizer,
    pub target: Standardizer,
    pub dtype: DType,
    pub device: Device,
}

impl PhotonSumModel {
    /// Photon sums for `particles` (n × 9 raw), one per row, from the latent normals `z` (n, 1).
    pub fn sample(&self, particles: &[f32], z: &Tensor) -> Result<Vec<f32>> {
        let n = particles.len() / FEATURES;
        let ctx = Tensor::from_vec(standardised(particles, &self.conditions), (n, FEATURES), &self.device)?
            .to_dtype(self.dtype)?;
        let y = self.flow.to_data(z, Some(&ctx))?.output;
        let y = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(y.into_iter().map(|v| sum_of(self.target.invert(0, v))).collect())
    }

    /// Mean negative log-likelihood of log(1 + S + u) (natural units of y, nats) on `events`.
    pub fn nll(&self, source: &PhotonSumRows, events: &[usize], rng: &mut ChaCha8Rng) -> Result<f64> {
        let rows = source.rows(events, rng)?;
        let x = Tensor::from_vec(rows.x, (rows.n, 1), &self.device)?.to_dtype(self.dtype)?;
        let ctx = Tensor::from_vec(rows.ctx, (rows.n, FEATURES), &self.device)?.to_dtype(self.dtype)?;
        let pass = self.flow.to_latent(&x, Some(&ctx))?;
        let lp = (crate::flow::stack::standard_normal_log_prob(&pass.output)? + pass.ladj)?;
        let mean = lp.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?;
        Ok(-mean + self.target.std[0].ln())
    }
}

/// The integer photon count of a sampled y = log(1 + S + u).
pub fn sum_of(y: f32) -> f32 {
    ((y as f64).exp() - 1.0).floor().max(0.0) as f32
}

/// The photon-sum model's test-split figures, printed and written to `photon_sum/test.json`.
#[derive(Debug, Serialize)]
pub struct TestReport {
    pub events: usize,
    /// Mean NLL of log(1 + S + u) in nats.
    pub nll: f64,
    /// 1-Wasserstein distance between sampled and true photon sums (photons).
    pub ws_photon_sum: f64,
    /// Relative to the true sums' standard deviation.
    pub ws_over_std: f64,
    pub mean_true: f64,
    pub mean_sampled: f64,
    pub std_true: f64,
    pub std_sampled: f64,
}

impl TestReport {
    pub fn line(&self) -> String {
        format!(
            "photon_sum: test NLL {:.4} nats, WS(sampled, true sums) {:.1} photons ({:.3} σ) on {} events; \
             mean {:.0} vs {:.0}, std {:.0} vs {:.0} (sampled vs true)",
            self.nll,
            self.ws_photon_sum,
            self.ws_over_std,
            self.events,
            self.mean_sampled,
            self.mean_true,
            self.std_sampled,
            self.std_true
        )
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt())
}

/// Test NLL and the WS between sums sampled for the test events' features and their true sums.
pub fn test_report(model: &PhotonSumModel, source: &PhotonSumRows, test: &[usize], seed: u64) -> Result<TestReport> {
    use crate::util::rng::{derive, tag};
    let nll = model.nll(source, test, &mut derive(seed, &[tag::VALIDATION, 15]))?;
    let particles: Vec<f32> =
        test.iter().flat_map(|&e| source.particles[e * FEATURES..(e + 1) * FEATURES].iter().copied()).collect();
    let mut noise = crate::detector::noise::BatchNoise::new(
        crate::util::rng::derive_seed(seed, &[tag::SAMPLE, 15]),
        0,
        test.len(),
        model.dtype,
        &model.device,
    )?;
    let sampled: Vec<f64> = model.sample(&particles, &noise.normal(1)?)?.into_iter().map(f64::from).collect();
    let truth: Vec<f64> = test.iter().map(|&e| source.sums[e] as f64).collect();
    let ws = crate::eval::stats::wasserstein_1d(&sampled, &truth);
    let ((mt, st), (ms, ss)) = (mean_std(&truth), mean_std(&sampled));
    Ok(TestReport {
        events: test.len(),
        nll,
        ws_photon_sum: ws,
        ws_over_std: ws / st.max(1e-12),
        mean_true: mt,
        mean_sampled: ms,
        std_true: st,
        std_sampled: ss,
    })
}

/// Writes the report as `dir/test.json`.
pub fn save_report(dir: &Path, report: &TestReport) -> Result<()> {
    let text = serde_json::to_string_pretty(report).expect("report serialises");
    atomic::write_bytes(&dir.join(TEST_JSON), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::split::Split;
    use crate::flow::io;
    use crate::flow::params::SeededInit;
    use crate::models::{NllObjective, RunOptions, Units};
    use candle_nn::VarMap;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    /// Two conditions (feature 0 = ∓1) with log S ~ N(μ, σ) of different (μ, σ): the trained
    /// flow's samples must recover each condition's mean and spread of log(1 + S).
    #[test]
    fn recovers_a_log_normal_photon_sum_per_condition() {
        let truth = [(6.0f64, 0.15f64), (8.0, 0.5)];
        let n = 4000;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut particles = vec![0f32; n * FEATURES];
        let mut sums = vec![0f32; n];
        for e in 0..n {
            let c = e % 2;
            particles[e * FEATURES] = if c == 0 { -1.0 } else { 1.0 };
            particles[e * FEATURES + 1] = rng.random::<f32>(); // an irrelevant feature
            let (mu, sigma) = truth[c];
            sums[e] = Normal::new(mu, sigma).unwrap().sample(&mut rng).exp().floor() as f32;
        }
        let logs: Vec<f32> = sums.iter().map(|s| s.ln_1p()).collect();
        let target = Standardizer::fit(&logs, 1);
        let conditions = Standardizer::fit(&particles, FEATURES);
        let source = PhotonSumRows { particles: &particles, sums: &sums, conditions: &conditions, target: &target };
        let section = PhotonSumSection { epochs: 25, ..PhotonSumSection::default() };
        let spec = spec(&section, 1);
        let varmap = VarMap::new();
        let device = Device::Cpu;
        let flow = Flow::new(&spec, SeededInit::var_builder(&varmap, 7, DType::F32, &device).pp(io::PREFIX)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let split = Split { train: (0..n * 9 / 10).collect(), val: (n * 9 / 10..n).collect(), test: Vec::new() };
        let opts = RunOptions { resume: false, device: device.clone(), show_progress: false };
        let units = Units { out: dir.path(), split: &split, dtype: DType::F32, opts: &opts };
        units.train(UNIT, section.train_config(5), &spec, &source, &varmap, &NllObjective { flow: &flow }).unwrap();
        let model = PhotonSumModel { flow, conditions, target, dtype: DType::F32, device: device.clone() };
        for (c, &(mu, sigma)) in truth.iter().enumerate() {
            let m = 3000;
            let mut p = vec![0f32; m * FEATURES];
            for e in 0..m {
                p[e * FEATURES] = if c == 0 { -1.0 } else { 1.0 };
                p[e * FEATURES + 1] = 0.5;
            }
            let mut noise = crate::detector::noise::BatchNoise::new(11 + c as u64, 0, m, DType::F32, &device).unwrap();
            let s = model.sample(&p, &noise.normal(1).unwrap()).unwrap();
            let logs: Vec<f64> = s.iter().map(|&v| (v as f64).ln_1p()).collect();
            let (mean, std) = mean_std(&logs);
            assert!((mean - mu).abs() < 0.05 + 0.1 * sigma, "condition {c}: mean log S {mean:.3}, want {mu}");
            assert!((std / sigma - 1.0).abs() < 0.2, "condition {c}: spread {std:.3}, want {sigma}");
        }
    }

    #[test]
    fn sums_are_whole_non_negative_photons() {
        assert_eq!(sum_of(0.0), 0.0);
        assert_eq!(sum_of(-3.0), 0.0);
        assert_eq!(sum_of((101.5f64).ln() as f32), 100.0);
    }
}
