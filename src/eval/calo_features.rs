//! CaloChallenge high-level features for datasets 2 and 3, as the official evaluation defines them
//! (`CaloChallenge/homepage`, `code/`):
//!
//! - Voxel coordinates (`XMLHandler.SetEtaAndPhiFromPolar`): every voxel sits at its radial-bin
//!   midpoint r and angular-bin midpoint α (bins of `linspace(-π, π, n_alpha + 1)`), with
//!   x ("eta") = r cos α and y ("phi") = r sin α, in mm.
//! - Per layer (`HighLevelFeatures.CalculateFeatures`): energy; centre of energy
//!   Σ e·x / (Σ e + 1e-16) in x, y and r; width √max(Σ e·x² / (Σ e + 1e-16) − centre², 0), so an
//!   empty layer has centre and width 0; sparsity 1 − (fraction of voxels with e > 0).
//! - `evaluate.py` first sets every voxel below `min_energy` to 0 (for datasets 2 and 3
//!   0.5 keV / 0.033 = 15.15 keV, `EVALUATION_THRESHOLD_MEV`), then computes the features.
//! - The classifier's / FPD / KPD high-level input (`evaluate.prepare_high_data_for_classifier`):
//!   see `high_level_matrix`.

use ndarray::Array2;
use rayon::prelude::*;

use crate::data::geometry::{CaloGeometry, LAYERS};

/// `evaluate.py`'s voxel readout threshold for datasets 2 and 3: 0.5 keV / 0.033 sampling fraction.
pub const EVALUATION_THRESHOLD_MEV: f64 = crate::data::calo::READOUT_THRESHOLD_MEV;

/// Columns of `high_level_matrix`: E_inc, E_tot and eight per-layer features.
pub const HIGH_LEVEL_COLUMNS: usize = 2 + 8 * LAYERS;

/// The official regulariser of the centre and width denominators.
const ENERGY_EPSILON: f64 = 1e-16;

/// High-level features of n showers: one entry per event, per-layer values indexed by layer.
/// Lengths are in mm, energies in MeV.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaloFeatures {
    pub e_inc: Vec<f64>,
    /// Sum of all voxels above threshold.
    pub e_total: Vec<f64>,
    pub layer_energy: Vec<[f64; LAYERS]>,
    /// Centre of energy in x = r cos α ("eta" in the official code).
    pub centre_x: Vec<[f64; LAYERS]>,
    /// Centre of energy in y = r sin α ("phi" in the official code).
    pub centre_y: Vec<[f64; LAYERS]>,
    pub width_x: Vec<[f64; LAYERS]>,
    pub width_y: Vec<[f64; LAYERS]>,
    pub centre_r: Vec<[f64; LAYERS]>,
    pub width_r: Vec<[f64; LAYERS]>,
    /// Fraction of the layer's voxels that are zero after the threshold.
    pub sparsity: Vec<[f64; LAYERS]>,
}

impl CaloFeatures {
    pub fn events(&self) -> usize {
        self.e_inc.len()
    }

    /// Appends the events of `other` (features computed chunk by chunk).
    pub fn append(&mut self, other: CaloFeatures) {
        self.e_inc.extend(other.e_inc);
        self.e_total.extend(other.e_total);
        for (mine, theirs) in [
            (&mut self.layer_energy, other.layer_energy),
            (&mut self.centre_x, other.centre_x),
            (&mut self.centre_y, other.centre_y),
            (&mut self.width_x, other.width_x),
            (&mut self.width_y, other.width_y),
            (&mut self.centre_r, other.centre_r),
            (&mut self.width_r, other.width_r),
            (&mut self.sparsity, other.sparsity),
        ] {
            mine.extend(theirs);
        }
    }
}

/// Features of one shower.
struct EventFeatures {
    e_total: f64,
    layer_energy: [f64; LAYERS],
    centre_x: [f64; LAYERS],
    centre_y: [f64; LAYERS],
    width_x: [f64; LAYERS],
    width_y: [f64; LAYERS],
    centre_r: [f64; LAYERS],
    width_r: [f64; LAYERS],
    sparsity: [f64; LAYERS],
}

/// Voxel centre coordinates within one layer (all layers share them), in the flat voxel order.
struct LayerCoordinates {
    x: Vec<f64>,
    y: Vec<f64>,
    r: Vec<f64>,
}

impl LayerCoordinates {
    fn new(geometry: &CaloGeometry) -> Self {
        let cells = (0..geometry.n_alpha).flat_map(|a| (0..geometry.n_r).map(move |r| (a, r)));
        let (mut x, mut y, mut r_mid) = (Vec::new(), Vec::new(), Vec::new());
        for (a, r) in cells {
            let (radius, alpha) = (geometry.r_mid(r), geometry.alpha_mid(a));
            x.push(radius * alpha.cos());
            y.push(radius * alpha.sin());
            r_mid.push(radius);
        }
        Self { x, y, r: r_mid }
    }
}

/// High-level features of `showers` (n × `geometry.voxels()` energies in MeV, row-major) with
/// incident energies `e_inc`; voxels below `threshold_mev` count as 0 (pass
/// `EVALUATION_THRESHOLD_MEV` to match the official evaluation). Parallel over events.
pub fn calo_features(geometry: &CaloGeometry, e_inc: &[f32], showers: &[f32], threshold_mev: f64) -> CaloFeatures {
    assert_eq!(geometry.layers, LAYERS, "geometry must have {LAYERS} layers");
    assert_eq!(showers.len(), e_inc.len() * geometry.voxels(), "showers and incident energies differ in count");
    let coordinates = LayerCoordinates::new(geometry);
    let events: Vec<EventFeatures> = showers
        .par_chunks(geometry.voxels().max(1))
        .map(|shower| event_features(shower, &coordinates, threshold_mev))
        .collect();
    collect_events(e_inc, events)
}

fn event_features(shower: &[f32], coordinates: &LayerCoordinates, threshold_mev: f64) -> EventFeatures {
    let per_layer = coordinates.x.len();
    let mut f = EventFeatures {
        e_total: 0.0,
        layer_energy: [0.0; LAYERS],
        centre_x: [0.0; LAYERS],
        centre_y: [0.0; LAYERS],
        width_x: [0.0; LAYERS],
        width_y: [0.0; LAYERS],
        centre_r: [0.0; LAYERS],
        width_r: [0.0; LAYERS],
        sparsity: [0.0; LAYERS],
    };
    for (l, layer) in shower.chunks(per_layer).enumerate() {
        let energies: Vec<f64> = layer.iter().map(|&e| thresholded(e as f64, threshold_mev)).collect();
        let energy: f64 = energies.iter().sum();
        f.layer_energy[l] = energy;
        (f.centre_x[l], f.width_x[l]) = centre_and_width(&energies, &coordinates.x);
        (f.centre_y[l], f.width_y[l]) = centre_and_width(&energies, &coordinates.y);
        (f.centre_r[l], f.width_r[l]) = centre_and_width(&energies, &coordinates.r);
        f.sparsity[l] = 1.0 - energies.iter().filter(|&&e| e > 0.0).count() as f64 / per_layer as f64;
        f.e_total += energy;
    }
    f
}

/// The official evaluation's readout cut: energies below the threshold read as 0.
fn thresholded(e: f64, threshold_mev: f64) -> f64 {
    if e < threshold_mev {
        0.0
    } else {
        e
    }
}

/// Energy-weighted mean of `q` and the width √max(⟨q²⟩ − ⟨q⟩², 0), with the official 1e-16 added
/// to the energy sum (so an empty layer gives (0, 0)).
fn centre_and_width(energies: &[f64], q: &[f64]) -> (f64, f64) {
    let (mut e_sum, mut eq_sum, mut eq2_sum) = (0.0, 0.0, 0.0);
    for (&e, &q) in energies.iter().zip(q) {
        e_sum += e;
        eq_sum += e * q;
        eq2_sum += e * q * q;
    }
    let centre = eq_sum / (e_sum + ENERGY_EPSILON);
    let second_moment = eq2_sum / (e_sum + ENERGY_EPSILON);
    (centre, (second_moment - centre * centre).max(0.0).sqrt())
}

fn collect_events(e_inc: &[f32], events: Vec<EventFeatures>) -> CaloFeatures {
    let mut f = CaloFeatures {
        e_inc: e_inc.iter().map(|&e| e as f64).collect(),
        e_total: Vec::with_capacity(events.len()),
        layer_energy: Vec::with_capacity(events.len()),
        centre_x: Vec::with_capacity(events.len()),
        centre_y: Vec::with_capacity(events.len()),
        width_x: Vec::with_capacity(events.len()),
        width_y: Vec::with_capacity(events.len()),
        centre_r: Vec::with_capacity(events.len()),
        width_r: Vec::with_capacity(events.len()),
        sparsity: Vec::with_capacity(events.len()),
    };
    for e in events {
        f.e_total.push(e.e_total);
        f.layer_energy.push(e.layer_energy);
        f.centre_x.push(e.centre_x);
        f.centre_y.push(e.centre_y);
        f.width_x.push(e.width_x);
        f.width_y.push(e.width_y);
        f.centre_r.push(e.centre_r);
        f.width_r.push(e.width_r);
        f.sparsity.push(e.sparsity);
    }
    f
}

/// Named 1-D feature columns for histograms: "E_ratio" (E_tot / E_inc), then for every layer l in
/// turn of each kind: "E_layer_l", "center_x_l", "center_y_l", "width_x_l", "width_y_l",
/// "center_r_l", "width_r_l", "sparsity_l" (1 + 8·45 columns).
pub fn feature_columns(f: &CaloFeatures) -> Vec<(String, Vec<f64>)> {
    let ratio = f.e_total.iter().zip(&f.e_inc).map(|(t, i)| t / i).collect();
    let mut columns = vec![("E_ratio".to_string(), ratio)];
    for (name, rows) in per_layer_kinds(f) {
        for l in 0..LAYERS {
            columns.push((format!("{name}_{l}"), rows.iter().map(|row| row[l]).collect()));
        }
    }
    columns
}

fn per_layer_kinds(f: &CaloFeatures) -> [(&'static str, &Vec<[f64; LAYERS]>); 8] {
    [
        ("E_layer", &f.layer_energy),
        ("center_x", &f.centre_x),
        ("center_y", &f.centre_y),
        ("width_x", &f.width_x),
        ("width_y", &f.width_y),
        ("center_r", &f.centre_r),
        ("width_r", &f.width_r),
        ("sparsity", &f.sparsity),
    ]
}

/// The high-level classifier / FPD / KPD input of the current official `evaluate.py`
/// (`prepare_high_data_for_classifier`, without the label column), n × `HIGH_LEVEL_COLUMNS`:
/// log10(E_inc) | log10(E_layer + 1e-8) ×45 | centre_x/100 ×45 | centre_y/100 ×45 | width_x/100 ×45
/// | width_y/100 ×45 | log10(E_tot + 1e-8) | sparsity ×45 | centre_r/100 ×45 | width_r/100 ×45.
pub fn high_level_matrix(f: &CaloFeatures) -> Array2<f64> {
    let mut m = Array2::zeros((f.events(), HIGH_LEVEL_COLUMNS));
    for (i, mut row) in m.rows_mut().into_iter().enumerate() {
        row.assign(&ndarray::ArrayView1::from(&high_level_row(f, i)));
    }
    m
}

fn high_level_row(f: &CaloFeatures, i: usize) -> Vec<f64> {
    let mut values = Vec::with_capacity(HIGH_LEVEL_COLUMNS);
    values.push(f.e_inc[i].log10());
    values.extend(f.layer_energy[i].iter().map(|e| (e + 1e-8).log10()));
    for rows in [&f.centre_x, &f.centre_y, &f.width_x, &f.width_y] {
        values.extend(rows[i].iter().map(|v| v / 100.0));
    }
    values.push((f.e_total[i] + 1e-8).log10());
    values.extend(f.sparsity[i]);
    for rows in [&f.centre_r, &f.width_r] {
        values.extend(rows[i].iter().map(|v| v / 100.0));
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    const R0: f64 = 2.325; // DS2 radial bin 0 midpoint: 4.65 / 2.
    const R1: f64 = 6.975; // bin 1: 4.65 · 1.5.

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// A DS2 shower (E_inc 20 MeV):
    /// - layer 0: 2 MeV in ring 1 at sectors 1, 5, 9, 13 (α = −13π/16 + k·π/2, four points 90°
    ///   apart);
    /// - layer 1: 3 MeV at (sector 8, ring 0) (α = π/16) and 1 MeV at (sector 0, ring 0)
    ///   (α = −15π/16, the opposite point);
    /// - layer 2: −5 MeV (read as 0);
    /// - layer 44: 0.02 MeV and 0.01 MeV (below 15.15 keV) in ring 8.
    fn hand_made_shower(g: &CaloGeometry) -> Vec<f32> {
        let mut s = vec![0f32; g.voxels()];
        for a in [1, 5, 9, 13] {
            s[g.index(0, a, 1)] = 2.0;
        }
        s[g.index(1, 8, 0)] = 3.0;
        s[g.index(1, 0, 0)] = 1.0;
        s[g.index(2, 3, 3)] = -5.0;
        s[g.index(44, 2, 8)] = 0.02;
        s[g.index(44, 6, 8)] = 0.01;
        s
    }

    #[test]
    fn voxel_coordinates_follow_the_official_ordering() {
        // Flat index within a layer = alpha · n_r + r; voxel 9 · 1 + 1 = 10 is sector 1, ring 1:
        // α = −π + 1.5 · π/8 = −13π/16, r = 6.975.
        let c = LayerCoordinates::new(&CaloGeometry::ds2());
        let alpha = -13.0 * PI / 16.0;
        assert!(close(c.x[10], R1 * alpha.cos(), 1e-12) && close(c.y[10], R1 * alpha.sin(), 1e-12));
        assert!(close(c.r[10], R1, 1e-12) && close(c.r[9], R0, 1e-12));
        assert_eq!(c.x.len(), 144);
    }

    #[test]
    fn features_of_a_hand_made_ds2_shower() {
        let g = CaloGeometry::ds2();
        let f = calo_features(&g, &[20.0], &hand_made_shower(&g), EVALUATION_THRESHOLD_MEV);
        assert_eq!(f.events(), 1);
        // Energies: 4 · 2 = 8, 3 + 1 = 4, 0 (negative cut), 0.02 (0.01 cut); total 12.02.
        let e = &f.layer_energy[0];
        assert_eq!((e[0], e[1], e[2], e[3]), (8.0, 4.0, 0.0, 0.0));
        assert!(close(e[44], 0.02, 1e-8) && close(f.e_total[0], 12.02, 1e-7));
        // Layer 0: four points 90° apart cancel → centre (0, 0); Σx² = r²(cos² + sin² + cos² + sin²)
        // = 2r² of 4 → width_x = width_y = r/√2. All at radius r → centre_r = r, width_r = 0.
        assert!(close(f.centre_x[0][0], 0.0, 1e-12) && close(f.centre_y[0][0], 0.0, 1e-12));
        let w = R1 / 2f64.sqrt();
        assert!(close(f.width_x[0][0], w, 1e-12) && close(f.width_y[0][0], w, 1e-12));
        assert!(close(f.centre_r[0][0], R1, 1e-12) && close(f.width_r[0][0], 0.0, 1e-6));
        // Layer 1: x = ±R0 cos(π/16) with weights 3, 1 → centre (3 − 1)/4 = ½ R0 cos(π/16); all
        // |x| equal → ⟨x²⟩ = R0² cos², width² = R0² cos² (1 − ¼) → width = (√3/2) R0 cos(π/16).
        // The same with sin for y.
        let (c, s) = ((PI / 16.0).cos(), (PI / 16.0).sin());
        assert!(close(f.centre_x[0][1], 0.5 * R0 * c, 1e-12) && close(f.centre_y[0][1], 0.5 * R0 * s, 1e-12));
        let half_root3 = 3f64.sqrt() / 2.0;
        assert!(close(f.width_x[0][1], half_root3 * R0 * c, 1e-12));
        assert!(close(f.width_y[0][1], half_root3 * R0 * s, 1e-12));
        // Empty layers: centre and width 0 (1e-16 regulariser), sparsity 1.
        assert_eq!((f.centre_x[0][2], f.width_y[0][2], f.sparsity[0][2]), (0.0, 0.0, 1.0));
        // Sparsity: 1 − 4/144, 1 − 2/144, 1 − 1/144.
        assert!(close(f.sparsity[0][0], 140.0 / 144.0, 1e-15));
        assert!(close(f.sparsity[0][1], 142.0 / 144.0, 1e-15));
        assert!(close(f.sparsity[0][44], 143.0 / 144.0, 1e-15));
    }

    #[test]
    fn a_zero_threshold_keeps_small_deposits_and_still_cuts_negatives() {
        // Layer 44 now holds 0.02 + 0.01 = 0.03 in 2 voxels; layer 2's −5 is still read as 0.
        let g = CaloGeometry::ds2();
        let f = calo_features(&g, &[20.0], &hand_made_shower(&g), 0.0);
        assert!(close(f.layer_energy[0][44], 0.03, 1e-8));
        assert!(close(f.sparsity[0][44], 142.0 / 144.0, 1e-15));
        assert_eq!(f.layer_energy[0][2], 0.0);
    }

    #[test]
    fn events_keep_their_order() {
        // Event 0 empty, event 1 the hand-made shower (layer 0 energy 8), event 2 an empty one.
        let g = CaloGeometry::ds2();
        let mut showers = vec![0f32; g.voxels()];
        showers.extend(hand_made_shower(&g));
        showers.extend(vec![0f32; g.voxels()]);
        let f = calo_features(&g, &[1.0, 20.0, 3.0], &showers, EVALUATION_THRESHOLD_MEV);
        assert_eq!(f.e_inc, vec![1.0, 20.0, 3.0]);
        assert_eq!([f.layer_energy[0][0], f.layer_energy[1][0], f.layer_energy[2][0]], [0.0, 8.0, 0.0]);
    }

    #[test]
    fn centre_and_width_by_hand() {
        // Energies 1 and 3 at q = 0 and 4: centre 12/4 = 3; ⟨q²⟩ = 48/4 = 12 → width √(12 − 9) = √3.
        let (c, w) = centre_and_width(&[1.0, 3.0], &[0.0, 4.0]);
        assert!(close(c, 3.0, 1e-12) && close(w, 3f64.sqrt(), 1e-12));
        assert_eq!(centre_and_width(&[0.0, 0.0], &[1.0, 2.0]), (0.0, 0.0));
    }

    #[test]
    fn threshold_is_the_official_value() {
        // 0.5 keV / 0.033 = 0.015151… MeV; a value equal to the threshold is kept (`< threshold`).
        assert!(close(EVALUATION_THRESHOLD_MEV, 0.015_151_515_151_515, 1e-15));
        assert_eq!(thresholded(0.5, 0.5), 0.5);
        assert_eq!(thresholded(0.49, 0.5), 0.0);
    }

    #[test]
    fn feature_columns_names_and_values() {
        // 1 + 8 · 45 = 361 columns; E_ratio = 12.02 / 20 = 0.601.
        let g = CaloGeometry::ds2();
        let f = calo_features(&g, &[20.0], &hand_made_shower(&g), EVALUATION_THRESHOLD_MEV);
        let cols = feature_columns(&f);
        assert_eq!(cols.len(), 361);
        assert_eq!(cols[0].0, "E_ratio");
        assert!(close(cols[0].1[0], 0.601, 1e-8));
        let find = |name: &str| cols.iter().find(|(n, _)| n == name).map(|(_, v)| v[0]);
        assert_eq!(find("E_layer_1"), Some(4.0));
        assert_eq!(find("center_r_0"), Some(f.centre_r[0][0]));
        assert_eq!(find("width_y_1"), Some(f.width_y[0][1]));
        assert_eq!(find("sparsity_2"), Some(1.0));
        assert_eq!(cols[1].0, "E_layer_0");
        assert_eq!(cols[1 + 45].0, "center_x_0");
        assert_eq!(cols[360].0, "sparsity_44");
    }

    #[test]
    fn high_level_matrix_layout() {
        // Columns: 0 log10(20); 1 log10(8 + 1e-8); 46 centre_x_0/100; 91+1 centre_y_1/100;
        // 136 width_x_0/100 = R1/√2/100; 181 width_y_0/100; 226 log10(12.02 + 1e-8);
        // 227 sparsity_0 = 140/144; 272 centre_r_0/100 = R1/100; 317+1 width_r_1/100 = 0.
        let g = CaloGeometry::ds2();
        let f = calo_features(&g, &[20.0], &hand_made_shower(&g), EVALUATION_THRESHOLD_MEV);
        let m = high_level_matrix(&f);
        assert_eq!(m.dim(), (1, 362));
        let r = m.row(0);
        assert!(close(r[0], 20f64.log10(), 1e-12));
        assert!(close(r[1], (8.0f64 + 1e-8).log10(), 1e-12));
        assert!(close(r[3], (1e-8f64).log10(), 1e-12));
        assert_eq!(r[46], f.centre_x[0][0] / 100.0);
        assert_eq!(r[92], f.centre_y[0][1] / 100.0);
        assert!(close(r[136], R1 / 2f64.sqrt() / 100.0, 1e-12));
        assert!(close(r[181], R1 / 2f64.sqrt() / 100.0, 1e-12));
        assert!(close(r[226], (12.02f64 + 1e-8).log10(), 1e-8));
        assert!(close(r[227], 140.0 / 144.0, 1e-15));
        assert!(close(r[272], R1 / 100.0, 1e-12));
        assert!(close(r[318], 0.0, 1e-8));
    }
}
