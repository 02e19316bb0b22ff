//! Inverse-diversity weights (ZDC paper eq. 1, 3), computed once from the training split.
//!
//! f_div(c) = Σ_ij sqrt(Σ_t (x_ij^t − μ_ij)² / |X_c|) per unique condition c (the responses'
//! photon counts), weight(c) = [1/f_div]_norm · |X_c| + ε, applied to every training sample of c.
//! Responses are read a batch of conditions at a time, so memory stays bounded.

use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

pub use crate::config::ZeroDiversity;
use crate::data::channels::PIXELS;
use crate::data::split::group_identical;
use crate::data::zdc::{ZdcFile, FEATURES};
use crate::error::Result;
use crate::util::atomic;

/// Responses read per batch of conditions.
const EVENTS_PER_BATCH: usize = 32_768;

#[derive(Clone, Debug, Serialize)]
pub struct DiversityWeights {
    pub eps: f64,
    /// Per unique training condition.
    pub f_div: Vec<f64>,
    pub counts: Vec<usize>,
    pub weights: Vec<f64>,
    /// Weight of every event of the file (0 outside the training split).
    #[serde(skip)]
    pub per_event: Vec<f32>,
}

pub fn compute(file: &ZdcFile, train: &[usize], eps: f64) -> Result<DiversityWeights> {
    compute_with(file, train, eps, ZeroDiversity::Top)
}

/// [`compute`] for the events `train` (any split: validation conditions get their own weights the
/// same way) with the f_div = 0 rule chosen.
pub fn compute_with(file: &ZdcFile, train: &[usize], eps: f64, zero: ZeroDiversity) -> Result<DiversityWeights> {
    let rows: Vec<f32> = train.iter().flat_map(|&e| file.conditions.row(e).iter().copied()).collect();
    let groups = group_identical(&rows, FEATURES);
    let n_groups = groups.counts.len();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_groups];
    for (k, &g) in groups.of_row.iter().enumerate() {
        members[g].push(train[k]);
    }
    let mut f_div = vec![0.0; n_groups];
    let mut g = 0;
    while g < n_groups {
        // A batch of whole conditions.
        let mut end = g;
        let mut events = 0;
        while end < n_groups && (events == 0 || events + members[end].len() <= EVENTS_PER_BATCH) {
            events += members[end].len();
            end += 1;
        }
        let mut tagged: Vec<(usize, usize)> =
            (g..end).flat_map(|c| members[c].iter().map(move |&e| (e, c - g))).collect();
        tagged.sort_unstable();
        let indices: Vec<usize> = tagged.iter().map(|t| t.0).collect();
        let local: Vec<usize> = tagged.iter().map(|t| t.1).collect();
        let images = file.read_responses_at(&indices)?;
        debug_assert_eq!(images.len(), indices.len() * PIXELS);
        f_div[g..end].copy_from_slice(&diversity(&images, &local, end - g));
        g = end;
    }
    let weights = inverse_diversity_weights_with(&f_div, &groups.counts, eps, zero);
    let mut per_event = vec![0f32; file.events];
    for (k, &grp) in groups.of_row.iter().enumerate() {
        per_event[train[k]] = weights[grp] as f32;
    }
    Ok(DiversityWeights { eps, f_div, counts: groups.counts, weights, per_event })
}

impl DiversityWeights {
    /// Saves the per-condition values as JSON (for inspection and for the record).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self).expect("weights serialise");
        atomic::write_bytes(path, text.as_bytes())
    }
}

/// The paper's eq. 1 per condition: f_div(c) = Σ_pixels √(Σ_t (x^t − μ)² / |X_c|), the sum over
/// pixels of the population standard deviation across the condition's images. `group` holds ids in
/// 0..`n_groups`; a condition without images gets 0.
pub fn diversity(images_flat: &[f32], group: &[usize], n_groups: usize) -> Vec<f64> {
    assert_eq!(images_flat.len(), group.len() * PIXELS, "images and group ids differ in count");
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_groups];
    for (i, &g) in group.iter().enumerate() {
        assert!(g < n_groups, "group id {g} out of range 0..{n_groups}");
        members[g].push(i);
    }
    members
        .par_iter()
        .map(|images| pixel_std_sum(images.iter().map(|&i| &images_flat[i * PIXELS..(i + 1) * PIXELS])))
        .collect()
}

/// Σ over pixels of the population standard deviation of a set of images (0 for none).
fn pixel_std_sum<'a>(images: impl Iterator<Item = &'a [f32]> + Clone) -> f64 {
    let n = images.clone().count();
    if n == 0 {
        return 0.0;
    }
    let mut mean = vec![0.0f64; PIXELS];
    for img in images.clone() {
        mean.iter_mut().zip(img).for_each(|(m, &v)| *m += v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut squares = vec![0.0f64; PIXELS];
    for img in images {
        squares.iter_mut().zip(img).zip(&mean).for_each(|((s, &v), m)| *s += (v as f64 - m).powi(2));
    }
    squares.iter().map(|s| (s / n as f64).sqrt()).sum()
}

/// The paper's eq. 3: w_c = [1/f_div(c)]_norm · |X_c| + ε, with [·]_norm min–max normalisation of
/// 1/f_div to [0, 1] over the conditions. A condition with f_div = 0 (no diversity, e.g. seen once)
/// takes the largest finite 1/f_div (normalised value 1, `distill.zero_diversity = "top"`); if all
/// values are equal the normalised value is 1.
pub fn inverse_diversity_weights(f_div: &[f64], counts: &[usize], eps: f64) -> Vec<f64> {
    inverse_diversity_weights_with(f_div, counts, eps, ZeroDiversity::Top)
}

/// [`inverse_diversity_weights`] with the f_div = 0 rule chosen.
pub fn inverse_diversity_weights_with(f_div: &[f64], counts: &[usize], eps: f64, zero: ZeroDiversity) -> Vec<f64> {
    assert_eq!(f_div.len(), counts.len(), "f_div and counts differ in length");
    let inverse: Vec<Option<f64>> = f_div.iter().map(|&f| (f > 0.0).then(|| 1.0 / f)).collect();
    let finite = inverse.iter().flatten();
    let max = finite.clone().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = finite.copied().fold(f64::INFINITY, f64::min);
    inverse
        .iter()
        .zip(counts)
        .map(|(inv, &count)| {
            let normalised = match inv {
                Some(inv) if max > min => (inv - min) / (max - min),
                Some(_) => 1.0,
                None if zero == ZeroDiversity::Eps => 0.0,
                None => 1.0,
            };
            normalised * count as f64 + eps
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::channels::image_with;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn diversity_by_hand() {
        // Group 0: two images differing only at pixel (0,0): values 0 and 4 → σ = 2; and at (1,1):
        // 1 and 3 → σ = 1. f_div = 3.
        // Group 1: one image → σ = 0 everywhere. Group 2: no images → 0.
        // Group 3: three images with pixel (5,5) = 0, 0, 3: mean 1, variance (1 + 1 + 4)/3 = 2
        // → f_div = √2.
        let mut images = image_with(&[(1, 1, 1.0)]);
        images.extend(image_with(&[(0, 0, 4.0), (1, 1, 3.0)]));
        images.extend(image_with(&[(7, 7, 9.0)]));
        images.extend(vec![0f32; PIXELS]);
        images.extend(vec![0f32; PIXELS]);
        images.extend(image_with(&[(5, 5, 3.0)]));
        let f = diversity(&images, &[0, 0, 1, 3, 3, 3], 4);
        assert_eq!(f.len(), 4);
        assert!(close(f[0], 3.0) && f[1] == 0.0 && f[2] == 0.0 && close(f[3], 2f64.sqrt()));
    }

    #[test]
    fn inverse_diversity_weights_by_hand() {
        // f_div (1, 2, 4) → 1/f (1, 0.5, 0.25) → min–max (1, 1/3, 0); counts (10, 3, 5), ε = 0.1:
        // (10.1, 1.1, 0.1).
        let w = inverse_diversity_weights(&[1.0, 2.0, 4.0], &[10, 3, 5], 0.1);
        assert!(close(w[0], 10.1) && close(w[1], 1.1) && close(w[2], 0.1), "{w:?}");
        // f_div = 0 takes the largest finite 1/f: (0, 1, 2) → (1, 1, 0.5) → (1, 1, 0); counts 2, 4, 6:
        // (2, 4, 0).
        assert_eq!(inverse_diversity_weights(&[0.0, 1.0, 2.0], &[2, 4, 6], 0.0), vec![2.0, 4.0, 0.0]);
        // All equal → normalised 1: weights are the counts plus ε.
        assert_eq!(inverse_diversity_weights(&[3.0, 3.0], &[2, 5], 0.5), vec![2.5, 5.5]);
        // f_div = 0 with the "eps" rule: weight ε only.
        assert_eq!(
            inverse_diversity_weights_with(&[0.0, 1.0, 2.0], &[2, 4, 6], 0.5, ZeroDiversity::Eps),
            vec![0.5, 4.5, 0.5]
        );
    }
}
