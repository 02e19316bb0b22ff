//! Learning-rate (and Adam β1) schedules as pure functions of the step.
//!
//! OneCycle follows `torch.optim.lr_scheduler.OneCycleLR(three_phase=True, anneal_strategy="cos")`
//! as iCaloFlow's code uses it: lr rises from `lr` to `max_lr` over the first `pct_start` of the
//! steps, falls back to `lr` by 2·`pct_start`, then anneals to `lr / final_div_factor`
//! ("annihilation"); β1 goes max_momentum → base_momentum → max_momentum and stays there.

use crate::config::{Schedule, TrainConfig};

/// The learning rate and β1 at optimiser step `step` (0-based) of `total_steps`, in `epoch`.
pub fn at(cfg: &TrainConfig, step: u64, total_steps: u64, epoch: usize) -> (f64, f64) {
    match cfg.schedule {
        Schedule::Constant => (cfg.lr, cfg.beta1),
        Schedule::Multistep => {
            let passed = cfg.milestones.iter().filter(|&&m| epoch >= m).count();
            (cfg.lr * cfg.gamma.powi(passed as i32), cfg.beta1)
        }
        Schedule::OneCycle => one_cycle(cfg, step, total_steps),
    }
}

fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
}

fn one_cycle(cfg: &TrainConfig, step: u64, total_steps: u64) -> (f64, f64) {
    let max_lr = cfg.max_lr.unwrap_or(cfg.lr);
    let initial = cfg.lr;
    let last = initial / cfg.final_div_factor;
    let total = total_steps.max(1) as f64;
    // torch's phase ends (inclusive step indices).
    let end1 = cfg.pct_start * total - 1.0;
    let end2 = 2.0 * cfg.pct_start * total - 2.0;
    let end3 = total - 1.0;
    let s = step as f64;
    let (lr, m) = if s <= end1 {
        let pct = if end1 > 0.0 { s / end1 } else { 1.0 };
        (cos_anneal(initial, max_lr, pct), cos_anneal(cfg.max_momentum, cfg.base_momentum, pct))
    } else if s <= end2 {
        let pct = (s - end1) / (end2 - end1).max(1e-12);
        (cos_anneal(max_lr, initial, pct), cos_anneal(cfg.base_momentum, cfg.max_momentum, pct))
    } else {
        let pct = ((s - end2) / (end3 - end2).max(1e-12)).min(1.0);
        (cos_anneal(initial, last, pct), cfg.max_momentum)
    };
    (lr, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(schedule: Schedule) -> TrainConfig {
        let text = r#"epochs = 10
batch_size = 10
lr = 2e-5
max_lr = 1e-3
milestones = [3, 6]"#;
        let mut c: TrainConfig = toml::from_str(text).unwrap();
        c.schedule = schedule;
        c
    }

    #[test]
    fn multistep_halves_at_milestones() {
        let c = cfg(Schedule::Multistep);
        assert_eq!(at(&c, 0, 100, 2).0, 2e-5);
        assert_eq!(at(&c, 0, 100, 3).0, 1e-5);
        assert_eq!(at(&c, 0, 100, 9).0, 5e-6);
    }

    #[test]
    fn one_cycle_peaks_returns_and_annihilates() {
        let c = cfg(Schedule::OneCycle);
        let total = 1000;
        let (lr0, m0) = at(&c, 0, total, 0);
        assert!((lr0 - 2e-5).abs() < 1e-12 && (m0 - 0.95).abs() < 1e-12);
        let (peak, mpeak) = at(&c, 399, total, 0);
        assert!((peak - 1e-3).abs() < 1e-12 && (mpeak - 0.85).abs() < 1e-12);
        let (back, _) = at(&c, 798, total, 0);
        assert!((back - 2e-5).abs() < 1e-12, "{back}");
        let (end, mend) = at(&c, 999, total, 0);
        assert!((end - 2e-6).abs() < 1e-12 && (mend - 0.95).abs() < 1e-12, "{end}");
        // Monotone within phases.
        assert!(at(&c, 200, total, 0).0 > at(&c, 100, total, 0).0);
        assert!(at(&c, 900, total, 0).0 < at(&c, 850, total, 0).0);
    }
}
