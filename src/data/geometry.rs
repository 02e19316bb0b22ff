//! CaloChallenge datasets 2 and 3: 45 layers of concentric rings split into angular sectors
//! (the official `binning_dataset_{2,3}.xml`). The flat voxel index runs radial bin fastest,
//! then angular bin, then layer: `index = (layer · n_alpha + alpha) · n_r + r`.

use serde::{Deserialize, Serialize};

/// Layers in both datasets.
pub const LAYERS: usize = 45;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaloGeometry {
    /// 2 or 3.
    pub dataset: u8,
    pub layers: usize,
    pub n_alpha: usize,
    pub n_r: usize,
    /// Radial bin edges in mm (n_r + 1 values, from 0).
    pub r_edges: Vec<f64>,
}

impl CaloGeometry {
    /// Dataset 2: 9 rings of 4.65 mm × 16 sectors = 144 voxels per layer, 6480 in all.
    pub fn ds2() -> Self {
        Self::uniform(2, 16, 9, 4.65)
    }

    /// Dataset 3: 18 rings of 2.325 mm × 50 sectors = 900 voxels per layer, 40500 in all.
    pub fn ds3() -> Self {
        Self::uniform(3, 50, 18, 2.325)
    }

    fn uniform(dataset: u8, n_alpha: usize, n_r: usize, step: f64) -> Self {
        let r_edges = (0..=n_r).map(|i| (i as f64 * step * 1e4).round() / 1e4).collect();
        Self { dataset, layers: LAYERS, n_alpha, n_r, r_edges }
    }

    pub fn for_dataset(dataset: u8) -> Option<Self> {
        match dataset {
            2 => Some(Self::ds2()),
            3 => Some(Self::ds3()),
            _ => None,
        }
    }

    /// The dataset whose files have `voxels` columns.
    pub fn from_voxels(voxels: usize) -> Option<Self> {
        [Self::ds2(), Self::ds3()].into_iter().find(|g| g.voxels() == voxels)
    }

    pub fn voxels_per_layer(&self) -> usize {
        self.n_alpha * self.n_r
    }

    pub fn voxels(&self) -> usize {
        self.layers * self.voxels_per_layer()
    }

    pub fn index(&self, layer: usize, alpha: usize, r: usize) -> usize {
        (layer * self.n_alpha + alpha) * self.n_r + r
    }

    /// Centre of radial bin `r` in mm.
    pub fn r_mid(&self, r: usize) -> f64 {
        0.5 * (self.r_edges[r] + self.r_edges[r + 1])
    }

    /// Centre of angular bin `a` in radians; sectors split [−π, π) evenly.
    pub fn alpha_mid(&self, a: usize) -> f64 {
        let width = 2.0 * std::f64::consts::PI / self.n_alpha as f64;
        -std::f64::consts::PI + (a as f64 + 0.5) * width
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_the_official_binning() {
        let g2 = CaloGeometry::ds2();
        assert_eq!((g2.voxels_per_layer(), g2.voxels()), (144, 6480));
        assert_eq!(*g2.r_edges.last().unwrap(), 41.85);
        let g3 = CaloGeometry::ds3();
        assert_eq!((g3.voxels_per_layer(), g3.voxels()), (900, 40500));
        assert_eq!(g3.r_edges[1], 2.325);
        assert_eq!(*g3.r_edges.last().unwrap(), 41.85);
        assert_eq!(g2.index(1, 0, 0), 144);
        assert_eq!(g2.index(0, 1, 0), 9);
        assert_eq!(CaloGeometry::from_voxels(40500).unwrap().dataset, 3);
    }
}
