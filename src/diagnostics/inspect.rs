//! What `zdcflow inspect` reports: a file's format, every event validated (streaming), a summary.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::data::calo::CaloFile;
use crate::data::open::DataFile;
use crate::data::split::group_identical;
use crate::data::zdc::{self, ZdcFile, FEATURES, FEATURE_NAMES};
use crate::error::Result;
use crate::util::progress;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Range {
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

impl Range {
    fn of(values: impl Iterator<Item = f64>) -> Self {
        let (mut min, mut max, mut sum, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0usize);
        for v in values {
            min = min.min(v);
            max = max.max(v);
            sum += v;
            n += 1;
        }
        Self { min, mean: sum / n.max(1) as f64, max }
    }
}

#[derive(Debug, Serialize)]
pub struct CaloSummary {
    pub path: String,
    pub dataset: u8,
    pub events: usize,
    pub voxels: usize,
    pub incident_energy_mev: Range,
    /// Total deposited energy / incident energy.
    pub energy_ratio: Range,
    /// Mean fraction of zero voxels, per layer.
    pub sparsity_per_layer: Vec<f64>,
    /// Mean energy per layer (MeV).
    pub mean_layer_energy_mev: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct ZdcSummary {
    pub path: String,
    pub layout: &'static str,
    pub events: usize,
    pub unique_conditions: usize,
    pub responses_per_condition: Range,
    pub photon_sum: Range,
    pub particles_by_pdg: BTreeMap<i32, usize>,
    pub features: Vec<(&'static str, Range)>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum FileSummary {
    #[serde(rename = "calochallenge")]
    Calo(CaloSummary),
    Zdc(ZdcSummary),
}

pub fn inspect(path: &Path, show_progress: bool) -> Result<FileSummary> {
    Ok(match DataFile::open(path)? {
        DataFile::Calo(f) => FileSummary::Calo(summarise_calo(&f, show_progress)?),
        DataFile::Zdc(f) => FileSummary::Zdc(summarise_zdc(&f, show_progress)?),
    })
}

fn summarise_calo(f: &CaloFile, show_progress: bool) -> Result<CaloSummary> {
    let g = &f.geometry;
    let per_layer = g.voxels_per_layer();
    let mut sparsity = vec![0.0; g.layers];
    let mut layer_energy = vec![0.0; g.layers];
    let mut e_inc = Vec::with_capacity(f.events);
    let mut ratio = Vec::with_capacity(f.events);
    let pb = progress::bar(f.events as u64, "inspecting", "events", show_progress);
    for chunk in f.chunks(f.default_chunk_events()) {
        let (_, c) = chunk?;
        for (e, shower) in c.incident_energies.iter().zip(c.showers.chunks(g.voxels())) {
            let mut total = 0.0;
            for (l, layer) in shower.chunks(per_layer).enumerate() {
                let s: f64 = layer.iter().map(|&v| v as f64).sum();
                total += s;
                layer_energy[l] += s;
                sparsity[l] += layer.iter().filter(|&&v| v == 0.0).count() as f64 / per_layer as f64;
            }
            e_inc.push(*e as f64);
            ratio.push(total / *e as f64);
        }
        pb.inc(c.len() as u64);
    }
    pb.finish_and_clear();
    let n = f.events as f64;
    Ok(CaloSummary {
        path: f.path.display().to_string(),
        dataset: g.dataset,
        events: f.events,
        voxels: g.voxels(),
        incident_energy_mev: Range::of(e_inc.into_iter()),
        energy_ratio: Range::of(ratio.into_iter()),
        sparsity_per_layer: sparsity.into_iter().map(|s| s / n).collect(),
        mean_layer_energy_mev: layer_energy.into_iter().map(|s| s / n).collect(),
    })
}

fn summarise_zdc(f: &ZdcFile, show_progress: bool) -> Result<ZdcSummary> {
    // Read every response once: validates them (finite, ≥ 0) without holding the file in memory.
    let pb = progress::bar(f.events as u64, "inspecting", "events", show_progress);
    let step = 8192;
    for s in (0..f.events).step_by(step) {
        f.read_responses(s, s + step)?;
        pb.inc(step.min(f.events - s) as u64);
    }
    pb.finish_and_clear();
    let c = &f.conditions;
    let groups = group_identical(&c.particles, FEATURES);
    let mut particles_by_pdg = BTreeMap::new();
    for &p in &c.pdg {
        *particles_by_pdg.entry(p).or_insert(0) += 1;
    }
    let features = FEATURE_NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| (*name, Range::of(c.particles.chunks(FEATURES).map(|r| r[i] as f64))))
        .collect();
    Ok(ZdcSummary {
        path: f.path.display().to_string(),
        layout: if zdc::is_npz(&f.path) { "npz pair" } else { "zdcflow hdf5" },
        events: f.events,
        unique_conditions: groups.counts.len(),
        responses_per_condition: Range::of(groups.counts.iter().map(|&n| n as f64)),
        photon_sum: Range::of(c.photon_sum.iter().map(|&v| v as f64)),
        particles_by_pdg,
        features,
    })
}

/// The human-readable form of a summary.
pub fn render(s: &FileSummary) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    match s {
        FileSummary::Calo(c) => {
            line(format!("{}: CaloChallenge dataset {} — valid", c.path, c.dataset));
            line(format!("  events              {}", c.events));
            line(format!("  voxels per event    {} (45 layers)", c.voxels));
            let e = &c.incident_energy_mev;
            line(format!(
                "  E_inc               {:.3} – {:.3} GeV (mean {:.3} GeV)",
                e.min / 1e3,
                e.max / 1e3,
                e.mean / 1e3
            ));
            let r = &c.energy_ratio;
            line(format!("  E_dep / E_inc       {:.3} – {:.3} (mean {:.3})", r.min, r.max, r.mean));
            line("  mean sparsity (fraction of zero voxels) per layer:".into());
            for (row, chunk) in c.sparsity_per_layer.chunks(9).enumerate() {
                let vals: Vec<String> = chunk.iter().map(|v| format!("{v:.2}")).collect();
                line(format!("    layers {:>2}–{:>2}: {}", row * 9 + 1, row * 9 + chunk.len(), vals.join(" ")));
            }
        }
        FileSummary::Zdc(z) => {
            line(format!("{}: ZDC ({}) — valid", z.path, z.layout));
            line(format!("  events              {}", z.events));
            let r = &z.responses_per_condition;
            line(format!(
                "  unique conditions   {} ({:.0}–{:.0} responses each, mean {:.1})",
                z.unique_conditions, r.min, r.max, r.mean
            ));
            let p = &z.photon_sum;
            line(format!("  photon sum          {:.0} – {:.0} (mean {:.1})", p.min, p.max, p.mean));
            let parts: Vec<String> = z
                .particles_by_pdg
                .iter()
                .map(|(k, v)| format!("{} ({k}): {v}", crate::data::synth::zdc::particle_name(*k)))
                .collect();
            line(format!("  events by particle  {}", parts.join(", ")));
            for (name, r) in &z.features {
                line(format!("  {name:<8}            {:.4} – {:.4} (mean {:.4})", r.min, r.max, r.mean));
            }
        }
    }
    out
}
