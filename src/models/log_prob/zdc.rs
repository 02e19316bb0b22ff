//! A ZDC response's log-density under the image flow, given its particle and photon sum, with
//! the Jacobian of the preprocessing, so that the number is a log-density of photon counts
//! ([`DEFINITION`], written into `log-prob --help` and its output file).

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use std::path::Path;

use super::LogProbs;
use crate::data::channels::PIXELS;
use crate::data::preprocess::{logit, ZdcPreprocessing};
use crate::data::zdc::{ZdcFile, FEATURES, RESPONSES};
use crate::detector::zdc::CONTEXT;
use crate::error::{Error, Result};
use crate::models::manifest::Manifest;

/// What `log_prob` is for a ZDC model.
pub const DEFINITION: &str =
    "log_prob = log p(x~_1..x~_(V-1) | particle, S, T) in ln(photons^-(V-1)), V = 1936 pixels, for the \
noised response x~ = x + noise_mul * u, x the file's photon counts and u ~ U[0,1) per pixel (one draw per pixel \
from --seed, as in training), given the particle's 9 features and the file's photon sum S (the flow's conditions) \
and the noised total T = sum of x~ (which fixes the last pixel). With p = x~ / T and y the flow features \
(logit(alpha + (1 - 2 alpha) p), standardised per pixel where the model does): log_prob = log q(y | c) + log_det, q \
the image flow's density (base included), log_det = sum_{v<V} [log|dy_v/dp_v|] - (V-1) log T, the log|det| of \
x~_1..x~_(V-1) -> y_1..y_(V-1) at fixed T (the flow's density of the whole V-vector y is taken as the density of \
its first V-1 coordinates, as for CaloChallenge layers). Output datasets log_prob, log_q, log_det, photon_sum (S).";

/// One response's flow features and the log|det| of the preprocessing (see the module doc), from
/// its noised photon counts `noised` (1936).
pub fn preprocess(prep: &ZdcPreprocessing, noised: &[f64]) -> (Vec<f64>, f64) {
    let a = prep.alpha;
    let total: f64 = noised.iter().sum::<f64>() + 1e-16;
    let mut log_det = -((noised.len() - 1) as f64) * total.ln();
    let mut y = Vec::with_capacity(noised.len());
    for (i, &x) in noised.iter().enumerate() {
        let p = x / total;
        let w = a + (1.0 - 2.0 * a) * p;
        let mut v = logit(p, a);
        let mut log_dv = (1.0 - 2.0 * a).ln() - w.ln() - (1.0 - w).ln();
        if let Some(s) = &prep.pixels {
            v = (v - s.mean[i]) / s.std[i];
            log_dv -= s.std[i].ln();
        }
        y.push(v);
        if i + 1 < noised.len() {
            log_det += log_dv;
        }
    }
    (y, log_det)
}

/// Scores every response of `showers` under the ZDC model in `model` (manifest `m`),
/// `batch_size` responses at a time, with the noise of stream `seed`.
pub fn score_file(
    model: &Path,
    m: &Manifest,
    showers: &Path,
    seed: u64,
    batch_size: usize,
    device: &Device,
) -> Result<LogProbs> {
    let prep = crate::models::zdc::preprocessing(m, model)?;
    let scaler = crate::models::zdc::condition_scaler(m, model)?;
    let dtype = m.dtype.dtype();
    let flow = crate::models::student::frozen_flow(model, m, crate::models::zdc::FLOW_UNIT, dtype, device)?;
    let file = ZdcFile::open(showers)?;
    let mut rng = crate::util::rng::derive(seed, &[]);
    let (mut lp, mut q, mut det, mut sums) = (vec![], vec![], vec![], vec![]);
    let bar = crate::util::progress::bar(file.events as u64, "log-prob", "events", true);
    for start in (0..file.events).step_by(batch_size) {
        let end = (start + batch_size).min(file.events);
        let n = end - start;
        let responses = file.read_responses(start, end)?;
        let mut ys = Vec::with_capacity(n * PIXELS);
        for r in responses.chunks(PIXELS) {
            let noised: Vec<f64> = r.iter().map(|&c| c as f64 + prep.noise_mul * rng.random::<f64>()).collect();
            let (y, d) = preprocess(&prep, &noised);
            ys.extend(y);
            det.push(d);
        }
        let s: Vec<f32> = file.conditions.photon_sum[start..end].iter().map(|&s| s.max(0.0)).collect();
        let ctx =
            crate::detector::zdc::conditions(scaler, &file.conditions.particles[start * FEATURES..end * FEATURES], &s);
        let to = |v: Tensor| -> Result<Tensor> { Ok(v.to_device(device)?.to_dtype(dtype)?) };
        let ys = to(Tensor::from_vec(ys, (n, PIXELS), &Device::Cpu)?)?;
        let ctx = to(Tensor::from_vec(ctx, (n, CONTEXT), &Device::Cpu)?)?;
        let lq = flow.log_prob(&ys, Some(&ctx))?.to_dtype(DType::F64)?.to_device(&Device::Cpu)?.to_vec1::<f64>()?;
        for (i, l) in lq.into_iter().enumerate() {
            lp.push(l + det[start + i]);
            q.push(l);
        }
        sums.extend(s.iter().map(|&s| s as f64));
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    if let Some(i) = lp.iter().position(|x| !x.is_finite()) {
        return Err(Error::data(showers, RESPONSES, format!("event {i}: log_prob is {}", lp[i])));
    }
    Ok(LogProbs {
        datasets: vec![("log_prob", lp), ("log_q", q), ("log_det", det), ("photon_sum", sums)],
        noise: ("noise_mul", prep.noise_mul),
        definition: DEFINITION,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::log_abs_det;
    use super::*;
    use crate::data::preprocess::Standardizer;

    /// With the total T fixed, x~_1..x~_(V−1) → y_1..y_(V−1) (x~_V = T − the others), by
    /// finite differences: its log|det| is `preprocess`'s.
    #[test]
    fn the_zdc_preprocessing_log_det_matches_a_finite_difference_jacobian() {
        let mut rng = crate::util::rng::derive(3, &[]);
        for (case, v) in [3usize, 5, 8].into_iter().enumerate() {
            let pixels = (case > 0).then(|| Standardizer {
                mean: (0..v).map(|i| -3.0 + 0.1 * i as f64).collect(),
                std: (0..v).map(|i| 0.5 + 0.3 * i as f64).collect(),
            });
            let prep = ZdcPreprocessing { pixels, ..ZdcPreprocessing::default() };
            let x: Vec<f64> = (0..v).map(|_| 0.5 + 20.0 * rng.random::<f64>()).collect();
            let total: f64 = x.iter().sum();
            let map = |head: &[f64]| {
                let mut full = head.to_vec();
                full.push(total - head.iter().sum::<f64>());
                let (y, _) = preprocess(&prep, &full);
                y[..v - 1].to_vec()
            };
            let mut jac = vec![vec![0.0; v - 1]; v - 1];
            for j in 0..v - 1 {
                let h = 1e-6 * x[j];
                let (mut xp, mut xm) = (x[..v - 1].to_vec(), x[..v - 1].to_vec());
                xp[j] += h;
                xm[j] -= h;
                let (fp, fm) = (map(&xp), map(&xm));
                for i in 0..v - 1 {
                    jac[i][j] = (fp[i] - fm[i]) / (2.0 * h);
                }
            }
            let numeric = log_abs_det(jac);
            let (_, analytic) = preprocess(&prep, &x);
            assert!((numeric - analytic).abs() < 1e-5 * (1.0 + analytic.abs()), "V={v}: {numeric} vs {analytic}");
        }
    }
}
