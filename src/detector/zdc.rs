//! The ZDC flow's conditions: the 9 particle features and the response's photon sum,
//! standardised with the model's condition scaler.

use crate::data::preprocess::Standardizer;
use crate::data::zdc::FEATURES;

/// Flow conditions: 9 particle features + photon sum.
pub const CONTEXT: usize = FEATURES + 1;

/// The raw (unstandardised) conditions of one response.
pub fn raw_condition(features: &[f32], photon_sum: f32) -> [f32; CONTEXT] {
    let mut c = [0f32; CONTEXT];
    c[..FEATURES].copy_from_slice(features);
    c[FEATURES] = photon_sum;
    c
}

/// The standardised conditions of one response, written to `out` (CONTEXT values).
pub fn condition(scaler: &Standardizer, features: &[f32], photon_sum: f32, out: &mut [f32]) {
    scaler.apply(&raw_condition(features, photon_sum), out);
}

/// The standardised conditions (n × CONTEXT) of `particles` (n × 9) with their photon sums.
pub fn conditions(scaler: &Standardizer, particles: &[f32], sums: &[f32]) -> Vec<f32> {
    let mut ctx = vec![0f32; sums.len() * CONTEXT];
    for ((out, features), &s) in ctx.chunks_mut(CONTEXT).zip(particles.chunks(FEATURES)).zip(sums) {
        condition(scaler, features, s, out);
    }
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_standardise_features_then_the_photon_sum() {
        let scaler = Standardizer { mean: (0..CONTEXT).map(|i| i as f64).collect(), std: vec![2.0; CONTEXT] };
        let particles: Vec<f32> = (0..2 * FEATURES).map(|i| i as f32).collect();
        let c = conditions(&scaler, &particles, &[100.0, 300.0]);
        assert_eq!(c.len(), 2 * CONTEXT);
        // Feature j of event k is 9k + j, its mean j: (9k + j − j) / 2.
        assert_eq!(c[3], 0.0);
        assert_eq!(c[CONTEXT + 3], 4.5);
        assert_eq!(c[FEATURES], (100.0 - 9.0) / 2.0);
        assert_eq!(c[CONTEXT + FEATURES], (300.0 - 9.0) / 2.0);
    }
}
