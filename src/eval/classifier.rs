//! The CaloChallenge classifier test, as `evaluate.py` (CaloChallenge/homepage, `code/`) runs it:
//!
//! - `DNN`: an input layer (dim → hidden), `layers` hidden layers (hidden → hidden), an output
//!   layer (hidden → 1), leaky ReLU (slope 0.01) after every layer but the last, no dropout; the
//!   official sizes are hidden 2048, layers 2. Inputs go in unscaled, as the official script does.
//! - `ttv_split`: each class is shuffled and cut into train / test / val (60 000 / 20 000 / rest
//!   at full size, ≥ 100 000 showers per class; otherwise fractions 0.6 / 0.2 / rest, as numpy's
//!   `(len · split).astype(int)`); labels are 0 for generated, 1 for reference.
//! - `train_and_evaluate_cls`: Adam (lr 2e-4), BCE with logits, batches of 1000 reshuffled every
//!   epoch, 50 epochs; after each epoch the accuracy on the *test* part; the epoch with the best
//!   accuracy (strictly better) is kept; training stops early at accuracy 1.
//! - `evaluate_cls(final_eval=True)`: isotonic regression fitted on the test part's probabilities
//!   (`out_of_bounds="clip"`, `y_min=1e-6`, `y_max=1−1e-6`), applied to the *val* part; AUC and
//!   JSD = (ln 2 − BCE) / ln 2 of the calibrated val probabilities.
//!
//! Only the floating-point type differs (f32 here, f64 there). Rows live in memory when small and
//! in a temporary file otherwise, read batch by batch, so a full DS3 evaluation stays within a
//! fixed memory budget. The training loop lives here rather than in `train/`: it keeps the best
//! weights in memory and writes nothing else to disk.

use std::cell::RefCell;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use serde::Serialize;

use super::stats::{auc, jsd_from_bce};
use crate::error::{Error, Result};
use crate::flow::params::SeededInit;
use crate::nn::{Activation, Mlp};
use crate::optim::{sorted_vars, Adam};
use crate::util::rng::{derive, derive_seed, tag};

/// Bytes of rows one class may hold in memory before they go to a temporary file.
pub const MEMORY_ROWS_BYTES: usize = 256 << 20;

#[derive(Clone, Debug)]
pub struct Settings {
    pub epochs: usize,
    pub hidden: usize,
    /// Hidden layers after the input layer (`cls_n_layer`).
    pub layers: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Calibrated AUC on the val part.
    pub auc: f64,
    /// Calibrated JSD on the val part.
    pub jsd: f64,
    /// Calibrated accuracy on the val part.
    pub accuracy: f64,
    pub best_epoch: usize,
    pub showers_per_class: usize,
    /// Showers per class in train / test / val.
    pub split: [usize; 3],
    pub seed: u64,
}

/// Rows of one class, `n × dim`: in memory, or in a temporary file deleted on drop.
pub struct RowStore {
    dim: usize,
    n: usize,
    rows: Storage,
}

enum Storage {
    Memory(Vec<f32>),
    File { file: RefCell<std::fs::File>, path: PathBuf },
}

impl Drop for RowStore {
    fn drop(&mut self) {
        if let Storage::File { path, .. } = &self.rows {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Collects rows for a [`RowStore`]: in memory while `expected_rows · dim` fits
/// [`MEMORY_ROWS_BYTES`], else in a temporary file.
pub struct RowWriter {
    dim: usize,
    n: usize,
    memory: Option<Vec<f32>>,
    file: Option<(std::io::BufWriter<std::fs::File>, PathBuf)>,
}

impl RowWriter {
    pub fn new(dim: usize, expected_rows: usize) -> Result<Self> {
        if expected_rows.saturating_mul(dim).saturating_mul(4) <= MEMORY_ROWS_BYTES {
            return Ok(Self { dim, n: 0, memory: Some(Vec::with_capacity(expected_rows * dim)), file: None });
        }
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("zdcflow-classifier-{}-{k}.f32", std::process::id()));
        crate::util::temp_files::remember(&path);
        let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self { dim, n: 0, memory: None, file: Some((std::io::BufWriter::with_capacity(1 << 20, f), path)) })
    }

    pub fn push(&mut self, row: &[f32]) -> Result<()> {
        assert_eq!(row.len(), self.dim, "row width");
        self.n += 1;
        if let Some(m) = &mut self.memory {
            m.extend_from_slice(row);
            return Ok(());
        }
        let (w, path) = self.file.as_mut().expect("memory or file");
        let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_all(&bytes).map_err(|e| Error::io(path, e))
    }

    pub fn finish(mut self) -> Result<RowStore> {
        let (dim, n) = (self.dim, self.n);
        if let Some(m) = self.memory.take() {
            return Ok(RowStore { dim, n, rows: Storage::Memory(m) });
        }
        let (w, path) = self.file.take().expect("memory or file");
        // From here the store (or, on an error, this function) removes the file.
        let file = w.into_inner().map_err(|e| e.into_error()).and_then(|f| {
            drop(f);
            std::fs::File::open(&path)
        });
        match file {
            Ok(file) => Ok(RowStore { dim, n, rows: Storage::File { file: RefCell::new(file), path } }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(Error::io(&path, e))
            }
        }
    }
}

/// An unfinished writer (a failed write, a full disk) removes its file.
impl Drop for RowWriter {
    fn drop(&mut self) {
        if let Some((_, path)) = &self.file {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl RowStore {
    /// Rows already in memory (`values.len()` a multiple of `dim`).
    #[cfg(test)]
    pub fn from_vec(values: Vec<f32>, dim: usize) -> Self {
        Self { dim, n: values.len() / dim, rows: Storage::Memory(values) }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn in_memory(&self) -> bool {
        matches!(self.rows, Storage::Memory(_))
    }

    /// Appends row `i` to `out`.
    fn append_row(&self, i: usize, out: &mut Vec<f32>) -> Result<()> {
        match &self.rows {
            Storage::Memory(v) => out.extend_from_slice(&v[i * self.dim..(i + 1) * self.dim]),
            Storage::File { file, path } => {
                let mut f = file.borrow_mut();
                let mut buf = vec![0u8; 4 * self.dim];
                f.seek(SeekFrom::Start((i * self.dim * 4) as u64)).map_err(|e| Error::io(path, e))?;
                f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
                out.extend(buf.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
            }
        }
        Ok(())
    }
}

/// Showers per class in train / test / val, as `evaluate.ttv_split` cuts them.
pub fn split_sizes(n: usize) -> [usize; 3] {
    if n >= 100_000 {
        return [60_000, 20_000, n - 80_000];
    }
    let train = (n as f64 * 0.6) as usize;
    let test = (n as f64 * 0.2) as usize;
    [train, test, n - train - test]
}

/// Binary cross-entropy with logits, per row.
fn bce_with_logits(z: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
    // max(z, 0) − z·t + log(1 + e^{−|z|})
    let softplus_neg_abs = z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    (z.relu()? - (z * t)?)? + softplus_neg_abs
}

/// (is reference, row) pairs; label 1 for reference, 0 for generated, as `evaluate.py`.
type Item = (bool, usize);

/// The classifier's memory, checked against the budget before it is built: weights, gradients
/// and Adam's two moments (4 copies of the parameters), and a batch's activations kept for the
/// backward pass (about 3 buffers per layer).
pub fn check_size(s: &Settings, dim: usize) -> Result<()> {
    let (h, layers) = (s.hidden as f64, s.layers as f64);
    let params = (dim as f64 + 1.0) * h + layers * (h + 1.0) * h + h + 1.0;
    let activations = 3.0 * s.batch_size as f64 * (dim as f64 + h * (layers + 1.0));
    crate::util::limits::check_memory(
        &format!(
            "the classifier ({} hidden × {} layers on {dim} inputs, batch {})",
            s.hidden,
            s.layers + 1,
            s.batch_size
        ),
        4.0 * (4.0 * params + activations),
    )
}

/// One classifier test of `reference` against `generated` (the first `min(n)` rows of each).
pub fn run(reference: &RowStore, generated: &RowStore, s: &Settings, device: &Device) -> Result<Outcome> {
    let per_class = reference.n().min(generated.n());
    let dim = reference.dim();
    let split = split_sizes(per_class);
    if split.iter().any(|&k| k < 2) || generated.dim() != dim {
        return Err(Error::Invalid(format!(
            "classifier test needs ≥ 10 showers per class of equal width (got {per_class} showers, widths {} and {})",
            dim,
            generated.dim()
        )));
    }
    let mut parts: [Vec<Item>; 3] = Default::default();
    for (class, n) in [(false, per_class), (true, per_class)] {
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut derive(s.seed, &[tag::SHUFFLE, 0xc1a5, class as u64]));
        let mut start = 0;
        for (part, &k) in parts.iter_mut().zip(&split) {
            part.extend(idx[start..start + k].iter().map(|&i| (class, i)));
            start += k;
        }
    }
    let mut rng = derive(s.seed, &[tag::SHUFFLE, 0xc1a6]);
    for part in parts.iter_mut() {
        part.shuffle(&mut rng);
    }
    let [train, test, val] = parts;

    check_size(s, dim)?;
    let varmap = VarMap::new();
    let vb = SeededInit::var_builder(&varmap, derive_seed(s.seed, &[tag::INIT, 0xc1a5]), DType::F32, device);
    let mut sizes = vec![dim];
    sizes.extend(std::iter::repeat_n(s.hidden, s.layers + 1));
    sizes.push(1);
    let mlp = Mlp::new(&sizes, Activation::LeakyRelu, vb)?;
    let vars = sorted_vars(&varmap);
    let mut adam = Adam::new(vars.clone(), s.lr, 0.9, 0.999, 1e-8)?;
    let batch = s.batch_size.max(1);
    let tensors = |items: &[Item]| -> Result<(Tensor, Tensor)> {
        let mut x = Vec::with_capacity(items.len() * dim);
        for &(r, i) in items {
            if r { reference } else { generated }.append_row(i, &mut x)?;
        }
        let y: Vec<f32> = items.iter().map(|&(r, _)| if r { 1.0 } else { 0.0 }).collect();
        Ok((Tensor::from_vec(x, (items.len(), dim), device)?, Tensor::from_vec(y, (items.len(), 1), device)?))
    };
    let probabilities = |items: &[Item]| -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(batch) {
            let (x, _) = tensors(chunk)?;
            out.extend(mlp.forward(&x)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(sigmoid));
        }
        Ok(out)
    };
    let labels = |items: &[Item]| items.iter().map(|&(r, _)| r).collect::<Vec<bool>>();
    let accuracy =
        |p: &[f64], l: &[bool]| p.iter().zip(l).filter(|(p, l)| (**p > 0.5) == **l).count() as f64 / l.len() as f64;
    let (test_labels, val_labels) = (labels(&test), labels(&val));

    // The best epoch's weights, overwritten in place (a fresh copy per improvement held two
    // first-layer copies at once: 330 MB each for DS3's 40 501 inputs).
    let mut best: Option<(f64, usize, Vec<Var>)> = None;
    let mut order = train.clone();
    for epoch in 0..s.epochs.max(1) {
        order.shuffle(&mut derive(s.seed, &[tag::SHUFFLE, epoch as u64]));
        for chunk in order.chunks(batch) {
            let (x, y) = tensors(chunk)?;
            let loss = bce_with_logits(&mlp.forward(&x)?, &y)?.mean_all()?;
            let grads = loss.backward()?;
            adam.step(&grads, 1.0)?;
        }
        let acc = accuracy(&probabilities(&test)?, &test_labels);
        match &mut best {
            Some(b) if acc <= b.0 => {}
            Some(b) => {
                for (snapshot, (_, var)) in b.2.iter().zip(&vars) {
                    snapshot.set(var.as_tensor())?;
                }
                (b.0, b.1) = (acc, epoch + 1);
            }
            None => {
                // `detach` shares the storage; making it a variable copies it once.
                let snapshot = vars.iter().map(|(_, v)| Var::from_tensor(&v.as_tensor().detach()));
                best = Some((acc, epoch + 1, snapshot.collect::<candle_core::Result<Vec<_>>>()?));
            }
        }
        if acc == 1.0 {
            break;
        }
    }
    let (_, best_epoch, snapshot) = best.expect("at least one epoch");
    for ((_, var), t) in vars.iter().zip(&snapshot) {
        Var::set(var, t.as_tensor())?;
    }
    let f = final_evaluation(&probabilities(&test)?, &test_labels, &probabilities(&val)?, &val_labels);
    Ok(Outcome {
        auc: f.auc,
        jsd: f.jsd,
        accuracy: f.accuracy,
        best_epoch,
        showers_per_class: per_class,
        split,
        seed: s.seed,
    })
}

/// Calibrated AUC, JSD and accuracy on the val part.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Final {
    pub auc: f64,
    pub jsd: f64,
    pub accuracy: f64,
}

/// `evaluate_cls(final_eval=True)`: isotonic calibration fitted on the test part's probabilities,
/// applied to the val part's; AUC (`roc_auc_score`), JSD = (ln 2 − BCE) / ln 2 and accuracy
/// (`np.round`: p > 0.5) of the calibrated val probabilities.
pub fn final_evaluation(test_p: &[f64], test_labels: &[bool], val_p: &[f64], val_labels: &[bool]) -> Final {
    let calibration = Isotonic::fit(test_p, test_labels).clip_y(1e-6, 1.0 - 1e-6);
    let calibrated: Vec<f64> = val_p.iter().map(|&p| calibration.predict(p)).collect();
    let correct = calibrated.iter().zip(val_labels).filter(|(p, l)| (**p > 0.5) == **l).count();
    Final {
        auc: auc(&calibrated, val_labels),
        jsd: jsd_from_bce(bce(&calibrated, val_labels)),
        accuracy: correct as f64 / val_labels.len().max(1) as f64,
    }
}

/// Mean binary cross-entropy of probabilities `p` for `labels`, each log clamped at −100 as
/// `torch.nn.BCELoss`.
pub fn bce(p: &[f64], labels: &[bool]) -> f64 {
    let term = |p: f64, l: bool| -(if l { p.ln() } else { (1.0 - p).ln() }).max(-100.0);
    p.iter().zip(labels).map(|(&p, &l)| term(p, l)).sum::<f64>() / labels.len().max(1) as f64
}

/// `runs` independent classifier tests (split, initialisation and batches drawn from seeds derived
/// from `s.seed` and the run number; run 0 uses `s.seed` itself).
pub fn repeated(
    reference: &RowStore,
    generated: &RowStore,
    s: &Settings,
    runs: usize,
    device: &Device,
) -> Result<RunsSummary> {
    let mut outcomes = Vec::with_capacity(runs.max(1));
    for r in 0..runs.max(1) {
        let seed = if r == 0 { s.seed } else { derive_seed(s.seed, &[0xc1a5_0000 + r as u64]) };
        outcomes.push(run(reference, generated, &Settings { seed, ..s.clone() }, device)?);
    }
    Ok(RunsSummary::of(outcomes))
}

/// Mean and standard deviation (n − 1; 0 for one run) over runs.
#[derive(Clone, Debug, Serialize)]
pub struct RunsSummary {
    pub auc: f64,
    pub auc_std: f64,
    pub jsd: f64,
    pub jsd_std: f64,
    pub runs: Vec<Outcome>,
}

impl RunsSummary {
    pub fn of(runs: Vec<Outcome>) -> Self {
        let (auc, auc_std) = mean_std(&runs.iter().map(|o| o.auc).collect::<Vec<_>>());
        let (jsd, jsd_std) = mean_std(&runs.iter().map(|o| o.jsd).collect::<Vec<_>>());
        Self { auc, auc_std, jsd, jsd_std, runs }
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

fn sigmoid(z: f32) -> f64 {
    1.0 / (1.0 + (-(z as f64)).exp())
}

/// Isotonic regression (pool adjacent violators), as sklearn's
/// `IsotonicRegression(out_of_bounds="clip")`: equal scores are first merged into one point with
/// their mean label, the fit is non-decreasing, linear between the fitted points and constant
/// beyond them; [`Isotonic::clip_y`] bounds the fitted values as `y_min` / `y_max` do.
pub struct Isotonic {
    x: Vec<f64>,
    y: Vec<f64>,
}

impl Isotonic {
    pub fn fit(scores: &[f64], labels: &[bool]) -> Self {
        let mut pairs: Vec<(f64, f64)> =
            scores.iter().zip(labels).map(|(&s, &l)| (s, if l { 1.0 } else { 0.0 })).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Blocks: (first x, last x, sum y, count); equal x pooled first.
        let mut points: Vec<(f64, f64, f64)> = Vec::new();
        for (x, y) in pairs {
            match points.last_mut() {
                Some(p) if p.0 == x => {
                    p.1 += y;
                    p.2 += 1.0;
                }
                _ => points.push((x, y, 1.0)),
            }
        }
        let mut blocks: Vec<(f64, f64, f64, f64)> = Vec::new();
        for (x, s, c) in points {
            blocks.push((x, x, s, c));
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

    /// Fitted values bounded to [lo, hi].
    pub fn clip_y(mut self, lo: f64, hi: f64) -> Self {
        self.y.iter_mut().for_each(|y| *y = y.clamp(lo, hi));
        self
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
        let iso = Isotonic::fit(&[0.1, 0.2, 0.3, 0.4], &[false, true, false, true]);
        let p: Vec<f64> = [0.1, 0.2, 0.3, 0.4].iter().map(|&v| iso.predict(v)).collect();
        assert_eq!(p, vec![0.0, 0.5, 0.5, 1.0]);
        assert_eq!(iso.predict(-1.0), 0.0);
        assert!((iso.predict(0.15) - 0.25).abs() < 1e-12, "linear between fitted points");
        // sklearn merges equal scores first: at 0.5 the labels 0 and 1 average to 0.5 whatever their order.
        let tied = Isotonic::fit(&[0.1, 0.5, 0.5, 0.9], &[false, false, true, true]);
        assert_eq!(tied.predict(0.5), 0.5);
        let clipped = Isotonic::fit(&[0.1, 0.9], &[false, true]).clip_y(1e-6, 1.0 - 1e-6);
        assert_eq!((clipped.predict(0.0), clipped.predict(1.0)), (1e-6, 1.0 - 1e-6));
    }

    #[test]
    fn split_sizes_follow_ttv_split() {
        // numpy: (300 · [0.6, 0.2, 0.2]).astype(int) = [180, 60, 60]; np.split at [180, 240].
        assert_eq!(split_sizes(300), [180, 60, 60]);
        assert_eq!(split_sizes(1001), [600, 200, 201]);
        // Full-size files: the fixed 60k / 20k / 20k.
        assert_eq!(split_sizes(100_000), [60_000, 20_000, 20_000]);
    }

    #[test]
    fn bce_matches_torch_bceloss() {
        // −(ln 0.8 + ln 0.6) / 2 for p = (0.8, 0.4), labels (1, 0).
        let b = bce(&[0.8, 0.4], &[true, false]);
        assert!((b - (-(0.8f64.ln() + 0.6f64.ln()) / 2.0)).abs() < 1e-12);
        // log clamped at −100.
        assert_eq!(bce(&[0.0], &[true]), 100.0);
    }

    #[test]
    fn final_evaluation_by_hand() {
        // Separable: calibration maps generated scores (≤ 0.2) to y_min = 1e-6 and reference scores
        // (≥ 0.8) to y_max = 1 − 1e-6, so AUC = 1, BCE = −ln(1 − 1e-6), JSD = 1 − BCE / ln 2.
        let (tl, vl) = ([false, false, true, true], [false, true]);
        let f = final_evaluation(&[0.1, 0.2, 0.8, 0.9], &tl, &[0.15, 0.85], &vl);
        let bce = -(1.0f64 - 1e-6).ln();
        assert_eq!(f.auc, 1.0);
        assert!((f.jsd - (1.0 - bce / std::f64::consts::LN_2)).abs() < 1e-15, "{f:?}");
        assert_eq!(f.accuracy, 1.0);
        // Identical: an uninformative classifier (every score 0.5) calibrates to 0.5: AUC ½ (ties),
        // BCE = ln 2, JSD 0, accuracy ½ (np.round(0.5) = 0).
        let f = final_evaluation(&[0.5; 4], &tl, &[0.5, 0.5], &vl);
        assert_eq!((f.auc, f.accuracy), (0.5, 0.5));
        assert!(f.jsd.abs() < 1e-15, "{f:?}");
        // Inverted scores: isotonic calibration cannot flip the order; it pools everything to 0.5.
        let f = final_evaluation(&[0.9, 0.8, 0.2, 0.1], &tl, &[0.9, 0.1], &vl);
        assert_eq!(f.auc, 0.5);
    }

    fn blobs(shift: f32, n: usize, seed: u64) -> Vec<f32> {
        use rand::Rng;
        let mut rng = derive(seed, &[]);
        (0..n * 4).map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal) + shift).collect()
    }

    #[test]
    fn separable_sets_give_auc_near_one_and_identical_sets_near_half() {
        let s = Settings { epochs: 5, hidden: 16, layers: 2, batch_size: 100, lr: 1e-2, seed: 1 };
        let a = RowStore::from_vec(blobs(0.0, 1000, 1), 4);
        let far = RowStore::from_vec(blobs(6.0, 1000, 2), 4);
        let same = RowStore::from_vec(blobs(0.0, 1000, 3), 4);
        let sep = run(&a, &far, &s, &Device::Cpu).unwrap();
        assert!(sep.auc > 0.99 && sep.jsd > 0.9, "{sep:?}");
        assert_eq!(sep.split, [600, 200, 200]);
        let eq = repeated(&a, &same, &s, 3, &Device::Cpu).unwrap();
        assert!((eq.auc - 0.5).abs() < 0.07 && eq.jsd < 0.05, "{eq:?}");
        assert!(eq.auc_std > 0.0 && eq.runs.len() == 3, "{eq:?}");
    }

    #[test]
    fn rows_in_a_temporary_file_read_back() {
        let mut w = RowWriter::new(3, MEMORY_ROWS_BYTES).unwrap();
        assert!(w.memory.is_none(), "large expectation goes to a file");
        for i in 0..5 {
            w.push(&[i as f32, 1.5, -2.0]).unwrap();
        }
        let store = w.finish().unwrap();
        let path = match &store.rows {
            Storage::File { path, .. } => path.clone(),
            Storage::Memory(_) => unreachable!(),
        };
        let mut out = Vec::new();
        store.append_row(3, &mut out).unwrap();
        store.append_row(0, &mut out).unwrap();
        assert_eq!(out, vec![3.0, 1.5, -2.0, 0.0, 1.5, -2.0]);
        drop(store);
        assert!(!path.exists(), "temporary file removed");
    }

    #[test]
    fn an_unfinished_row_file_is_removed() {
        let mut w = RowWriter::new(3, MEMORY_ROWS_BYTES).unwrap();
        w.push(&[1.0, 2.0, 3.0]).unwrap();
        let path = w.file.as_ref().unwrap().1.clone();
        assert!(path.exists());
        drop(w);
        assert!(!path.exists(), "temporary file removed");
    }
}
