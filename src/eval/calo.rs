//! CaloChallenge evaluation: the official high-level features (after the official 15.15 keV
//! threshold), histogram separation power per feature, the classifier test on low- and
//! high-level inputs, and FPD / KPD on the high-level features. Files are read in chunks; the
//! low-level classifier uses at most as many events as fit a memory budget.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::calo_features::{calo_features, feature_columns, high_level_matrix, CaloFeatures, EVALUATION_THRESHOLD_MEV};
use super::classifier::{self, Rows, Settings};
use super::plots::{self, HeatPanel, HistPanel, ProfilePanel};
use super::stats::{
    frechet_distance, histogram, kernel_physics_distance, normalise_by_reference_max, normalised, separation_power,
    shared_edges,
};
use crate::data::calo::CaloFile;
use crate::data::geometry::LAYERS;
use crate::error::{Error, Result};
use crate::util::progress;

/// Bytes of voxels the low-level classifier may hold (both files together).
const LOW_LEVEL_BUDGET: usize = 512 << 20;
/// Histogram bins for separation power.
const BINS: usize = 40;

pub struct Options {
    pub classifier: Settings,
    pub device: candle_core::Device,
}

/// Features and the mean shower of a whole file, streamed.
struct Scan {
    features: CaloFeatures,
    mean_shower: Vec<f64>,
}

fn scan(f: &CaloFile, show_progress: bool, what: &str) -> Result<Scan> {
    let mut s = Scan { features: CaloFeatures::default(), mean_shower: vec![0.0; f.geometry.voxels()] };
    let pb = progress::bar(f.events as u64, what, "showers", show_progress);
    for chunk in f.chunks(f.default_chunk_events()) {
        let (_, c) = chunk?;
        s.features.append(calo_features(&f.geometry, &c.incident_energies, &c.showers, EVALUATION_THRESHOLD_MEV));
        for shower in c.showers.chunks(f.geometry.voxels()) {
            for (m, &v) in s.mean_shower.iter_mut().zip(shower) {
                *m += if (v as f64) < EVALUATION_THRESHOLD_MEV { 0.0 } else { v as f64 };
            }
        }
        pb.inc(c.len() as u64);
    }
    pb.finish_and_clear();
    s.mean_shower.iter_mut().for_each(|m| *m /= f.events as f64);
    Ok(s)
}

/// Low-level classifier rows: log10(E_inc) and voxels / E_inc (thresholded), first `n` events.
fn low_level(f: &CaloFile, n: usize) -> Result<Vec<f32>> {
    let v = f.geometry.voxels();
    let mut out = Vec::with_capacity(n * (v + 1));
    let c = f.read(0, n)?;
    for (e, shower) in c.incident_energies.iter().zip(c.showers.chunks(v)) {
        out.push(e.log10());
        out.extend(shower.iter().map(|&x| if (x as f64) < EVALUATION_THRESHOLD_MEV { 0.0 } else { x / e }));
    }
    Ok(out)
}

fn to_f32(m: &ndarray::Array2<f64>) -> Vec<f32> {
    m.iter().map(|&v| v as f32).collect()
}

pub fn evaluate(
    reference: &CaloFile,
    generated: &CaloFile,
    opts: &Options,
    plots_dir: Option<&Path>,
    show_progress: bool,
) -> Result<(Map<String, Value>, Value)> {
    if reference.geometry != generated.geometry {
        return Err(Error::format(
            &generated.path,
            format!(
                "is dataset {}; the reference {} is dataset {}",
                generated.geometry.dataset,
                reference.path.display(),
                reference.geometry.dataset
            ),
        ));
    }
    let r = scan(reference, show_progress, "reference")?;
    let g = scan(generated, show_progress, "generated")?;

    // Separation power per feature and per kind of feature.
    let (rc, gc) = (feature_columns(&r.features), feature_columns(&g.features));
    let mut per_feature = Map::new();
    let mut by_kind: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for ((name, a), (_, b)) in rc.iter().zip(&gc) {
        let edges = shared_edges(a, b, BINS);
        let sp = separation_power(&normalised(&histogram(a, &edges)), &normalised(&histogram(b, &edges)));
        per_feature.insert(name.clone(), json!(sp));
        let kind = name.rsplit_once('_').filter(|(_, l)| l.parse::<usize>().is_ok()).map_or(name.as_str(), |(k, _)| k);
        by_kind.entry(kind.to_string()).or_default().push(sp);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let all: Vec<f64> = by_kind.values().flatten().copied().collect();
    let mut sp = Map::new();
    sp.insert("mean".into(), json!(mean(&all)));
    for (k, v) in &by_kind {
        sp.insert(k.clone(), json!(mean(v)));
    }
    let mut metrics = Map::new();
    metrics.insert("separation_power".into(), Value::Object(sp));

    // FPD and KPD on the high-level features, scaled by the reference's column maxima.
    let (hr, hg) = (high_level_matrix(&r.features), high_level_matrix(&g.features));
    let (nr, ng) = normalise_by_reference_max(&hr, &hg);
    metrics.insert("fpd".into(), json!(frechet_distance(&nr, &ng)));
    let subset = hr.nrows().min(hg.nrows()).min(5000);
    let (kpd, kpd_err) = kernel_physics_distance(&hr, &hg, subset, 10, opts.classifier.seed);
    metrics.insert("kpd".into(), json!(kpd));
    let mut details = json!({
        "reference_events": reference.events,
        "generated_events": generated.events,
        "kpd_error": kpd_err,
        "separation_power_per_feature": per_feature,
    });

    if opts.classifier.epochs > 0 {
        let high = classifier::run(
            &Rows { values: &to_f32(&hr), dim: hr.ncols() },
            &Rows { values: &to_f32(&hg), dim: hg.ncols() },
            &opts.classifier,
            &opts.device,
        )?;
        let v = reference.geometry.voxels() + 1;
        let n = reference.events.min(generated.events).min(LOW_LEVEL_BUDGET / (2 * 4 * v));
        let low = classifier::run(
            &Rows { values: &low_level(reference, n)?, dim: v },
            &Rows { values: &low_level(generated, n)?, dim: v },
            &opts.classifier,
            &opts.device,
        )?;
        metrics.insert("classifier_high".into(), json!({"auc": high.auc, "jsd": high.jsd}));
        metrics.insert("classifier_low".into(), json!({"auc": low.auc, "jsd": low.jsd}));
        details["classifier"] =
            json!({"high": high, "low": low, "hidden": opts.classifier.hidden, "epochs": opts.classifier.epochs});
    }
    if let Some(dir) = plots_dir {
        draw(dir, reference, &r, &g)?;
    }
    Ok((metrics, details))
}

const SHOWN_LAYERS: [usize; 4] = [0, 9, 19, 44];

fn draw(dir: &Path, reference: &CaloFile, r: &Scan, g: &Scan) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let col = |f: &CaloFeatures, pick: &dyn Fn(&CaloFeatures, usize) -> f64| {
        (0..f.events()).map(|i| pick(f, i)).collect::<Vec<f64>>()
    };
    let hist = |title: String, xlabel: &str, pick: &dyn Fn(&CaloFeatures, usize) -> f64| HistPanel {
        title,
        xlabel: xlabel.into(),
        reference: col(&r.features, pick),
        generated: col(&g.features, pick),
    };
    let mut energy = vec![hist("E_tot / E_inc".into(), "ratio", &|f, i| f.e_total[i] / f.e_inc[i])];
    for &l in &SHOWN_LAYERS {
        energy.push(hist(format!("layer {} energy", l + 1), "log10 E / MeV", &|f, i| {
            (f.layer_energy[i][l] + 1e-8).log10()
        }));
    }
    plots::histograms(&dir.join("calo_energies.png"), "Energy depositions", &energy)?;
    let mut shape = Vec::new();
    for &l in &SHOWN_LAYERS {
        shape.push(hist(format!("layer {} centre x", l + 1), "mm", &|f, i| f.centre_x[i][l]));
    }
    for &l in &SHOWN_LAYERS {
        shape.push(hist(format!("layer {} width x", l + 1), "mm", &|f, i| f.width_x[i][l]));
    }
    plots::histograms(&dir.join("calo_centres_widths.png"), "Centres of energy and widths", &shape)?;
    let x: Vec<f64> = (1..=LAYERS).map(|l| l as f64).collect();
    let per_layer = |f: &CaloFeatures, pick: &dyn Fn(&CaloFeatures, usize, usize) -> f64| -> Vec<f64> {
        (0..LAYERS).map(|l| (0..f.events()).map(|i| pick(f, i, l)).sum::<f64>() / f.events().max(1) as f64).collect()
    };
    let profile =
        |title: &str, ylabel: &str, log_y: bool, pick: &dyn Fn(&CaloFeatures, usize, usize) -> f64| ProfilePanel {
            title: title.into(),
            xlabel: "layer".into(),
            ylabel: ylabel.into(),
            x: x.clone(),
            reference: per_layer(&r.features, pick),
            generated: per_layer(&g.features, pick),
            log_y,
        };
    plots::profiles(
        &dir.join("calo_layer_profiles.png"),
        "Per-layer means",
        &[
            profile("mean layer energy", "MeV", true, &|f, i, l| f.layer_energy[i][l]),
            profile("mean sparsity", "fraction of zero voxels", false, &|f, i, l| f.sparsity[i][l]),
            profile("mean width x", "mm", false, &|f, i, l| f.width_x[i][l]),
            profile("mean radial centre", "mm", false, &|f, i, l| f.centre_r[i][l]),
        ],
    )?;
    let geo = &reference.geometry;
    let v = geo.voxels_per_layer();
    let mut heat = Vec::new();
    for &l in &SHOWN_LAYERS {
        for (name, s) in [("reference", r), ("generated", g)] {
            heat.push(HeatPanel {
                title: format!("{name}: layer {} (rows r, columns α)", l + 1),
                values: transpose_layer(&s.mean_shower[l * v..(l + 1) * v], geo.n_alpha, geo.n_r),
                rows: geo.n_r,
                cols: geo.n_alpha,
            });
        }
    }
    plots::heatmaps(&dir.join("calo_mean_showers.png"), "Mean shower per voxel (log10 MeV)", &heat)
}

/// A layer's voxels (α major, r minor) as rows of r.
fn transpose_layer(layer: &[f64], n_alpha: usize, n_r: usize) -> Vec<f64> {
    let mut out = vec![0.0; layer.len()];
    for a in 0..n_alpha {
        for r in 0..n_r {
            out[(n_r - 1 - r) * n_alpha + a] = layer[a * n_r + r];
        }
    }
    out
}
