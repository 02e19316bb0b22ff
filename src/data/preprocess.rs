//! The papers' invertible preprocessing, with every constant in one place. The structs are
//! saved in each model's `model.json`, so a model always post-processes the way it was trained.
//!
//! iCaloFlow (Buckley et al., App. A, and the published code): E_inc → log10(E_inc / 10^4.5 MeV);
//! layer energies (E_i + U[0, 5 keV]) / 65 GeV → logit with α = 1e-6 (Flow-2's E_1 condition
//! divided by 4); voxels + U[0, 5 keV], divided by the (noised) layer sum → logit. Generation:
//! `((sigmoid(y) − α)/(1 − 2α)).clamp(0, 1)`, times the layer energy, voxels below 15 keV → 0, no
//! renormalisation.
//!
//! ZDC (the ZDC MAF/IAF code): + noise_mul·U[0, 1) per pixel, ÷ (sum + 1e-16), logit with
//! α = 1e-6. Generation: sigmoid, (· − α)/(1 − 2α), renormalise to 1, × (photon sum + 44·44·0.5·
//! noise_mul), − 0.5·noise_mul, floor, clamp at 0.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::channels::PIXELS;

/// logit(α + (1 − 2α)·x).
pub fn logit(x: f64, alpha: f64) -> f64 {
    let u = alpha + (1.0 - 2.0 * alpha) * x;
    (u / (1.0 - u)).ln()
}

/// The inverse of [`logit`], clamped to [0, 1] as the published code does.
pub fn inverse_logit(y: f64, alpha: f64) -> f64 {
    let s = 1.0 / (1.0 + (-y).exp());
    ((s - alpha) / (1.0 - 2.0 * alpha)).clamp(0.0, 1.0)
}

/// [`logit`] on a tensor (element-wise, same formula).
pub fn logit_tensor(x: &candle_core::Tensor, alpha: f64) -> candle_core::Result<candle_core::Tensor> {
    let u = x.affine(1.0 - 2.0 * alpha, alpha)?;
    (&u / u.affine(-1.0, 1.0)?)?.log()
}

/// [`inverse_logit`] on a tensor (element-wise, same formula, clamped to [0, 1]).
pub fn inverse_logit_tensor(y: &candle_core::Tensor, alpha: f64) -> candle_core::Result<candle_core::Tensor> {
    let s = candle_nn::ops::sigmoid(y)?;
    s.affine(1.0 / (1.0 - 2.0 * alpha), -alpha / (1.0 - 2.0 * alpha))?.clamp(0.0, 1.0)
}

/// Zeroes the values below `threshold`.
pub fn threshold_tensor(x: &candle_core::Tensor, threshold: f64) -> candle_core::Result<candle_core::Tensor> {
    let keep = x.ge(threshold)?;
    keep.where_cond(x, &x.zeros_like()?)
}

/// iCaloFlow's constants (energies in MeV).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaloPreprocessing {
    /// E_inc → log10(E_inc) − this.
    pub log10_e_inc_offset: f64,
    /// Layer energies are divided by this before the logit (slightly above the largest layer energy).
    pub layer_scale_mev: f64,
    /// Uniform noise U[0, noise) added to layer energies and voxels.
    pub noise_mev: f64,
    pub alpha: f64,
    /// Flow-2's E_1 condition is the layer logit divided by this.
    pub flow2_e1_divisor: f64,
    /// Generated voxels below this are set to zero.
    pub threshold_mev: f64,
    /// Generation: divide each generated layer pattern by its sum before scaling it to the layer
    /// energy, so every layer holds Flow-1's energy (before the threshold). Off by default, as the
    /// published sampler; see `[model] calo_renormalise_layers`.
    #[serde(default)]
    pub renormalise_layers: bool,
    /// Per-(layer, voxel) standardisation of the pattern logits (45 × voxels per layer, layer by
    /// layer), fitted on the training split; `[model] calo_standardise_voxels`. Flow-2 and Flow-3
    /// model the standardised logits `(y − mean) / std`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voxel_standardisation: Option<Standardizer>,
}

impl Default for CaloPreprocessing {
    fn default() -> Self {
        Self {
            log10_e_inc_offset: 4.5,
            layer_scale_mev: 6.5e4,
            noise_mev: 5e-3,
            alpha: 1e-6,
            flow2_e1_divisor: 4.0,
            threshold_mev: 1.5e-2,
            renormalise_layers: false,
            voxel_standardisation: None,
        }
    }
}

impl CaloPreprocessing {
    pub fn e_inc(&self, e_mev: f32) -> f32 {
        ((e_mev as f64).log10() - self.log10_e_inc_offset) as f32
    }

    /// A layer energy (MeV, noise already added) → its logit.
    pub fn layer_energy(&self, e_mev: f64) -> f32 {
        logit(e_mev / self.layer_scale_mev, self.alpha) as f32
    }

    /// Noise for one energy.
    pub fn noise<R: Rng>(&self, rng: &mut R) -> f64 {
        rng.random::<f64>() * self.noise_mev
    }

    /// A layer's voxels (MeV) → logit of the noised, sum-normalised pattern, written to `out`.
    pub fn voxels<R: Rng>(&self, layer: &[f32], rng: &mut R, out: &mut [f32]) {
        let noised: Vec<f64> = layer.iter().map(|&v| v as f64 + self.noise(rng)).collect();
        let sum: f64 = noised.iter().sum();
        for (o, v) in out.iter_mut().zip(&noised) {
            *o = logit(v / sum, self.alpha) as f32;
        }
    }

    /// Checks the voxel standardisation (if any) against `v` voxels per layer: 45 × `v` finite
    /// means and positive finite stds.
    pub fn check_voxel_standardisation(&self, v: usize) -> std::result::Result<(), String> {
        let Some(s) = &self.voxel_standardisation else { return Ok(()) };
        let n = crate::data::geometry::LAYERS * v;
        if s.mean.len() != n || s.std.len() != n {
            return Err(format!(
                "preprocessing.calo.voxel_standardisation has {} means and {} stds; 45 layers of {v} voxels need {n}",
                s.mean.len(),
                s.std.len()
            ));
        }
        if let Some(bad) = s.mean.iter().find(|x| !x.is_finite()) {
            return Err(format!("preprocessing.calo.voxel_standardisation has a mean of {bad}"));
        }
        if let Some(bad) = s.std.iter().find(|&&x| !(x.is_finite() && x > 0.0)) {
            return Err(format!("preprocessing.calo.voxel_standardisation has a std of {bad}; stds must be > 0"));
        }
        Ok(())
    }

    /// Standardises layer `layer`'s pattern logits in place (nothing without a standardisation).
    pub fn standardise_layer(&self, layer: usize, logits: &mut [f32]) {
        if let Some(s) = &self.voxel_standardisation {
            let v = logits.len();
            let (mean, std) = (&s.mean[layer * v..(layer + 1) * v], &s.std[layer * v..(layer + 1) * v]);
            for ((o, m), sd) in logits.iter_mut().zip(mean).zip(std) {
                *o = ((*o as f64 - m) / sd) as f32;
            }
        }
    }

    /// Generated pattern logits → voxel energies for a layer of energy `e_layer` (MeV).
    pub fn voxels_inverse(&self, y: &[f32], e_layer: f32, out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(y) {
            let e = inverse_logit(v as f64, self.alpha) * e_layer as f64;
            *o = if e < self.threshold_mev { 0.0 } else { e as f32 };
        }
    }
}

/// The ZDC code's constants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZdcPreprocessing {
    pub noise_mul: f64,
    pub alpha: f64,
    /// Optional per-pixel standardisation of the logits (mean/std over the training split),
    /// `[flow] standardise_pixels = true`; not in the published code. It gives a small flow the
    /// pixels' marginal location and scale from the start (the demo's teacher learns in minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixels: Option<Standardizer>,
}

impl Default for ZdcPreprocessing {
    fn default() -> Self {
        Self { noise_mul: 0.5, alpha: 1e-6, pixels: None }
    }
}

impl ZdcPreprocessing {
    /// Logits of the noised, normalised image (before any per-pixel standardisation).
    pub fn logits<R: Rng>(&self, counts: &[f32], rng: &mut R, out: &mut [f32]) {
        let noised: Vec<f64> = counts.iter().map(|&c| c as f64 + self.noise_mul * rng.random::<f64>()).collect();
        let sum: f64 = noised.iter().sum::<f64>() + 1e-16;
        for (o, v) in out.iter_mut().zip(&noised) {
            *o = logit(v / sum, self.alpha) as f32;
        }
    }

    /// Photon counts of one response → flow features (logits of the noised, normalised image,
    /// standardised per pixel when `pixels` is set).
    pub fn image<R: Rng>(&self, counts: &[f32], rng: &mut R, out: &mut [f32]) {
        self.logits(counts, rng, out);
        if let Some(p) = &self.pixels {
            for (i, o) in out.iter_mut().enumerate() {
                *o = ((*o as f64 - p.mean[i]) / p.std[i]) as f32;
            }
        }
    }

    /// Flow feature `i` → its logit.
    pub fn logit_of(&self, i: usize, y: f32) -> f64 {
        match &self.pixels {
            Some(p) => y as f64 * p.std[i] + p.mean[i],
            None => y as f64,
        }
    }

    /// The normalised image (after sigmoid and the α correction, summing to 1) of flow features;
    /// what the channel loss sees.
    pub fn normalised(&self, y: &[f32]) -> Vec<f64> {
        let x: Vec<f64> = y.iter().enumerate().map(|(i, &v)| inverse_logit(self.logit_of(i, v), self.alpha)).collect();
        let sum: f64 = x.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        x.into_iter().map(|v| v / sum).collect()
    }

    /// Flow features → photon counts for a response with `photon_sum` photons.
    pub fn image_inverse(&self, y: &[f32], photon_sum: f32, out: &mut [f32]) {
        let scale = photon_sum as f64 + PIXELS as f64 * 0.5 * self.noise_mul;
        for (o, p) in out.iter_mut().zip(self.normalised(y)) {
            *o = (p * scale - 0.5 * self.noise_mul).floor().max(0.0) as f32;
        }
    }
}

/// Mean/std standardisation fitted on the training split (constant columns get std 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Standardizer {
    /// Fits on `rows` of width `cols`.
    pub fn fit(rows: &[f32], cols: usize) -> Self {
        let n = (rows.len() / cols).max(1) as f64;
        let mut mean = vec![0.0; cols];
        for r in rows.chunks(cols) {
            for (m, &v) in mean.iter_mut().zip(r) {
                *m += v as f64 / n;
            }
        }
        let mut var = vec![0.0; cols];
        for r in rows.chunks(cols) {
            for ((s, &v), m) in var.iter_mut().zip(r).zip(&mean) {
                *s += (v as f64 - m).powi(2) / n;
            }
        }
        let std = var.into_iter().map(|v| if v.sqrt() > 1e-12 { v.sqrt() } else { 1.0 }).collect();
        Self { mean, std }
    }

    /// An empty streaming fit over rows of width `cols` (for data that does not fit in memory).
    pub fn accumulate(cols: usize) -> StandardizerSums {
        StandardizerSums { sum: vec![0.0; cols], sum_sq: vec![0.0; cols], rows: 0 }
    }

    pub fn apply(&self, row: &[f32], out: &mut [f32]) {
        for (i, (o, &v)) in out.iter_mut().zip(row).enumerate() {
            *o = ((v as f64 - self.mean[i]) / self.std[i]) as f32;
        }
    }

    pub fn invert(&self, i: usize, v: f32) -> f32 {
        (v as f64 * self.std[i] + self.mean[i]) as f32
    }
}

/// Column sums of a streaming [`Standardizer`] fit; `finish` gives the mean and std (population,
/// constant columns get std 1, as [`Standardizer::fit`]).
pub struct StandardizerSums {
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    rows: usize,
}

impl StandardizerSums {
    /// Adds one row (as wide as the fit).
    pub fn add(&mut self, row: &[f32]) {
        for ((s, q), &y) in self.sum.iter_mut().zip(&mut self.sum_sq).zip(row) {
            *s += y as f64;
            *q += (y as f64) * (y as f64);
        }
        self.rows += 1;
    }

    pub fn finish(self) -> Standardizer {
        let n = self.rows.max(1) as f64;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let std = self
            .sum_sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let sd = (q / n - m * m).max(0.0).sqrt();
                // A column that never varies (one row, or a constant pattern) keeps its scale.
                if sd > 1e-6 {
                    sd
                } else {
                    1.0
                }
            })
            .collect();
        Standardizer { mean, std }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn logit_round_trips_inside_the_unit_interval() {
        for x in [0.0, 1e-9, 0.3, 0.999, 1.0] {
            assert!((inverse_logit(logit(x, 1e-6), 1e-6) - x).abs() < 1e-9, "{x}");
        }
    }

    #[test]
    fn calo_voxels_round_trip_up_to_the_noise_and_threshold() {
        // Inverse(forward(layer)) = layer + noise, rescaled by the noised sum, with sub-threshold
        // voxels zeroed. With layer energy = the noised sum the round trip differs from the input
        // by at most the 5 keV noise per voxel (and is exact zero below 15 keV).
        let p = CaloPreprocessing::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let layer: Vec<f32> = (0..144).map(|i| if i % 3 == 0 { 0.0 } else { (i as f32) * 0.7 }).collect();
        let mut y = vec![0.0; 144];
        p.voxels(&layer, &mut rng, &mut y);
        let noised_sum: f32 = layer.iter().sum::<f32>() + 144.0 * 2.5e-3;
        let mut back = vec![0.0; 144];
        p.voxels_inverse(&y, noised_sum, &mut back);
        for (a, b) in layer.iter().zip(&back) {
            if *a < p.threshold_mev as f32 {
                assert_eq!(*b, 0.0);
            } else {
                assert!((a - b).abs() < 2.0 * p.noise_mev as f32 + 1e-3 * a, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn zdc_image_round_trips_to_the_photon_counts() {
        // Integer counts survive the round trip: the noise (< 0.5) is removed by the expected-noise
        // subtraction and the floor, up to ±1 photon where noise fluctuations cross an integer.
        let p = ZdcPreprocessing::default();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let counts: Vec<f32> = (0..PIXELS).map(|i| ((i * 7919) % 13) as f32).collect();
        let sum: f32 = counts.iter().sum();
        let mut y = vec![0.0; PIXELS];
        p.image(&counts, &mut rng, &mut y);
        let mut back = vec![0.0; PIXELS];
        p.image_inverse(&y, sum, &mut back);
        let worst = counts.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst <= 1.0, "worst pixel error {worst}");
        // The floor drops each pixel's fractional part, so the total loses at most one photon per
        // lit pixel (about half of them, where the noise fell below its mean).
        let total: f32 = back.iter().sum();
        let lit = counts.iter().filter(|&&c| c > 0.0).count() as f32;
        assert!(total <= sum + 1.0 && total >= sum - lit, "{total} vs {sum} ({lit} lit pixels)");
    }

    #[test]
    fn tensor_forms_equal_the_scalar_functions() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let xs = [0.0, 1e-7, 0.25, 0.5, 0.999, 1.0];
        let t = candle_core::Tensor::new(&xs, &dev)?;
        let l = logit_tensor(&t, 1e-6)?.to_vec1::<f64>()?;
        let back = inverse_logit_tensor(&candle_core::Tensor::new(l.as_slice(), &dev)?, 1e-6)?.to_vec1::<f64>()?;
        for (i, &x) in xs.iter().enumerate() {
            assert!((l[i] - logit(x, 1e-6)).abs() < 1e-12);
            assert!((back[i] - inverse_logit(l[i], 1e-6)).abs() < 1e-12);
        }
        let th =
            threshold_tensor(&candle_core::Tensor::new(&[0.01f64, 0.015, 0.02], &dev)?, 0.015)?.to_vec1::<f64>()?;
        assert_eq!(th, vec![0.0, 0.015, 0.02]);
        Ok(())
    }

    #[test]
    fn standardizer_fits_and_guards_constant_columns() {
        let rows = [1.0f32, 5.0, 3.0, 5.0];
        let s = Standardizer::fit(&rows, 2);
        assert_eq!(s.mean, vec![2.0, 5.0]);
        assert_eq!(s.std, vec![1.0, 1.0]);
        let mut out = [0.0; 2];
        s.apply(&[3.0, 5.0], &mut out);
        assert_eq!(out, [1.0, 0.0]);
    }

    #[test]
    fn streaming_sums_give_the_in_memory_fit_for_varying_columns() {
        let rows = [1.0f32, 5.0, -2.0, 3.0, 5.0, 0.5, 2.0, 5.0, 7.0];
        let mut sums = Standardizer::accumulate(3);
        rows.chunks(3).for_each(|r| sums.add(r));
        let (streamed, fitted) = (sums.finish(), Standardizer::fit(&rows, 3));
        for c in [0, 2] {
            assert!((streamed.mean[c] - fitted.mean[c]).abs() < 1e-12);
            assert!((streamed.std[c] - fitted.std[c]).abs() < 1e-12);
        }
        assert_eq!((streamed.mean[1], streamed.std[1]), (5.0, 1.0), "a constant column keeps std 1");
    }
}
