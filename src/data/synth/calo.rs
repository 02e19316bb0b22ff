//! Synthetic electron showers in the CaloChallenge dataset 2 / 3 geometry, in the official units:
//! MeV of visible energy divided by the sampling fraction, so that E_tot / E_inc ≈ 1.
//!
//! # Model
//!
//! The detector is 45 layers of 0.8 X0 each (tungsten, X0 = 3.504 mm, but a layer is 3.4 mm deep
//! with its sensor, so the Molière radius of tungsten, 9.3 mm, is diluted to ≈ 11.3 mm).
//!
//! * **Incident energy**: log-uniform in 1 GeV – 1 TeV (1e3 – 1e6 MeV).
//! * **Longitudinal profile** (Grindhammer–Peters): dE/dt ∝ t^(α−1) e^(−βt), t in X0, with the
//!   shower maximum T = (α−1)/β. Per event, ln T and ln α are drawn from a correlated normal around
//!   ⟨T⟩ = ln(E/E_c) − 0.5 (E_c = 8 MeV) and ⟨α⟩ = 0.81 + (0.458 + 2.26/Z) ln(E/E_c), with the
//!   GP widths σ(ln T) = 1/(1.26 ln y − 1.4), σ(ln α) = 1/(0.86 ln y − 0.58) and correlation
//!   0.705 − 0.023 ln y. Layer fractions are exact integrals (regularised incomplete gamma); what
//!   lies beyond 36 X0 leaks out of the back.
//! * **Layer energy sharing**: each layer's share is multiplied by Gamma(κ, 1/κ) noise, κ being
//!   its energy in 4 MeV quanta, then renormalised (Dirichlet-like; keeps the contained energy).
//! * **Radial profile** (Grindhammer–Peters, homogeneous-medium parameters for Z = 74):
//!   f(r) = p·2rR_C²/(r²+R_C²)² + (1−p)·2rR_T²/(r²+R_T²)², with R_C, R_T, p functions of the depth
//!   in units of T and of ln E, and an event-wise ±8 % width scale. Ring fractions are the exact
//!   integral over each radial bin; what lies beyond the last ring leaks out laterally.
//! * **Angular**: the shower axis is offset by (x0, y0) ~ N(0, 1.5 mm) plus a tilt of
//!   N(0, 10 mrad) per axis. Each ring's energy is shared among its sectors in proportion to the
//!   shifted profile's density at the voxel centres, so centres of energy fluctuate and sectors
//!   differ, while ring totals stay exact.
//! * **Sampling noise**: a voxel with expected deposit μ receives a Poisson(μ / 4.8 MeV) number of
//!   charged-track crossings, each depositing 4.8 MeV·χ²₁ (many soft deposits, a long tail);
//!   above 2 expected crossings a gamma (above 30 a normal) with the same mean and variance
//!   stands in. Summed over a shower this is a stochastic term of ≈ 12 %/√(E/GeV); an event-wise
//!   1 % response spread adds a constant term.
//! * **Layer cap**: like the real data, no layer holds more than 65 GeV: the rare event (≈ 0.5 %,
//!   near 1 TeV) whose peak layer would exceed 62 GeV is scaled down to that.
//! * **Readout**: voxels below [`READOUT_THRESHOLD_MEV`] are zeroed. In the (never observed) case
//!   that an event falls outside [`ENERGY_RATIO_RANGE`], it is rescaled to just inside it.
//!
//! # Resulting ranges (DS2, 20 000 events, seed 1)
//!
//! * E_tot / E_inc: mean 0.975; 1–99 % range 0.83 – 1.12 overall, 0.76 – 1.21 for E_inc < 3 GeV,
//!   0.95 – 1.00 for E_inc > 300 GeV; every event inside [`ENERGY_RATIO_RANGE`] = (0.3, 1.6).
//! * Fraction of zero voxels by layer: 0.99 in layer 1, 0.91 in layer 3, 0.54 around the shower
//!   maximum (layers 13 – 17), 0.73 in layer 30, 0.97 in layer 45; 0.73 of all voxels. Outer
//!   rings are far sparser than inner ones.
//! * Mean shower depth (energy-weighted layer index): ≈ 7.8 at 1 GeV, ≈ 15.8 at 1 TeV.
//!
//! Generation is deterministic: event `i` draws from its own ChaCha8 stream (seed, i), so chunks
//! and thread counts do not change the output. About 16 000 DS2 (3 000 DS3) showers/s on 2 cores
//! in release builds.

use rand::Rng;
use rand_distr::{Distribution, Exp1, Gamma, StandardNormal};
use rayon::prelude::*;

use super::draws::event_rng;
use super::special::GammaCdf;
pub use crate::data::calo::CaloChunk;
use crate::data::geometry::CaloGeometry;

pub use crate::data::calo::{READOUT_THRESHOLD_MEV, SAMPLING_FRACTION};
/// Hard bounds on E_tot / E_inc: every generated event lies inside.
pub const ENERGY_RATIO_RANGE: (f64, f64) = (0.3, 1.6);

const E_MIN_MEV: f64 = 1e3;
const E_MAX_MEV: f64 = 1e6;
const LAYER_X0: f64 = 0.8;
const LAYER_PITCH_MM: f64 = 3.4;
const X0_TUNGSTEN_MM: f64 = 3.504;
const MOLIERE_TUNGSTEN_MM: f64 = 9.3;
/// The sensors dilute the absorber: a 3.4 mm layer holds only 0.8 X0 of tungsten.
const MOLIERE_EFFECTIVE_MM: f64 = MOLIERE_TUNGSTEN_MM * LAYER_PITCH_MM / (LAYER_X0 * X0_TUNGSTEN_MM);
const CRITICAL_ENERGY_MEV: f64 = 8.0;
const Z_TUNGSTEN: f64 = 74.0;
/// Mean energy (file units) of one charged-track crossing of a sensor.
const HIT_MEV: f64 = 4.8;
/// E[χ²₁²] / E[χ²₁]²: the variance of a compound sum per expected hit, in HIT_MEV² units.
const HIT_SECOND_MOMENT: f64 = 3.0;
/// Below this many expected hits a voxel's crossings are sampled one by one.
const FEW_HITS: f64 = 2.0;
/// Above this many expected hits a voxel's deposit is normal-approximated (gamma below).
const MANY_HITS: f64 = 30.0;
/// Energy per quantum of the layer-sharing noise.
const LAYER_QUANTUM_MEV: f64 = 4.0;
/// Smallest gamma shape of the layer-sharing noise, so near-empty layers stay finite.
const MIN_LAYER_SHAPE: f64 = 0.2;
/// Mean response: calibrates E_tot / E_inc to ≈ 0.97 after leakage.
const RESPONSE_SCALE: f64 = 0.99;
const RESPONSE_SPREAD: f64 = 0.01;
const WIDTH_SPREAD: f64 = 0.08;
const AXIS_OFFSET_MM: f64 = 1.5;
const AXIS_TILT: f64 = 0.01;
/// Rescaled events land this far (relatively) inside ENERGY_RATIO_RANGE.
const RATIO_MARGIN: f64 = 1e-3;

/// Events `first_event .. first_event + n` of the stream `seed`.
pub fn generate_calo(geometry: &CaloGeometry, seed: u64, first_event: usize, n: usize) -> CaloChunk {
    let grid = LayerGrid::new(geometry);
    let mut incident_energies = vec![0f32; n];
    let mut showers = vec![0f32; n * geometry.voxels()];
    showers.par_chunks_mut(geometry.voxels()).zip(incident_energies.par_iter_mut()).enumerate().for_each(
        |(i, (shower, energy))| {
            let mut rng = event_rng(seed, (first_event + i) as u64);
            *energy = simulate_event(&grid, &mut rng, shower);
        },
    );
    CaloChunk { incident_energies, showers }
}

/// One shower written into `shower`; returns its incident energy.
fn simulate_event<R: Rng>(grid: &LayerGrid, rng: &mut R, shower: &mut [f32]) -> f32 {
    let incident = sample_incident_energy(rng);
    let energy = f64::from(incident);
    let shape = EventShape::sample(energy, rng);
    let contained = shape.longitudinal.layer_fractions(grid.layers);
    let mut layer_energies = share_between_layers(&contained, energy * shape.response, rng);
    cap_layer_energies(&mut layer_energies);
    let mut expected = vec![0.0; grid.voxels_per_layer()];
    let mut total = 0.0;
    let per_layer = shower.chunks_mut(grid.voxels_per_layer());
    for (layer, (out, &layer_energy)) in per_layer.zip(&layer_energies).enumerate() {
        grid.expected_deposits(layer_energy, &shape.layer_profile(layer), &mut expected);
        let sampled = sample_layer(&expected, out, rng);
        total += cap_sampled_layer(out, sampled);
    }
    enforce_ratio_range(shower, energy, total);
    incident
}

fn sample_incident_energy<R: Rng>(rng: &mut R) -> f32 {
    let u: f64 = rng.random();
    (E_MIN_MEV * (E_MAX_MEV / E_MIN_MEV).powf(u)) as f32
}

/// The event-wise random shape of a shower.
struct EventShape {
    longitudinal: Longitudinal,
    ln_e_gev: f64,
    width_scale: f64,
    axis: Axis,
    response: f64,
}

impl EventShape {
    fn sample<R: Rng>(energy: f64, rng: &mut R) -> Self {
        let longitudinal = Longitudinal::sample((energy / CRITICAL_ENERGY_MEV).ln(), rng);
        let width_scale = (WIDTH_SPREAD * rng.sample::<f64, _>(StandardNormal)).exp();
        let axis = Axis::sample(rng);
        let response = RESPONSE_SCALE * (1.0 + RESPONSE_SPREAD * rng.sample::<f64, _>(StandardNormal));
        Self { longitudinal, ln_e_gev: (energy / 1e3).ln(), width_scale, axis, response }
    }

    /// Radial profile and axis offset at the middle of `layer`.
    fn layer_profile(&self, layer: usize) -> LayerProfile {
        let depth_x0 = (layer as f64 + 0.5) * LAYER_X0;
        let tau = depth_x0 / self.longitudinal.t_max;
        let radial = Radial::grindhammer(tau, self.ln_e_gev, self.width_scale * MOLIERE_EFFECTIVE_MM);
        let offset = self.axis.offset_at(depth_x0 / LAYER_X0 * LAYER_PITCH_MM);
        LayerProfile { radial, offset }
    }
}

/// Grindhammer–Peters longitudinal profile dE/dt ∝ t^(α−1) e^(−βt), t in X0.
struct Longitudinal {
    t_max: f64,
    alpha: f64,
    beta: f64,
}

impl Longitudinal {
    /// Correlated event-wise fluctuations of ln T and ln α; `ln_y` = ln(E / E_c).
    fn sample<R: Rng>(ln_y: f64, rng: &mut R) -> Self {
        let mean_ln_t = (ln_y - 0.5).ln();
        let mean_ln_alpha = (0.81 + (0.458 + 2.26 / Z_TUNGSTEN) * ln_y).ln();
        let sigma_ln_t = 1.0 / (1.26 * ln_y - 1.4);
        let sigma_ln_alpha = 1.0 / (0.86 * ln_y - 0.58);
        let rho = 0.705 - 0.023 * ln_y;
        let z1: f64 = rng.sample(StandardNormal);
        let z2: f64 = rng.sample(StandardNormal);
        let t_max = (mean_ln_t + sigma_ln_t * z1).exp();
        let ln_alpha = mean_ln_alpha + sigma_ln_alpha * (rho * z1 + (1.0 - rho * rho).sqrt() * z2);
        let alpha = ln_alpha.exp().max(1.2);
        Self { t_max, alpha, beta: (alpha - 1.0) / t_max }
    }

    /// Fraction of the energy in each layer; the remainder leaks out of the back.
    fn layer_fractions(&self, layers: usize) -> Vec<f64> {
        let cdf = GammaCdf::new(self.alpha);
        let mut below = 0.0;
        (1..=layers)
            .map(|edge| {
                let upto = cdf.at(self.beta * edge as f64 * LAYER_X0);
                let fraction = (upto - below).max(0.0);
                below = upto;
                fraction
            })
            .collect()
    }
}

/// Dirichlet-like sharing noise: each layer's fraction is scaled by Gamma(κ, 1/κ), κ its energy in
/// LAYER_QUANTUM_MEV quanta, and the result renormalised to the contained energy.
fn share_between_layers<R: Rng>(fractions: &[f64], energy: f64, rng: &mut R) -> Vec<f64> {
    let noisy: Vec<f64> = fractions
        .iter()
        .map(|&f| {
            let shape = (f * energy / LAYER_QUANTUM_MEV).max(MIN_LAYER_SHAPE);
            let gamma = Gamma::new(shape, 1.0 / shape).expect("positive gamma shape");
            f * gamma.sample(rng)
        })
        .collect();
    let noisy_sum: f64 = noisy.iter().sum();
    if noisy_sum <= 0.0 {
        return fractions.iter().map(|f| f * energy).collect();
    }
    let scale = energy * fractions.iter().sum::<f64>() / noisy_sum;
    noisy.into_iter().map(|f| f * scale).collect()
}

/// Core + tail radial profile: energy within radius r is p·r²/(r²+R_C²) + (1−p)·r²/(r²+R_T²).
struct Radial {
    core_sq: f64,
    tail_sq: f64,
    core_weight: f64,
}

impl Radial {
    /// Grindhammer–Peters homogeneous-medium parameters at depth `tau` = t / T, radii scaled by
    /// `moliere_mm`.
    fn grindhammer(tau: f64, ln_e_gev: f64, moliere_mm: f64) -> Self {
        let core = (0.0251 + 0.00319 * ln_e_gev) + (0.1162 - 0.000381 * Z_TUNGSTEN) * tau;
        let (k1, k2, k3, k4) = (0.659 - 0.00309 * Z_TUNGSTEN, 0.645, -2.59, 0.3585 + 0.0412 * ln_e_gev);
        let tail = k1 * ((k3 * (tau - k2)).exp() + (k4 * (tau - k2)).exp());
        let (p1, p2, p3) = (2.632 - 0.00094 * Z_TUNGSTEN, 0.401 + 0.00187 * Z_TUNGSTEN, 1.313 - 0.0686 * ln_e_gev);
        let x = (p2 - tau) / p3;
        let core_weight = (p1 * (x - x.exp()).exp()).clamp(0.0, 1.0);
        let (core, tail) = (core * moliere_mm, tail.max(core) * moliere_mm);
        Self { core_sq: core * core, tail_sq: tail * tail, core_weight }
    }

    /// Fraction of the layer's energy within radius √r_sq.
    fn containment(&self, r_sq: f64) -> f64 {
        self.core_weight * r_sq / (r_sq + self.core_sq) + (1.0 - self.core_weight) * r_sq / (r_sq + self.tail_sq)
    }

    /// Energy per unit area at squared distance `s_sq` from the axis, up to the factor 1/π.
    fn density(&self, s_sq: f64) -> f64 {
        let core = (s_sq + self.core_sq).powi(2);
        let tail = (s_sq + self.tail_sq).powi(2);
        // One division instead of two: this runs once per voxel.
        (self.core_weight * self.core_sq * tail + (1.0 - self.core_weight) * self.tail_sq * core) / (core * tail)
    }
}

/// The shower axis: an offset at the front face plus a small tilt, both in the layer plane.
struct Axis {
    x0: f64,
    y0: f64,
    slope_x: f64,
    slope_y: f64,
}

impl Axis {
    fn sample<R: Rng>(rng: &mut R) -> Self {
        let mut normal = || rng.sample::<f64, _>(StandardNormal);
        Self {
            x0: AXIS_OFFSET_MM * normal(),
            y0: AXIS_OFFSET_MM * normal(),
            slope_x: AXIS_TILT * normal(),
            slope_y: AXIS_TILT * normal(),
        }
    }

    fn offset_at(&self, depth_mm: f64) -> [f64; 2] {
        [self.x0 + self.slope_x * depth_mm, self.y0 + self.slope_y * depth_mm]
    }
}

struct LayerProfile {
    radial: Radial,
    offset: [f64; 2],
}

/// The geometry of one layer, precomputed: squared ring edges and voxel centres (layer order).
struct LayerGrid {
    layers: usize,
    n_r: usize,
    r_edges_sq: Vec<f64>,
    centres: Vec<[f64; 2]>,
}

impl LayerGrid {
    fn new(geometry: &CaloGeometry) -> Self {
        let centres = (0..geometry.n_alpha)
            .flat_map(|a| {
                let (sin, cos) = geometry.alpha_mid(a).sin_cos();
                (0..geometry.n_r).map(move |r| [geometry.r_mid(r) * cos, geometry.r_mid(r) * sin])
            })
            .collect();
        let r_edges_sq = geometry.r_edges.iter().map(|r| r * r).collect();
        Self { layers: geometry.layers, n_r: geometry.n_r, r_edges_sq, centres }
    }

    fn voxels_per_layer(&self) -> usize {
        self.centres.len()
    }

    /// Expected deposit of every voxel of a layer holding `energy`: exact ring fractions of the
    /// centred profile, shared among sectors by the shifted profile's density at voxel centres.
    fn expected_deposits(&self, energy: f64, profile: &LayerProfile, out: &mut [f64]) {
        let mut ring_density = vec![0.0; self.n_r];
        let [dx, dy] = profile.offset;
        for (sector, centres) in out.chunks_mut(self.n_r).zip(self.centres.chunks(self.n_r)) {
            for ((value, [x, y]), ring_sum) in sector.iter_mut().zip(centres).zip(ring_density.iter_mut()) {
                *value = profile.radial.density((x - dx).powi(2) + (y - dy).powi(2));
                *ring_sum += *value;
            }
        }
        let ring_scale: Vec<f64> = ring_density
            .iter()
            .zip(self.r_edges_sq.windows(2))
            .map(|(density, edges)| {
                let fraction = profile.radial.containment(edges[1]) - profile.radial.containment(edges[0]);
                energy * fraction.max(0.0) / density
            })
            .collect();
        for sector in out.chunks_mut(self.n_r) {
            sector.iter_mut().zip(&ring_scale).for_each(|(value, scale)| *value *= scale);
        }
    }
}

/// Sampling noise of one layer, thresholded; returns the layer's energy. Each voxel receives a
/// Poisson number of charged-track crossings (mean: expected deposit / HIT_MEV), each depositing
/// HIT_MEV·χ²₁ (many soft deposits, a long tail). For voxels expecting few crossings, one unit-rate
/// Poisson process runs along their concatenated expected counts: its exponential gaps place the
/// crossings, which gives every voxel an independent Poisson count while spending no random
/// numbers on the (many) voxels that stay empty.
fn sample_layer<R: Rng>(expected: &[f64], out: &mut [f32], rng: &mut R) -> f64 {
    let mut clock = 0.0;
    let mut next_hit: f64 = rng.sample(Exp1);
    let mut total = 0.0;
    for (voxel, &mean) in out.iter_mut().zip(expected) {
        let hits = mean * (1.0 / HIT_MEV);
        let mut value = 0.0;
        if hits < FEW_HITS {
            clock += hits;
            while next_hit < clock {
                value += HIT_MEV * rng.sample::<f64, _>(StandardNormal).powi(2);
                next_hit += rng.sample::<f64, _>(Exp1);
            }
        } else {
            value = sample_dense_deposit(mean, rng);
        }
        let value = value as f32;
        *voxel = if f64::from(value) < READOUT_THRESHOLD_MEV { 0.0 } else { value };
        total += f64::from(*voxel);
    }
    total
}

/// Deposit of a voxel expecting many crossings: a gamma, then a normal, with the compound sum's
/// mean and variance (much cheaper, and indistinguishable at these counts).
fn sample_dense_deposit<R: Rng>(mean: f64, rng: &mut R) -> f64 {
    let variance_scale = HIT_SECOND_MOMENT * HIT_MEV;
    if mean < MANY_HITS * HIT_MEV {
        let gamma = Gamma::new(mean / variance_scale, variance_scale).expect("positive gamma shape");
        return gamma.sample(rng);
    }
    let z: f64 = rng.sample(StandardNormal);
    (mean + (variance_scale * mean).sqrt() * z).max(0.0)
}

/// No layer of the real datasets holds more than 65 GeV (iCaloFlow chose its 65 GeV layer scale
/// just above the largest layer energy). Near 1 TeV this homogeneous-medium profile peaks a little
/// higher (about one event in 200), so such an event's layers are scaled down to this cap; the
/// voxel sampling noise that follows (≈ 1 % at this energy) keeps it below 65 GeV.
const MAX_LAYER_MEV: f64 = 62_000.0;

fn cap_layer_energies(layers: &mut [f64]) {
    let max = layers.iter().copied().fold(0.0, f64::max);
    if max > MAX_LAYER_MEV {
        let scale = MAX_LAYER_MEV / max;
        layers.iter_mut().for_each(|e| *e *= scale);
    }
}

/// The voxel noise of a layer near the cap can reach a few per cent (seen: 65.1 GeV in one of
/// 10 000 events), so a layer whose sampled sum still exceeds this is scaled down to it; returns the
/// layer's energy afterwards.
const MAX_SAMPLED_LAYER_MEV: f64 = 64_500.0;

fn cap_sampled_layer(layer: &mut [f32], sampled: f64) -> f64 {
    if sampled <= MAX_SAMPLED_LAYER_MEV {
        return sampled;
    }
    let scale = MAX_SAMPLED_LAYER_MEV / sampled;
    layer.iter_mut().for_each(|v| *v = (f64::from(*v) * scale) as f32);
    apply_threshold(layer);
    layer.iter().map(|&v| f64::from(v)).sum()
}

/// Zeroes the voxels below the readout threshold.
fn apply_threshold(values: &mut [f32]) {
    for v in values.iter_mut() {
        *v = if f64::from(*v) < READOUT_THRESHOLD_MEV { 0.0 } else { *v };
    }
}

/// Rescales an event whose E_tot / E_inc falls outside ENERGY_RATIO_RANGE to just inside it.
fn enforce_ratio_range(shower: &mut [f32], energy: f64, total: f64) {
    let (low, high) = ENERGY_RATIO_RANGE;
    let target = if total < low * energy {
        low * (1.0 + RATIO_MARGIN) * energy
    } else if total > high * energy {
        high * (1.0 - RATIO_MARGIN) * energy
    } else {
        return;
    };
    if total <= 0.0 {
        shower[0] = target as f32;
        return;
    }
    let scale = target / total;
    for v in shower.iter_mut() {
        *v = (f64::from(*v) * scale) as f32;
    }
    apply_threshold(shower);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratios(chunk: &CaloChunk) -> Vec<f64> {
        let voxels = chunk.showers.len() / chunk.incident_energies.len();
        chunk
            .showers
            .chunks(voxels)
            .zip(&chunk.incident_energies)
            .map(|(shower, &e)| shower.iter().map(|&v| f64::from(v)).sum::<f64>() / f64::from(e))
            .collect()
    }

    /// Energy-weighted mean layer of one shower.
    fn mean_layer(shower: &[f32], voxels_per_layer: usize) -> f64 {
        let (weighted, total) = shower.chunks(voxels_per_layer).enumerate().fold((0.0, 0.0), |(w, t), (l, layer)| {
            let e: f64 = layer.iter().map(|&v| f64::from(v)).sum();
            (w + l as f64 * e, t + e)
        });
        weighted / total
    }

    /// Fraction of zero voxels in each layer over all events.
    fn zero_fraction_by_layer(chunk: &CaloChunk, geometry: &CaloGeometry) -> Vec<f64> {
        let vpl = geometry.voxels_per_layer();
        let mut zeros = vec![0usize; geometry.layers];
        for shower in chunk.showers.chunks(geometry.voxels()) {
            for (l, layer) in shower.chunks(vpl).enumerate() {
                zeros[l] += layer.iter().filter(|&&v| v == 0.0).count();
            }
        }
        let per_layer = (vpl * chunk.incident_energies.len()) as f64;
        zeros.into_iter().map(|z| z as f64 / per_layer).collect()
    }

    fn quantile(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    #[test]
    fn same_seed_gives_the_same_events_whatever_the_chunking() {
        let g = CaloGeometry::ds2();
        let whole = generate_calo(&g, 7, 0, 30);
        assert_eq!(whole, generate_calo(&g, 7, 0, 30));
        let head = generate_calo(&g, 7, 0, 11);
        let tail = generate_calo(&g, 7, 11, 19);
        assert_eq!([head.incident_energies, tail.incident_energies].concat(), whole.incident_energies);
        assert_eq!([head.showers, tail.showers].concat(), whole.showers);
        assert_ne!(generate_calo(&g, 8, 0, 30).showers, whole.showers);
    }

    #[test]
    fn thread_count_does_not_change_the_events() {
        let g = CaloGeometry::ds2();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| generate_calo(&g, 3, 100, 24))
        };
        assert_eq!(run(1), run(4));
    }

    #[test]
    fn shapes_energies_values_and_threshold() {
        let g = CaloGeometry::ds2();
        let chunk = generate_calo(&g, 1, 0, 200);
        assert_eq!(chunk.incident_energies.len(), 200);
        assert_eq!(chunk.showers.len(), 200 * 6480);
        assert!(chunk.incident_energies.iter().all(|&e| (1e3..=1e6).contains(&e)));
        let low = chunk.incident_energies.iter().filter(|&&e| e < 3e4).count();
        assert!((60..140).contains(&low), "log-uniform: about half below 31.6 GeV, got {low}");
        for &v in &chunk.showers {
            assert!(v.is_finite() && v >= 0.0);
            assert!(v == 0.0 || f64::from(v) >= READOUT_THRESHOLD_MEV, "{v} below threshold");
        }
        assert!(chunk.showers.iter().any(|&v| f64::from(v) < 10.0 * READOUT_THRESHOLD_MEV && v > 0.0));
    }

    #[test]
    fn energy_ratio_stays_in_the_documented_range_with_mean_near_one() {
        let chunk = generate_calo(&CaloGeometry::ds2(), 2, 0, 2000);
        let r = ratios(&chunk);
        let (low, high) = ENERGY_RATIO_RANGE;
        assert!(r.iter().all(|&x| x > low && x < high));
        let mean = r.iter().sum::<f64>() / r.len() as f64;
        assert!((0.95..1.0).contains(&mean), "mean E_tot/E_inc {mean}");
        let spread = |keep: &dyn Fn(f32) -> bool| {
            let sel: Vec<f64> =
                r.iter().zip(&chunk.incident_energies).filter(|(_, &e)| keep(e)).map(|(&x, _)| x).collect();
            quantile(&sel, 0.84) - quantile(&sel, 0.16)
        };
        let (spread_low, spread_high) = (spread(&|e| e < 1e4), spread(&|e| e > 1e5));
        assert!(spread_low > 3.0 * spread_high, "spread {spread_low} at low E vs {spread_high} at high E");
        assert!(spread_high > 0.003 && spread_low < 0.4);
    }

    #[test]
    fn showers_get_deeper_with_energy() {
        let g = CaloGeometry::ds2();
        let chunk = generate_calo(&g, 4, 0, 600);
        let (mut low, mut high) = (vec![], vec![]);
        for (shower, &e) in chunk.showers.chunks(g.voxels()).zip(&chunk.incident_energies) {
            let depth = mean_layer(shower, g.voxels_per_layer());
            if e < 1e4 {
                low.push(depth);
            } else if e > 1e5 {
                high.push(depth);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&high) > mean(&low) + 3.0, "depth {} vs {}", mean(&low), mean(&high));
    }

    #[test]
    fn first_and_last_layers_are_sparser_than_the_maximum() {
        let g = CaloGeometry::ds2();
        let zeros = zero_fraction_by_layer(&generate_calo(&g, 5, 0, 300), &g);
        let densest = zeros.iter().cloned().fold(1.0, f64::min);
        assert!(zeros[0] > densest + 0.2 && zeros[44] > densest + 0.2, "{zeros:?}");
        assert!(densest > 0.1, "realistic data is never dense everywhere: {densest}");
    }

    #[test]
    fn outer_rings_are_sparser_than_inner_rings() {
        let g = CaloGeometry::ds2();
        let chunk = generate_calo(&g, 6, 0, 200);
        let zero_fraction_of_ring = |r: usize| {
            let mut zeros = 0usize;
            for s in chunk.showers.chunks(g.voxels()) {
                for l in 0..g.layers {
                    zeros += (0..g.n_alpha).filter(|&a| s[g.index(l, a, r)] == 0.0).count();
                }
            }
            zeros as f64 / (chunk.incident_energies.len() * g.layers * g.n_alpha) as f64
        };
        assert!(zero_fraction_of_ring(8) > zero_fraction_of_ring(0) + 0.1);
    }

    #[test]
    fn sectors_differ_and_centres_of_energy_fluctuate() {
        let g = CaloGeometry::ds2();
        let chunk = generate_calo(&g, 9, 0, 100);
        let centre_x: Vec<f64> = chunk
            .showers
            .chunks(g.voxels())
            .map(|s| {
                let (mut weighted, mut total) = (0.0, 0.0);
                for l in 0..g.layers {
                    for a in 0..g.n_alpha {
                        for r in 0..g.n_r {
                            let e = f64::from(s[g.index(l, a, r)]);
                            weighted += e * g.r_mid(r) * g.alpha_mid(a).cos();
                            total += e;
                        }
                    }
                }
                weighted / total
            })
            .collect();
        let mean = centre_x.iter().sum::<f64>() / centre_x.len() as f64;
        let sd = (centre_x.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / centre_x.len() as f64).sqrt();
        assert!(sd > 0.3 && sd < 5.0, "centre-of-energy spread {sd} mm");
    }

    #[test]
    fn dataset_3_showers_are_well_formed() {
        let g = CaloGeometry::ds3();
        let chunk = generate_calo(&g, 11, 0, 40);
        assert_eq!(chunk.showers.len(), 40 * 40500);
        assert!(chunk.showers.iter().all(|&v| v.is_finite() && v >= 0.0));
        let (low, high) = ENERGY_RATIO_RANGE;
        assert!(ratios(&chunk).iter().all(|&x| x > low && x < high));
        let zeros = zero_fraction_by_layer(&chunk, &g);
        assert!(zeros[0] > 0.9 && zeros.iter().cloned().fold(1.0, f64::min) < 0.8, "{zeros:?}");
    }

    #[test]
    fn ratio_enforcement_rescales_outliers_only() {
        let enforce = |shower: &mut [f32]| {
            let total = shower.iter().map(|&v| f64::from(v)).sum();
            enforce_ratio_range(shower, 1000.0, total);
        };
        let mut fine = vec![400f32, 600.0];
        enforce(&mut fine);
        assert_eq!(fine, vec![400.0, 600.0]);
        let mut hot = vec![1000f32, 1000.0];
        enforce(&mut hot);
        let total: f32 = hot.iter().sum();
        assert!(total < 1600.0 && total > 1590.0, "{total}");
        let mut empty = vec![0f32; 3];
        enforce(&mut empty);
        assert!((empty.iter().sum::<f32>() / 1000.0) > 0.3);
    }

    #[test]
    fn radial_profile_is_a_proper_distribution() {
        let radial = Radial::grindhammer(1.0, 3.0, MOLIERE_EFFECTIVE_MM);
        assert_eq!(radial.containment(0.0), 0.0);
        assert!((radial.containment(1e12) - 1.0).abs() < 1e-9);
        let steps: Vec<f64> = (0..50).map(|i| radial.containment((i as f64).powi(2))).collect();
        assert!(steps.windows(2).all(|w| w[1] > w[0]));
        // 90 % within about one Molière radius near the maximum, as for real showers.
        let r90 = (1..200).map(|r| r as f64 * 0.5).find(|r| radial.containment(r * r) > 0.9).unwrap();
        assert!(r90 > 0.4 * MOLIERE_EFFECTIVE_MM && r90 < 2.0 * MOLIERE_EFFECTIVE_MM, "r90 {r90}");
        // Density integrates (×π) to the containment.
        let integral: f64 =
            (0..20000).map(|i| (i as f64 + 0.5) * 0.01).map(|r| 2.0 * r * 0.01 * radial.density(r * r)).sum();
        assert!((integral - radial.containment(200.0 * 200.0)).abs() < 1e-3, "{integral}");
    }

    #[test]
    #[ignore = "timing and statistics report; run with --ignored --nocapture"]
    fn report_rate_and_statistics() {
        let g = CaloGeometry::ds2();
        let n = 20000;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        // Timed in chunks of 1000, as a writer would generate them.
        let start = std::time::Instant::now();
        for first in (0..n).step_by(1000) {
            std::hint::black_box(pool.install(|| generate_calo(&g, 1, first, 1000)));
        }
        println!("DS2: {:.0} showers/s on 2 threads", n as f64 / start.elapsed().as_secs_f64());
        let chunk = pool.install(|| generate_calo(&g, 1, 0, n));
        let r = ratios(&chunk);
        let mean = r.iter().sum::<f64>() / r.len() as f64;
        println!(
            "E_tot/E_inc mean {mean:.4}, 1-99 % [{:.3}, {:.3}], min {:.3}, max {:.3}",
            quantile(&r, 0.01),
            quantile(&r, 0.99),
            quantile(&r, 0.0),
            quantile(&r, 1.0)
        );
        for (lo, hi) in [(1e3, 3e3), (3e3, 3e4), (3e4, 3e5), (3e5, 1e6)] {
            let sel: Vec<f64> = r
                .iter()
                .zip(&chunk.incident_energies)
                .filter(|(_, &e)| f64::from(e) >= lo && f64::from(e) < hi)
                .map(|(&x, _)| x)
                .collect();
            let m = sel.iter().sum::<f64>() / sel.len() as f64;
            println!(
                "  E in [{lo:.0}, {hi:.0}): mean {m:.4}, 1-99 % [{:.3}, {:.3}]",
                quantile(&sel, 0.01),
                quantile(&sel, 0.99)
            );
        }
        let zeros = zero_fraction_by_layer(&chunk, &g);
        println!("zero fraction by layer: {:?}", zeros.iter().map(|z| format!("{z:.2}")).collect::<Vec<_>>());
        println!("overall zero fraction {:.3}", zeros.iter().sum::<f64>() / zeros.len() as f64);
        let depth = |keep: &dyn Fn(f32) -> bool| {
            let d: Vec<f64> = chunk
                .showers
                .chunks(g.voxels())
                .zip(&chunk.incident_energies)
                .filter(|(_, &e)| keep(e))
                .map(|(s, _)| mean_layer(s, g.voxels_per_layer()))
                .collect();
            d.iter().sum::<f64>() / d.len() as f64
        };
        println!(
            "mean depth (layer): {:.2} below 1.5 GeV, {:.2} above 700 GeV",
            depth(&|e| e < 1.5e3),
            depth(&|e| e > 7e5)
        );
        let g3 = CaloGeometry::ds3();
        let start = std::time::Instant::now();
        pool.install(|| generate_calo(&g3, 1, 0, 2000));
        println!("DS3: {:.0} showers/s on 2 threads", 2000.0 / start.elapsed().as_secs_f64());
    }

    #[test]
    fn a_sampled_layer_above_the_cap_is_scaled_below_65_gev() {
        let mut layer = vec![30_000.0f32, 35_110.0, 0.0152, 0.0];
        let kept = cap_sampled_layer(&mut layer, 65_110.015_2);
        let sum: f64 = layer.iter().map(|&v| f64::from(v)).sum();
        assert!((kept - sum).abs() < 1e-3 && sum < 65_000.0 && sum > 64_000.0, "{layer:?}");
        assert_eq!(layer[2], 0.0, "a voxel scaled below the readout threshold is zeroed");
        let mut small = vec![1_000.0f32, 20.0];
        assert_eq!(cap_sampled_layer(&mut small, 1_020.0), 1_020.0);
        assert_eq!(small, vec![1_000.0, 20.0]);
    }

    #[test]
    fn no_layer_exceeds_the_real_datas_65_gev() {
        let g = CaloGeometry::ds2();
        let c = generate_calo(&g, 3, 0, 3000);
        let v = g.voxels_per_layer();
        let max = c.showers.chunks(v).map(|l| l.iter().map(|&x| x as f64).sum::<f64>()).fold(0.0, f64::max);
        assert!(max < 65_000.0, "a layer holds {max} MeV");
    }
}
