//! ZDC evaluation (Majerz et al., Tables 1 and 2): the five channel values, their mean
//! 1-Wasserstein distance (WS), MAE_c and MAE_cw over unique conditions, and the shower-centre and
//! 90 %-radius errors. Both files are read in chunks.
//!
//! Every figure is read against a **noise floor**: the same metrics for the reference against
//! itself, i.e. what a perfect model would score with as many events. The reference events are
//! split into two disjoint halves A and B, alternating within each condition (so both halves
//! hold the same conditions); the floor is B against A, and `same_size` is the generated events
//! conditioned on B's rows against A — the same sizes and conditions as the floor, so the two
//! are directly comparable. With `--reference2 FILE` the floor is instead the reference against
//! that second file. Both go to `details` (not gated: a correlation is better when higher).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::photon_total::{PhotonTotalError, PhotonTotalTally};
use super::plots::{self, HeatPanel, HistPanel};
use super::zdc_metrics::{image_shapes, mae_by_condition, shape_errors_from, ws_channels, CentreAndRadius};
use crate::data::channels::{channel_sums, CHANNELS, PIXELS, SIDE};
use crate::data::zdc::{ZdcFile, FEATURES};
use crate::error::{Error, Result};
use crate::util::progress;

/// Per-event channel values and shapes of a set of events, plus the mean image (of all rows and
/// of each half).
struct Scan {
    channels: Vec<[f64; CHANNELS]>,
    shapes: Vec<Option<CentreAndRadius>>,
    mean_image: Vec<f64>,
    half_means: [Vec<f64>; 2],
    /// Image totals against the file's `photon_sum` column (for generated files: the sums they
    /// were generated for).
    photon_total: PhotonTotalError,
}

/// Which half (0: A, 1: B, [`NO_HALF`]: neither) each row belongs to.
const NO_HALF: u8 = 2;

fn scan(file: &ZdcFile, rows: &[usize], side: &[u8], show_progress: bool, what: &str) -> Result<Scan> {
    let mut s = Scan {
        channels: Vec::with_capacity(rows.len()),
        shapes: Vec::with_capacity(rows.len()),
        mean_image: vec![0.0; PIXELS],
        half_means: [vec![0.0; PIXELS], vec![0.0; PIXELS]],
        photon_total: PhotonTotalError::default(),
    };
    let mut totals = PhotonTotalTally::default();
    let mut counts = [0usize; 2];
    let pb = progress::bar(rows.len() as u64, what, "events", show_progress);
    for (c, chunk) in rows.chunks(4096).enumerate() {
        let images = file.read_responses_at(chunk)?;
        s.channels.extend(images.chunks(PIXELS).map(channel_sums));
        s.shapes.extend(image_shapes(&images));
        let sums: Vec<f32> = chunk.iter().map(|&i| file.conditions.photon_sum[i]).collect();
        totals.add(&images, &sums);
        for (k, img) in images.chunks(PIXELS).enumerate() {
            let half = side.get(c * 4096 + k).copied().unwrap_or(NO_HALF) as usize;
            for (m, &v) in s.mean_image.iter_mut().zip(img) {
                *m += v as f64;
            }
            if half < 2 {
                counts[half] += 1;
                for (m, &v) in s.half_means[half].iter_mut().zip(img) {
                    *m += v as f64;
                }
            }
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    s.photon_total = totals.summary();
    let n = rows.len().max(1) as f64;
    s.mean_image.iter_mut().for_each(|m| *m /= n);
    for (h, count) in counts.iter().enumerate() {
        s.half_means[h].iter_mut().for_each(|m| *m /= (*count).max(1) as f64);
    }
    Ok(s)
}

/// Halves A (0) and B (1) of rows with group ids `group`: alternating within each group, and each
/// new group starting on the other side from the previous one, so a condition seen k times gives
/// ⌈k/2⌉ or ⌊k/2⌋ events to each half and conditions seen once are spread evenly too.
pub fn halves(group: &[usize]) -> Vec<u8> {
    let mut state: HashMap<usize, u8> = HashMap::new();
    let mut next_start = 0u8;
    group
        .iter()
        .map(|g| {
            let side = state.entry(*g).or_insert_with(|| {
                let s = next_start;
                next_start ^= 1;
                s
            });
            let out = *side;
            *side ^= 1;
            out
        })
        .collect()
}

/// A string attribute of an HDF5 file written by `sample` (None for .npz files and absent keys).
fn file_attr(f: &ZdcFile, key: &str) -> Option<String> {
    if crate::data::zdc::is_npz(&f.path) {
        return None;
    }
    crate::data::h5::open(&f.path).ok().and_then(|h| crate::data::h5::get_attr(&h, key))
}

/// Pearson correlation of two equally long vectors (NaN when either is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    sab / (saa * sbb).sqrt()
}

/// Rows (indices into a scan) of half `h`.
fn pick<T: Copy>(v: &[T], side: &[u8], h: u8) -> Vec<T> {
    v.iter().zip(side).filter(|(_, &s)| s == h).map(|(x, _)| *x).collect()
}

/// WS, MAE_c, MAE_cw and the mean-image correlation of one comparison.
fn comparison(
    a: &[[f64; CHANNELS]],
    a_group: &[usize],
    a_mean: &[f64],
    b: &[[f64; CHANNELS]],
    b_group: &[usize],
    b_mean: &[f64],
) -> Value {
    let (ws_per_channel, ws) = ws_channels(a, b);
    let mae = mae_by_condition(a, a_group, b, b_group);
    json!({
        "ws": ws,
        "ws_per_channel": ws_per_channel,
        "mae_c": mae.mae_c,
        "mae_cw": mae.mae_cw,
        "mean_image_corr": pearson(a_mean, b_mean),
        "events": [a.len(), b.len()],
        "shared_conditions": mae.conditions,
    })
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
    reference2: Option<&ZdcFile>,
    plots_dir: Option<&Path>,
    show_progress: bool,
) -> Result<(Map<String, Value>, Value)> {
    let ref_rows = reference_rows(reference, generated);
    let (ref_group, gen_group) = condition_groups(reference, &ref_rows, generated);
    let ref_side = halves(&ref_group);
    // A generated event belongs to the half of the reference row it was conditioned on.
    let gen_side: Vec<u8> = match &generated.source {
        Some(src) if src.index.len() == generated.events => {
            let pos: HashMap<usize, usize> = ref_rows.iter().enumerate().map(|(k, &r)| (r, k)).collect();
            src.index.iter().map(|i| pos.get(i).map_or(NO_HALF, |&k| ref_side[k])).collect()
        }
        _ => halves(&gen_group),
    };
    let r = scan(reference, &ref_rows, &ref_side, show_progress, "reference")?;
    let gen_rows: Vec<usize> = (0..generated.events).collect();
    let g = scan(generated, &gen_rows, &gen_side, show_progress, "generated")?;
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
    let (noise_floor, same_size) = match reference2 {
        None => {
            let (ra, rga) = (pick(&r.channels, &ref_side, 0), pick(&ref_group, &ref_side, 0));
            let (rb, rgb) = (pick(&r.channels, &ref_side, 1), pick(&ref_group, &ref_side, 1));
            let (gb, ggb) = (pick(&g.channels, &gen_side, 1), pick(&gen_group, &gen_side, 1));
            let mut floor = comparison(&ra, &rga, &r.half_means[0], &rb, &rgb, &r.half_means[1]);
            floor["source"] = json!("reference halves A/B (alternating within each condition)");
            let same = comparison(&ra, &rga, &r.half_means[0], &gb, &ggb, &g.half_means[1]);
            (floor, same)
        }
        Some(r2f) => {
            let rows2: Vec<usize> = (0..r2f.events).collect();
            let (ref_group2, group2) = condition_groups(reference, &ref_rows, r2f);
            let r2 = scan(r2f, &rows2, &[], show_progress, "reference2")?;
            let mut floor = comparison(&r.channels, &ref_group2, &r.mean_image, &r2.channels, &group2, &r2.mean_image);
            floor["source"] = json!(format!("reference against --reference2 {}", r2f.path.display()));
            let same = comparison(&r.channels, &ref_group, &r.mean_image, &g.channels, &gen_group, &g.mean_image);
            (floor, same)
        }
    };
    let details = json!({
        "mean_image_corr": pearson(&r.mean_image, &g.mean_image),
        "noise_floor": noise_floor,
        "same_size": same_size,
        "photon_sum_source": file_attr(generated, "photon_sum_source"),
        "denoise": file_attr(generated, "denoise"),
        "photon_total_error": g.photon_total,
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
    let (ws, mean_ws) = ws_channels(&r.channels, &g.channels);
    let notes: Vec<String> = ws.iter().map(|w| format!("WS {w:.2} photons")).collect();
    plots::log_histograms(
        &dir.join("zdc_channels.png"),
        &format!("ZDC channel values (mean WS {mean_ws:.2}; reference band, generated line)"),
        &panels,
        &notes,
    )?;
    let heat = |title: &str, v: &[f64]| HeatPanel { title: title.into(), values: v.to_vec(), rows: SIDE, cols: SIDE };
    plots::heatmaps_with_colorbar(
        &dir.join("zdc_mean_images.png"),
        &format!("Mean response per pixel ({} reference, {} generated events)", r.channels.len(), g.channels.len()),
        &[heat("reference", &r.mean_image), heat("generated", &g.mean_image)],
        "photons",
    )?;
    let sums = |s: &Scan| s.channels.iter().map(|c| c.iter().sum::<f64>()).collect::<Vec<f64>>();
    let radius = |s: &Scan| s.shapes.iter().flatten().map(|x| x.radius).collect::<Vec<f64>>();
    let centre_col = |s: &Scan| s.shapes.iter().flatten().map(|x| x.col).collect::<Vec<f64>>();
    let centre_row = |s: &Scan| s.shapes.iter().flatten().map(|x| x.row).collect::<Vec<f64>>();
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

/// The noise-floor rows for the printed report (empty when `details` has none): the floor first,
/// then the model on the same events, then the model on all events.
pub fn floor_lines(details: &Value) -> String {
    let (Some(floor), Some(same)) = (details.get("noise_floor"), details.get("same_size")) else {
        return String::new();
    };
    let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let ev = |v: &Value| {
        v.get("events").and_then(Value::as_array).map_or(String::new(), |a| {
            format!(
                "{} vs {}",
                a.first().and_then(Value::as_u64).unwrap_or(0),
                a.get(1).and_then(Value::as_u64).unwrap_or(0)
            )
        })
    };
    let row = |name: &str, v: &Value| {
        format!(
            "  {name:<26} {:>9.3} {:>9.3} {:>9.3} {:>8.3}   {}\n",
            f(v, "ws"),
            f(v, "mae_c"),
            f(v, "mae_cw"),
            f(v, "mean_image_corr"),
            ev(v)
        )
    };
    let mut s = format!("  {:<26} {:>9} {:>9} {:>9} {:>8}   events\n", "noise floor", "WS", "MAE_c", "MAE_cw", "corr");
    s.push_str(&row("reference vs reference", floor));
    s.push_str(&row("generated (same events)", same));
    let corr = details.get("mean_image_corr").and_then(Value::as_f64).unwrap_or(f64::NAN);
    let floor_corr = f(floor, "mean_image_corr");
    s.push_str(&format!(
        "  mean-image correlation: {:.3} on all events; {:.3} vs floor {:.3} (ratio {:.2}) on the same events\n",
        corr,
        f(same, "mean_image_corr"),
        floor_corr,
        f(same, "mean_image_corr") / floor_corr
    ));
    if let (Some(ps), Some(dn)) =
        (details.get("photon_sum_source").and_then(Value::as_str), details.get("denoise").and_then(Value::as_str))
    {
        s.push_str(&format!("  photon sums: {ps}; noise removal: {dn}\n"));
    }
    if let Some(t) = details.get("photon_total_error") {
        let f = |k: &str| t.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        s.push_str(&format!(
            "  photon-total error |Σ − S|/S of the generated images: median {:.2} %, 90th percentile {:.2} %\n",
            100.0 * f("median"),
            100.0 * f("p90")
        ));
    }
    s
}

#[cfg(test)]
mod floor_tests {
    use super::*;

    #[test]
    fn halves_alternate_within_each_condition() {
        // Group 0 starts in A, group 1 in B, group 2 in A, group 3 in B.
        assert_eq!(halves(&[0, 0, 1, 0, 1, 2, 0, 3]), vec![0, 1, 1, 0, 0, 0, 1, 1]);
    }

    #[test]
    fn pearson_of_hand_made_vectors() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // x = (−1, 0, 1), y = (1, −1, 0) around their means: Σxy = −1, Σx² = 2, Σy² = 2 → −0.5.
        assert!((pearson(&[0.0, 1.0, 2.0], &[2.0, 0.0, 1.0]) + 0.5).abs() < 1e-12);
    }
}
