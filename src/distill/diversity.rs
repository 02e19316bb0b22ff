//! Inverse-diversity weights (ZDC paper eq. 1, 3), computed once from the training split.
//!
//! f_div(c) = Σ_ij sqrt(Σ_t (x_ij^t − μ_ij)² / |X_c|) per unique condition c (the responses'
//! photon counts), weight(c) = [1/f_div]_norm · |X_c| + ε, applied to every training sample of c.
//! Responses are read a batch of conditions at a time, so memory stays bounded.

use std::path::Path;

use serde::Serialize;

use crate::data::channels::PIXELS;
use crate::data::split::group_identical;
use crate::data::zdc::{ZdcFile, FEATURES};
use crate::error::Result;
use crate::eval::zdc_metrics::{diversity, inverse_diversity_weights_with, ZeroDiversity};
use crate::util::atomic;

/// Responses read per batch of conditions.
const EVENTS_PER_BATCH: usize = 32_768;

#[derive(Clone, Debug, Serialize)]
pub struct DiversityWeights {
    pub eps: f64,
    /// Per unique training condition.
    pub f_div: Vec<f64>,
    pub counts: Vec<usize>,
    pub weights: Vec<f64>,
    /// Weight of every event of the file (0 outside the training split).
    #[serde(skip)]
    pub per_event: Vec<f32>,
}

pub fn compute(file: &ZdcFile, train: &[usize], eps: f64) -> Result<DiversityWeights> {
    compute_with(file, train, eps, ZeroDiversity::Top)
}

/// [`compute`] for the events `train` (any split: validation conditions get their own weights the
/// same way) with the f_div = 0 rule chosen.
pub fn compute_with(file: &ZdcFile, train: &[usize], eps: f64, zero: ZeroDiversity) -> Result<DiversityWeights> {
    let rows: Vec<f32> = train.iter().flat_map(|&e| file.conditions.row(e).iter().copied()).collect();
    let groups = group_identical(&rows, FEATURES);
    let n_groups = groups.counts.len();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_groups];
    for (k, &g) in groups.of_row.iter().enumerate() {
        members[g].push(train[k]);
    }
    let mut f_div = vec![0.0; n_groups];
    let mut g = 0;
    while g < n_groups {
        // A batch of whole conditions.
        let mut end = g;
        let mut events = 0;
        while end < n_groups && (events == 0 || events + members[end].len() <= EVENTS_PER_BATCH) {
            events += members[end].len();
            end += 1;
        }
        let mut tagged: Vec<(usize, usize)> =
            (g..end).flat_map(|c| members[c].iter().map(move |&e| (e, c - g))).collect();
        tagged.sort_unstable();
        let indices: Vec<usize> = tagged.iter().map(|t| t.0).collect();
        let local: Vec<usize> = tagged.iter().map(|t| t.1).collect();
        let images = file.read_responses_at(&indices)?;
        debug_assert_eq!(images.len(), indices.len() * PIXELS);
        f_div[g..end].copy_from_slice(&diversity(&images, &local, end - g));
        g = end;
    }
    let weights = inverse_diversity_weights_with(&f_div, &groups.counts, eps, zero);
    let mut per_event = vec![0f32; file.events];
    for (k, &grp) in groups.of_row.iter().enumerate() {
        per_event[train[k]] = weights[grp] as f32;
    }
    Ok(DiversityWeights { eps, f_div, counts: groups.counts, weights, per_event })
}

impl DiversityWeights {
    /// Saves the per-condition values as JSON (for inspection and for the record).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string(self).expect("weights serialise");
        atomic::write_bytes(path, text.as_bytes())
    }
}
