//! The CaloChallenge classifier test: a fully connected network (two hidden layers, leaky ReLU)
//! learns to tell generated from reference showers; Adam (lr 2e-4), binary cross-entropy, the
//! epoch with the best validation accuracy, isotonic calibration on the validation set, then AUC
//! and JSD = (ln 2 − BCE)/ln 2 on the test set (60/20/20 split).
//!
//! Differences from the challenge's script, to run on a CPU: hidden width and epochs are settings
//! (the challenge uses 2048 and 50), and inputs are standardised with the training set's mean and
//! standard deviation. The small training loop lives here rather than in `train/`: it keeps the
//! best weights in memory and writes nothing to disk.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use serde::Serialize;

use super::stats::{auc, jsd_from_bce};
use crate::error::{Error, Result};
use crate::flow::params::SeededInit;
use crate::nn::{Activation, Mlp};
use crate::train::adam::Adam;
use crate::train::trainer::sorted_vars;
use crate::util::rng::{derive, derive_seed, tag};

#[derive(Clone, Debug)]
pub struct Settings {
    pub epochs: usize,
    pub hidden: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub auc: f64,
    pub jsd: f64,
    pub best_epoch: usize,
    pub events_per_class: usize,
}

/// Rows of one data set: `n × dim`, row-major.
pub struct Rows<'a> {
    pub values: &'a [f32],
    pub dim: usize,
}

impl Rows<'_> {
    fn n(&self) -> usize {
        self.values.len() / self.dim
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

struct Split {
    x: Vec<f32>,
    y: Vec<f32>,
}

impl Split {
    fn n(&self) -> usize {
        self.y.len()
    }
}

/// Binary cross-entropy with logits, per row.
fn bce_with_logits(z: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    // max(z, 0) − z·t + log(1 + e^{−|z|})
    let softplus_neg_abs = z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    (z.relu()? - (z * t)?)? + softplus_neg_abs
}

pub fn run(reference: &Rows, generated: &Rows, s: &Settings, device: &Device) -> Result<Outcome> {
    let per_class = reference.n().min(generated.n());
    let dim = reference.dim;
    if per_class < 10 || generated.dim != dim {
        return Err(Error::Invalid(format!(
            "classifier test needs ≥ 10 events per class of equal width (got {per_class})"
        )));
    }
    let mut order: Vec<(bool, usize)> = (0..per_class).flat_map(|i| [(false, i), (true, i)]).collect();
    order.shuffle(&mut derive(s.seed, &[tag::SHUFFLE, 0xc1a5]));
    let cut1 = order.len() * 3 / 5;
    let cut2 = order.len() * 4 / 5;
    let gather = |rows: &[(bool, usize)]| Split {
        x: rows
            .iter()
            .flat_map(|&(g, i)| if g { generated.row(i) } else { reference.row(i) }.iter().copied())
            .collect(),
        y: rows.iter().map(|&(g, _)| if g { 1.0 } else { 0.0 }).collect(),
    };
    let (mut train, mut val, mut test) = (gather(&order[..cut1]), gather(&order[cut1..cut2]), gather(&order[cut2..]));
    standardise(&mut train, &mut [&mut val, &mut test], dim);

    let varmap = VarMap::new();
    let vb = SeededInit::var_builder(&varmap, derive_seed(s.seed, &[tag::INIT, 0xc1a5]), DType::F32, device);
    let mlp = Mlp::new(&[dim, s.hidden, s.hidden, 1], Activation::LeakyRelu, vb)?;
    let vars = sorted_vars(&varmap);
    let mut adam = Adam::new(vars.clone(), s.lr, 0.9, 0.999, 1e-8)?;
    let to_tensors = |sp: &Split, idx: &[usize]| -> candle_core::Result<(Tensor, Tensor)> {
        let x: Vec<f32> = idx.iter().flat_map(|&i| sp.x[i * dim..(i + 1) * dim].iter().copied()).collect();
        let y: Vec<f32> = idx.iter().map(|&i| sp.y[i]).collect();
        Ok((Tensor::from_vec(x, (idx.len(), dim), device)?, Tensor::from_vec(y, (idx.len(), 1), device)?))
    };
    let logits = |sp: &Split| -> candle_core::Result<Vec<f32>> {
        let mut out = Vec::with_capacity(sp.n());
        let idx: Vec<usize> = (0..sp.n()).collect();
        for chunk in idx.chunks(s.batch_size.max(1)) {
            let (x, _) = to_tensors(sp, chunk)?;
            out.extend(mlp.forward(&x)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    };
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    for epoch in 0..s.epochs.max(1) {
        let mut idx: Vec<usize> = (0..train.n()).collect();
        idx.shuffle(&mut derive(s.seed, &[tag::SHUFFLE, epoch as u64]));
        for chunk in idx.chunks(s.batch_size.max(1)) {
            let (x, y) = to_tensors(&train, chunk)?;
            let loss = bce_with_logits(&mlp.forward(&x)?, &y)?.mean_all()?;
            let grads = loss.backward()?;
            adam.step(&grads, 1.0)?;
        }
        let z = logits(&val)?;
        let acc = z.iter().zip(&val.y).filter(|(z, y)| (**z > 0.0) == (**y > 0.5)).count() as f64 / val.n() as f64;
        if best.as_ref().is_none_or(|b| acc > b.0) {
            let snapshot = vars.iter().map(|(_, v)| v.as_tensor().copy()).collect::<candle_core::Result<Vec<_>>>()?;
            best = Some((acc, epoch + 1, snapshot));
        }
    }
    let (_, best_epoch, snapshot) = best.expect("at least one epoch");
    for ((_, var), t) in vars.iter().zip(&snapshot) {
        Var::set(var, t)?;
    }
    let p_val: Vec<f64> = logits(&val)?.into_iter().map(sigmoid).collect();
    let p_test: Vec<f64> = logits(&test)?.into_iter().map(sigmoid).collect();
    let calibration = Isotonic::fit(&p_val, &val.y);
    let calibrated: Vec<f64> = p_test.iter().map(|&p| calibration.predict(p)).collect();
    let labels: Vec<bool> = test.y.iter().map(|&y| y > 0.5).collect();
    let bce = calibrated
        .iter()
        .zip(&labels)
        .map(|(&p, &l)| {
            let p = p.clamp(1e-7, 1.0 - 1e-7);
            if l {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum::<f64>()
        / labels.len() as f64;
    Ok(Outcome { auc: auc(&calibrated, &labels), jsd: jsd_from_bce(bce), best_epoch, events_per_class: per_class })
}

fn sigmoid(z: f32) -> f64 {
    1.0 / (1.0 + (-(z as f64)).exp())
}

/// Standardises columns with the training split's mean and standard deviation.
fn standardise(train: &mut Split, others: &mut [&mut Split], dim: usize) {
    let n = train.n().max(1) as f64;
    let mut mean = vec![0.0f64; dim];
    let mut sq = vec![0.0f64; dim];
    for row in train.x.chunks(dim) {
        for (j, &v) in row.iter().enumerate() {
            mean[j] += v as f64;
            sq[j] += (v as f64).powi(2);
        }
    }
    let std: Vec<f64> = (0..dim)
        .map(|j| {
            mean[j] /= n;
            let var = sq[j] / n - mean[j].powi(2);
            if var > 1e-20 {
                var.sqrt()
            } else {
                1.0
            }
        })
        .collect();
    for split in std::iter::once(train).chain(others.iter_mut().map(|s| &mut **s)) {
        for row in split.x.chunks_mut(dim) {
            for (j, v) in row.iter_mut().enumerate() {
                *v = ((*v as f64 - mean[j]) / std[j]) as f32;
            }
        }
    }
}

/// Isotonic regression (pool adjacent violators): a non-decreasing map from scores to
/// probabilities, linear between fitted points and constant beyond them (as sklearn's
/// `IsotonicRegression(out_of_bounds="clip")`).
pub struct Isotonic {
    x: Vec<f64>,
    y: Vec<f64>,
}

impl Isotonic {
    pub fn fit(scores: &[f64], labels: &[f32]) -> Self {
        let mut pairs: Vec<(f64, f64)> = scores.iter().zip(labels).map(|(&s, &l)| (s, l as f64)).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Blocks: (first x, last x, sum y, count).
        let mut blocks: Vec<(f64, f64, f64, f64)> = Vec::new();
        for (x, y) in pairs {
            blocks.push((x, x, y, 1.0));
            while blocks.len() > 1 {
                let n = blocks.len();
                let (a, b) = (blocks[n - 2], blocks[n - 1]);
                if a.2 / a.3 <= b.2 / b.3 {
                    break;
                }
                blocks.truncate(n - 2);
                blocks.push((a.0, b.1, a.2 + b.2, a.3 + b.3));
            }
        }
        let mut x = Vec::with_capacity(2 * blocks.len());
        let mut y = Vec::with_capacity(2 * blocks.len());
        for (x0, x1, s, c) in blocks {
            x.push(x0);
            y.push(s / c);
            if x1 > x0 {
                x.push(x1);
                y.push(s / c);
            }
        }
        Self { x, y }
    }

    pub fn predict(&self, v: f64) -> f64 {
        if self.x.is_empty() {
            return 0.5;
        }
        let i = self.x.partition_point(|&x| x < v);
        if i == 0 {
            return self.y[0];
        }
        if i == self.x.len() {
            return self.y[self.x.len() - 1];
        }
        let (x0, x1, y0, y1) = (self.x[i - 1], self.x[i], self.y[i - 1], self.y[i]);
        if x1 > x0 {
            y0 + (y1 - y0) * (v - x0) / (x1 - x0)
        } else {
            y1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isotonic_fit_pools_violators() {
        // Scores 0.1..0.4 with labels 0, 1, 0, 1: the middle pair (1, 0) violates monotonicity and is
        // pooled to 0.5, giving 0, 0.5, 0.5, 1.
        let iso = Isotonic::fit(&[0.1, 0.2, 0.3, 0.4], &[0.0, 1.0, 0.0, 1.0]);
        let p: Vec<f64> = [0.1, 0.2, 0.3, 0.4].iter().map(|&v| iso.predict(v)).collect();
        assert_eq!(p, vec![0.0, 0.5, 0.5, 1.0]);
        assert_eq!(iso.predict(-1.0), 0.0);
        assert!((iso.predict(0.15) - 0.25).abs() < 1e-12, "linear between fitted points");
    }

    fn blobs(shift: f32, n: usize, seed: u64) -> Vec<f32> {
        use rand::Rng;
        let mut rng = derive(seed, &[]);
        (0..n * 4).map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal) + shift).collect()
    }

    #[test]
    fn separable_sets_give_auc_near_one_and_identical_sets_near_half() {
        let s = Settings { epochs: 5, hidden: 16, batch_size: 100, lr: 1e-2, seed: 1 };
        let a = blobs(0.0, 1000, 1);
        let far = blobs(6.0, 1000, 2);
        let same = blobs(0.0, 1000, 3);
        let sep = run(&Rows { values: &a, dim: 4 }, &Rows { values: &far, dim: 4 }, &s, &Device::Cpu).unwrap();
        assert!(sep.auc > 0.99 && sep.jsd > 0.9, "{sep:?}");
        let eq = run(&Rows { values: &a, dim: 4 }, &Rows { values: &same, dim: 4 }, &s, &Device::Cpu).unwrap();
        assert!((eq.auc - 0.5).abs() < 0.07 && eq.jsd < 0.05, "{eq:?}");
    }
}
