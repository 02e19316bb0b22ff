//! The spline's own tests: identity outside the bound, inverse ∘ forward, log|det| and the
//! backward pass against finite differences, the tensor op against the scalar function.

use super::*;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn cfg(k: usize, b: f64, m: f64) -> SplineConfig {
    SplineConfig { num_bins: k, tail_bound: b, min_bin_width: m, min_bin_height: m, min_derivative: m }
}

fn random_params(rng: &mut ChaCha8Rng, m: usize, scale: f64) -> Vec<f64> {
    (0..m).map(|_| rng.random_range(-scale..scale)).collect()
}

#[test]
fn rqs_is_identity_outside_bound() {
    let c = cfg(8, 3.0, 1e-3);
    let p = vec![0.3; c.params_per_feature()];
    for x in [-10.0, -3.0001, 3.0001, 50.0] {
        for dir in [Direction::Forward, Direction::Inverse] {
            assert_eq!(rqs_scalar(&c, dir, x, &p), (x, 0.0));
        }
    }
}

#[test]
fn rqs_inverse_undoes_forward_and_negates_log_det() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for &(k, b) in &[(4, 3.0), (8, 14.0), (16, 5.0)] {
        let c = cfg(k, b, 1e-6);
        for _ in 0..500 {
            let p = random_params(&mut rng, c.params_per_feature(), 3.0);
            let x = rng.random_range(-b..b);
            let (y, l) = rqs_scalar(&c, Direction::Forward, x, &p);
            let (x2, l2) = rqs_scalar(&c, Direction::Inverse, y, &p);
            assert!((x - x2).abs() < 1e-9 * (1.0 + x.abs()), "x {x} → {y} → {x2}");
            assert!((l + l2).abs() < 1e-8, "ladj {l} vs {l2}");
        }
    }
}

#[test]
fn rqs_log_det_matches_finite_difference() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let c = cfg(8, 4.0, 1e-3);
    for _ in 0..300 {
        let p = random_params(&mut rng, c.params_per_feature(), 2.0);
        let x = rng.random_range(-3.9..3.9);
        let h = 1e-6;
        for dir in [Direction::Forward, Direction::Inverse] {
            let (_, l) = rqs_scalar(&c, dir, x, &p);
            let (yp, _) = rqs_scalar(&c, dir, x + h, &p);
            let (ym, _) = rqs_scalar(&c, dir, x - h, &p);
            let fd = ((yp - ym) / (2.0 * h)).ln();
            assert!((fd - l).abs() < 1e-5, "{dir:?} x={x}: fd {fd} vs {l}");
        }
    }
}

/// The analytic backward pass against central differences of the scalar function, for every
/// raw parameter and the input, in both directions, for a random mix of upstream gradients.
#[test]
fn rqs_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for &(k, b) in &[(4, 3.0), (8, 14.0)] {
        let c = cfg(k, b, 1e-3);
        let m = c.params_per_feature();
        for _ in 0..200 {
            let p = random_params(&mut rng, m, 2.0);
            let x = rng.random_range(-0.95 * b..0.95 * b);
            let (gy, gl) = (rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
            for dir in [Direction::Forward, Direction::Inverse] {
                let f = |x: f64, p: &[f64]| {
                    let (y, l) = rqs_scalar(&c, dir, x, p);
                    gy * y + gl * l
                };
                let mut grad = vec![0.0; m];
                let gx = rqs_scalar_backward(&c, dir, x, &p, gy, gl, &mut grad);
                let h = 1e-6;
                let fd_x = (f(x + h, &p) - f(x - h, &p)) / (2.0 * h);
                assert!((fd_x - gx).abs() < 1e-5 * (1.0 + fd_x.abs()), "{dir:?} dx: fd {fd_x} vs {gx}");
                for j in 0..m {
                    let (mut pp, mut pm) = (p.clone(), p.clone());
                    pp[j] += h;
                    pm[j] -= h;
                    let fd = (f(x, &pp) - f(x, &pm)) / (2.0 * h);
                    assert!(
                        (fd - grad[j]).abs() < 1e-5 * (1.0 + fd.abs()),
                        "{dir:?} k={k} param {j}: fd {fd} vs {}",
                        grad[j]
                    );
                }
            }
        }
    }
}

#[test]
fn rqs_tensor_op_equals_scalar_function() -> candle_core::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let c = cfg(8, 14.0, 1e-6);
    let (n, d, m) = (5, 7, c.params_per_feature());
    let xs: Vec<f64> = (0..n * d).map(|_| rng.random_range(-16.0..16.0)).collect();
    let ps: Vec<f64> = (0..n * d * m).map(|_| rng.random_range(-3.0..3.0)).collect();
    let dev = Device::Cpu;
    let xt = Tensor::from_vec(xs.clone(), (n, d), &dev)?;
    let pt = Tensor::from_vec(ps.clone(), (n, d, m), &dev)?;
    for dir in [Direction::Forward, Direction::Inverse] {
        let (y, l) = rqs(&xt, &pt, &c, dir)?;
        let (y, l) = (y.flatten_all()?.to_vec1::<f64>()?, l.flatten_all()?.to_vec1::<f64>()?);
        for i in 0..n * d {
            let (ey, el) = rqs_scalar(&c, dir, xs[i], &ps[i * m..(i + 1) * m]);
            assert_eq!((y[i], l[i]), (ey, el));
        }
    }
    Ok(())
}

#[test]
fn rqs_tensor_gradients_reach_inputs_and_params() -> candle_core::Result<()> {
    let c = cfg(8, 3.0, 1e-3);
    let dev = Device::Cpu;
    let x = candle_core::Var::from_tensor(&Tensor::new(&[[0.5f64, -1.0]], &dev)?)?;
    let p = candle_core::Var::from_tensor(&(Tensor::ones((1, 2, c.params_per_feature()), DType::F64, &dev)? * 0.1)?)?;
    for dir in [Direction::Forward, Direction::Inverse] {
        let (y, l) = rqs(x.as_tensor(), p.as_tensor(), &c, dir)?;
        let loss = (y.sum_all()? + l.sum_all()?)?;
        let grads = loss.backward()?;
        let gx = grads.get(x.as_tensor()).expect("input gradient").to_vec2::<f64>()?;
        let mut grad = vec![0.0; c.params_per_feature()];
        let expected = rqs_scalar_backward(&c, dir, 0.5, &vec![0.1; c.params_per_feature()], 1.0, 1.0, &mut grad);
        assert!((gx[0][0] - expected).abs() < 1e-12);
        let gp = grads.get(p.as_tensor()).expect("param gradient").to_vec3::<f64>()?;
        for (a, b) in gp[0][0].iter().zip(&grad) {
            assert!((a - b).abs() < 1e-12);
        }
    }
    Ok(())
}

/// The tensor op and its backward on rows long enough for the 16-lane kernels, forward and
/// inverse (with a scalar tail: 37 and 48 features), equal the scalar function bit for bit, in f32 and f64, for inputs inside and outside
/// the bound and raw parameters that reach every branch (softplus above 20, exp below −87).
#[test]
fn rqs_lane_kernel_equals_the_scalar_function_bit_for_bit() -> candle_core::Result<()> {
    fn check<F: Real + candle_core::WithDType + std::fmt::Debug>(seed: u64) -> candle_core::Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for &(k, b, d) in &[(8, 14.0, 37), (4, 3.0, 48), (16, 5.0, 16)] {
            let c = cfg(k, b, 1e-6);
            let (n, m) = (9, c.params_per_feature());
            let xs: Vec<F> = (0..n * d).map(|_| F::from(rng.random_range(-1.2 * b..1.2 * b)).unwrap()).collect();
            let ps: Vec<F> = (0..n * d * m)
                .map(|_| {
                    let u: f64 = rng.random();
                    let v = if u < 0.03 {
                        rng.random_range(20.0..40.0)
                    } else if u < 0.06 {
                        rng.random_range(-120.0..-85.0)
                    } else {
                        rng.random_range(-4.0..4.0)
                    };
                    F::from(v).unwrap()
                })
                .collect();
            let dev = Device::Cpu;
            let xt = Tensor::from_vec(xs.clone(), (n, d), &dev)?;
            let pt = Tensor::from_vec(ps.clone(), (n, d * m), &dev)?;
            let g: Vec<F> = (0..2 * n * d).map(|_| F::from(rng.random_range(-2.0..2.0)).unwrap()).collect();
            for dir in [Direction::Forward, Direction::Inverse] {
                let grads = super::op::rqs_bwd_cpu(&c, dir, &xs, &ps, &g, d);
                let (g_params, g_inputs) = grads.split_at(n * d * m);
                let mut want = vec![F::zero(); m];
                for i in 0..n * d {
                    let p = &ps[i * m..(i + 1) * m];
                    let gx = rqs_scalar_backward(&c, dir, xs[i], p, g[i], g[n * d + i], &mut want);
                    let bits = |v: F| <F as candle_core::WithDType>::to_f64(v).to_bits();
                    assert_eq!(bits(g_inputs[i]), bits(gx), "{dir:?} k={k} d={d} element {i}: input gradient");
                    for j in 0..m {
                        assert_eq!(bits(g_params[i * m + j]), bits(want[j]), "{dir:?} k={k} element {i} parameter {j}");
                    }
                }
                let (y, l) = rqs(&xt, &pt, &c, dir)?;
                let (y, l) = (y.flatten_all()?.to_vec1::<F>()?, l.flatten_all()?.to_vec1::<F>()?);
                for i in 0..n * d {
                    let (ey, el) = rqs_scalar(&c, dir, xs[i], &ps[i * m..(i + 1) * m]);
                    let bits = |v: F| <F as candle_core::WithDType>::to_f64(v).to_bits();
                    assert!(
                        bits(y[i]) == bits(ey) && bits(l[i]) == bits(el),
                        "{dir:?} k={k} d={d} element {i}: lanes ({:?}, {:?}), scalar ({ey:?}, {el:?})",
                        y[i],
                        l[i]
                    );
                }
            }
        }
        Ok(())
    }
    check::<f32>(11)?;
    check::<f64>(12)
}
