//! CaloChallenge evaluation, as the official `evaluate.py` computes it: the high-level features
//! (after the official 15.15 keV threshold), histogram separation power on the official binning
//! per histogram (`calo_hist`), the classifier tests `cls-low`, `cls-low-normed` and `cls-high`
//! (`classifier`), and — an extension, also in `evaluate.py` via JetNet — FPD / KPD on the
//! high-level features. Files are read in chunks; classifier rows stream into a temporary file
//! when they do not fit [`classifier::MEMORY_ROWS_BYTES`], so no input is silently cut.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::calo_features::{calo_features, feature_columns, high_level_matrix, CaloFeatures, EVALUATION_THRESHOLD_MEV};
use super::calo_hist::{kind_of, log_edges, Binned, Compared};
use super::calo_profile::{LayerProfile, ProfileErrors, PROFILE_LAYERS};
use super::classifier::{self, RowStore, RowWriter, Settings};
use super::stats::{frechet_distance, kernel_physics_distance, normalise_by_reference_max};
use crate::data::calo::CaloFile;
use crate::data::geometry::LAYERS;
use crate::error::{Error, Result};
use crate::util::progress;

/// The classifier inputs of `evaluate.py`'s modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassifierInput {
    /// `cls-low`: log10 E_inc, voxels / E_inc.
    Low,
    /// `cls-low-normed`: log10 E_inc, voxels / (E_layer + 1e-16), log10(E_layer + 1e-8).
    LowNormed,
    /// `cls-high`: `prepare_high_data_for_classifier`.
    High,
}

impl ClassifierInput {
    pub fn key(self) -> &'static str {
        match self {
            Self::Low => "classifier_low",
            Self::LowNormed => "classifier_low_normed",
            Self::High => "classifier_high",
        }
    }
}

pub struct Options {
    pub classifier: Settings,
    /// Which classifier tests to run (none: skip them).
    pub inputs: Vec<ClassifierInput>,
    /// Independent classifier runs per test (mean ± std reported).
    pub runs: usize,
    /// Use only the first this many showers per class for the classifier (None: all).
    pub showers: Option<usize>,
    pub features_out: Option<std::path::PathBuf>,
    pub device: candle_core::Device,
}

/// Features, the mean shower and the voxel-energy histogram of a whole file, streamed.
pub struct Scan {
    pub features: CaloFeatures,
    pub mean_shower: Vec<f64>,
    pub max_voxel: f64,
    pub voxels: Option<Binned>,
}

/// One pass over `f`: features and mean shower; the voxel histogram on `voxel_edges` if given.
fn scan(f: &CaloFile, voxel_edges: Option<&[f64]>, show_progress: bool, what: &str) -> Result<Scan> {
    let mut s = Scan {
        features: CaloFeatures::default(),
        mean_shower: vec![0.0; f.geometry.voxels()],
        max_voxel: 0.0,
        voxels: voxel_edges.map(|e| Binned::new(e.len() - 1)),
    };
    let pb = progress::bar(f.events as u64, what, "showers", show_progress);
    for chunk in f.chunks(f.default_chunk_events()) {
        let (_, c) = chunk?;
        s.features.append(calo_features(&f.geometry, &c.incident_energies, &c.showers, EVALUATION_THRESHOLD_MEV));
        let thresholded: Vec<f64> =
            c.showers.iter().map(|&v| if (v as f64) < EVALUATION_THRESHOLD_MEV { 0.0 } else { v as f64 }).collect();
        for shower in thresholded.chunks(f.geometry.voxels()) {
            for (m, &v) in s.mean_shower.iter_mut().zip(shower) {
                *m += v;
                s.max_voxel = s.max_voxel.max(v);
            }
        }
        if let (Some(b), Some(e)) = (&mut s.voxels, voxel_edges) {
            b.add(&thresholded, e);
        }
        pb.inc(c.len() as u64);
    }
    pb.finish_and_clear();
    s.mean_shower.iter_mut().for_each(|m| *m /= f.events.max(1) as f64);
    Ok(s)
}

/// The voxel-energy histogram of `f` on `edges` (thresholded voxels; zeros fall below the edges).
fn voxel_histogram(f: &CaloFile, edges: &[f64]) -> Result<Binned> {
    let mut b = Binned::new(edges.len() - 1);
    for chunk in f.chunks(f.default_chunk_events()) {
        let (_, c) = chunk?;
        let v: Vec<f64> =
            c.showers.iter().map(|&v| if (v as f64) < EVALUATION_THRESHOLD_MEV { 0.0 } else { v as f64 }).collect();
        b.add(&v, edges);
    }
    Ok(b)
}

/// Classifier rows of the first `n` showers of `f` for `input`, streamed chunk by chunk.
fn classifier_rows(f: &CaloFile, features: &CaloFeatures, n: usize, input: ClassifierInput) -> Result<RowStore> {
    let geo = &f.geometry;
    let (v, per_layer) = (geo.voxels(), geo.voxels_per_layer());
    match input {
        ClassifierInput::High => {
            let m = high_level_matrix(features);
            let mut w = RowWriter::new(m.ncols(), n)?;
            for row in m.rows().into_iter().take(n) {
                w.push(&row.iter().map(|&x| x as f32).collect::<Vec<f32>>())?;
            }
            w.finish()
        }
        ClassifierInput::Low | ClassifierInput::LowNormed => {
            let normed = input == ClassifierInput::LowNormed;
            let dim = 1 + v + if normed { LAYERS } else { 0 };
            let mut w = RowWriter::new(dim, n)?;
            let mut row = Vec::with_capacity(dim);
            let chunk = f.default_chunk_events();
            for start in (0..n).step_by(chunk) {
                let c = f.read(start, (start + chunk).min(n))?;
                for (k, (e, shower)) in c.incident_energies.iter().zip(c.showers.chunks(v)).enumerate() {
                    row.clear();
                    row.push(e.log10());
                    if normed {
                        // evaluate.py passes no threshold here: raw voxels over the (thresholded)
                        // layer energies of HighLevelFeatures.
                        let layers = &features.layer_energy[start + k];
                        row.extend(
                            shower
                                .iter()
                                .enumerate()
                                .map(|(j, &x)| (x.max(0.0) as f64 / (layers[j / per_layer] + 1e-16)) as f32),
                        );
                        row.extend(layers.iter().map(|&el| (el + 1e-8).log10() as f32));
                    } else {
                        row.extend(
                            shower.iter().map(|&x| if (x as f64) < EVALUATION_THRESHOLD_MEV { 0.0 } else { x / e }),
                        );
                    }
                    w.push(&row)?;
                }
            }
            w.finish()
        }
    }
}

/// Separation power of every histogram `evaluate.py` draws (and of sparsity, centre r, width r,
/// which its helper defines), on the official binning.
pub fn compare_histograms(r: &Scan, g: &Scan, voxel_edges: Vec<f64>) -> Vec<Compared> {
    let (rc, gc) = (feature_columns(&r.features), feature_columns(&g.features));
    let mut out: Vec<Compared> = rc.iter().zip(&gc).map(|((name, a), (_, b))| Compared::feature(name, a, b)).collect();
    if let (Some(rv), Some(gv)) = (&r.voxels, &g.voxels) {
        out.push(Compared::new("voxel", voxel_edges, rv.clone(), gv.clone()));
    }
    out
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
    if !opts.inputs.is_empty() {
        // The widest input (the voxels and E_inc), before the long scans.
        super::classifier::check_size(&opts.classifier, reference.geometry.voxels() + 1)?;
    }
    let mut r = scan(reference, None, show_progress, "reference")?;
    let voxel_edges = log_edges(r.max_voxel, 50);
    r.voxels = Some(voxel_histogram(reference, &voxel_edges)?);
    let g = scan(generated, Some(&voxel_edges), show_progress, "generated")?;

    // Separation power per histogram and per kind of histogram.
    let compared = compare_histograms(&r, &g, voxel_edges);
    let mut per_feature = Map::new();
    let mut out_of_range = Map::new();
    let mut by_kind: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for c in &compared {
        per_feature.insert(c.name.clone(), json!(c.separation_power));
        let (rr, gg) = (&c.reference, &c.generated);
        if rr.underflow + rr.overflow + gg.underflow + gg.overflow + rr.nan + gg.nan > 0 {
            out_of_range.insert(
                c.name.clone(),
                json!({"reference": [rr.underflow, rr.overflow], "generated": [gg.underflow, gg.overflow]}),
            );
        }
        by_kind.entry(kind_of(&c.name).to_string()).or_default().push(c.separation_power);
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

    // The per-layer shape profile (sparsity, width and centre in r), layers 2–40.
    let (profile_r, profile_g) = (LayerProfile::of(&r.features), LayerProfile::of(&g.features));
    let profile = ProfileErrors::between(&profile_r, &profile_g);
    metrics.insert("profile".into(), json!(profile));

    // FPD and KPD on the high-level features, scaled by the reference's column maxima.
    let (hr, hg) = (high_level_matrix(&r.features), high_level_matrix(&g.features));
    let (nr, ng) = normalise_by_reference_max(&hr, &hg);
    metrics.insert("fpd".into(), json!(frechet_distance(&nr, &ng)));
    let subset = hr.nrows().min(hg.nrows()).min(5000);
    let (kpd, kpd_err) = kernel_physics_distance(&hr, &hg, subset, 10, opts.classifier.seed);
    metrics.insert("kpd".into(), json!(kpd));
    drop((hr, hg, nr, ng));
    let mut details = json!({
        "reference_events": reference.events,
        "generated_events": generated.events,
        "kpd_error": kpd_err,
        "separation_power_binning": "evaluate.py (CaloChallenge/homepage code/evaluate_plotting_helper.py)",
        "separation_power_per_feature": per_feature,
        "out_of_range_underflow_overflow": out_of_range,
        "profile": {
            "layers": [PROFILE_LAYERS.start(), PROFILE_LAYERS.end()],
            "definition": "per-layer means of sparsity, width r and centre r (HighLevelFeatures, after the threshold); \
                sparsity: mean |Δ|, width_r_rel: mean |Δ|/reference, centre_r_mm: mean |Δ| in mm, over the layers",
            "reference": profile_r,
            "generated": profile_g,
        },
    });

    if !opts.inputs.is_empty() {
        let available = reference.events.min(generated.events);
        let n = opts.showers.map_or(available, |k| k.min(available));
        let s = &opts.classifier;
        let mut cls = json!({
            "showers_per_class": n,
            "showers_available_per_class": available,
            "split_per_class": classifier::split_sizes(n),
            "epochs": s.epochs, "hidden": s.hidden, "layers": s.layers, "batch_size": s.batch_size,
            "lr": s.lr, "runs": opts.runs.max(1),
        });
        for &input in &opts.inputs {
            let rows_r = classifier_rows(reference, &r.features, n, input)?;
            let rows_g = classifier_rows(generated, &g.features, n, input)?;
            let summary = classifier::repeated(&rows_r, &rows_g, s, opts.runs, &opts.device)?;
            metrics.insert(input.key().into(), json!({"auc": summary.auc, "jsd": summary.jsd}));
            cls[input.key()] = json!(summary);
            cls[input.key()]["rows_in_memory"] = json!(rows_r.in_memory());
        }
        details["classifier"] = cls;
    }
    if let Some(path) = &opts.features_out {
        super::calo_features_out::write(path, &r.features, &g.features)?;
    }
    if let Some(dir) = plots_dir {
        super::calo_plots::draw(dir, &reference.geometry, &r, &g, &compared)?;
    }
    Ok((metrics, details))
}
