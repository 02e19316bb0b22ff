//! A CaloChallenge shower's log-density under a model's inductive factorisation (Flow-1 · Flow-2
//! · ∏ Flow-3), with the Jacobian of the preprocessing, so that the number is a log-density of
//! voxel energies in MeV given E_inc ([`DEFINITION`], written into `log-prob --help` and its
//! output file).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use super::LogProbs;
use crate::data::calo::CaloFile;
use crate::data::geometry::LAYERS;
use crate::data::preprocess::{logit, CaloPreprocessing};
use crate::error::{Error, Result};
use crate::flow::Flow;
use crate::models::manifest::Manifest;

/// What `log_prob` is for a CaloChallenge model.
pub const DEFINITION: &str = "log_prob = log p(x~ | E_inc) in ln(MeV^-(45*V)) (V voxels per layer), for the \
shower x~ = x + n, x the file's voxel energies in MeV and n ~ U[0, noise_mev) per voxel (the training \
preprocessing's noise, one draw per voxel from --seed; zero voxels are therefore never exactly zero). With \
E_i = sum of layer i's voxels of x~, p_i = x~_i / E_i, u_i = logit(E_i / layer_scale), y_i = logit(p_i): \
log_prob = log q1(u | E_inc) + log q2(y_1 | E_inc, E_1) + sum_{i=2..45} log q3(y_i | E_inc, E_i, E_{i-1}, y_{i-1}, i) \
+ log_det, where q are the flows' densities (base included) and log_det = sum_i [log|du_i/dE_i| + \
sum_{v<V} log|dy_iv/dp_iv| - (V-1) log E_i] is log|det| of the bijection x~_i -> (u_i, y_i1..y_i(V-1)) of each layer \
(the fractions sum to one, so the V-th logit is fixed by the others; the flows' density of the whole V-vector y_i \
is taken as the density of its first V-1 coordinates, as the published factorisation is read). A model with a \
voxel standardisation models y_iv = (logit(p_iv) - m_iv) / s_iv instead (m, s in model.json), and log_det holds \
- sum_{v<V} log s_iv besides. E_inc is a condition, not a variable.";

/// `(u, y, log_det)` of one shower.
pub type Preprocessed = (Vec<f64>, Vec<f64>, f64);

/// One shower's preprocessed values: `u` (45 layer logits), `y` (45 × V pattern logits) and the
/// log|det| of the preprocessing (see [`DEFINITION`]); `Err((layer, E))` when a layer's energy
/// reaches the layer scale (the logit's domain).
pub fn preprocess(
    prep: &CaloPreprocessing,
    noised: &[f64],
    v: usize,
) -> std::result::Result<Preprocessed, (usize, f64)> {
    let a = prep.alpha;
    // log|d logit(α + (1 − 2α)q) / dq| = log(1 − 2α) − log w − log(1 − w), w = α + (1 − 2α)q.
    let log_dlogit = |q: f64| {
        let w = a + (1.0 - 2.0 * a) * q;
        (1.0 - 2.0 * a).ln() - w.ln() - (1.0 - w).ln()
    };
    let mut u = Vec::with_capacity(LAYERS);
    let mut y = Vec::with_capacity(noised.len());
    let mut log_det = 0.0;
    for (l, layer) in noised.chunks(v).enumerate() {
        let e: f64 = layer.iter().sum();
        let q = e / prep.layer_scale_mev;
        if !(e > 0.0 && q < 1.0) {
            return Err((l, e));
        }
        u.push(logit(q, a));
        log_det += log_dlogit(q) - prep.layer_scale_mev.ln() - (v as f64 - 1.0) * e.ln();
        let first = y.len();
        for (k, &x) in layer.iter().enumerate() {
            let p = x / e;
            y.push(logit(p, a));
            if k + 1 < v {
                log_det += log_dlogit(p);
            }
        }
        if let Some(s) = &prep.voxel_standardisation {
            for (k, yk) in y[first..].iter_mut().enumerate() {
                *yk = (*yk - s.mean[l * v + k]) / s.std[l * v + k];
                if k + 1 < v {
                    log_det -= s.std[l * v + k].ln();
                }
            }
        }
    }
    Ok((u, y, log_det))
}

struct Chain {
    flows: [Flow; 3],
    dtype: DType,
    device: Device,
}

fn tensor(values: Vec<f64>, shape: (usize, usize), c: &Chain) -> Result<Tensor> {
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(&c.device)?.to_dtype(c.dtype)?)
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.to_device(&Device::Cpu)?.to_vec1::<f64>()?)
}

/// Per shower: (log q1, log q2, Σ log q3, log_det).
type Parts = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

fn score(c: &Chain, prep: &CaloPreprocessing, e_inc: &[f64], rows: &[Preprocessed], v: usize) -> Result<Parts> {
    let n = rows.len();
    let e_pre: Vec<f64> = e_inc.iter().map(|&e| e.log10() - prep.log10_e_inc_offset).collect();
    let [f1, f2, f3] = &c.flows;
    let u: Vec<f64> = rows.iter().flat_map(|r| r.0.iter().copied()).collect();
    let lp1 = to_f64(&f1.log_prob(&tensor(u, (n, LAYERS), c)?, Some(&tensor(e_pre.clone(), (n, 1), c)?))?)?;
    let layer = |t: usize| -> Vec<f64> { rows.iter().flat_map(|r| r.1[t * v..(t + 1) * v].iter().copied()).collect() };
    let ctx2: Vec<f64> = rows.iter().zip(&e_pre).flat_map(|(r, &e)| [e, r.0[0] / prep.flow2_e1_divisor]).collect();
    let lp2 = to_f64(&f2.log_prob(&tensor(layer(0), (n, v), c)?, Some(&tensor(ctx2, (n, 2), c)?))?)?;
    let mut lp3 = vec![0f64; n];
    let dc = 3 + v + LAYERS - 1;
    for t in 1..LAYERS {
        let mut ctx = vec![0f64; n * dc];
        for (k, (r, &e)) in rows.iter().zip(&e_pre).enumerate() {
            let o = &mut ctx[k * dc..(k + 1) * dc];
            o[0] = e;
            o[1] = r.0[t];
            o[2] = r.0[t - 1];
            o[3..3 + v].copy_from_slice(&r.1[(t - 1) * v..t * v]);
            o[3 + v + t - 1] = 1.0;
        }
        let lp = to_f64(&f3.log_prob(&tensor(layer(t), (n, v), c)?, Some(&tensor(ctx, (n, dc), c)?))?)?;
        lp3.iter_mut().zip(lp).for_each(|(s, l)| *s += l);
    }
    Ok((lp1, lp2, lp3, rows.iter().map(|r| r.2).collect()))
}

/// Scores every shower of `showers` under the CaloChallenge model of dataset `dataset` in
/// `model` (manifest `m`), `batch_size` showers at a time, with the noise of stream `seed`.
pub fn score_file(
    model: &Path,
    m: &Manifest,
    dataset: u8,
    showers: &Path,
    seed: u64,
    batch_size: usize,
    device: &Device,
) -> Result<LogProbs> {
    let prep = crate::models::calo::preprocessing(m, model)?;
    let file = CaloFile::open(showers)?;
    if file.geometry.dataset != dataset {
        return Err(Error::format(
            showers,
            format!("holds dataset {} showers; the model is for dataset {dataset}", file.geometry.dataset),
        ));
    }
    let dtype = m.dtype.dtype();
    let load = |u: &str| -> Result<Flow> {
        if !m.units.contains_key(u) {
            return Err(Error::checkpoint(model, format!("has no {u}: the density needs Flow-1, Flow-2 and Flow-3")));
        }
        crate::models::student::frozen_flow(model, m, u, dtype, device)
    };
    let chain = Chain { flows: [load("flow1")?, load("flow2")?, load("flow3")?], dtype, device: device.clone() };
    let v = file.geometry.voxels_per_layer();
    let mut rng = crate::util::rng::derive(seed, &[]);
    let (mut e_all, mut lp, mut q1, mut q2, mut q3, mut det) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for chunk in file.chunks(batch_size) {
        let (start, chunk) = chunk?;
        let mut rows = Vec::with_capacity(chunk.len());
        for (k, shower) in chunk.showers.chunks(file.geometry.voxels()).enumerate() {
            let noised: Vec<f64> = shower.iter().map(|&x| x as f64 + prep.noise_mev * rng.random::<f64>()).collect();
            rows.push(preprocess(&prep, &noised, v).map_err(|(l, e)| {
                Error::data(
                    showers,
                    crate::data::calo::SHOWERS,
                    format!(
                        "event {}: layer {} holds {:.1} GeV, at or above the {:.0} GeV layer scale of the preprocessing (its density is 0)",
                        start + k,
                        l + 1,
                        e / 1e3,
                        prep.layer_scale_mev / 1e3
                    ),
                )
            })?);
        }
        let e_inc: Vec<f64> = chunk.incident_energies.iter().map(|&e| e as f64).collect();
        let (a1, a2, a3, d) = score(&chain, &prep, &e_inc, &rows, v)?;
        for i in 0..rows.len() {
            lp.push(a1[i] + a2[i] + a3[i] + d[i]);
        }
        e_all.extend(e_inc);
        q1.extend(a1);
        q2.extend(a2);
        q3.extend(a3);
        det.extend(d);
    }
    if let Some(i) = lp.iter().position(|x| !x.is_finite()) {
        return Err(Error::data(showers, crate::data::calo::SHOWERS, format!("event {i}: log_prob is {}", lp[i])));
    }
    Ok(LogProbs {
        datasets: vec![
            ("log_prob", lp),
            ("log_q_flow1", q1),
            ("log_q_flow2", q2),
            ("log_q_flow3", q3),
            ("log_det", det),
            ("incident_energies", e_all),
        ],
        noise: ("noise_mev", prep.noise_mev),
        definition: DEFINITION,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::log_abs_det;
    use super::*;

    /// The map of one layer x~ (V) → (u, y_1..y_(V−1)) (V), as `preprocess` computes it.
    fn map(prep: &CaloPreprocessing, x: &[f64]) -> Vec<f64> {
        let (u, y, _) = preprocess(prep, x, x.len()).unwrap();
        std::iter::once(u[0]).chain(y[..x.len() - 1].iter().copied()).collect()
    }

    /// log|det| of [`map`] at `x` by central differences.
    fn finite_difference_log_det(prep: &CaloPreprocessing, x: &[f64]) -> f64 {
        let v = x.len();
        let mut jac = vec![vec![0.0; v]; v];
        for j in 0..v {
            let h = 1e-6 * x[j];
            let (mut xp, mut xm) = (x.to_vec(), x.to_vec());
            xp[j] += h;
            xm[j] -= h;
            let (fp, fm) = (map(prep, &xp), map(prep, &xm));
            for i in 0..v {
                jac[i][j] = (fp[i] - fm[i]) / (2.0 * h);
            }
        }
        log_abs_det(jac)
    }

    #[test]
    fn the_preprocessing_log_det_matches_a_finite_difference_jacobian() {
        // A small layer scale so that u is far from linear; several showers, one layer each.
        let prep = CaloPreprocessing { layer_scale_mev: 50.0, ..CaloPreprocessing::default() };
        let mut rng = crate::util::rng::derive(7, &[]);
        for case in 0..4 {
            let v = 3 + case;
            let x: Vec<f64> = (0..v).map(|i| 0.01 + 3.0 * rng.random::<f64>() * (1.0 + i as f64)).collect();
            let (_, _, analytic) = preprocess(&prep, &x, v).unwrap();
            let numeric = finite_difference_log_det(&prep, &x);
            assert!((numeric - analytic).abs() < 1e-5 * (1.0 + analytic.abs()), "V={v}: {numeric} vs {analytic}");
        }
    }

    #[test]
    fn a_standardised_model_s_log_det_matches_a_finite_difference_jacobian() {
        // The map x~ → (u, (y − m)/s) of one layer, with per-voxel m and s far from 0 and 1: its
        // log|det| by finite differences is preprocess's, which adds −Σ_{v<V} log s.
        let mut rng = crate::util::rng::derive(8, &[]);
        for case in 0..4 {
            let v = 3 + case;
            let standardisation = crate::data::preprocess::Standardizer {
                mean: (0..v).map(|_| -10.0 * rng.random::<f64>()).collect(),
                std: (0..v).map(|_| 0.2 + 4.0 * rng.random::<f64>()).collect(),
            };
            let prep = CaloPreprocessing {
                layer_scale_mev: 50.0,
                voxel_standardisation: Some(standardisation.clone()),
                ..CaloPreprocessing::default()
            };
            let x: Vec<f64> = (0..v).map(|i| 0.01 + 3.0 * rng.random::<f64>() * (1.0 + i as f64)).collect();
            let (_, y, analytic) = preprocess(&prep, &x, v).unwrap();
            let numeric = finite_difference_log_det(&prep, &x);
            assert!((numeric - analytic).abs() < 1e-5 * (1.0 + analytic.abs()), "V={v}: {numeric} vs {analytic}");
            // The values the flows score are the standardised logits.
            let plain = CaloPreprocessing { voxel_standardisation: None, ..prep.clone() };
            let (_, y_plain, log_det_plain) = preprocess(&plain, &x, v).unwrap();
            for k in 0..v {
                let expected = (y_plain[k] - standardisation.mean[k]) / standardisation.std[k];
                assert!((y[k] - expected).abs() < 1e-12, "{} vs {expected}", y[k]);
            }
            let shift: f64 = standardisation.std[..v - 1].iter().map(|s| s.ln()).sum();
            assert!((analytic - (log_det_plain - shift)).abs() < 1e-9);
        }
    }

    #[test]
    fn a_layer_at_the_scale_or_empty_is_refused() {
        let prep = CaloPreprocessing { layer_scale_mev: 10.0, ..CaloPreprocessing::default() };
        assert_eq!(preprocess(&prep, &[6.0, 5.0], 2).unwrap_err().0, 0);
        assert!(preprocess(&prep, &[1.0, 1.0, 0.0, 0.0], 2).is_err());
    }
}
