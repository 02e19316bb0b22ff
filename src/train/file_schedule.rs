//! Per-file epoch schedules (`epochs_per_file = [20, 20]`): the iCaloFlow paper trains dataset 3's
//! Flow-3 20 epochs on `dataset_3_1.hdf5`, then 20 on `dataset_3_2.hdf5` (students 15 + 15). Each
//! phase visits the training showers of one file; the epoch counter runs on across phases, so the
//! epoch in a checkpoint fixes the phase, and the checkpoint records the schedule it belongs to.

use super::batches::{batches_per_epoch, RowSource};
use crate::config::TrainConfig;
use crate::error::{Error, Result};

/// One phase: its epochs and the training events (of one file, or all of them).
struct Phase {
    epochs: usize,
    events: Vec<usize>,
    steps: usize,
}

/// The training events and batches of every epoch of a run.
pub struct FilePhases {
    phases: Vec<Phase>,
    /// Whether the run follows `epochs_per_file` (else one phase over the whole split).
    pub per_file: bool,
}

impl FilePhases {
    /// Phases for `cfg` over `train_events`; `epochs_per_file` needs one entry per data file.
    pub fn new(unit: &str, cfg: &TrainConfig, source: &dyn RowSource, train_events: &[usize]) -> Result<Self> {
        let steps = |events: &[usize]| {
            let s = batches_per_epoch(source, events.len(), cfg.batch_size);
            if cfg.max_batches > 0 {
                s.min(cfg.max_batches)
            } else {
                s
            }
        };
        if cfg.epochs_per_file.is_empty() {
            let phase = Phase { epochs: cfg.epochs, events: train_events.to_vec(), steps: steps(train_events) };
            if phase.steps == 0 {
                return Err(Error::Invalid(format!("{unit}: the training split is empty")));
            }
            return Ok(Self { phases: vec![phase], per_file: false });
        }
        let parts = source.by_file(train_events);
        if parts.len() != cfg.epochs_per_file.len() {
            return Err(Error::config(
                format!("{unit}.train.epochs_per_file"),
                format!("has {} entries but the data has {} files", cfg.epochs_per_file.len(), parts.len()),
            ));
        }
        let mut phases = Vec::with_capacity(parts.len());
        for (k, (events, &epochs)) in parts.into_iter().zip(&cfg.epochs_per_file).enumerate() {
            let s = steps(&events);
            if s == 0 {
                return Err(Error::Invalid(format!("{unit}: data file {} has no training showers", k + 1)));
            }
            phases.push(Phase { epochs, events, steps: s });
        }
        Ok(Self { phases, per_file: true })
    }

    /// The phase (0-based) of `epoch` (0-based; past the end: the last).
    pub fn phase_of(&self, epoch: usize) -> usize {
        let mut end = 0;
        for (k, p) in self.phases.iter().enumerate() {
            end += p.epochs;
            if epoch < end {
                return k;
            }
        }
        self.phases.len() - 1
    }

    /// The first epoch of phase `k`.
    pub fn first_epoch(&self, k: usize) -> usize {
        self.phases[..k].iter().map(|p| p.epochs).sum()
    }

    pub fn events(&self, epoch: usize) -> &[usize] {
        &self.phases[self.phase_of(epoch)].events
    }

    pub fn steps(&self, epoch: usize) -> usize {
        self.phases[self.phase_of(epoch)].steps
    }

    /// Optimiser steps of the whole run (OneCycle's length).
    pub fn total_steps(&self) -> u64 {
        self.phases.iter().map(|p| (p.epochs * p.steps) as u64).sum()
    }

    /// "epochs 1–20 on file 1 (700 training showers)", for the log.
    pub fn describe(&self, k: usize) -> String {
        let first = self.first_epoch(k);
        let p = &self.phases[k];
        format!(
            "epochs {}–{} on data file {} ({} training showers)",
            first + 1,
            first + p.epochs,
            k + 1,
            p.events.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::batches::Rows;
    use rand_chacha::ChaCha8Rng;

    /// Events below 10 are in file 1, the rest in file 2.
    struct TwoFiles;

    impl RowSource for TwoFiles {
        fn x_dim(&self) -> usize {
            1
        }
        fn ctx_dim(&self) -> usize {
            0
        }
        fn rows_per_event(&self) -> usize {
            1
        }
        fn block_events(&self) -> usize {
            4
        }
        fn rows(&self, _events: &[usize], _rng: &mut ChaCha8Rng) -> Result<Rows> {
            unreachable!("not read")
        }
        fn by_file(&self, events: &[usize]) -> Vec<Vec<usize>> {
            let (a, b) = events.iter().partition(|&&e| e < 10);
            vec![a, b]
        }
    }

    fn cfg(epochs_per_file: &str) -> TrainConfig {
        toml::from_str(&format!("epochs = 1\nbatch_size = 2\nlr = 1e-3\nepochs_per_file = {epochs_per_file}")).unwrap()
    }

    #[test]
    fn epochs_visit_the_files_in_turn() {
        let events: Vec<usize> = (0..16).collect();
        let p = FilePhases::new("flow3", &cfg("[2, 3]"), &TwoFiles, &events).unwrap();
        assert!(p.per_file);
        assert_eq!((0..6).map(|e| p.phase_of(e)).collect::<Vec<_>>(), vec![0, 0, 1, 1, 1, 1]);
        assert_eq!(p.events(1), &(0..10).collect::<Vec<_>>()[..]);
        assert_eq!(p.events(2), &(10..16).collect::<Vec<_>>()[..]);
        // 10 showers in batches of 2 → 5 steps; 6 → 3.
        assert_eq!((p.steps(0), p.steps(4)), (5, 3));
        assert_eq!(p.total_steps(), 2 * 5 + 3 * 3);
        assert_eq!(p.describe(1), "epochs 3–5 on data file 2 (6 training showers)");
    }

    #[test]
    fn a_schedule_must_name_every_file() {
        let err = FilePhases::new("flow3", &cfg("[2, 3, 1]"), &TwoFiles, &[0, 11]).err().unwrap();
        assert!(err.to_string().contains("3 entries but the data has 2 files"), "{err}");
        let err = FilePhases::new("flow3", &cfg("[2, 3]"), &TwoFiles, &[0, 1]).err().unwrap();
        assert!(err.to_string().contains("data file 2 has no training showers"), "{err}");
    }
}
