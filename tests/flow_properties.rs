//! Property tests for every transform of the flow library.
//!
//! One helper checks any [`Transform`]: shapes, inverse∘forward = identity, forward∘inverse =
//! identity, log|det| of the two directions opposite, and log|det| against the determinant of a
//! finite-difference Jacobian in float64. New transforms get every check by joining `transforms()`.

mod common;

use candle_core::{DType, Tensor, Var};
use common::flows::{self, build, randn, spline, DEV};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use zdcflow::flow::permutation::Permutation;
use zdcflow::flow::{io, ElementwiseSpline, Flow, FlowKind, FlowSpec, PassOptions, Transform};

fn spec(kind: FlowKind, features: usize, context: usize, blocks: usize, residual: bool) -> FlowSpec {
    FlowSpec { residual, ..flows::spec(kind, features, context, blocks, 11) }
}

struct Case {
    name: String,
    transform: Box<dyn Transform>,
    features: usize,
    context: usize,
}

fn transforms(seed: u64, dtype: DType) -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cfg = spline(3.0);
    // Raw parameters of the magnitude a MADE produces. Much steeper bins (s' ~ 1e-4) make the f32
    // inverse ill-conditioned (|Δx| ≈ ε·|z|/s'), in nflows as here; the spline's own unit tests
    // cover steep parameters in f64.
    let params = randn(&mut rng, (4, cfg.params_per_feature()), 1.0, dtype);
    let mut cases = vec![
        Case {
            name: "elementwise spline".into(),
            transform: Box::new(ElementwiseSpline { params, config: cfg }),
            features: 4,
            context: 0,
        },
        Case {
            name: "permutation".into(),
            transform: Box::new(Permutation::new(&[2, 0, 3, 1], &DEV).unwrap()),
            features: 4,
            context: 0,
        },
    ];
    for kind in [FlowKind::Maf, FlowKind::Iaf] {
        for (blocks, context, residual) in [(1, 0, false), (1, 3, false), (3, 3, false), (3, 2, true), (2, 0, true)] {
            let s = spec(kind, 4, context, blocks, residual);
            cases.push(Case {
                name: format!("{kind:?} blocks={blocks} context={context} residual={residual}"),
                transform: Box::new(build(&s, seed, dtype).0),
                features: 4,
                context,
            });
        }
    }
    cases
}

fn context(rng: &mut ChaCha8Rng, n: usize, c: usize, dtype: DType) -> Option<Tensor> {
    (c > 0).then(|| randn(rng, (n, c), 1.0, dtype))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// log|det| of a square matrix by Gaussian elimination with partial pivoting.
fn log_abs_det(mut a: Vec<Vec<f64>>) -> f64 {
    let n = a.len();
    let mut acc = 0.0;
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).unwrap();
        a.swap(c, p);
        let pivot = a[c][c];
        acc += pivot.abs().ln();
        let pivot_row = a[c].clone();
        for row in a.iter_mut().skip(c + 1) {
            let f = row[c] / pivot;
            for (v, p) in row.iter_mut().zip(&pivot_row).skip(c) {
                *v -= f * p;
            }
        }
    }
    acc
}

/// Jacobian of `f` at row `x` by central differences.
fn numerical_jacobian(f: &dyn Fn(&Tensor) -> Tensor, x: &[f64], h: f64) -> Vec<Vec<f64>> {
    let d = x.len();
    let mut rows = Vec::with_capacity(2 * d * d);
    for j in 0..d {
        for sign in [1.0, -1.0] {
            let mut v = x.to_vec();
            v[j] += sign * h;
            rows.extend(v);
        }
    }
    let out = f(&Tensor::from_vec(rows, (2 * d, d), &DEV).unwrap()).to_vec2::<f64>().unwrap();
    let mut jac = vec![vec![0.0; d]; d];
    for j in 0..d {
        for i in 0..d {
            jac[i][j] = (out[2 * j][i] - out[2 * j + 1][i]) / (2.0 * h);
        }
    }
    jac
}

#[test]
fn every_transform_inverts_in_f32_to_1e4() {
    for seed in [1, 2, 3] {
        let mut rng = ChaCha8Rng::seed_from_u64(100 + seed);
        for case in transforms(seed, DType::F32) {
            let xs = randn(&mut rng, (6, case.features), 2.0, DType::F32);
            let ctx = context(&mut rng, 6, case.context, DType::F32);
            let (zs, l_fwd) = case.transform.forward(&xs, ctx.as_ref()).unwrap();
            assert_eq!(zs.dims(), xs.dims(), "{}", case.name);
            assert_eq!(l_fwd.dims(), &[6], "{}", case.name);
            let (back, l_inv) = case.transform.inverse(&zs, ctx.as_ref()).unwrap();
            let err = max_abs_diff(&back, &xs);
            assert!(err < 1e-4, "{} seed {seed}: inverse(forward(x)) off by {err}", case.name);
            let lerr = max_abs_diff(&(l_fwd + l_inv).unwrap(), &Tensor::zeros(6, DType::F32, &DEV).unwrap());
            assert!(lerr < 1e-3, "{} seed {seed}: log-dets not opposite ({lerr})", case.name);
            let (xs2, _) = case.transform.inverse(&xs, ctx.as_ref()).unwrap();
            let (again, _) = case.transform.forward(&xs2, ctx.as_ref()).unwrap();
            let err = max_abs_diff(&again, &xs);
            assert!(err < 1e-4, "{} seed {seed}: forward(inverse(z)) off by {err}", case.name);
        }
    }
}

#[test]
fn every_transform_log_det_matches_numerical_jacobian_in_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for case in transforms(5, DType::F64) {
        let n = 6;
        let xs = randn(&mut rng, (n, case.features), 1.5, DType::F64);
        let ctx = context(&mut rng, n, case.context, DType::F64);
        for inverse in [false, true] {
            let run = |x: &Tensor, c: Option<&Tensor>| {
                if inverse {
                    case.transform.inverse(x, c).unwrap()
                } else {
                    case.transform.forward(x, c).unwrap()
                }
            };
            let ladj = run(&xs, ctx.as_ref()).1.to_vec1::<f64>().unwrap();
            for (r, row) in xs.to_vec2::<f64>().unwrap().iter().enumerate() {
                let f = |probe: &Tensor| -> Tensor {
                    let m = probe.dim(0).unwrap();
                    let c = ctx.as_ref().map(|c| c.narrow(0, r, 1).unwrap().repeat((m, 1)).unwrap());
                    run(probe, c.as_ref()).0
                };
                let fd = log_abs_det(numerical_jacobian(&f, row, 1e-6));
                assert!(
                    (fd - ladj[r]).abs() < 1e-5 * (1.0 + fd.abs()),
                    "{} (inverse: {inverse}) row {r}: numerical {fd} vs {}",
                    case.name,
                    ladj[r]
                );
            }
        }
    }
}

/// Row i of the Jacobian of `f` at `xs` (summed over the batch), by back-propagation.
fn jacobian_rows(f: &dyn Fn(&Tensor) -> Tensor, xs: &Tensor) -> Vec<Vec<f64>> {
    let d = xs.dim(1).unwrap();
    (0..f(xs).dim(1).unwrap())
        .map(|i| {
            let v = Var::from_tensor(xs).unwrap();
            let out = f(v.as_tensor());
            let g = out.narrow(1, i, 1).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = g.get(v.as_tensor()).map(|t| t.abs().unwrap().sum(0).unwrap().to_vec1::<f64>().unwrap());
            gx.unwrap_or_else(|| vec![0.0; d])
        })
        .collect()
}

#[test]
fn block_outputs_depend_only_on_earlier_features() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for kind in [FlowKind::Maf, FlowKind::Iaf] {
        for residual in [false, true] {
            let s = spec(kind, 5, 2, 1, residual);
            let (flow, _) = build(&s, 3, DType::F64);
            let xs = randn(&mut rng, (4, 5), 1.0, DType::F64);
            let ctx = randn(&mut rng, (4, 2), 1.0, DType::F64);
            // The fast pass of the block (MAF: x → z, IAF: z → x) and its MADE output.
            let fast = |x: &Tensor| match kind {
                FlowKind::Maf => flow.to_latent_with(x, Some(&ctx), PassOptions::traced()).unwrap(),
                FlowKind::Iaf => flow.to_data_with(x, Some(&ctx), PassOptions::traced()).unwrap(),
            };
            let out = jacobian_rows(&|x| fast(x).output, &xs);
            for (i, row) in out.iter().enumerate() {
                assert!(row[i] > 0.0, "{kind:?}: output {i} must depend on input {i}");
                for (j, &g) in row.iter().enumerate().skip(i + 1) {
                    assert_eq!(g, 0.0, "{kind:?} residual={residual}: ∂out_{i}/∂in_{j} ≠ 0");
                }
            }
            let m = s.spline.params_per_feature();
            let made = jacobian_rows(&|x| fast(x).trace.unwrap().made.remove(0), &xs);
            for (o, row) in made.iter().enumerate() {
                let feature = o / m;
                for (j, &g) in row.iter().enumerate().skip(feature) {
                    assert_eq!(g, 0.0, "{kind:?}: MADE output {o} (feature {feature}) depends on input {j}");
                }
            }
            // Some MADE output of the last feature must see every earlier input.
            let last = &made[(5 - 1) * m..];
            for j in 0..4 {
                assert!(last.iter().any(|row| row[j] > 0.0), "{kind:?}: feature 4 ignores input {j}");
            }
        }
    }
}

fn integrate(flow: &Flow, lo: f64, hi: f64, steps: usize, ctx_row: Option<&[f64]>) -> f64 {
    let d = flow.spec().features;
    let h = (hi - lo) / steps as f64;
    let axis: Vec<f64> = (0..steps).map(|i| lo + (i as f64 + 0.5) * h).collect();
    let points: Vec<f64> = match d {
        1 => axis.clone(),
        2 => axis.iter().flat_map(|&a| axis.iter().flat_map(move |&b| [a, b])).collect(),
        _ => unreachable!(),
    };
    let n = points.len() / d;
    let xs = Tensor::from_vec(points, (n, d), &DEV).unwrap();
    let ctx = ctx_row.map(|c| Tensor::new(c, &DEV).unwrap().unsqueeze(0).unwrap().repeat((n, 1)).unwrap());
    let logp = flow.log_prob(&xs, ctx.as_ref()).unwrap();
    logp.exp().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap() * h.powi(d as i32)
}

#[test]
fn densities_integrate_to_one_in_1d_and_2d() {
    for kind in [FlowKind::Maf, FlowKind::Iaf] {
        let (f1, _) = build(&spec(kind, 1, 0, 3, false), 21, DType::F64);
        let mass = integrate(&f1, -12.0, 12.0, 24_000, None);
        assert!((mass - 1.0).abs() < 1e-3, "{kind:?} 1-D mass {mass}");
        let (f2, _) = build(&spec(kind, 2, 2, 3, false), 22, DType::F64);
        let mass = integrate(&f2, -10.0, 10.0, 400, Some(&[0.3, -1.2]));
        assert!((mass - 1.0).abs() < 2e-3, "{kind:?} 2-D mass {mass}");
    }
}

#[test]
fn sampling_then_density_agree_for_maf_and_iaf() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for kind in [FlowKind::Maf, FlowKind::Iaf] {
        let (flow, _) = build(&spec(kind, 6, 3, 4, false), 31, DType::F64);
        let zs = randn(&mut rng, (20, 6), 1.0, DType::F64);
        let ctx = randn(&mut rng, (20, 3), 1.0, DType::F64);
        let (xs, log_q) = flow.sample_from(&zs, Some(&ctx)).unwrap();
        let log_p = flow.log_prob(&xs, Some(&ctx)).unwrap();
        let err = max_abs_diff(&log_q, &log_p);
        assert!(err < 1e-8, "{kind:?}: log q of samples vs log p of the same points differ by {err}");
    }
}

#[test]
fn gradients_reach_every_parameter() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for kind in [FlowKind::Maf, FlowKind::Iaf] {
        for residual in [false, true] {
            let s = spec(kind, 4, 2, 3, residual);
            let (flow, varmap) = build(&s, 41, DType::F32);
            let xs = randn(&mut rng, (32, 4), 1.0, DType::F32);
            let ctx = randn(&mut rng, (32, 2), 1.0, DType::F32);
            // The fast pass of each kind, as training uses it.
            let loss = match kind {
                FlowKind::Maf => flow.log_prob(&xs, Some(&ctx)).unwrap().mean_all().unwrap().neg().unwrap(),
                FlowKind::Iaf => {
                    let (x, log_q) = flow.sample_from(&xs, Some(&ctx)).unwrap();
                    (x.sqr().unwrap().sum_all().unwrap() + log_q.sum_all().unwrap()).unwrap()
                }
            };
            let grads = loss.backward().unwrap();
            for (name, var) in varmap.data().lock().unwrap().iter() {
                let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{kind:?}: no gradient for {name}"));
                let total = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(total > 0.0, "{kind:?} residual={residual}: zero gradient for {name}");
            }
        }
    }
}

#[test]
fn saved_flow_loads_with_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("maf");
    let s = spec(FlowKind::Maf, 5, 2, 3, false);
    let (flow, varmap) = build(&s, 51, DType::F32);
    io::save(&s, &varmap, &stem).unwrap();
    let loaded = io::load(&stem, DType::F32, &DEV).unwrap();
    let again = io::load(&stem, DType::F32, &DEV).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    // 300 rows: the frozen network also takes its blocked (staircase) path.
    let xs = randn(&mut rng, (300, 5), 1.0, DType::F32);
    let ctx = randn(&mut rng, (300, 2), 1.0, DType::F32);
    let a = flow.log_prob(&xs, Some(&ctx)).unwrap();
    let b = loaded.log_prob(&xs, Some(&ctx)).unwrap();
    assert_eq!(
        b.to_vec1::<f32>().unwrap(),
        again.log_prob(&xs, Some(&ctx)).unwrap().to_vec1::<f32>().unwrap(),
        "loads are bitwise identical"
    );
    // The loaded (frozen) network orders its hidden units by degree and multiplies by blocks:
    // the same function, summed in another order.
    let err = max_abs_diff(&a, &b);
    assert!(err < 1e-4, "saved → loaded log-density differs by {err}");
}

#[test]
fn loading_weights_of_another_architecture_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("maf");
    let s = spec(FlowKind::Maf, 5, 2, 3, false);
    let (_, varmap) = build(&s, 51, DType::F32);
    io::save(&s, &varmap, &stem).unwrap();
    for other in
        [spec(FlowKind::Maf, 5, 2, 4, false), spec(FlowKind::Maf, 6, 2, 3, false), spec(FlowKind::Maf, 5, 3, 3, false)]
    {
        let err = io::load_frozen_flow(&other, &stem.with_extension("safetensors"), io::PREFIX, DType::F32, &DEV)
            .err()
            .expect("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("another model") && msg.contains("maf.safetensors"), "unclear error: {msg}");
    }
}
