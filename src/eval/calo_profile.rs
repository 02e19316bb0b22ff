//! How well generated showers reproduce the reference's per-layer shapes: the per-layer means of
//! three official high-level features (after the threshold) — sparsity, width in r and centre in r —
//! compared layer by layer. These are the numbers a physicist reads off the layer-profile plot: a
//! model can get every energy right and still draw showers that are too wide, too dense or off
//! centre.

use serde::Serialize;

use super::calo_features::CaloFeatures;
use crate::data::geometry::LAYERS;

/// The layers compared (0-based, as `HighLevelFeatures.py` numbers them): the outermost layers hold
/// so little energy that their widths and centres are mostly noise.
pub const PROFILE_LAYERS: std::ops::RangeInclusive<usize> = 2..=40;

/// Per-layer means of one file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerProfile {
    pub sparsity: Vec<f64>,
    pub width_r: Vec<f64>,
    pub centre_r: Vec<f64>,
}

impl LayerProfile {
    pub fn of(f: &CaloFeatures) -> Self {
        let mean = |rows: &[[f64; LAYERS]]| -> Vec<f64> {
            let n = rows.len().max(1) as f64;
            (0..LAYERS).map(|l| rows.iter().map(|r| r[l]).sum::<f64>() / n).collect()
        };
        Self { sparsity: mean(&f.sparsity), width_r: mean(&f.width_r), centre_r: mean(&f.centre_r) }
    }
}

/// Errors of a generated profile against the reference's, averaged over [`PROFILE_LAYERS`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ProfileErrors {
    /// Mean |Δ mean sparsity| (a fraction of the layer's voxels).
    pub sparsity: f64,
    /// Mean |Δ mean width r| / mean width r of the reference.
    pub width_r_rel: f64,
    /// Mean |Δ mean centre r| in mm.
    pub centre_r_mm: f64,
}

impl ProfileErrors {
    pub fn between(reference: &LayerProfile, generated: &LayerProfile) -> Self {
        let n = PROFILE_LAYERS.count() as f64;
        let mean_over = |f: &dyn Fn(usize) -> f64| PROFILE_LAYERS.map(f).sum::<f64>() / n;
        Self {
            sparsity: mean_over(&|l| (generated.sparsity[l] - reference.sparsity[l]).abs()),
            width_r_rel: mean_over(&|l| {
                (generated.width_r[l] - reference.width_r[l]).abs() / reference.width_r[l].max(f64::MIN_POSITIVE)
            }),
            centre_r_mm: mean_over(&|l| (generated.centre_r[l] - reference.centre_r[l]).abs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(sparsity: f64, width: f64, centre: f64, events: usize) -> CaloFeatures {
        CaloFeatures {
            sparsity: vec![[sparsity; LAYERS]; events],
            width_r: vec![[width; LAYERS]; events],
            centre_r: vec![[centre; LAYERS]; events],
            ..Default::default()
        }
    }

    #[test]
    fn errors_are_the_layer_means_differences() {
        let r = LayerProfile::of(&features(0.7, 4.0, 2.0, 3));
        let g = LayerProfile::of(&features(0.5, 5.0, 3.5, 5));
        let e = ProfileErrors::between(&r, &g);
        assert!((e.sparsity - 0.2).abs() < 1e-12, "{e:?}");
        assert!((e.width_r_rel - 0.25).abs() < 1e-12, "{e:?}");
        assert!((e.centre_r_mm - 1.5).abs() < 1e-12, "{e:?}");
        assert_eq!(ProfileErrors::between(&r, &r), ProfileErrors { sparsity: 0.0, width_r_rel: 0.0, centre_r_mm: 0.0 });
    }

    #[test]
    fn only_the_profile_layers_count() {
        let r = features(0.5, 4.0, 2.0, 2);
        let mut g = r.clone();
        // Layers outside 2..=40 differ wildly; the errors stay zero.
        for row in g.width_r.iter_mut() {
            row[0] = 100.0;
            row[44] = 100.0;
        }
        let e = ProfileErrors::between(&LayerProfile::of(&r), &LayerProfile::of(&g));
        assert_eq!(e.width_r_rel, 0.0);
        g.width_r[0][20] = 12.0; // one of two events: the layer's mean width 8 vs 4
        let e = ProfileErrors::between(&LayerProfile::of(&r), &LayerProfile::of(&g));
        assert!((e.width_r_rel - 1.0 / 39.0).abs() < 1e-12, "{e:?}");
    }
}
