//! ZDC evaluation (Majerz et al., Tables 1 and 2): the five channel values, their mean
//! 1-Wasserstein distance (WS), MAE_c and MAE_cw over unique conditions, and the shower-centre and
//! 90 %-radius errors. Both files are read in chunks.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::plots::{self, HeatPanel, HistPanel};
use super::zdc_metrics::{image_shapes, mae_by_condition, shape_errors_from, ws_channels, CentreAndRadius};
use crate::data::channels::{channel_sums, CHANNELS, PIXELS, SIDE};
use crate::data::zdc::{ZdcFile, FEATURES};
use crate::error::{Error, Result};
use crate::util::progress;

/// Per-event channel values and shapes of a set of events, plus the mean image.
struct Scan {
    channels: Vec<[f64; CHANNELS]>,
    shapes: Vec<Option<CentreAndRadius>>,
    mean_image: Vec<f64>,
}

fn scan(file: &ZdcFile, rows: &[usize], show_progress: bool, what: &str) -> Result<Scan> {
    let mut s = Scan {
        channels: Vec::with_capacity(rows.len()),
        shapes: Vec::with_capacity(rows.len()),
        mean_image: vec![0.0; PIXELS],
    };
    let pb = progress::bar(rows.len() as u64, what, "events", show_progress);
    for chunk in rows.chunks(4096) {
        let images = file.read_responses_at(chunk)?;
        s.channels.extend(images.chunks(PIXELS).map(channel_sums));
        s.shapes.extend(image_shapes(&images));
        for img in images.chunks(PIXELS) {
            for (m, &v) in s.mean_image.iter_mut().zip(img) {
                *m += v as f64;
            }
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let n = rows.len().max(1) as f64;
    s.mean_image.iter_mut().for_each(|m| *m /= n);
    Ok(s)
}

/// The reference rows to compare with: those the generated file was conditioned on when it says
/// so (sample writes `source_index`), else the whole reference.
pub fn reference_rows(reference: &ZdcFile, generated: &ZdcFile) -> Vec<usize> {
    match &generated.source {
        Some(src) if src.source_events == reference.events && src.index.iter().all(|&i| i < reference.events) => {
            let mut rows = src.index.clone();
            rows.sort_unstable();
            rows.dedup();
            rows
        }
        _ => (0..reference.events).collect(),
    }
}

/// Group ids of condition vectors shared across both files.
fn condition_groups(reference: &ZdcFile, ref_rows: &[usize], generated: &ZdcFile) -> (Vec<usize>, Vec<usize>) {
    let mut ids: HashMap<[u32; FEATURES], usize> = HashMap::new();
    let mut id_of = |row: &[f32]| {
        let key: [u32; FEATURES] = std::array::from_fn(|i| row[i].to_bits());
        let next = ids.len();
        *ids.entry(key).or_insert(next)
    };
    let r = ref_rows.iter().map(|&i| id_of(reference.conditions.row(i))).collect();
    let g = (0..generated.events).map(|i| id_of(generated.conditions.row(i))).collect();
    (r, g)
}

pub fn evaluate(
    reference: &ZdcFile,
    generated: &ZdcFile,
    plots_dir: Option<&Path>,
    show_progress: bool,
) -> Result<(Map<String, Value>, Value)> {
    let ref_rows = reference_rows(reference, generated);
    let (ref_group, gen_group) = condition_groups(reference, &ref_rows, generated);
    let r = scan(reference, &ref_rows, show_progress, "reference")?;
    let gen_rows: Vec<usize> = (0..generated.events).collect();
    let g = scan(generated, &gen_rows, show_progress, "generated")?;
    let mae = mae_by_condition(&r.channels, &ref_group, &g.channels, &gen_group);
    if mae.conditions == 0 {
        return Err(Error::format(
            &generated.path,
            format!(
                "no condition of it appears in {} (was it generated from that file's particles?)",
                reference.path.display()
            ),
        ));
    }
    let (ws_per_channel, ws) = ws_channels(&r.channels, &g.channels);
    let shape = shape_errors_from(&r.shapes, &ref_group, &g.shapes, &gen_group);
    let mut metrics = Map::new();
    metrics.insert("ws".into(), json!(ws));
    metrics.insert("ws_per_channel".into(), json!(ws_per_channel));
    metrics.insert("mae_c".into(), json!(mae.mae_c));
    metrics.insert("mae_cw".into(), json!(mae.mae_cw));
    metrics.insert("shape".into(), serde_json::to_value(shape).expect("serialisable"));
    let mean = |v: &[[f64; CHANNELS]]| -> Vec<f64> {
        (0..CHANNELS).map(|c| v.iter().map(|x| x[c]).sum::<f64>() / v.len().max(1) as f64).collect()
    };
    let details = json!({
        "reference_events": ref_rows.len(),
        "generated_events": generated.events,
        "shared_conditions": mae.conditions,
        "conditions_only_on_one_side": mae.skipped,
        "channel_means_reference": mean(&r.channels),
        "channel_means_generated": mean(&g.channels),
    });
    if let Some(dir) = plots_dir {
        draw(dir, &r, &g)?;
    }
    Ok((metrics, details))
}

fn draw(dir: &Path, r: &Scan, g: &Scan) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let names = [
        "channel 1 (every second fibre)",
        "channel 2 (top left)",
        "channel 3 (top right)",
        "channel 4 (bottom left)",
        "channel 5 (bottom right)",
    ];
    let panels: Vec<HistPanel> = (0..CHANNELS)
        .map(|c| HistPanel {
            title: names[c].into(),
            xlabel: "photons".into(),
            reference: r.channels.iter().map(|x| x[c]).collect(),
            generated: g.channels.iter().map(|x| x[c]).collect(),
        })
        .collect();
    plots::histograms(&dir.join("zdc_channels.png"), "ZDC channel values", &panels)?;
    let heat = |title: &str, v: &[f64]| HeatPanel { title: title.into(), values: v.to_vec(), rows: SIDE, cols: SIDE };
    plots::heatmaps(
        &dir.join("zdc_mean_images.png"),
        "Mean response (log10 photons)",
        &[heat("reference", &r.mean_image), heat("generated", &g.mean_image)],
    )?;
    let sums = |s: &Scan| s.channels.iter().map(|c| c.iter().sum::<f64>()).collect::<Vec<f64>>();
    let radius = |s: &Scan| s.shapes.iter().flatten().map(|x| x.1).collect::<Vec<f64>>();
    let centre_col = |s: &Scan| s.shapes.iter().flatten().map(|x| x.0 .1).collect::<Vec<f64>>();
    let centre_row = |s: &Scan| s.shapes.iter().flatten().map(|x| x.0 .0).collect::<Vec<f64>>();
    let shape_panels = [
        HistPanel { title: "photon sum".into(), xlabel: "photons".into(), reference: sums(r), generated: sums(g) },
        HistPanel {
            title: "shower centre (column)".into(),
            xlabel: "pixel".into(),
            reference: centre_col(r),
            generated: centre_col(g),
        },
        HistPanel {
            title: "shower centre (row)".into(),
            xlabel: "pixel".into(),
            reference: centre_row(r),
            generated: centre_row(g),
        },
        HistPanel {
            title: "90 % photon radius".into(),
            xlabel: "pixels".into(),
            reference: radius(r),
            generated: radius(g),
        },
    ];
    plots::histograms(&dir.join("zdc_shapes.png"), "ZDC shower position and shape", &shape_panels)
}
