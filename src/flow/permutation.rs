//! Feature permutations between blocks: nflows' `ReversePermutation` and `RandomPermutation`
//! (here from a seed, so a model can be rebuilt), applied as `xs[:, perm]`.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How the permutations between blocks are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PermutationScheme {
    /// Reversal after even blocks, a seeded random permutation after odd ones (both papers).
    #[default]
    Alternating,
    Reverse,
    Random,
    None,
}

/// The index vectors between `blocks` blocks (none after the last).
pub fn make_permutations(scheme: PermutationScheme, features: usize, blocks: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let reverse = || (0..features).rev().collect::<Vec<_>>();
    let random = |rng: &mut ChaCha8Rng| {
        let mut p: Vec<usize> = (0..features).collect();
        p.shuffle(rng);
        p
    };
    (0..blocks.saturating_sub(1))
        .map(|i| match scheme {
            PermutationScheme::Alternating if i % 2 == 0 => reverse(),
            PermutationScheme::Alternating | PermutationScheme::Random => random(&mut rng),
            PermutationScheme::Reverse => reverse(),
            PermutationScheme::None => (0..features).collect(),
        })
        .collect()
}

/// Checks that `perm` is a permutation of 0..features.
pub fn is_permutation(perm: &[usize], features: usize) -> bool {
    let mut seen = vec![false; features];
    perm.len() == features && perm.iter().all(|&i| i < features && !std::mem::replace(&mut seen[i], true))
}

pub struct Permutation {
    forward: Tensor,
    inverse: Tensor,
}

impl Permutation {
    pub fn new(perm: &[usize], device: &Device) -> candle_core::Result<Self> {
        let mut inv = vec![0u32; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i as u32;
        }
        let fwd: Vec<u32> = perm.iter().map(|&p| p as u32).collect();
        Ok(Self { forward: Tensor::new(fwd, device)?, inverse: Tensor::new(inv, device)? })
    }

    /// `xs[:, perm]` (towards the latent side).
    pub fn apply(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.index_select(&self.forward, 1)
    }

    /// The inverse (towards the data side).
    pub fn undo(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.index_select(&self.inverse, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternating_permutations_start_with_reversal_and_are_seeded() {
        let p = make_permutations(PermutationScheme::Alternating, 5, 4, 7);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0], vec![4, 3, 2, 1, 0]);
        assert_eq!(p[2], vec![4, 3, 2, 1, 0]);
        assert!(is_permutation(&p[1], 5));
        assert_eq!(p, make_permutations(PermutationScheme::Alternating, 5, 4, 7));
        assert_ne!(p[1], make_permutations(PermutationScheme::Alternating, 5, 4, 8)[1]);
    }

    #[test]
    fn permutation_undo_inverts_apply() -> candle_core::Result<()> {
        let perm = Permutation::new(&[2, 0, 1], &Device::Cpu)?;
        let x = Tensor::new(&[[10f32, 20., 30.]], &Device::Cpu)?;
        let y = perm.apply(&x)?;
        assert_eq!(y.to_vec2::<f32>()?, vec![vec![30., 10., 20.]]);
        assert_eq!(perm.undo(&y)?.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
        Ok(())
    }
}
