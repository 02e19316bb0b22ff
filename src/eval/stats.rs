//! Generic two-sample statistics used by the evaluation.
//!
//! - `wasserstein_1d`: as `scipy.stats.wasserstein_distance` (∫ |CDF_a − CDF_b| dx).
//! - `histogram`, `separation_power`: as CaloChallenge's `evaluate_plotting_helper._separation_power`
//!   (triangular discrimination of normalised histograms, eq. 15 of arXiv:2009.03796), with
//!   `numpy.histogram`'s bin convention.
//! - `auc`: ROC AUC as the Mann–Whitney U statistic.
//! - `jsd_from_bce`: CaloChallenge `evaluate.evaluate_cls`: JSD ≈ (ln 2 − BCE) / ln 2.
//! - `frechet_distance`, `kernel_physics_distance`: the FPD/KPD of arXiv:2211.10295 as implemented
//!   in JetNet (`jetnet/evaluation/gen_metrics.py`: `_calculate_frechet_distance`, `kpd`), which
//!   CaloChallenge's `evaluate.py` calls on its high-level features.

use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Degree of KPD's polynomial kernel: JetNet's `kpd` calls `_mmd_poly_quadratic_unbiased` with its
/// default `degree=4` (KID uses 3; JetNet's KPD does not).
pub const KPD_KERNEL_DEGREE: i32 = 4;

/// Exact 1-Wasserstein distance between the empirical distributions of `a` and `b`
/// (any sizes); NaN if either is empty.
pub fn wasserstein_1d(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let (a, b) = (sorted(a), sorted(b));
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j) = (0, 0);
    let mut x = a[0].min(b[0]);
    let mut total = 0.0;
    loop {
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        let next = match (a.get(i), b.get(j)) {
            (Some(&p), Some(&q)) => p.min(q),
            (Some(&p), None) => p,
            (None, Some(&q)) => q,
            (None, None) => break,
        };
        // Between x and next both empirical CDFs are constant.
        total += (i as f64 / n - j as f64 / m).abs() * (next - x);
        x = next;
    }
    total
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Counts of `values` per bin of the increasing `edges`: bins are [e_k, e_{k+1}) except the last,
/// which also holds its right edge (as `numpy.histogram`); values outside, and NaN, are ignored.
pub fn histogram(values: &[f64], edges: &[f64]) -> Vec<f64> {
    let bins = edges.len().saturating_sub(1);
    let mut counts = vec![0.0; bins];
    if bins == 0 {
        return counts;
    }
    let (first, last) = (edges[0], edges[bins]);
    for &v in values {
        if !(first..=last).contains(&v) {
            continue;
        }
        let bin = (edges.partition_point(|&e| e <= v) - 1).min(bins - 1);
        counts[bin] += 1.0;
    }
    counts
}

/// `h` scaled to sum 1; an all-zero histogram stays zero.
pub fn normalised(h: &[f64]) -> Vec<f64> {
    let total: f64 = h.iter().sum();
    if total == 0.0 {
        return vec![0.0; h.len()];
    }
    h.iter().map(|v| v / total).collect()
}

/// `bins + 1` equal-width edges for comparing reference `a` with `b`.
///
/// The range is the union of both samples' central 99.8 % ([0.1 %, 99.9 %] quantiles, linear
/// interpolation), so a sample's few extreme outliers cannot squeeze the bulk into one bin while a
/// shifted bulk of `b` stays visible. Non-finite values are ignored. A zero-width range is widened
/// by ±0.5 as `numpy.histogram` does; with no finite value at all the range is [−0.5, 0.5].
pub fn shared_edges(a: &[f64], b: &[f64], bins: usize) -> Vec<f64> {
    let (lo, hi) = [a, b]
        .iter()
        .filter_map(|s| central_range(s))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (l, h)| (lo.min(l), hi.max(h)));
    let (lo, hi) = match (lo.is_finite(), hi > lo) {
        (false, _) => (-0.5, 0.5),
        (true, false) => (lo - 0.5, hi + 0.5),
        (true, true) => (lo, hi),
    };
    let bins = bins.max(1);
    let width = (hi - lo) / bins as f64;
    (0..=bins).map(|k| if k == bins { hi } else { lo + k as f64 * width }).collect()
}

/// The [0.1 %, 99.9 %] quantiles of the finite values of `v`, if any.
fn central_range(v: &[f64]) -> Option<(f64, f64)> {
    let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if finite.is_empty() {
        return None;
    }
    let s = sorted(&finite);
    Some((quantile_of_sorted(&s, 0.001), quantile_of_sorted(&s, 0.999)))
}

/// Quantile `q` ∈ [0, 1] of non-empty sorted data, interpolating linearly between order
/// statistics (numpy's default).
fn quantile_of_sorted(s: &[f64], q: f64) -> f64 {
    let pos = q * (s.len() - 1) as f64;
    let below = pos.floor() as usize;
    let above = (below + 1).min(s.len() - 1);
    s[below] + (pos - below as f64) * (s[above] - s[below])
}

/// ROC AUC of `scores` for the positive (`true`) labels: the Mann–Whitney U of the positives over
/// n_pos · n_neg, with average ranks for tied scores. NaN when either class is absent.
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    assert_eq!(scores.len(), labels.len(), "scores and labels differ in length");
    let n_pos = labels.iter().filter(|&&l| l).count() as f64;
    let n_neg = labels.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    let ranks = average_ranks(scores);
    let rank_sum_pos: f64 = ranks.iter().zip(labels).filter(|(_, &l)| l).map(|(r, _)| r).sum();
    let u = rank_sum_pos - n_pos * (n_pos + 1.0) / 2.0;
    u / (n_pos * n_neg)
}

/// 1-based ranks of `v` in ascending order; tied values share the mean of their ranks.
fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut ranks = vec![0.0; v.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1..=end, whose mean is (start + 1 + end) / 2.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// CaloChallenge's JSD estimate from a classifier's binary cross-entropy (in nats):
/// (ln 2 − BCE) / ln 2; 0 for an uninformed classifier, 1 for a perfect one.
pub fn jsd_from_bce(bce_nats: f64) -> f64 {
    let ln2 = std::f64::consts::LN_2;
    (ln2 - bce_nats) / ln2
}

/// Fréchet distance between Gaussians fitted to the rows of `a` and `b` (columns = features):
/// ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½), with sample covariances (n − 1, as `np.cov`).
/// This is JetNet's per-batch value; JetNet's `fpd` additionally extrapolates it to infinite
/// sample size, which this function does not.
pub fn frechet_distance(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    assert_eq!(a.ncols(), b.ncols(), "feature counts differ");
    let (mean_a, cov_a) = mean_and_covariance(a.view());
    let (mean_b, cov_b) = mean_and_covariance(b.view());
    frechet_from_moments(&mean_a, &cov_a, &mean_b, &cov_b)
}

/// ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½).
fn frechet_from_moments(mean_a: &Array1<f64>, cov_a: &Array2<f64>, mean_b: &Array1<f64>, cov_b: &Array2<f64>) -> f64 {
    let mean_term: f64 = (mean_a - mean_b).mapv(|d| d * d).sum();
    let root_a = symmetric_sqrt(cov_a);
    let cross = symmetric_sqrt(&root_a.dot(cov_b).dot(&root_a));
    mean_term + cov_a.diag().sum() + cov_b.diag().sum() - 2.0 * cross.diag().sum()
}

/// Column means and the (n − 1)-normalised covariance of the rows of `x`.
fn mean_and_covariance(x: ArrayView2<f64>) -> (Array1<f64>, Array2<f64>) {
    let n = x.nrows();
    let mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::from_elem(x.ncols(), f64::NAN));
    let centred = &x - &mean;
    let cov = centred.t().dot(&centred) / (n as f64 - 1.0);
    (mean, cov)
}

/// The PSD square root V diag(√max(λ, 0)) Vᵀ of symmetric `m` (tiny negative eigenvalues from
/// round-off are clamped to 0).
fn symmetric_sqrt(m: &Array2<f64>) -> Array2<f64> {
    let (values, vectors) = jacobi_eigen(m);
    let roots = values.mapv(|l| l.max(0.0).sqrt());
    (&vectors * &roots).dot(&vectors.t())
}

/// Eigenvalues and eigenvectors (as columns) of symmetric `m` by cyclic Jacobi rotations.
fn jacobi_eigen(m: &Array2<f64>) -> (Array1<f64>, Array2<f64>) {
    const MAX_SWEEPS: usize = 100;
    let n = m.nrows();
    let mut a = m.clone();
    let mut v = Array2::<f64>::eye(n);
    let scale = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _ in 0..MAX_SWEEPS {
        if off_diagonal_square_sum(&a) <= 1e-30 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                jacobi_rotate(&mut a, &mut v, p, q);
            }
        }
    }
    (a.diag().to_owned(), v)
}

fn off_diagonal_square_sum(a: &Array2<f64>) -> f64 {
    a.indexed_iter().filter(|((i, j), _)| i != j).map(|(_, x)| x * x).sum()
}

/// One Jacobi rotation zeroing a[p, q] (Golub & Van Loan, Algorithm 8.5.1 form):
/// a ← Jᵀ a J, v ← v J.
fn jacobi_rotate(a: &mut Array2<f64>, v: &mut Array2<f64>, p: usize, q: usize) {
    let apq = a[[p, q]];
    if apq == 0.0 {
        return;
    }
    let theta = (a[[q, q]] - a[[p, p]]) / (2.0 * apq);
    // The smaller root of t² + 2θt − 1 = 0 keeps the rotation angle ≤ π/4 (stable).
    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
    let c = 1.0 / (t * t + 1.0).sqrt();
    let s = t * c;
    rotate_columns(a, p, q, c, s);
    rotate_rows(a, p, q, c, s);
    rotate_columns(v, p, q, c, s);
}

fn rotate_columns(m: &mut Array2<f64>, p: usize, q: usize, c: f64, s: f64) {
    for k in 0..m.nrows() {
        let (mp, mq) = (m[[k, p]], m[[k, q]]);
        m[[k, p]] = c * mp - s * mq;
        m[[k, q]] = s * mp + c * mq;
    }
}

fn rotate_rows(m: &mut Array2<f64>, p: usize, q: usize, c: f64, s: f64) {
    for k in 0..m.ncols() {
        let (mp, mq) = (m[[p, k]], m[[q, k]]);
        m[[p, k]] = c * mp - s * mq;
        m[[q, k]] = s * mp + c * mq;
    }
}

/// `a` and `b` with every column divided by the reference's (`a`'s) largest |value| in it (columns
/// that are all zero are left alone), as JetNet's `_normalise_features`.
pub fn normalise_by_reference_max(a: &Array2<f64>, b: &Array2<f64>) -> (Array2<f64>, Array2<f64>) {
    let maxes = a.fold_axis(Axis(0), 0.0f64, |&m, x| m.max(x.abs())).mapv(|m| if m == 0.0 { 1.0 } else { m });
    (a / &maxes, b / &maxes)
}

/// Kernel physics distance as JetNet's `kpd`: both samples are normalised by the reference's (`a`'s)
/// column max |value|; then for each of `subsets` batches, `subset` rows are drawn with replacement
/// from each sample (a ChaCha8 stream seeded with `seed + 1000·k` for batch k, mirroring JetNet's
/// seeding) and the unbiased MMD² with kernel (x·y/d + 1)^`KPD_KERNEL_DEGREE` is computed.
/// Returns (median, half the 16.275–83.725 percentile range) over the batches, which is what JetNet
/// returns (not the mean and standard error). NaN if `subset` < 2 or there is nothing to draw from.
pub fn kernel_physics_distance(
    a: &Array2<f64>,
    b: &Array2<f64>,
    subset: usize,
    subsets: usize,
    seed: u64,
) -> (f64, f64) {
    assert_eq!(a.ncols(), b.ncols(), "feature counts differ");
    if subset < 2 || subsets == 0 || a.nrows() == 0 || b.nrows() == 0 {
        return (f64::NAN, f64::NAN);
    }
    let (x, y) = normalise_by_reference_max(a, b);
    let mut values: Vec<f64> = (0..subsets as u64)
        .map(|k| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1000 * k));
            let xs = draw_rows(&x, subset, &mut rng);
            let ys = draw_rows(&y, subset, &mut rng);
            unbiased_polynomial_mmd2(&xs, &ys)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let median = quantile_of_sorted(&values, 0.5);
    let spread = (quantile_of_sorted(&values, 0.83725) - quantile_of_sorted(&values, 0.16275)) / 2.0;
    (median, spread)
}

/// `count` rows of `x` drawn uniformly with replacement.
fn draw_rows(x: &Array2<f64>, count: usize, rng: &mut ChaCha8Rng) -> Array2<f64> {
    let rows: Vec<usize> = (0..count).map(|_| rng.random_range(0..x.nrows())).collect();
    x.select(Axis(0), &rows)
}

/// Unbiased MMD² with the polynomial kernel: mean of k(x, x') over distinct pairs, plus the same
/// for y, minus twice the mean of k(x, y).
fn unbiased_polynomial_mmd2(x: &Array2<f64>, y: &Array2<f64>) -> f64 {
    let (m, n) = (x.nrows() as f64, y.nrows() as f64);
    let xx = polynomial_kernel_sum(x, x) - polynomial_kernel_trace(x);
    let yy = polynomial_kernel_sum(y, y) - polynomial_kernel_trace(y);
    let xy = polynomial_kernel_sum(x, y);
    xx / (m * (m - 1.0)) + yy / (n * (n - 1.0)) - 2.0 * xy / (m * n)
}

fn polynomial_kernel(dot: f64, dim: f64) -> f64 {
    (dot / dim + 1.0).powi(KPD_KERNEL_DEGREE)
}

/// Σ_ij k(x_i, y_j), in row blocks so that the full kernel matrix is never held.
fn polynomial_kernel_sum(x: &Array2<f64>, y: &Array2<f64>) -> f64 {
    const BLOCK: usize = 256;
    let dim = x.ncols() as f64;
    let starts: Vec<usize> = (0..x.nrows()).step_by(BLOCK).collect();
    starts
        .into_par_iter()
        .map(|start| {
            let block = x.slice(s![start..(start + BLOCK).min(x.nrows()), ..]);
            block.dot(&y.t()).iter().map(|&d| polynomial_kernel(d, dim)).sum::<f64>()
        })
        .sum()
}

/// Σ_i k(x_i, x_i).
fn polynomial_kernel_trace(x: &Array2<f64>) -> f64 {
    let dim = x.ncols() as f64;
    x.rows().into_iter().map(|r| polynomial_kernel(r.dot(&r), dim)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use rand_distr::{Distribution, Normal};

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn wasserstein_of_shifted_points_is_the_shift() {
        // b is a shifted by 5 (scipy's docstring example): every quantile moves by 5, so W1 = 5.
        // Permuted copies have equal CDFs: W1 = 0.
        assert!(close(wasserstein_1d(&[0.0, 1.0, 3.0], &[5.0, 6.0, 8.0]), 5.0, 1e-12));
        assert_eq!(wasserstein_1d(&[2.0, 1.0], &[1.0, 2.0]), 0.0);
    }

    #[test]
    fn wasserstein_matches_scipy_for_unequal_sizes() {
        // a = {0, 1}, b = {0, 1, 3}: CDF_a − CDF_b = 1/2 − 1/3 = 1/6 on [0,1),
        // 1 − 2/3 = 1/3 on [1,3): W1 = 1/6 + 2/3 = 5/6.
        assert!(close(wasserstein_1d(&[0.0, 1.0], &[0.0, 1.0, 3.0]), 5.0 / 6.0, 1e-12));
        // Ties: a = {1, 1, 2}, b = {1}: CDF_a − CDF_b = 2/3 − 1 on [1, 2) → W1 = 1/3.
        assert!(close(wasserstein_1d(&[1.0, 2.0, 1.0], &[1.0]), 1.0 / 3.0, 1e-12));
        assert!(wasserstein_1d(&[], &[1.0]).is_nan());
    }

    #[test]
    fn histogram_follows_numpy_bin_convention() {
        // Edges 0,1,2,3: 0 and 0.5 → bin 0; 1 → bin 1 (left-closed); 3 → last bin (right edge
        // included); -1, 3.5 and NaN are outside.
        let h = histogram(&[0.0, 0.5, 1.0, 3.0, -1.0, 3.5, f64::NAN], &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(h, vec![2.0, 1.0, 1.0]);
        assert!(histogram(&[1.0], &[0.0]).is_empty());
    }

    #[test]
    fn normalised_sums_to_one_and_zero_stays_zero() {
        assert_eq!(normalised(&[1.0, 3.0]), vec![0.25, 0.75]);
        assert_eq!(normalised(&[0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn shared_edges_span_both_central_ranges() {
        // a = 0..=1000: quantile 0.001 at position 0.001·1000 = 1 → 1.0; 0.999 → 999.0.
        // b = 500..=2500 (2001 values): 0.001·2000 = 2 → 502; 0.999·2000 = 1998 → 2498.
        // Union [1, 2498] in 3 bins of (2498 − 1)/3 = 832.333….
        let a: Vec<f64> = (0..=1000).map(f64::from).collect();
        let b: Vec<f64> = (500..=2500).map(f64::from).collect();
        let e = shared_edges(&a, &b, 3);
        let expected = [1.0, 1.0 + 2497.0 / 3.0, 1.0 + 2.0 * 2497.0 / 3.0, 2498.0];
        assert_eq!(e.len(), 4);
        for (x, y) in e.iter().zip(expected) {
            assert!(close(*x, y, 1e-9), "{e:?}");
        }
    }

    #[test]
    fn shared_edges_of_constant_and_empty_inputs() {
        // Both constant 2 → numpy's widening to [1.5, 2.5]; 2 bins → 1.5, 2, 2.5.
        assert_eq!(shared_edges(&[2.0, 2.0], &[2.0], 2), vec![1.5, 2.0, 2.5]);
        assert_eq!(shared_edges(&[], &[f64::NAN], 1), vec![-0.5, 0.5]);
    }

    #[test]
    fn auc_by_hand_with_ties() {
        // Perfect separation: AUC 1; reversed: 0.
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
        // Scores (pos: 0.5, 0.7; neg: 0.5, 0.3). Pairs: (0.5 vs 0.5) tie = ½, (0.5 > 0.3) = 1,
        // (0.7 > 0.5) = 1, (0.7 > 0.3) = 1 → 3.5 / 4 = 0.875.
        assert_eq!(auc(&[0.5, 0.7, 0.5, 0.3], &[true, true, false, false]), 0.875);
        assert!(auc(&[0.1], &[true]).is_nan());
    }

    #[test]
    fn average_ranks_share_tied_ranks() {
        // Sorted: 1 (rank 1), 2, 2 (ranks 2, 3 → 2.5), 5 (rank 4).
        assert_eq!(average_ranks(&[2.0, 5.0, 1.0, 2.0]), vec![2.5, 4.0, 1.0, 2.5]);
    }

    #[test]
    fn jsd_from_bce_endpoints() {
        // BCE = ln 2 (coin flip) → 0; BCE = 0 (perfect) → 1; BCE = ln2/2 → 0.5.
        let ln2 = std::f64::consts::LN_2;
        assert_eq!(jsd_from_bce(ln2), 0.0);
        assert_eq!(jsd_from_bce(0.0), 1.0);
        assert!(close(jsd_from_bce(ln2 / 2.0), 0.5, 1e-15));
    }

    #[test]
    fn frechet_distance_of_diagonal_gaussians() {
        // a rows (±1, ±1) in all four sign combinations: mean (0,0), var (ddof 1) = 4/3 each,
        // covariance 0. b = 2·a + (3, −1): mean (3, −1), var 16/3 each, covariance 0.
        // FD = |Δμ|² + Σ (σa − σb)² = (9 + 1) + 2 · (√(4/3) − 2√(4/3))² = 10 + 2 · 4/3 = 12.666….
        let a = array![[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]];
        let b = a.mapv(|x| 2.0 * x) + &array![3.0, -1.0];
        assert!(close(frechet_distance(&a, &b), 10.0 + 8.0 / 3.0, 1e-10));
        assert!(close(frechet_distance(&a, &a), 0.0, 1e-12));
    }

    #[test]
    fn frechet_distance_of_correlated_gaussians_is_rotation_invariant() {
        // Rotating both samples by 45° keeps FD: Tr and the Gram structure are invariant, so the
        // value must equal the diagonal case above, 10 + 8/3, but with non-diagonal covariances.
        let h = std::f64::consts::FRAC_1_SQRT_2;
        let rot = array![[h, -h], [h, h]];
        let a = array![[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]];
        let a_scaled = array![[1.0, 3.0], [1.0, -3.0], [-1.0, 3.0], [-1.0, -3.0]];
        // a_scaled: variances 4/3 and 12 → FD(a, a_scaled) = 0 + (√(4/3) − √12)² = (4/3)(1 − 3)²
        // = 16/3 (√12 = 3·√(4/3)).
        let fd = frechet_distance(&a.dot(&rot), &a_scaled.dot(&rot));
        assert!(close(fd, 16.0 / 3.0, 1e-10), "{fd}");
    }

    #[test]
    fn frechet_from_non_commuting_covariances() {
        // Σa = [[2,1],[1,2]], Σb = diag(1, 4), equal means. For 2×2 PSD M,
        // Tr √M = √(Tr M + 2√det M); Tr √(Σa^½ Σb Σa^½) = Tr √(Σa Σb) with Σa Σb = [[2,4],[1,8]]:
        // trace 10, det 3 · 4 = 12 → √(10 + 2√12) = √(10 + 4√3).
        // FD = 4 + 5 − 2√(10 + 4√3) = 0.77122….
        let fd = frechet_from_moments(
            &array![0.0, 0.0],
            &array![[2.0, 1.0], [1.0, 2.0]],
            &array![0.0, 0.0],
            &array![[1.0, 0.0], [0.0, 4.0]],
        );
        let expected = 9.0 - 2.0 * (10.0 + 4.0 * 3f64.sqrt()).sqrt();
        assert!(close(fd, expected, 1e-12), "{fd} vs {expected}");
    }

    #[test]
    fn mean_and_covariance_by_hand() {
        // Rows (1, 2), (3, 6): mean (2, 4); deviations ±(1, 2) → Σ = 2 · [[1,2],[2,4]] / (2 − 1).
        let (mean, cov) = mean_and_covariance(array![[1.0, 2.0], [3.0, 6.0]].view());
        assert_eq!(mean, array![2.0, 4.0]);
        assert_eq!(cov, array![[2.0, 4.0], [4.0, 8.0]]);
    }

    #[test]
    fn symmetric_sqrt_of_a_known_matrix() {
        // [[5, 4], [4, 5]] has eigenvalues 9 and 1 with eigenvectors (1,1)/√2, (1,−1)/√2, so its
        // root is ½[[3+1, 3−1], [3−1, 3+1]] = [[2, 1], [1, 2]].
        let r = symmetric_sqrt(&array![[5.0, 4.0], [4.0, 5.0]]);
        for (x, y) in r.iter().zip([2.0, 1.0, 1.0, 2.0]) {
            assert!(close(*x, y, 1e-12), "{r}");
        }
        // Round-off negative eigenvalue is clamped: diag(4, −1e-18) → diag(2, 0).
        let r = symmetric_sqrt(&array![[4.0, 0.0], [0.0, -1e-18]]);
        assert_eq!(r, array![[2.0, 0.0], [0.0, 0.0]]);
    }

    #[test]
    fn jacobi_eigen_reconstructs_a_3x3_matrix() {
        // Eigenvalues of [[2,1,0],[1,2,1],[0,1,2]] are 2 − √2, 2, 2 + √2 (tridiagonal Toeplitz:
        // 2 + 2cos(kπ/4), k = 1, 2, 3).
        let m = array![[2.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 2.0]];
        let (values, vectors) = jacobi_eigen(&m);
        let mut sorted_values = values.to_vec();
        sorted_values.sort_by(f64::total_cmp);
        let s2 = std::f64::consts::SQRT_2;
        for (x, y) in sorted_values.iter().zip([2.0 - s2, 2.0, 2.0 + s2]) {
            assert!(close(*x, y, 1e-12));
        }
        let rebuilt = (&vectors * &values).dot(&vectors.t());
        assert!(rebuilt.iter().zip(m.iter()).all(|(x, y)| close(*x, *y, 1e-12)));
    }

    #[test]
    fn normalise_by_reference_max_uses_the_reference_only() {
        // Column maxima of |a|: 4 and 0 (→ 1). b is divided by the same.
        let a = array![[-4.0, 0.0], [2.0, 0.0]];
        let b = array![[8.0, 3.0]];
        let (x, y) = normalise_by_reference_max(&a, &b);
        assert_eq!(x, array![[-1.0, 0.0], [0.5, 0.0]]);
        assert_eq!(y, array![[2.0, 3.0]]);
    }

    #[test]
    fn unbiased_mmd2_by_hand() {
        // One feature (d = 1), degree 4: x = {0, 0}, y = {1, 1}.
        // k(0,0) = 1, k(1,1) = 2⁴ = 16, k(0,1) = 1.
        // XX off-diagonal mean 1, YY 16, XY 1 → 1 + 16 − 2 = 15.
        let x = array![[0.0], [0.0]];
        let y = array![[1.0], [1.0]];
        assert_eq!(unbiased_polynomial_mmd2(&x, &y), 15.0);
        // x = {0, 1}: off-diagonal pairs k(0,1) = 1 twice → 1; against itself: 1 + 1 − 2·mean
        // (1, 1, 1, 16)/4 = 2 − 9.5 = −7.5 (the unbiased estimator can be negative).
        let x = array![[0.0], [1.0]];
        assert_eq!(unbiased_polynomial_mmd2(&x, &x), -7.5);
    }

    #[test]
    fn kpd_is_near_zero_for_the_same_distribution_and_positive_for_different_ones() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let normal = Normal::new(0.0, 1.0).unwrap();
        let mut sample = |shift: f64| Array2::from_shape_fn((2000, 3), |_| normal.sample(&mut rng) + shift);
        let (a, b, c) = (sample(0.0), sample(0.0), sample(1.0));
        let (same, same_err) = kernel_physics_distance(&a, &b, 500, 10, 42);
        let (diff, diff_err) = kernel_physics_distance(&a, &c, 500, 10, 42);
        assert!(same.abs() < 3.0 * same_err.max(1e-3), "{same} ± {same_err}");
        assert!(diff > 5.0 * diff_err && diff > 0.1, "{diff} ± {diff_err}");
        assert!(kernel_physics_distance(&a, &b, 1, 10, 42).0.is_nan());
    }

    #[test]
    fn kpd_is_reproducible_for_a_seed() {
        let a = Array2::from_shape_fn((50, 2), |(i, j)| (i * 7 + j * 3) as f64 % 11.0);
        let b = Array2::from_shape_fn((40, 2), |(i, j)| (i * 5 + j) as f64 % 13.0);
        assert_eq!(kernel_physics_distance(&a, &b, 20, 5, 1), kernel_physics_distance(&a, &b, 20, 5, 1));
        assert_ne!(kernel_physics_distance(&a, &b, 20, 5, 1), kernel_physics_distance(&a, &b, 20, 5, 2));
    }

    #[test]
    fn quantile_interpolates_linearly() {
        // [1, 2, 4]: q = 0.75 → position 1.5 → 2 + 0.5 · (4 − 2) = 3.
        assert_eq!(quantile_of_sorted(&[1.0, 2.0, 4.0], 0.75), 3.0);
        assert_eq!(quantile_of_sorted(&[5.0], 0.3), 5.0);
    }
}
