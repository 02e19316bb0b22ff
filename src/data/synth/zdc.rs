//! Synthetic ALICE ZDC neutron-calorimeter (ZN) responses: 44×44 photon counts, each conditioned
//! on the particle that hit the detector, in the layout of the Majerz et al. GEANT4 dataset.
//!
//! # Model
//!
//! * **Particles**: 21 types (table below) with sample fractions as in the real set for the four
//!   named in the paper: n 23 %, Λ 3 %, K0S 2 %, Σ+ 0.5 %; the rest are plausible.
//! * **Conditions** `[energy, px, py, pz, vx, vy, vz, mass, charge]` (GeV, GeV/c, cm, GeV, e):
//!   energies log-uniform in a type-dependent range (1 – 2500 GeV), plus 40 % of neutrons being
//!   beam spectators at 2510 GeV ± 2 %. Directions are along +z with angles N(0, 0.16 mrad) per
//!   axis; the entry point is the angle times the 112.5 m flight path plus N(0, 0.3 cm), kept
//!   within ±3.2 cm of the face centre; vz = 11 250 cm + N(0, 0.5 cm).
//! * **Repetition**: like transported GEANT4 primaries, each condition vector appears
//!   1 + Geometric(0.2) times (capped at 30, mean ≈ 5), in consecutive rows, bitwise identical,
//!   each with its own response.
//! * **Response**: photons = yield × E_avail (E − m for baryons, E + m for antibaryons, E else):
//!   0.9 /GeV for hadrons with a Gamma fluctuation of relative width √(1.5²/E + 0.18²), 1.2 /GeV
//!   for photons and electrons (√(0.3²/E + 0.05²)), ≈ 25 for muons. The transverse profile is the
//!   calorimeters' core + tail, ρ(s) ∝ p R_C²/(s²+R_C²)² + (1−p) R_T²/(s²+R_T²)², widest for
//!   neutral hadrons (R_C 3.5 mm), then charged hadrons (3 mm), electromagnetic showers (1.5 mm)
//!   and muons (0.8 mm), wider at low energy and ±12 % per response. Its centre is the entry point
//!   moved along the direction to 40 cm depth, plus N(0, 2.5 mm) for hadrons (0.8 mm EM).
//! * **Decays**: unstable types (Λ, Λbar, K0S, Σ±, Ξ) decay inside the 1 m deep calorimeter with
//!   probability 1 − exp(−100 cm / γcτ), at least 10 %: the shower splits into two sub-showers
//!   with energy shares U(0.1, 0.9) and 3 – 30 mm apart (K0S → π0π0 gives two EM showers in 30 %);
//!   with a further 10 % they are very weak (2 – 30 % of the yield, products escaping). Stable
//!   hadrons are weak in 2 % of cases (10 – 50 %, late first interaction).
//! * **Readout**: the (row + col)-odd fibres (channel 0) collect light with efficiency 1.0, the
//!   even fibres (channels 1 – 4) with 0.8; pixel counts are Poisson. Pixels are 1.6 mm, row 0 at
//!   +y, column 0 at −x. Totals range from 0 to ≈ 3500 photons (median ≈ 60); most pixels are 0.
//!
//! Generation is deterministic for a seed: conditions come from one ChaCha8 stream, response `i`
//! from stream `i + 1`, so `generate_zdc(seed, n)` is a prefix of `generate_zdc(seed, m > n)`.

use rand::Rng;
use rand_distr::{Distribution, Exp1, Gamma, StandardNormal};
use rayon::prelude::*;

use super::draws::{event_rng, sample_poisson};
use crate::data::channels::{PIXELS, SIDE};
use crate::data::zdc::FEATURES;

const PIXEL_CM: f64 = 0.16;
const FLIGHT_PATH_CM: f64 = 11_250.0;
const ANGLE_SPREAD: f64 = 1.6e-4;
const BEAM_OFFSET_CM: f64 = 0.3;
const ENTRY_Z_SPREAD_CM: f64 = 0.5;
const MAX_ENTRY_CM: f64 = 3.2;
const SPECTATOR_FRACTION: f64 = 0.4;
const SPECTATOR_GEV: f64 = 2510.0;
const SPECTATOR_SPREAD: f64 = 0.02;
const REPEAT_P: f64 = 0.2;
const MAX_REPEATS: usize = 30;
const SHOWER_DEPTH_CM: f64 = 40.0;
const DETECTOR_DEPTH_CM: f64 = 100.0;
const MIN_DECAY_PROBABILITY: f64 = 0.1;
const WEAK_PROBABILITY_UNSTABLE: f64 = 0.1;
const WEAK_PROBABILITY_STABLE: f64 = 0.02;
const WIDTH_SPREAD: f64 = 0.12;
const ODD_FIBRE_COLLECTION: f64 = 1.0;
const EVEN_FIBRE_COLLECTION: f64 = 0.8;
/// Below this many expected photons a pixel's count comes from a shared Poisson clock.
const FEW_PHOTONS: f64 = 2.0;

/// Generated ZDC events: responses with the particle that caused each.
#[derive(Clone, Debug, PartialEq)]
pub struct ZdcEvents {
    /// n × 1936 photon counts (non-negative integers stored as f32), row-major 44×44 images.
    pub responses: Vec<f32>,
    /// n × FEATURES conditions.
    pub particles: Vec<f32>,
    /// PDG code of each event's particle.
    pub pdg: Vec<i32>,
}

/// `n` events of the stream `seed`.
pub fn generate_zdc(seed: u64, n: usize) -> ZdcEvents {
    let primaries = sample_primaries(seed, n);
    let mut responses = vec![0f32; n * PIXELS];
    responses.par_chunks_mut(PIXELS).zip(primaries.par_iter()).enumerate().for_each(|(i, (image, primary))| {
        let mut rng = event_rng(seed, i as u64 + 1);
        simulate_response(primary, &mut rng, image);
    });
    let particles = primaries.iter().flat_map(|p| p.features).collect();
    let pdg = primaries.iter().map(|p| p.species.pdg).collect();
    ZdcEvents { responses, particles, pdg }
}

/// Short name of a particle type ("n", "lambda", "k0s", "sigma+", …); "unknown" otherwise.
pub fn particle_name(pdg: i32) -> &'static str {
    species_of(pdg).map_or("unknown", |s| s.name)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ShowerKind {
    NeutralHadron,
    ChargedHadron,
    Electromagnetic,
    Muon,
}

#[derive(Clone, Copy, Debug)]
enum Baryon {
    No,
    Yes,
    Anti,
}

#[derive(Debug)]
struct Species {
    pdg: i32,
    name: &'static str,
    mass: f64,
    charge: f64,
    fraction: f64,
    physics: Physics,
    /// Log-uniform energy range in GeV.
    energy_gev: (f64, f64),
}

/// How a particle type showers.
#[derive(Debug)]
struct Physics {
    kind: ShowerKind,
    baryon: Baryon,
    /// Decay length cτ in cm; 0 for particles that do not decay inside the detector.
    ctau_cm: f64,
}

const fn species(
    pdg: i32,
    name: &'static str,
    mass: f64,
    charge: f64,
    fraction: f64,
    physics: Physics,
    energy_gev: (f64, f64),
) -> Species {
    Species { pdg, name, mass, charge, fraction, physics, energy_gev }
}

const fn physics(kind: ShowerKind, baryon: Baryon, ctau_cm: f64) -> Physics {
    Physics { kind, baryon, ctau_cm }
}

use Baryon::{Anti, No, Yes};
use ShowerKind::{ChargedHadron as Charged, Electromagnetic as Em, Muon, NeutralHadron as Neutral};

const HADRON_GEV: (f64, f64) = (5.0, 1500.0);
const MESON_GEV: (f64, f64) = (2.0, 1000.0);
const EM_GEV: (f64, f64) = (1.0, 800.0);

/// The 21 types; fractions sum to 1.
const SPECIES: [Species; 21] = [
    species(2112, "n", 0.939_565, 0.0, 0.23, physics(Neutral, Yes, 0.0), (10.0, 2500.0)),
    species(2212, "p", 0.938_272, 1.0, 0.16, physics(Charged, Yes, 0.0), HADRON_GEV),
    species(22, "gamma", 0.0, 0.0, 0.111, physics(Em, No, 0.0), EM_GEV),
    species(211, "pi+", 0.139_570, 1.0, 0.10, physics(Charged, No, 0.0), MESON_GEV),
    species(-211, "pi-", 0.139_570, -1.0, 0.10, physics(Charged, No, 0.0), MESON_GEV),
    species(11, "e-", 0.000_511, -1.0, 0.04, physics(Em, No, 0.0), EM_GEV),
    species(-11, "e+", 0.000_511, 1.0, 0.04, physics(Em, No, 0.0), EM_GEV),
    species(321, "k+", 0.493_677, 1.0, 0.03, physics(Charged, No, 0.0), MESON_GEV),
    species(-321, "k-", 0.493_677, -1.0, 0.025, physics(Charged, No, 0.0), MESON_GEV),
    species(130, "k0l", 0.497_611, 0.0, 0.03, physics(Neutral, No, 0.0), MESON_GEV),
    species(310, "k0s", 0.497_611, 0.0, 0.02, physics(Neutral, No, 2.684), MESON_GEV),
    species(3122, "lambda", 1.115_683, 0.0, 0.03, physics(Neutral, Yes, 7.89), HADRON_GEV),
    species(-3122, "antilambda", 1.115_683, 0.0, 0.008, physics(Neutral, Anti, 7.89), HADRON_GEV),
    species(3222, "sigma+", 1.189_37, 1.0, 0.005, physics(Charged, Yes, 2.404), HADRON_GEV),
    species(3112, "sigma-", 1.197_449, -1.0, 0.005, physics(Charged, Yes, 4.434), HADRON_GEV),
    species(3312, "xi-", 1.321_71, -1.0, 0.003, physics(Charged, Yes, 4.91), HADRON_GEV),
    species(3322, "xi0", 1.314_86, 0.0, 0.003, physics(Neutral, Yes, 8.71), HADRON_GEV),
    species(-2112, "antineutron", 0.939_565, 0.0, 0.015, physics(Neutral, Anti, 0.0), HADRON_GEV),
    species(-2212, "antiproton", 0.938_272, -1.0, 0.015, physics(Charged, Anti, 0.0), HADRON_GEV),
    species(13, "mu-", 0.105_658, -1.0, 0.015, physics(Muon, No, 0.0), (2.0, 500.0)),
    species(-13, "mu+", 0.105_658, 1.0, 0.015, physics(Muon, No, 0.0), (2.0, 500.0)),
];

fn species_of(pdg: i32) -> Option<&'static Species> {
    SPECIES.iter().find(|s| s.pdg == pdg)
}

/// A primary particle: its type and its condition vector (shared bit for bit by its repeats).
#[derive(Clone, Debug)]
struct Primary {
    species: &'static Species,
    features: [f32; FEATURES],
}

impl Primary {
    fn feature(&self, i: usize) -> f64 {
        f64::from(self.features[i])
    }
    fn energy(&self) -> f64 {
        self.feature(0)
    }
    /// Energy available to the shower: kinetic for baryons, plus annihilation for antibaryons.
    fn available_energy(&self) -> f64 {
        match self.species.physics.baryon {
            Baryon::No => self.energy(),
            Baryon::Yes => (self.energy() - self.species.mass).max(0.0),
            Baryon::Anti => self.energy() + self.species.mass,
        }
    }
    /// Where the particle's direction reaches `depth` cm into the detector.
    fn position_at(&self, depth: f64) -> [f64; 2] {
        let pz = self.feature(3).max(1e-9);
        [self.feature(4) + depth * self.feature(1) / pz, self.feature(5) + depth * self.feature(2) / pz]
    }
}

/// One primary per row, repeats consecutive; drawn sequentially from stream 0.
fn sample_primaries(seed: u64, n: usize) -> Vec<Primary> {
    let mut rng = event_rng(seed, 0);
    let mut rows = Vec::with_capacity(n);
    while rows.len() < n {
        let primary = sample_primary(&mut rng);
        let repeats = sample_repeats(&mut rng).min(n - rows.len());
        rows.extend(std::iter::repeat_n(primary, repeats));
    }
    rows
}

fn sample_repeats<R: Rng>(rng: &mut R) -> usize {
    let u: f64 = rng.random();
    let failures = ((1.0 - u).ln() / (1.0 - REPEAT_P).ln()).floor();
    (1 + failures as usize).min(MAX_REPEATS)
}

fn sample_species<R: Rng>(rng: &mut R) -> &'static Species {
    let mut u: f64 = rng.random();
    for s in &SPECIES {
        if u < s.fraction {
            return s;
        }
        u -= s.fraction;
    }
    &SPECIES[0]
}

fn sample_primary<R: Rng>(rng: &mut R) -> Primary {
    let species = sample_species(rng);
    let energy = sample_energy(species, rng);
    let momentum = (energy * energy - species.mass * species.mass).max(0.0).sqrt();
    let (angle_x, x) = sample_entry(rng);
    let (angle_y, y) = sample_entry(rng);
    let norm = (1.0 + angle_x * angle_x + angle_y * angle_y).sqrt();
    let z = FLIGHT_PATH_CM + ENTRY_Z_SPREAD_CM * rng.sample::<f64, _>(StandardNormal);
    let features = [
        energy,
        momentum * angle_x / norm,
        momentum * angle_y / norm,
        momentum / norm,
        x,
        y,
        z,
        species.mass,
        species.charge,
    ]
    .map(|v| v as f32);
    Primary { species, features }
}

fn sample_energy<R: Rng>(species: &Species, rng: &mut R) -> f64 {
    if species.pdg == 2112 && rng.random::<f64>() < SPECTATOR_FRACTION {
        return SPECTATOR_GEV * (1.0 + SPECTATOR_SPREAD * rng.sample::<f64, _>(StandardNormal));
    }
    let (low, high) = species.energy_gev;
    low * (high / low).powf(rng.random::<f64>())
}

/// Angle to the beam axis and entry coordinate in one transverse direction, inside the face.
fn sample_entry<R: Rng>(rng: &mut R) -> (f64, f64) {
    let mut normal = || rng.sample::<f64, _>(StandardNormal);
    for _ in 0..16 {
        let angle = ANGLE_SPREAD * normal();
        let position = angle * FLIGHT_PATH_CM + BEAM_OFFSET_CM * normal();
        if position.abs() <= MAX_ENTRY_CM {
            return (angle, position);
        }
    }
    (0.0, 0.0)
}

/// A transverse core + tail photon distribution.
#[derive(Clone, Copy, Debug)]
struct Spot {
    centre: [f64; 2],
    photons: f64,
    core_sq: f64,
    tail_sq: f64,
    core_weight: f64,
}

impl Spot {
    /// Expected photons per cm² at squared distance `s_sq` (before light collection).
    fn density(&self, s_sq: f64) -> f64 {
        let core = (s_sq + self.core_sq).powi(2);
        let tail = (s_sq + self.tail_sq).powi(2);
        let shape = self.core_weight * self.core_sq / core + (1.0 - self.core_weight) * self.tail_sq / tail;
        self.photons * shape / std::f64::consts::PI
    }
}

/// (core radius cm, tail radius cm, core weight, centre spread cm) of a kind of shower.
fn shower_shape(kind: ShowerKind) -> (f64, f64, f64, f64) {
    match kind {
        ShowerKind::NeutralHadron => (0.35, 1.2, 0.55, 0.25),
        ShowerKind::ChargedHadron => (0.30, 1.0, 0.6, 0.25),
        ShowerKind::Electromagnetic => (0.15, 0.5, 0.85, 0.08),
        ShowerKind::Muon => (0.08, 0.25, 0.9, 0.03),
    }
}

/// Mean photons of a shower of `kind` with `energy` GeV available, and the gamma shape of its
/// event-wise fluctuation.
fn photon_yield(kind: ShowerKind, energy: f64) -> (f64, f64) {
    let energy = energy.max(0.1);
    let (mean, relative_variance) = match kind {
        ShowerKind::NeutralHadron | ShowerKind::ChargedHadron => {
            (0.9 * energy, 1.5f64.powi(2) / energy + 0.18f64.powi(2))
        }
        ShowerKind::Electromagnetic => (1.2 * energy, 0.3f64.powi(2) / energy + 0.05f64.powi(2)),
        ShowerKind::Muon => (25.0 + 0.02 * energy, 0.25),
    };
    (mean, 1.0 / relative_variance)
}

fn simulate_response<R: Rng>(primary: &Primary, rng: &mut R, image: &mut [f32]) {
    let energy = primary.available_energy();
    let kind = primary.species.physics.kind;
    let (mean, shape) = photon_yield(kind, energy);
    let photons = mean
        * Gamma::new(shape, 1.0 / shape).expect("positive gamma shape").sample(rng)
        * sample_weakening(primary.species, rng);
    let spot = sample_spot(kind, primary, photons, rng);
    let spots = match decay_products(primary, rng) {
        Some(kinds) => split_spot(&spot, kinds, rng),
        None => vec![spot],
    };
    render(&spots, image, rng);
}

/// The factor by which the light is reduced when decay products or the shower escape.
fn sample_weakening<R: Rng>(species: &Species, rng: &mut R) -> f64 {
    let hadronic = matches!(species.physics.kind, ShowerKind::NeutralHadron | ShowerKind::ChargedHadron);
    let u: f64 = rng.random();
    if species.physics.ctau_cm > 0.0 && u < WEAK_PROBABILITY_UNSTABLE {
        rng.random_range(0.02..0.3)
    } else if hadronic && species.physics.ctau_cm == 0.0 && u < WEAK_PROBABILITY_STABLE {
        rng.random_range(0.1..0.5)
    } else {
        1.0
    }
}

fn sample_spot<R: Rng>(kind: ShowerKind, primary: &Primary, photons: f64, rng: &mut R) -> Spot {
    let (core, tail, core_weight, centre_spread) = shower_shape(kind);
    let low_energy_widening = 1.0 + 0.5 / (1.0 + primary.energy() / 20.0);
    let scale = low_energy_widening * (WIDTH_SPREAD * rng.sample::<f64, _>(StandardNormal)).exp();
    let [x, y] = primary.position_at(SHOWER_DEPTH_CM);
    let mut normal = || centre_spread * rng.sample::<f64, _>(StandardNormal);
    Spot {
        centre: [x + normal(), y + normal()],
        photons,
        core_sq: (core * scale).powi(2),
        tail_sq: (tail * scale).powi(2),
        core_weight,
    }
}

/// The shower kinds of the two decay products if the particle decays inside the detector.
fn decay_products<R: Rng>(primary: &Primary, rng: &mut R) -> Option<[ShowerKind; 2]> {
    let species = primary.species;
    if species.physics.ctau_cm <= 0.0 {
        return None;
    }
    let gamma = primary.energy() / species.mass;
    let probability = (1.0 - (-DETECTOR_DEPTH_CM / (gamma * species.physics.ctau_cm)).exp()).max(MIN_DECAY_PROBABILITY);
    if rng.random::<f64>() >= probability {
        return None;
    }
    let two_photon_pairs = species.pdg == 310 && rng.random::<f64>() < 0.3;
    Some(if two_photon_pairs { [ShowerKind::Electromagnetic; 2] } else { [ShowerKind::ChargedHadron; 2] })
}

/// Two sub-showers sharing the light, displaced around the original centre of gravity.
fn split_spot<R: Rng>(spot: &Spot, kinds: [ShowerKind; 2], rng: &mut R) -> Vec<Spot> {
    let share: f64 = rng.random_range(0.1..0.9);
    let separation = (0.3 + 0.8 * rng.sample::<f64, _>(Exp1)).min(3.0);
    let (sin, cos) = rng.random_range(0.0..std::f64::consts::TAU).sin_cos();
    let offsets = [(1.0 - share) * separation, -share * separation];
    kinds
        .iter()
        .zip([share, 1.0 - share])
        .zip(offsets)
        .map(|((&kind, fraction), offset)| {
            let (core, tail, core_weight, _) = shower_shape(kind);
            Spot {
                centre: [spot.centre[0] + offset * cos, spot.centre[1] + offset * sin],
                photons: spot.photons * fraction,
                core_sq: core * core,
                tail_sq: tail * tail,
                core_weight,
            }
        })
        .collect()
}

/// Centre of pixel (row, col) in cm: row 0 at the top (+y), column 0 at the left (−x).
fn pixel_centre(row: usize, col: usize) -> [f64; 2] {
    let half = SIDE as f64 / 2.0;
    [(col as f64 + 0.5 - half) * PIXEL_CM, (half - row as f64 - 0.5) * PIXEL_CM]
}

/// Poisson photon counts of every pixel. Pixels expecting few photons share one unit-rate
/// Poisson process along their concatenated expectations (exponential gaps), which keeps counts
/// independent Poisson while drawing nothing for the many empty pixels.
fn render<R: Rng>(spots: &[Spot], image: &mut [f32], rng: &mut R) {
    let area = PIXEL_CM * PIXEL_CM;
    let mut clock = 0.0;
    let mut next_photon: f64 = rng.sample(Exp1);
    for (p, value) in image.iter_mut().enumerate() {
        let (row, col) = (p / SIDE, p % SIDE);
        let [x, y] = pixel_centre(row, col);
        let collection = if (row + col) % 2 == 1 { ODD_FIBRE_COLLECTION } else { EVEN_FIBRE_COLLECTION };
        let expected: f64 =
            spots.iter().map(|s| s.density((x - s.centre[0]).powi(2) + (y - s.centre[1]).powi(2))).sum::<f64>()
                * area
                * collection;
        let mut count = 0u32;
        if expected < FEW_PHOTONS {
            clock += expected;
            while next_photon < clock {
                count += 1;
                next_photon += rng.sample::<f64, _>(Exp1);
            }
        } else {
            count = sample_poisson(expected, rng);
        }
        *value = count as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::channels::channel_sums;
    use std::collections::HashMap;

    fn photon_sums(events: &ZdcEvents) -> Vec<f64> {
        events.responses.chunks(PIXELS).map(|r| r.iter().map(|&v| f64::from(v)).sum()).collect()
    }

    fn correlation(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }

    fn condition_counts(events: &ZdcEvents) -> HashMap<Vec<u32>, usize> {
        let mut counts = HashMap::new();
        for c in events.particles.chunks(FEATURES) {
            *counts.entry(c.iter().map(|v| v.to_bits()).collect()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn same_seed_same_events_and_shorter_runs_are_prefixes() {
        let long = generate_zdc(5, 120);
        assert_eq!(long, generate_zdc(5, 120));
        let short = generate_zdc(5, 50);
        assert_eq!(short.responses[..], long.responses[..50 * PIXELS]);
        assert_eq!(short.particles[..], long.particles[..50 * FEATURES]);
        assert_eq!(short.pdg[..], long.pdg[..50]);
        assert_ne!(generate_zdc(6, 120).responses, long.responses);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(pool.install(|| generate_zdc(5, 120)), long);
    }

    #[test]
    fn shapes_and_integer_counts() {
        let events = generate_zdc(1, 300);
        assert_eq!(events.responses.len(), 300 * PIXELS);
        assert_eq!(events.particles.len(), 300 * FEATURES);
        assert_eq!(events.pdg.len(), 300);
        assert!(events.responses.iter().all(|&v| v.is_finite() && v >= 0.0 && v.fract() == 0.0));
        assert!(events.particles.iter().all(|v| v.is_finite()));
        let zeros = events.responses.iter().filter(|&&v| v == 0.0).count() as f64 / events.responses.len() as f64;
        assert!(zeros > 0.5, "most pixels are dark, got {zeros}");
        let sums = photon_sums(&events);
        let max = sums.iter().cloned().fold(0.0, f64::max);
        assert!(max > 500.0 && max < 20_000.0, "largest total {max}");
        for (c, &pdg) in events.particles.chunks(FEATURES).zip(&events.pdg) {
            let s = species_of(pdg).unwrap();
            assert_eq!((c[7], c[8]), (s.mass as f32, s.charge as f32));
            assert!(c[3] > 0.0 && c[1].abs() < 0.01 * c[3] && c[2].abs() < 0.01 * c[3]);
            assert!(c[4].abs() <= 3.2 && c[5].abs() <= 3.2 && (c[6] - 11_250.0).abs() < 5.0);
            assert!(c[0] >= c[3]);
        }
    }

    #[test]
    fn conditions_repeat_with_varying_multiplicity() {
        let events = generate_zdc(2, 2000);
        let counts = condition_counts(&events);
        assert!(counts.len() < 2000 / 2, "{} unique conditions", counts.len());
        assert!(counts.values().any(|&c| c >= 3));
        assert!(counts.values().any(|&c| c == 1));
        assert!(counts.values().all(|&c| c <= MAX_REPEATS));
        // Repeats share a condition but not a response.
        let first_repeat =
            (1..2000).find(|&i| events.particles[i * 9..i * 9 + 9] == events.particles[i * 9 - 9..i * 9]);
        let i = first_repeat.unwrap();
        assert_ne!(events.responses[i * PIXELS..(i + 1) * PIXELS], events.responses[(i - 1) * PIXELS..i * PIXELS]);
    }

    #[test]
    fn particle_types_appear_with_their_fractions() {
        assert!((SPECIES.iter().map(|s| s.fraction).sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(SPECIES.len(), 21);
        let events = generate_zdc(3, 12_000);
        let share = |pdg: i32| events.pdg.iter().filter(|&&p| p == pdg).count() as f64 / 12_000.0;
        for (pdg, expected) in [(2112, 0.23), (3122, 0.03), (310, 0.02), (3222, 0.005)] {
            assert!(share(pdg) > 0.0, "{} missing", particle_name(pdg));
            assert!((share(pdg) - expected).abs() < 0.5 * expected + 0.004, "{}: {}", particle_name(pdg), share(pdg));
        }
    }

    #[test]
    fn particle_names() {
        assert_eq!([2112, 3122, 310, 3222, 2212, 211].map(particle_name), ["n", "lambda", "k0s", "sigma+", "p", "pi+"]);
        assert_eq!(particle_name(999), "unknown");
    }

    #[test]
    fn more_energy_gives_more_photons() {
        let events = generate_zdc(4, 3000);
        let sums = photon_sums(&events);
        let energy: Vec<f64> = events.particles.chunks(FEATURES).map(|c| f64::from(c[0])).collect();
        let mean_where = |keep: &dyn Fn(f64) -> bool| {
            let sel: Vec<f64> = sums.iter().zip(&energy).filter(|(_, &e)| keep(e)).map(|(&s, _)| s).collect();
            sel.iter().sum::<f64>() / sel.len() as f64
        };
        let (low, high) = (mean_where(&|e| e < 30.0), mean_where(&|e| e > 300.0));
        assert!(high > 5.0 * low, "{low} photons below 30 GeV vs {high} above 300 GeV");
        let log_e: Vec<f64> = energy.iter().map(|e| e.ln()).collect();
        let log_s: Vec<f64> = sums.iter().map(|s| (1.0 + s).ln()).collect();
        assert!(correlation(&log_e, &log_s) > 0.6);
    }

    #[test]
    fn shower_centre_follows_the_entry_point() {
        let events = generate_zdc(7, 2000);
        let (mut centres, mut entries) = (vec![], vec![]);
        for (image, c) in events.responses.chunks(PIXELS).zip(events.particles.chunks(FEATURES)) {
            let total: f64 = image.iter().map(|&v| f64::from(v)).sum();
            if total < 20.0 {
                continue;
            }
            let x: f64 =
                image.iter().enumerate().map(|(p, &v)| f64::from(v) * pixel_centre(p / SIDE, p % SIDE)[0]).sum();
            centres.push(x / total);
            entries.push(f64::from(c[4]));
        }
        assert!(correlation(&centres, &entries) > 0.8, "{}", correlation(&centres, &entries));
    }

    #[test]
    fn odd_and_even_fibres_collect_differently() {
        let events = generate_zdc(8, 500);
        let (mut odd, mut even) = (0.0, 0.0);
        for image in events.responses.chunks(PIXELS) {
            let sums = channel_sums(image);
            odd += sums[0];
            even += sums[1..].iter().sum::<f64>();
        }
        let ratio = odd / even;
        assert!((1.15..1.35).contains(&ratio), "odd/even light {ratio}");
    }

    #[test]
    fn decaying_particles_have_more_diverse_responses() {
        let events = generate_zdc(9, 20_000);
        let sums = photon_sums(&events);
        let weak_share = |pdgs: &[i32]| {
            let (mut weak, mut all) = (0usize, 0usize);
            for (i, (&pdg, c)) in events.pdg.iter().zip(events.particles.chunks(FEATURES)).enumerate() {
                let s = species_of(pdg).unwrap();
                let primary = Primary { species: s, features: c.try_into().unwrap() };
                if pdgs.contains(&pdg) && primary.available_energy() > 50.0 {
                    all += 1;
                    weak += usize::from(sums[i] < 0.35 * photon_yield(s.physics.kind, primary.available_energy()).0);
                }
            }
            weak as f64 / all as f64
        };
        let (decaying, neutrons) = (weak_share(&[3122, 310, 3222]), weak_share(&[2112]));
        assert!(decaying > 2.0 * neutrons && decaying > 0.05, "weak: {decaying} vs neutrons {neutrons}");
    }

    #[test]
    fn split_showers_keep_light_and_centre_of_gravity() {
        let mut rng = event_rng(0, 0);
        let spot = Spot { centre: [0.5, -0.2], photons: 1000.0, core_sq: 0.09, tail_sq: 1.0, core_weight: 0.6 };
        let parts = split_spot(&spot, [ShowerKind::ChargedHadron; 2], &mut rng);
        let photons: f64 = parts.iter().map(|s| s.photons).sum();
        assert!((photons - 1000.0).abs() < 1e-9);
        for axis in 0..2 {
            let centre: f64 = parts.iter().map(|s| s.photons * s.centre[axis]).sum::<f64>() / photons;
            assert!((centre - spot.centre[axis]).abs() < 1e-9);
        }
        assert!(parts[0].centre != parts[1].centre);
    }

    #[test]
    #[ignore = "timing report; run with --ignored --nocapture"]
    fn report_rate() {
        let start = std::time::Instant::now();
        let events = generate_zdc(1, 20_000);
        println!("ZDC: {:.0} responses/s", 20_000.0 / start.elapsed().as_secs_f64());
        let sums = photon_sums(&events);
        let mut sorted = sums.clone();
        sorted.sort_by(f64::total_cmp);
        println!("photon sum: median {}, 99 % {}, max {}", sorted[10_000], sorted[19_800], sorted[19_999]);
        println!("unique conditions: {}", condition_counts(&events).len());
    }
}
