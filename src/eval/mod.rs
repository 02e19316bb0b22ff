//! Evaluation: the papers' metrics on generated versus reference showers, figures, and the
//! regression gate that CI jobs run (`zdcflow evaluate` is in [`crate::commands`]).

pub mod calo;
pub mod calo_features;
pub mod calo_features_out;
pub mod calo_hist;
pub mod calo_plots;
pub mod calo_profile;
pub mod classifier;
pub mod photon_total;
pub mod plots;
pub mod report;
pub mod stats;
pub mod zdc;
pub mod zdc_metrics;

use std::path::Path;

use crate::data::h5;
use crate::data::open::DataFile;
use report::{FileInfo, MetricsFile};

/// What a data file holds, for messages.
pub fn describe(f: &DataFile) -> String {
    match f {
        DataFile::Calo(c) => format!("CaloChallenge dataset {}", c.geometry.dataset),
        DataFile::Zdc(_) => "ZDC".into(),
    }
}

/// How the metrics file names an input file.
pub fn info(path: &Path, events: usize) -> FileInfo {
    let attrs = crate::data::zdc::is_npz(path).then_some(()).map_or_else(|| h5::open(path).ok(), |_| None);
    FileInfo {
        path: path.display().to_string(),
        events,
        model: attrs.as_ref().and_then(|f| h5::get_attr(f, "model")),
        seed: attrs.as_ref().and_then(|f| h5::get_attr(f, "seed")),
    }
}

/// The metrics as an aligned two-column table.
pub fn render(m: &MetricsFile) -> String {
    let rows = report::flatten(&m.metrics);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut s = format!(
        "{} — generated {} ({} events) vs reference {} ({} events)\n",
        m.detector, m.generated.path, m.generated.events, m.reference.path, m.reference.events
    );
    for (k, v) in rows {
        s.push_str(&format!("  {k:<width$}  {v:.6}\n"));
    }
    s.push_str(&zdc::floor_lines(&m.details));
    s
}
