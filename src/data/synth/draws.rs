//! Random draws both synthetic detectors share: the per-event ChaCha8 stream and a Poisson sampler.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// The RNG of event `index`: its own ChaCha8 stream, independent of chunking and threads.
pub(super) fn event_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// Poisson(lambda) by inversion; normal-approximated for large lambda.
pub(super) fn sample_poisson<R: Rng>(lambda: f64, rng: &mut R) -> u32 {
    if lambda >= 30.0 {
        let z: f64 = rng.sample(StandardNormal);
        return (lambda + lambda.sqrt() * z).round().max(0.0) as u32;
    }
    let u: f64 = rng.random();
    // e^−λ ≥ 1 − λ, so the common empty case needs no exp.
    if u < 1.0 - lambda {
        return 0;
    }
    let mut p = (-lambda).exp();
    let mut cdf = p;
    let mut k = 0u32;
    while u > cdf && k < 200 {
        k += 1;
        p *= lambda / f64::from(k);
        cdf += p;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_sampler_has_the_right_moments() {
        let mut rng = event_rng(0, 0);
        for lambda in [0.05, 0.7, 4.0, 25.0, 80.0] {
            let draws: Vec<f64> = (0..40000).map(|_| f64::from(sample_poisson(lambda, &mut rng))).collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws.len() as f64;
            assert!((mean - lambda).abs() < 0.05 * lambda + 0.01, "mean {mean} for {lambda}");
            assert!((var - lambda).abs() < 0.1 * lambda + 0.01, "variance {var} for {lambda}");
        }
    }
}
