//! Probability density distillation: the loss terms vanish exactly for a student that is the
//! teacher's exact inverse; a distilled IAF reaches its teacher's log-likelihood on a 2-D
//! problem; the channel loss and the inverse-diversity weights on hand-made data.

mod common;

use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use common::flows::{self, build, randn, spline, DEV};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zdcflow::config::TrainConfig;
use zdcflow::distill::{ChannelLoss, DistillObjective, Distillation, Terms};
use zdcflow::flow::params::assign;
use zdcflow::flow::{Flow, FlowKind, FlowSpec};
use zdcflow::models::NllObjective;
use zdcflow::train::{self, Batch, RowSource, Rows};

/// A small stack with `hidden` features in one layer, splines on [−4, 4].
fn spec(kind: FlowKind, features: usize, context: usize, blocks: usize, hidden: usize) -> FlowSpec {
    FlowSpec {
        hidden_features: hidden,
        hidden_layers: 1,
        spline: spline(4.0),
        ..flows::spec(kind, features, context, blocks, 3)
    }
}

fn terms(beta: f64) -> Terms {
    Terms { beta, latent_width: 1.0, step_terms: true, made_terms: true, weighted: false, channel: None }
}

/// A MAF whose first MADE layers have zero weights is an element-wise spline with
/// context-dependent parameters in every block; an IAF with the same weights applies exactly
/// the inverse splines, and its MADE outputs equal the teacher's — so every term vanishes.
#[test]
fn every_loss_term_is_zero_for_the_exact_inverse_and_positive_otherwise() {
    let (teacher, tvm) = build(&spec(FlowKind::Maf, 4, 2, 3, 8), 1, DType::F64);
    for (name, var) in tvm.data().lock().unwrap().iter() {
        if name.ends_with("made.initial.weight") {
            var.set(&var.zeros_like().unwrap()).unwrap();
        }
    }
    let (student, svm) = build(&spec(FlowKind::Iaf, 4, 2, 3, 8), 2, DType::F64);
    let values = tvm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    assign(&svm, &values).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let batch = Batch {
        x: randn(&mut rng, (64, 4), 1.0, DType::F64),
        ctx: Some(randn(&mut rng, (64, 2), 1.0, DType::F64)),
        weight: None,
        n: 64,
    };
    let d = Distillation { teacher: &teacher, student: &student, terms: terms(0.5) };
    let (loss, parts) = d.loss_parts(&batch, &mut rng, false).unwrap();
    let loss = loss.to_scalar::<f64>().unwrap();
    assert!(parts.data_loop < 1e-20 && parts.latent_loop < 1e-20 && loss < 1e-20, "{parts:?} {loss}");

    let bias = svm.data().lock().unwrap().get("flow.1.made.final.bias").unwrap().clone();
    bias.set(&(bias.as_tensor() + 0.05).unwrap()).unwrap();
    let (_, parts) = d.loss_parts(&batch, &mut rng, false).unwrap();
    assert!(parts.data_loop > 1e-6 && parts.latent_loop > 1e-6, "a perturbed student is penalised: {parts:?}");
}

#[test]
fn the_channel_loss_is_zero_for_identical_images_and_weighted_per_sample() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let c = ChannelLoss {
        matrix: zdcflow::data::channels::channel_matrix(DType::F64, &DEV).unwrap(),
        weight: 1.0,
        weighted: true,
        pixel_affine: None,
        photon_sum: None,
    };
    let x = randn(&mut rng, (3, 1936), 1.0, DType::F64);
    let zero = zdcflow::distill::objective::channel_loss(&c, &x, &x, None).unwrap().to_scalar::<f64>().unwrap();
    assert_eq!(zero, 0.0);
    let y = (&x + randn(&mut rng, (3, 1936), 1.0, DType::F64)).unwrap();
    let plain = zdcflow::distill::objective::channel_loss(&c, &x, &y, None).unwrap().to_scalar::<f64>().unwrap();
    let w = Tensor::new(&[2.0f64, 2.0, 2.0], &DEV).unwrap();
    let weighted = zdcflow::distill::objective::channel_loss(&c, &x, &y, Some(&w)).unwrap().to_scalar::<f64>().unwrap();
    assert!(plain > 0.0 && (weighted - 2.0 * plain).abs() < 1e-12 * plain);
}

/// In photons the loss is the mean over the 5 channels of (S·Δfraction)²: for two events with
/// S = 100 and 300 it equals (100²·a + 300²·b) / (2·5), with a, b each event's Σ_c Δfraction²
/// (the fraction loss of that event alone); and a per-pixel affine map back to logits is applied.
#[test]
fn the_channel_loss_in_photons_scales_each_event_by_its_photon_sum() {
    use zdcflow::distill::objective::{channel_loss, channel_loss_in};
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let c = ChannelLoss {
        matrix: zdcflow::data::channels::channel_matrix(DType::F64, &DEV).unwrap(),
        weight: 1.0,
        weighted: false,
        pixel_affine: None,
        photon_sum: None,
    };
    let x = randn(&mut rng, (2, 1936), 1.0, DType::F64);
    let y = (&x + randn(&mut rng, (2, 1936), 1.0, DType::F64)).unwrap();
    let frac = |w: [f64; 2]| {
        let w = Tensor::new(&w, &DEV).unwrap();
        channel_loss(&c, &x, &y, Some(&w)).unwrap().to_scalar::<f64>().unwrap()
    };
    let (a, b) = (2.0 * frac([1.0, 0.0]), 2.0 * frac([0.0, 1.0]));
    let s = Tensor::new(&[[100.0f64], [300.0]], &DEV).unwrap();
    let photons = channel_loss_in(&c, &x, &y, None, Some(&s)).unwrap().to_scalar::<f64>().unwrap();
    let want = (1e4 * a + 9e4 * b) / 10.0;
    assert!((photons - want).abs() < 1e-9 * want, "{photons} vs {want}");
    // Standardised features with (std, mean) per pixel give the loss of the logits x·std + mean.
    let std = Tensor::full(2.0f64, (1, 1936), &DEV).unwrap();
    let mean = Tensor::full(-1.0f64, (1, 1936), &DEV).unwrap();
    let c2 = ChannelLoss { pixel_affine: Some((std.clone(), mean.clone())), ..c.clone() };
    let xs = ((&x + 1.0).unwrap() / 2.0).unwrap();
    let ys = ((&y + 1.0).unwrap() / 2.0).unwrap();
    let on_standardised = channel_loss(&c2, &xs, &ys, None).unwrap().to_scalar::<f64>().unwrap();
    let on_logits = channel_loss(&c, &x, &y, None).unwrap().to_scalar::<f64>().unwrap();
    assert!((on_standardised - on_logits).abs() < 1e-12 * on_logits);
}

/// 2-D "banana" data: x1 ~ N(0, 1), x2 = x1²/2 + N(0, 1/4).
struct Banana {
    rows: Vec<f32>,
}

impl RowSource for Banana {
    fn x_dim(&self) -> usize {
        2
    }
    fn ctx_dim(&self) -> usize {
        0
    }
    fn rows_per_event(&self) -> usize {
        1
    }
    fn block_events(&self) -> usize {
        100_000
    }
    fn rows(&self, events: &[usize], _rng: &mut ChaCha8Rng) -> zdcflow::Result<Rows> {
        Ok(Rows {
            x: events.iter().flat_map(|&e| [self.rows[2 * e], self.rows[2 * e + 1]]).collect(),
            ctx: vec![],
            weight: vec![],
            n: events.len(),
        })
    }
}

fn banana(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .flat_map(|_| {
            let a: f32 = rng.sample(rand_distr::StandardNormal);
            let b: f32 = rng.sample(rand_distr::StandardNormal);
            [a, 0.5 * a * a + 0.5 * b]
        })
        .collect()
}

fn fit(
    name: &str,
    dir: &std::path::Path,
    varmap: &VarMap,
    source: &Banana,
    epochs: usize,
    lr: f64,
    objective: &dyn train::Objective,
) {
    let cfg: TrainConfig =
        toml::from_str(&format!("epochs = {epochs}\nbatch_size = 256\nlr = {lr}\nseed = 1")).unwrap();
    let events: Vec<usize> = (0..source.rows.len() / 2).collect();
    let run = train::Run {
        unit: name.into(),
        dir: dir.join(name),
        cfg,
        source,
        train_events: &events,
        val_events: &[],
        varmap,
        dtype: DType::F32,
        device: DEV,
        resume: false,
        show_progress: false,
    };
    train::fit(&run, objective).unwrap();
}

/// Tolerance: the student's mean log-likelihood on held-out data within 0.05 nats of the
/// teacher's (a density ratio within about 5 %); the teacher itself must beat a Gaussian by far.
#[test]
fn a_distilled_iaf_reaches_its_teachers_log_likelihood_on_2d_data() {
    let tmp = common::tmp();
    let data = Banana { rows: banana(8000, 1) };
    let (teacher, tvm) = build(&spec(FlowKind::Maf, 2, 0, 4, 32), 1, DType::F32);
    fit("teacher", tmp.path(), &tvm, &data, 40, 3e-3, &NllObjective { flow: &teacher });
    let (student, svm) = build(&spec(FlowKind::Iaf, 2, 0, 4, 32), 2, DType::F32);
    let objective = DistillObjective {
        distillation: Distillation { teacher: &teacher, student: &student, terms: terms(0.5) },
        select_by_kl: true,
    };
    fit("student", tmp.path(), &svm, &data, 40, 3e-3, &objective);

    let test = banana(4000, 2);
    let x = Tensor::from_vec(test.clone(), (4000, 2), &DEV).unwrap();
    let mean = |f: &Flow| f.log_prob(&x, None).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let (ll_t, ll_s) = (mean(&teacher), mean(&student));
    // The best Gaussian's log-likelihood: −½ log det(2πe Σ).
    let m = |k: usize| test.iter().skip(k).step_by(2).map(|&v| v as f64).sum::<f64>() / 4000.0;
    let (m0, m1) = (m(0), m(1));
    let cov = |a: usize, b: usize, ma: f64, mb: f64| {
        test.chunks(2).map(|r| (r[a] as f64 - ma) * (r[b] as f64 - mb)).sum::<f64>() / 4000.0
    };
    let det = cov(0, 0, m0, m0) * cov(1, 1, m1, m1) - cov(0, 1, m0, m1).powi(2);
    let ll_gauss = -0.5 * ((2.0 * std::f64::consts::PI * std::f64::consts::E).powi(2) * det).ln();
    assert!(ll_t > ll_gauss + 0.2, "teacher {ll_t:.3} vs Gaussian {ll_gauss:.3}");
    assert!((ll_s - ll_t).abs() < 0.05, "student {ll_s:.4} vs teacher {ll_t:.4}");
}

/// Eq. 1 and 3 by hand on three conditions (images all zero except the listed pixels):
/// A (2 images): pixel 0 ∈ {1, 3} → per-pixel std 1 → f_div 1;
/// B (1 image) → f_div 0 → 1/f_div takes the largest finite value;
/// C (3 images): pixel 5 ∈ {0, 0, 3} (std √2), pixel 6 ∈ {2, 2, 2} (std 0) → f_div √2.
/// 1/f_div = (1, ∞ → 1, 1/√2); min–max normalised = (1, 1, 0); weights = norm·|X_c| + ε = (2 + ε, 1 + ε, ε).
#[test]
fn diversity_weights_on_a_hand_made_file_equal_hand_computed_values() {
    use zdcflow::data::zdc::{ZdcConditions, ZdcFile, ZdcWriter};
    let tmp = common::tmp();
    let mut images = vec![0f32; 6 * 1936];
    let mut set = |event: usize, pixel: usize, v: f32| images[event * 1936 + pixel] = v;
    set(0, 0, 1.0);
    set(1, 0, 3.0);
    set(3, 5, 3.0);
    for e in 3..6 {
        set(e, 6, 2.0);
    }
    let cond_of = [0usize, 0, 1, 2, 2, 2];
    let particles: Vec<f32> = cond_of.iter().flat_map(|&c| [c as f32 + 1.0; 9]).collect();
    let cond = ZdcConditions { particles, pdg: vec![2112; 6], photon_sum: vec![0.0; 6] };
    let path = tmp.path().join("div.h5");
    let mut w = ZdcWriter::create(&path, 6, &[], false).unwrap();
    w.write(&images, &cond, None).unwrap();
    w.finish().unwrap();
    let file = ZdcFile::open(&path).unwrap();
    let eps = 1e-3;
    let dw = zdcflow::distill::diversity::compute(&file, &[0, 1, 2, 3, 4, 5], eps).unwrap();
    let expected = [2.0 + eps, 2.0 + eps, 1.0 + eps, eps, eps, eps];
    for (e, (&got, want)) in dw.per_event.iter().zip(expected).enumerate() {
        assert!((got as f64 - want).abs() < 1e-6, "event {e}: {got} vs {want}");
    }
    assert!((dw.f_div[2] - 2f64.sqrt()).abs() < 1e-6 && dw.f_div[1] == 0.0 && (dw.f_div[0] - 1.0).abs() < 1e-9);
}
