//! Value checks every file format applies to what it reads.

use std::path::Path;

use crate::error::{Error, Result};

/// Checks that every value is finite and ≥ 0, naming the first bad event.
pub fn check_energies(path: &Path, dataset: &str, values: &[f32], per_event: usize, first: usize) -> Result<()> {
    check_non_negative(path, dataset, values, per_event, first, "energy", " MeV")
}

/// Like [`check_energies`], for ZDC photon counts.
pub fn check_photon_counts(path: &Path, dataset: &str, values: &[f32], per_event: usize, first: usize) -> Result<()> {
    check_non_negative(path, dataset, values, per_event, first, "photon count", "")
}

fn check_non_negative(
    path: &Path,
    dataset: &str,
    values: &[f32],
    per_event: usize,
    first: usize,
    quantity: &str,
    unit: &str,
) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite() || *v < 0.0) {
        let v = values[i];
        let what = if v.is_finite() {
            format!("a negative {quantity} ({v}{unit})")
        } else {
            format!("a non-finite value ({v})")
        };
        return Err(Error::data(path, dataset, format!("event {} holds {what}", first + i / per_event.max(1))));
    }
    Ok(())
}
