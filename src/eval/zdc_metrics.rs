//! The ZDC paper's metrics (Majerz et al., "Inverse Autoregressive Flows for ZDC fast simulation"):
//!
//! - Table 1: `ws_channels` (WS: per-channel 1-D Wasserstein distance, averaged over the five
//!   channels) and `mae_by_condition` (MAE_c and its occurrence-weighted form MAE_cw).
//! - Table 2: `shape_errors` (errors of the shower centre, its spread, the 90 % radius and its
//!   spread, per condition, built on `shower_centre` and `radius_90`).
//!
//! Images are row-major 44×44 photon counts (`crate::data::channels`); a "group" is an id shared by
//! all samples generated for the same conditioning vector.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

use crate::data::channels::{CHANNELS, PIXELS, SIDE};
use crate::eval::stats::wasserstein_1d;

/// Per-channel Wasserstein distances between the reference and generated channel sums, and their
/// mean (the paper's WS).
pub fn ws_channels(reference: &[[f64; CHANNELS]], generated: &[[f64; CHANNELS]]) -> ([f64; CHANNELS], f64) {
    let mut per_channel = [0.0; CHANNELS];
    for (c, ws) in per_channel.iter_mut().enumerate() {
        let r: Vec<f64> = reference.iter().map(|v| v[c]).collect();
        let g: Vec<f64> = generated.iter().map(|v| v[c]).collect();
        *ws = wasserstein_1d(&r, &g);
    }
    let mean = per_channel.iter().sum::<f64>() / CHANNELS as f64;
    (per_channel, mean)
}

/// MAE of the mean channel vectors per condition.
#[derive(Debug, Clone, Serialize)]
pub struct ConditionMae {
    /// Plain mean over the conditions present on both sides.
    pub mae_c: f64,
    /// Mean weighted by each condition's number of reference samples.
    pub mae_cw: f64,
    /// Conditions present on both sides.
    pub conditions: usize,
    /// Conditions present on one side only (not scored).
    pub skipped: usize,
}

/// For each condition present in both sets: the mean channel vector of each side and the mean over
/// the five channels of their absolute difference; aggregated plainly (MAE_c) and weighted by the
/// reference occurrences (MAE_cw). NaN aggregates when no condition is shared.
pub fn mae_by_condition(
    ref_channels: &[[f64; CHANNELS]],
    ref_group: &[usize],
    gen_channels: &[[f64; CHANNELS]],
    gen_group: &[usize],
) -> ConditionMae {
    let reference = channel_means_by_group(ref_channels, ref_group);
    let generated = channel_means_by_group(gen_channels, gen_group);
    let (mut sum, mut weighted_sum, mut weights, mut conditions) = (0.0, 0.0, 0.0, 0);
    for (group, (ref_mean, ref_count)) in &reference {
        let Some((gen_mean, _)) = generated.get(group) else { continue };
        let mae = ref_mean.iter().zip(gen_mean).map(|(r, g)| (r - g).abs()).sum::<f64>() / CHANNELS as f64;
        sum += mae;
        weighted_sum += *ref_count as f64 * mae;
        weights += *ref_count as f64;
        conditions += 1;
    }
    let skipped = reference.len() + generated.len() - 2 * conditions;
    ConditionMae { mae_c: sum / conditions as f64, mae_cw: weighted_sum / weights, conditions, skipped }
}

/// Mean channel vector and sample count per group id.
fn channel_means_by_group(channels: &[[f64; CHANNELS]], group: &[usize]) -> BTreeMap<usize, ([f64; CHANNELS], usize)> {
    assert_eq!(channels.len(), group.len(), "channel rows and group ids differ in length");
    let mut acc: BTreeMap<usize, ([f64; CHANNELS], usize)> = BTreeMap::new();
    for (row, &g) in channels.iter().zip(group) {
        let (sum, count) = acc.entry(g).or_insert(([0.0; CHANNELS], 0));
        sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        *count += 1;
    }
    for (sum, count) in acc.values_mut() {
        sum.iter_mut().for_each(|s| *s /= *count as f64);
    }
    acc
}

/// Photon-weighted centre (row, col) of an image, pixel centres at integer indices; None when the
/// image holds no photons.
pub fn shower_centre(image: &[f32]) -> Option<(f64, f64)> {
    debug_assert_eq!(image.len(), PIXELS);
    let (mut total, mut row, mut col) = (0.0, 0.0, 0.0);
    for (p, &v) in image.iter().enumerate() {
        let v = v as f64;
        total += v;
        row += v * (p / SIDE) as f64;
        col += v * (p % SIDE) as f64;
    }
    (total > 0.0).then(|| (row / total, col / total))
}

/// Radius (pixels) around the shower centre holding ≥ 90 % of the photons: pixels sorted by their
/// distance to the centre are accumulated until the sum first reaches 90 % of the total; the
/// distance of that pixel is returned. None for an empty image.
pub fn radius_90(image: &[f32]) -> Option<f64> {
    let (r0, c0) = shower_centre(image)?;
    let mut lit: Vec<(f64, f64)> = image
        .iter()
        .enumerate()
        .filter(|(_, &v)| v > 0.0)
        .map(|(p, &v)| (((p / SIDE) as f64 - r0).hypot((p % SIDE) as f64 - c0), v as f64))
        .collect();
    lit.sort_by(|a, b| a.0.total_cmp(&b.0));
    let target = 0.9 * lit.iter().map(|(_, v)| v).sum::<f64>();
    let mut cumulative = 0.0;
    for &(distance, v) in &lit {
        cumulative += v;
        if cumulative >= target {
            return Some(distance);
        }
    }
    lit.last().map(|(d, _)| *d)
}

/// Mean absolute and root-mean-square error over conditions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ErrorPair {
    pub mae: f64,
    pub rmse: f64,
}

/// The paper's Table 2 shape errors; see `shape_errors`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ShapeErrors {
    pub centre: ErrorPair,
    pub centre_variance: ErrorPair,
    pub radius: ErrorPair,
    pub radius_variance: ErrorPair,
}

/// Shape statistics of the non-empty images of one condition.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ConditionShape {
    /// Mean shower centre (row, col).
    centre: (f64, f64),
    /// Mean squared Euclidean distance of the centres to their mean (= var(row) + var(col)).
    centre_variance: f64,
    radius: f64,
    radius_variance: f64,
    images: usize,
}

/// Table 2's errors between reference and generated images (`n × PIXELS` flat, with one group id
/// per image).
///
/// For each condition with non-empty images on both sides (empty images are skipped) and each side:
/// the mean centre, the centre variance (mean squared distance of the centres to the mean centre,
/// i.e. var(row) + var(col)), and the mean and variance of the 90 % radius; variances are population
/// variances. Per-condition errors are the Euclidean distance between the mean centres and the
/// absolute differences of the other three. Aggregates are MAE and RMSE over conditions, weighted by
/// each condition's number of non-empty reference images. NaN when no condition is shared.
#[cfg(test)]
pub fn shape_errors(ref_images: &[f32], ref_group: &[usize], gen_images: &[f32], gen_group: &[usize]) -> ShapeErrors {
    shape_errors_from(&image_shapes(ref_images), ref_group, &image_shapes(gen_images), gen_group)
}

/// [`shape_errors`] from per-image shapes ([`image_shapes`]), so images can be streamed.
pub fn shape_errors_from(
    ref_shapes: &[Option<CentreAndRadius>],
    ref_group: &[usize],
    gen_shapes: &[Option<CentreAndRadius>],
    gen_group: &[usize],
) -> ShapeErrors {
    let reference = shapes_by_group(ref_shapes, ref_group);
    let generated = shapes_by_group(gen_shapes, gen_group);
    let mut errors: Vec<([f64; 4], f64)> = Vec::new();
    for (group, r) in &reference {
        let Some(g) = generated.get(group) else { continue };
        let centre = (r.centre.0 - g.centre.0).hypot(r.centre.1 - g.centre.1);
        let centre_variance = (r.centre_variance - g.centre_variance).abs();
        let radius = (r.radius - g.radius).abs();
        let radius_variance = (r.radius_variance - g.radius_variance).abs();
        errors.push(([centre, centre_variance, radius, radius_variance], r.images as f64));
    }
    let pair = |k: usize| weighted_error_pair(errors.iter().map(|(e, w)| (e[k], *w)));
    ShapeErrors { centre: pair(0), centre_variance: pair(1), radius: pair(2), radius_variance: pair(3) }
}

/// Weighted MAE Σ w e / Σ w and RMSE √(Σ w e² / Σ w) of non-negative errors e.
fn weighted_error_pair(errors: impl Iterator<Item = (f64, f64)>) -> ErrorPair {
    let (mut abs_sum, mut sq_sum, mut weights) = (0.0, 0.0, 0.0);
    for (e, w) in errors {
        abs_sum += w * e.abs();
        sq_sum += w * e * e;
        weights += w;
    }
    ErrorPair { mae: abs_sum / weights, rmse: (sq_sum / weights).sqrt() }
}

/// An image's shower centre and 90 % radius (pixels).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CentreAndRadius {
    pub row: f64,
    pub col: f64,
    pub radius: f64,
}

/// The centre and 90 % radius of each image (`n × PIXELS` flat); None for an empty image.
pub fn image_shapes(images: &[f32]) -> Vec<Option<CentreAndRadius>> {
    images
        .par_chunks(PIXELS)
        .map(|img| {
            let (row, col) = shower_centre(img)?;
            Some(CentreAndRadius { row, col, radius: radius_90(img)? })
        })
        .collect()
}

/// `ConditionShape` of every group with at least one non-empty image.
fn shapes_by_group(per_image: &[Option<CentreAndRadius>], group: &[usize]) -> BTreeMap<usize, ConditionShape> {
    assert_eq!(per_image.len(), group.len(), "shapes and group ids differ in count");
    let mut members: BTreeMap<usize, Vec<CentreAndRadius>> = BTreeMap::new();
    for (shape, &g) in per_image.iter().zip(group) {
        if let Some(shape) = *shape {
            members.entry(g).or_default().push(shape);
        }
    }
    members.into_iter().map(|(g, shapes)| (g, condition_shape(&shapes))).collect()
}

/// Mean centre, centre variance, and mean and variance of the radius of (centre, radius) pairs.
fn condition_shape(shapes: &[CentreAndRadius]) -> ConditionShape {
    let rows: Vec<f64> = shapes.iter().map(|s| s.row).collect();
    let cols: Vec<f64> = shapes.iter().map(|s| s.col).collect();
    let radii: Vec<f64> = shapes.iter().map(|s| s.radius).collect();
    let (row_mean, row_var) = mean_and_population_variance(&rows);
    let (col_mean, col_var) = mean_and_population_variance(&cols);
    let (radius, radius_variance) = mean_and_population_variance(&radii);
    ConditionShape {
        centre: (row_mean, col_mean),
        centre_variance: row_var + col_var,
        radius,
        radius_variance,
        images: shapes.len(),
    }
}

fn mean_and_population_variance(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let variance = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, variance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::channels::image_with;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn ws_channels_by_hand() {
        // Channel c of the generated set is the reference's shifted by c: WS_c = c, mean
        // (0 + 1 + 2 + 3 + 4) / 5 = 2.
        let reference = [[1.0; CHANNELS], [3.0; CHANNELS]];
        let generated: Vec<[f64; CHANNELS]> =
            reference.iter().map(|r| std::array::from_fn(|c| r[c] + c as f64)).collect();
        let (per_channel, mean) = ws_channels(&reference, &generated);
        assert_eq!(per_channel, [0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(mean, 2.0);
    }

    #[test]
    fn mae_by_condition_by_hand() {
        // Condition 7: reference rows 0 and 2 (mean 1 everywhere), generated mean 3 → MAE 2.
        // Condition 9: reference rows 3..=6 (4 occurrences, all 5), generated mean 6 → MAE 1. Condition 1 (reference only) and 3 (generated only) are skipped.
        // MAE_c = (2 + 1) / 2 = 1.5; MAE_cw = (2·2 + 4·1) / 6 = 4/3.
        let reference = [[0.0; 5], [9.0; 5], [2.0; 5], [5.0; 5], [5.0; 5], [5.0; 5], [5.0; 5]];
        let ref_group = [7, 1, 7, 9, 9, 9, 9];
        let generated = [[3.0; 5], [6.0; 5], [0.0; 5]];
        let gen_group = [7, 9, 3];
        let m = mae_by_condition(&reference, &ref_group, &generated, &gen_group);
        assert_eq!((m.conditions, m.skipped), (2, 2));
        assert!(close(m.mae_c, 1.5));
        assert!(close(m.mae_cw, 4.0 / 3.0));
    }

    #[test]
    fn mae_by_condition_averages_over_channels() {
        // One condition, differences (1, 0, 0, 0, 4) → MAE = 5 / 5 = 1.
        let m = mae_by_condition(&[[1.0, 2.0, 3.0, 4.0, 5.0]], &[0], &[[2.0, 2.0, 3.0, 4.0, 1.0]], &[0]);
        assert_eq!((m.mae_c, m.mae_cw, m.conditions, m.skipped), (1.0, 1.0, 1, 0));
    }

    #[test]
    fn shower_centre_by_hand() {
        // 1 photon at (0, 0) and 3 at (4, 8): centre (12/4, 24/4) = (3, 6).
        assert_eq!(shower_centre(&image_with(&[(0, 0, 1.0), (4, 8, 3.0)])), Some((3.0, 6.0)));
        assert_eq!(shower_centre(&vec![0f32; PIXELS]), None);
    }

    #[test]
    fn radius_90_by_hand() {
        // 9 photons at (10, 10) and 1 at (10, 20): centre (10, 11). Distances 1 (9 photons) and
        // 9 (1 photon); 9 ≥ 0.9 · 10 already at the first pixel → radius 1.
        assert_eq!(radius_90(&image_with(&[(10, 10, 9.0), (10, 20, 1.0)])), Some(1.0));
        // 8 and 2 photons: centre (10, 12); 8 < 9, the 90 % is reached at the second pixel, 8 away.
        assert_eq!(radius_90(&image_with(&[(10, 10, 8.0), (10, 20, 2.0)])), Some(8.0));
        assert_eq!(radius_90(&vec![0f32; PIXELS]), None);
    }

    #[test]
    fn shape_errors_by_hand() {
        // Single-pixel images: radius 0 each, centre at the pixel.
        // Condition 0: reference centres (10, 10) and (10, 14) → mean (10, 12), centre variance
        // (0 + 4) = 4 (col deviations ±2); generated one image at (13, 16) → mean (13, 16), variance
        // 0. Centre error √(3² + 4²) = 5; centre-variance error 4; radius errors 0.
        // Condition 1: reference (20, 20), generated (20, 20) and an empty image (skipped) → all 0.
        // Weights: 2 and 1 non-empty reference images. MAE(centre) = (2·5 + 0)/3 = 10/3,
        // RMSE = √((2·25)/3); MAE(centre var) = 8/3, RMSE = √(32/3).
        let mut reference = image_with(&[(10, 10, 1.0)]);
        reference.extend(image_with(&[(10, 14, 1.0)]));
        reference.extend(image_with(&[(20, 20, 5.0)]));
        let mut generated = image_with(&[(13, 16, 2.0)]);
        generated.extend(image_with(&[(20, 20, 1.0)]));
        generated.extend(vec![0f32; PIXELS]);
        let e = shape_errors(&reference, &[0, 0, 1], &generated, &[0, 1, 1]);
        assert!(close(e.centre.mae, 10.0 / 3.0) && close(e.centre.rmse, (50.0f64 / 3.0).sqrt()));
        assert!(close(e.centre_variance.mae, 8.0 / 3.0) && close(e.centre_variance.rmse, (32.0f64 / 3.0).sqrt()));
        assert_eq!(e.radius, ErrorPair { mae: 0.0, rmse: 0.0 });
        assert_eq!(e.radius_variance, ErrorPair { mae: 0.0, rmse: 0.0 });
    }

    #[test]
    fn condition_shape_radius_statistics() {
        // Radii 1 and 3: mean 2, population variance 1; one centre → centre variance 0.
        let s = condition_shape(&[
            CentreAndRadius { row: 5.0, col: 5.0, radius: 1.0 },
            CentreAndRadius { row: 5.0, col: 5.0, radius: 3.0 },
        ]);
        assert_eq!((s.radius, s.radius_variance, s.centre_variance, s.images), (2.0, 1.0, 0.0, 2));
    }

    #[test]
    fn weighted_error_pair_by_hand() {
        // Errors 1 (weight 3) and 3 (weight 1): MAE (3 + 3)/4 = 1.5; RMSE √((3 + 9)/4) = √3.
        let p = weighted_error_pair([(1.0, 3.0), (3.0, 1.0)].into_iter());
        assert!(close(p.mae, 1.5) && close(p.rmse, 3f64.sqrt()));
    }
}
