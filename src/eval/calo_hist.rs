//! The histograms of CaloChallenge's `evaluate.py` / `evaluate_plotting_helper.py`
//! (CaloChallenge/homepage, `code/`) for datasets 2 and 3, with their binning, and the separation
//! power `_separation_power` computes on them.
//!
//! Binning per histogram (numpy `linspace` / `logspace` edges, `plt.hist` counts):
//!
//! | histogram                     | edges                                                     |
//! |-------------------------------|-----------------------------------------------------------|
//! | E_tot / E_inc                 | linspace(0.5, 1.5, 101)                                   |
//! | E per layer                   | logspace(log10 min_energy, log10 max(reference layer), 40) |
//! | centre x ("eta"), y ("phi")   | linspace(−30, 30, 101) mm                                 |
//! | width x, y                    | linspace(0, 30, 101) mm                                   |
//! | sparsity per layer            | linspace(0, 1, 21)                                        |
//! | centre r                      | linspace(0, 42, 101) mm                                   |
//! | width r                       | linspace(0, 20, 101) mm                                   |
//! | voxel energies (all layers)   | logspace(log10 min_energy, log10 max(reference voxel), 50) |
//!
//! min_energy is the 15.15 keV threshold; log10 of the reference maximum is taken in float32, as
//! numpy does on the float32 data. `_separation_power` is ½ Σ (p − q)² / (p + q + 1e-16)
//! of the two `density=True` histograms times the bin widths, i.e. of the in-range counts
//! normalised to 1; values outside the edges count nowhere (reported here as under- and
//! overflow). Two deviations where the official code yields NaN: a layer whose reference maximum is
//! at or below min_energy gets logspace(log10 min_energy, log10 min_energy + 1, 40), and a
//! histogram with no in-range entry in one sample and some in the other has separation power 1
//! (0 when both are empty).

use serde::Serialize;

use super::calo_features::EVALUATION_THRESHOLD_MEV;
use super::stats::histogram;

/// numpy.linspace(start, stop, num): start + i·step, the last edge exactly `stop`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    (0..num).map(|i| if i + 1 == num { stop } else { start + i as f64 * step }).collect()
}

/// numpy.logspace(start, stop, num) = 10^linspace(start, stop, num).
pub fn logspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    linspace(start, stop, num).into_iter().map(|e| 10f64.powf(e)).collect()
}

/// Log edges from the threshold to `reference_max` with `num` edges (see the module note for an
/// empty reference).
pub fn log_edges(reference_max: f64, num: usize) -> Vec<f64> {
    let lo = EVALUATION_THRESHOLD_MEV.log10();
    // evaluate.py takes log10 of the float32 maximum in float32, so its top edge is that rounded
    // value (the largest shower may land just above it, as there).
    let hi = if reference_max > EVALUATION_THRESHOLD_MEV { (reference_max as f32).log10() as f64 } else { lo + 1.0 };
    logspace(lo, hi, num)
}

/// The official edges of a high-level feature kind (the names of `calo_features::feature_columns`).
/// `reference` is the reference sample's values (only the energy histograms depend on it).
pub fn official_edges(kind: &str, reference: &[f64]) -> Vec<f64> {
    match kind {
        "E_ratio" => linspace(0.5, 1.5, 101),
        "E_layer" => log_edges(reference.iter().copied().fold(f64::NEG_INFINITY, f64::max), 40),
        "center_x" | "center_y" => linspace(-30.0, 30.0, 101),
        "width_x" | "width_y" => linspace(0.0, 30.0, 101),
        "sparsity" => linspace(0.0, 1.0, 21),
        "center_r" => linspace(0.0, 42.0, 101),
        "width_r" => linspace(0.0, 20.0, 101),
        other => panic!("no official binning for '{other}'"),
    }
}

/// The kind of a feature column name: "E_layer_12" → "E_layer", "E_ratio" → "E_ratio".
pub fn kind_of(name: &str) -> &str {
    name.rsplit_once('_').filter(|(_, l)| l.parse::<usize>().is_ok()).map_or(name, |(k, _)| k)
}

/// A histogram of one sample on fixed edges, with what fell outside.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Binned {
    pub counts: Vec<f64>,
    pub underflow: usize,
    pub overflow: usize,
    /// NaN values (counted nowhere).
    pub nan: usize,
}

impl Binned {
    pub fn new(bins: usize) -> Self {
        Self { counts: vec![0.0; bins], ..Self::default() }
    }

    /// Counts `values` on `edges` (numpy's convention: the last bin holds its right edge).
    pub fn add(&mut self, values: &[f64], edges: &[f64]) {
        let (lo, hi) = (edges[0], edges[edges.len() - 1]);
        for (c, h) in self.counts.iter_mut().zip(histogram(values, edges)) {
            *c += h;
        }
        for &v in values {
            if v.is_nan() {
                self.nan += 1;
            } else if v < lo {
                self.underflow += 1;
            } else if v > hi {
                self.overflow += 1;
            }
        }
    }

    pub fn of(values: &[f64], edges: &[f64]) -> Self {
        let mut b = Self::new(edges.len() - 1);
        b.add(values, edges);
        b
    }
}

/// `evaluate_plotting_helper._separation_power` of two histograms on the same edges.
pub fn official_separation_power(reference: &[f64], generated: &[f64]) -> f64 {
    assert_eq!(reference.len(), generated.len(), "histograms differ in length");
    let (sr, sg): (f64, f64) = (reference.iter().sum(), generated.iter().sum());
    match (sr > 0.0, sg > 0.0) {
        (false, false) => return 0.0,
        (true, false) | (false, true) => return 1.0,
        _ => {}
    }
    0.5 * reference
        .iter()
        .zip(generated)
        .map(|(r, g)| {
            let (p, q) = (r / sr, g / sg);
            (p - q).powi(2) / (p + q + 1e-16)
        })
        .sum::<f64>()
}

/// One compared histogram: edges, both samples' counts and the separation power.
#[derive(Clone, Debug, Serialize)]
pub struct Compared {
    pub name: String,
    pub edges: Vec<f64>,
    pub reference: Binned,
    pub generated: Binned,
    pub separation_power: f64,
}

impl Compared {
    pub fn new(name: &str, edges: Vec<f64>, reference: Binned, generated: Binned) -> Self {
        let separation_power = official_separation_power(&reference.counts, &generated.counts);
        Self { name: name.to_string(), edges, reference, generated, separation_power }
    }

    /// Compares two samples of the feature `name` on its official edges.
    pub fn feature(name: &str, reference: &[f64], generated: &[f64]) -> Self {
        let edges = official_edges(kind_of(name), reference);
        let (r, g) = (Binned::of(reference, &edges), Binned::of(generated, &edges));
        Self::new(name, edges, r, g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_numpys() {
        // np.linspace(0.5, 1.5, 101)[[0, 1, 50, 100]] = 0.5, 0.51, 1.0, 1.5
        let e = linspace(0.5, 1.5, 101);
        assert_eq!(e.len(), 101);
        assert!((e[1] - 0.51).abs() < 1e-15 && (e[50] - 1.0).abs() < 1e-15 && e[100] == 1.5);
        // np.logspace(0, 2, 3) = 1, 10, 100
        let l = logspace(0.0, 2.0, 3);
        assert!((l[0] - 1.0).abs() < 1e-12 && (l[1] - 10.0).abs() < 1e-12 && (l[2] - 100.0).abs() < 1e-12);
        // E_layer: 40 edges from 15.15 keV to the reference maximum.
        let el = official_edges("E_layer", &[3.0, 1000.0, 20.0]);
        assert_eq!(el.len(), 40);
        assert!((el[0] - 0.5e-3 / 0.033).abs() < 1e-15 && (el[39] - 1000.0).abs() < 1e-3);
        assert_eq!(official_edges("sparsity", &[]).len(), 21);
        assert_eq!(kind_of("E_layer_12"), "E_layer");
        assert_eq!(kind_of("E_ratio"), "E_ratio");
        assert_eq!(kind_of("width_r_0"), "width_r");
    }

    #[test]
    fn separation_power_of_hand_made_histograms_on_the_official_binning() {
        // E_tot / E_inc on linspace(0.5, 1.5, 101) (bins of width 0.01): reference 3 showers in
        // bin [0.97, 0.98) and 1 in [0.99, 1.00); generated 2 in [0.97, 0.98), 2 in [1.20, 1.21),
        // plus one at 1.7 (overflow) that counts nowhere.
        // p = (0.75, 0.25, 0), q = (0.5, 0, 0.5):
        // ½ [(0.25)²/1.25 + (0.25)²/0.25 + (0.5)²/0.5] = ½ [0.05 + 0.25 + 0.5] = 0.4.
        let reference = [0.975, 0.972, 0.978, 0.995];
        let generated = [0.971, 0.979, 1.205, 1.201, 1.7];
        let c = Compared::feature("E_ratio", &reference, &generated);
        assert!((c.separation_power - 0.4).abs() < 1e-12, "{}", c.separation_power);
        assert_eq!((c.generated.overflow, c.generated.underflow, c.reference.overflow), (1, 0, 0));
        assert_eq!(c.reference.counts[47], 3.0);
        // Identical histograms: 0; disjoint: 1 (up to the 1e-16 regulariser).
        assert_eq!(Compared::feature("E_ratio", &reference, &reference).separation_power, 0.0);
        let far = Compared::feature("E_ratio", &[0.6, 0.61], &[1.3, 1.4]).separation_power;
        assert!((far - 1.0).abs() < 1e-12, "{far}");
        // Sparsity on linspace(0, 1, 21): 1.0 lands in the last bin (numpy's closed right edge).
        let s = Compared::feature("sparsity_3", &[1.0, 0.0], &[1.0, 0.0]);
        assert_eq!((s.reference.counts[19], s.reference.counts[0], s.reference.overflow), (1.0, 1.0, 0));
        // One sample entirely out of range.
        assert_eq!(official_separation_power(&[1.0, 0.0], &[0.0, 0.0]), 1.0);
    }
}
