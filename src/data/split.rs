//! Seeded train/validation/test splits, ZDC particle subsets and unique-condition grouping.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Which part of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Train,
    Val,
    Test,
}

/// Event indices of each part, ascending.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

impl Split {
    pub fn part(&self, p: Part) -> &[usize] {
        match p {
            Part::Train => &self.train,
            Part::Val => &self.val,
            Part::Test => &self.test,
        }
    }
}

/// Shuffles `candidates` with `seed` and cuts them by `fractions` (train, val, test; the test
/// part takes the remainder). The same inputs give the same split on every machine.
pub fn split(candidates: &[usize], fractions: [f64; 3], seed: u64) -> Split {
    let mut order = candidates.to_vec();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n = order.len();
    let n_train = ((fractions[0] * n as f64).round() as usize).min(n);
    let n_val = ((fractions[1] * n as f64).round() as usize).min(n - n_train);
    let n_test = if fractions[2] > 0.0 { n - n_train - n_val } else { 0 };
    let take = |range: std::ops::Range<usize>| {
        let mut v = order[range].to_vec();
        v.sort_unstable();
        v
    };
    Split {
        train: take(0..n_train),
        val: take(n_train..n_train + n_val),
        test: take(n_train + n_val..n_train + n_val + n_test),
    }
}

/// Checks split fractions: each in [0, 1], summing to at most 1, with a non-empty training part.
pub fn validate_fractions(f: [f64; 3]) -> Result<(), String> {
    if f.iter().any(|v| !(0.0..=1.0).contains(v)) || f.iter().sum::<f64>() > 1.0 + 1e-9 || f[0] <= 0.0 {
        return Err(format!("{f:?}: need three fractions in [0, 1] with train > 0 and a sum ≤ 1"));
    }
    Ok(())
}

/// The ZDC particle groups of the paper (by PDG code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Particles {
    #[default]
    #[serde(rename = "all")]
    All,
    #[serde(rename = "n")]
    Neutron,
    #[serde(rename = "lambda")]
    Lambda,
    #[serde(rename = "k0s")]
    K0Short,
    #[serde(rename = "sigma+")]
    SigmaPlus,
}

impl Particles {
    pub fn pdg(self) -> Option<i32> {
        match self {
            Particles::All => None,
            Particles::Neutron => Some(2112),
            Particles::Lambda => Some(3122),
            Particles::K0Short => Some(310),
            Particles::SigmaPlus => Some(3222),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Particles::All => "all",
            Particles::Neutron => "n",
            Particles::Lambda => "lambda",
            Particles::K0Short => "k0s",
            Particles::SigmaPlus => "sigma+",
        }
    }

    /// Indices of the events of this group.
    pub fn select(self, pdg: &[i32]) -> Vec<usize> {
        match self.pdg() {
            None => (0..pdg.len()).collect(),
            Some(code) => pdg.iter().enumerate().filter(|(_, &p)| p == code).map(|(i, _)| i).collect(),
        }
    }
}

/// Groups of identical condition vectors (bitwise equal floats).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Groups {
    /// Group id of each row.
    pub of_row: Vec<usize>,
    /// Rows per group.
    pub counts: Vec<usize>,
}

/// Groups `rows` (width `cols`) by identical values.
pub fn group_identical(rows: &[f32], cols: usize) -> Groups {
    let mut ids: HashMap<Vec<u32>, usize> = HashMap::new();
    let mut groups = Groups::default();
    for r in rows.chunks(cols) {
        let key: Vec<u32> = r.iter().map(|v| v.to_bits()).collect();
        let next = ids.len();
        let id = *ids.entry(key).or_insert(next);
        if id == groups.counts.len() {
            groups.counts.push(0);
        }
        groups.counts[id] += 1;
        groups.of_row.push(id);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sizes_are_exact_and_deterministic() {
        let idx: Vec<usize> = (0..1000).collect();
        let s = split(&idx, [0.7, 0.1, 0.2], 5);
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (700, 100, 200));
        assert_eq!(s, split(&idx, [0.7, 0.1, 0.2], 5));
        assert_ne!(s.train, split(&idx, [0.7, 0.1, 0.2], 6).train);
        let mut all: Vec<usize> = s.train.iter().chain(&s.val).chain(&s.test).copied().collect();
        all.sort();
        assert_eq!(all, idx, "parts are disjoint and cover every event");
        let no_test = split(&idx, [0.7, 0.3, 0.0], 5);
        assert_eq!((no_test.train.len(), no_test.val.len(), no_test.test.len()), (700, 300, 0));
    }

    #[test]
    fn particle_subsets_select_by_pdg() {
        let pdg = [2112, 22, 3122, 2112, 310, 3222];
        assert_eq!(Particles::Neutron.select(&pdg), vec![0, 3]);
        assert_eq!(Particles::SigmaPlus.select(&pdg), vec![5]);
        assert_eq!(Particles::All.select(&pdg).len(), 6);
    }

    #[test]
    fn identical_rows_share_a_group() {
        let rows = [1.0f32, 2.0, 3.0, 4.0, 1.0, 2.0, 1.0, 2.5];
        let g = group_identical(&rows, 2);
        assert_eq!(g.of_row, vec![0, 1, 0, 2]);
        assert_eq!(g.counts, vec![2, 1, 1]);
    }
}
