//! CaloChallenge figures that show failures: the histograms of `evaluate.py` on its binning and
//! ranges (E_tot / E_inc on 0.5–1.5, per-layer energies, centres, widths, sparsity, voxel
//! energies), each panel annotated with its separation power and with the counts that fell below
//! or above the official range (instead of stretching the axis to them); per-layer profiles; and
//! the mean showers of reference and generated side by side in the detector's (r, α) geometry on
//! one shared logarithmic colour scale with a colour bar.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::calo::Scan;
use super::calo_hist::Compared;
use super::plots::{self, ProfilePanel};
use crate::data::geometry::{CaloGeometry, LAYERS};
use crate::error::{Error, Result};

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();
const REFERENCE: RGBColor = RGBColor(20, 20, 20);
const REFERENCE_FILL: RGBColor = RGBColor(190, 190, 190);
const GENERATED: RGBColor = RGBColor(210, 40, 40);
/// Layers (0-based) drawn individually.
pub const SHOWN_LAYERS: [usize; 4] = [0, 9, 19, 29];
/// Lowest value of the mean-shower colour scale in MeV (`HighLevelFeatures._DrawSingleLayer`).
const HEAT_MIN_MEV: f64 = 1e-2;

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: cannot draw the figure: {e}", path.display()))
}

fn canvas<'a>(path: &'a Path, rows: usize, cols: usize, title: &str) -> Result<(Area<'a>, Vec<Area<'a>>)> {
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let root = BitMapBackend::new(path, (440 * cols as u32, 340 * rows as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let body = root.titled(title, ("sans-serif", 22)).map_err(|e| draw_err(path, e))?;
    let areas = body.split_evenly((rows, cols));
    Ok((root, areas))
}

/// One histogram panel on its official edges.
pub struct Panel<'a> {
    pub title: String,
    pub xlabel: String,
    pub hist: &'a Compared,
    pub log_x: bool,
    pub log_y: bool,
}

/// Density per bin (counts / in-range total / width), as `plt.hist(density=True)`.
fn density(counts: &[f64], edges: &[f64]) -> Vec<f64> {
    let total: f64 = counts.iter().sum();
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| if total > 0.0 { c / total / (edges[i + 1] - edges[i]) } else { 0.0 })
        .collect()
}

fn draw_panel(area: &Area<'_>, p: &Panel<'_>) -> DrawResult {
    let h = p.hist;
    let xs: Vec<f64> = h.edges.iter().map(|&e| if p.log_x { e.log10() } else { e }).collect();
    let (dr, dg) = (density(&h.reference.counts, &h.edges), density(&h.generated.counts, &h.edges));
    let positive: Vec<f64> = dr.iter().chain(&dg).copied().filter(|&v| v > 0.0).collect();
    let max = positive.iter().copied().fold(0.0, f64::max).max(1e-300);
    let floor = if p.log_y {
        // Three decades below the peak at least, down to the smallest filled bin.
        positive.iter().copied().fold(max, f64::min).min(max * 1e-3).log10() - 0.3
    } else {
        0.0
    };
    let ty = |v: f64| {
        if p.log_y {
            if v > 0.0 {
                v.log10()
            } else {
                floor
            }
        } else {
            v
        }
    };
    let ytop = if p.log_y { max.log10() + 0.6 } else { max * 1.25 };
    let (x0, x1) = (xs[0], xs[xs.len() - 1]);
    let xdesc = if p.log_x { format!("log10 {}", p.xlabel) } else { p.xlabel.clone() };
    let ydesc = if p.log_y { "log10 density" } else { "density" };
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(x0..x1, floor..ytop)?;
    chart.configure_mesh().x_desc(xdesc).y_desc(ydesc).light_line_style(WHITE).draw()?;
    chart.draw_series(
        dr.iter()
            .enumerate()
            .filter(|(_, &v)| v > 0.0)
            .map(|(i, &v)| Rectangle::new([(xs[i], floor), (xs[i + 1], ty(v))], REFERENCE_FILL.filled())),
    )?;
    let steps = |d: &[f64]| {
        let mut pts = vec![(xs[0], floor)];
        for (i, &v) in d.iter().enumerate() {
            pts.push((xs[i], ty(v)));
            pts.push((xs[i + 1], ty(v)));
        }
        pts.push((xs[d.len()], floor));
        pts
    };
    chart
        .draw_series(LineSeries::new(steps(&dr), REFERENCE.stroke_width(1)))?
        .label("reference")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], REFERENCE_FILL.filled()));
    chart
        .draw_series(LineSeries::new(steps(&dg), GENERATED.stroke_width(2)))?
        .label("generated")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GENERATED.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    let (rr, gg) = (&h.reference, &h.generated);
    let lines = [
        format!("sep. power {:.4}", h.separation_power),
        format!("below/above range: ref {}/{}, gen {}/{}", rr.underflow, rr.overflow, gg.underflow, gg.overflow),
    ];
    let style = TextStyle::from(("sans-serif", 13).into_font()).color(&BLACK);
    for (k, line) in lines.iter().enumerate() {
        area.draw_text(line, &style, (62, 30 + 15 * k as i32))?;
    }
    Ok(())
}

fn histogram_figure(path: &Path, title: &str, panels: &[Panel<'_>], cols: usize) -> Result<()> {
    let rows = panels.len().div_ceil(cols);
    let (root, areas) = canvas(path, rows, cols, title)?;
    for (p, area) in panels.iter().zip(&areas) {
        draw_panel(area, p).map_err(|e| draw_err(path, e))?;
    }
    root.present().map_err(|e| draw_err(path, e))
}

/// One layer's mean shower as (r, α) cells on log10 scale [lo, hi].
fn draw_polar(area: &Area<'_>, title: &str, geo: &CaloGeometry, layer: &[f64], lo: f64, hi: f64) -> DrawResult {
    let rmax = geo.r_edges[geo.n_r];
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 15))
        .margin(6)
        .x_label_area_size(26)
        .y_label_area_size(40)
        .build_cartesian_2d(-rmax..rmax, -rmax..rmax)?;
    chart.configure_mesh().disable_mesh().x_desc("x = r cos α [mm]").draw()?;
    let width = 2.0 * std::f64::consts::PI / geo.n_alpha as f64;
    let arc = 12;
    let mut cells = Vec::new();
    for a in 0..geo.n_alpha {
        let a0 = -std::f64::consts::PI + a as f64 * width;
        for r in 0..geo.n_r {
            let (r0, r1) = (geo.r_edges[r], geo.r_edges[r + 1]);
            let mut pts: Vec<(f64, f64)> = (0..=arc)
                .map(|k| {
                    let t = a0 + width * k as f64 / arc as f64;
                    (r1 * t.cos(), r1 * t.sin())
                })
                .collect();
            pts.extend((0..=arc).rev().map(|k| {
                let t = a0 + width * k as f64 / arc as f64;
                (r0 * t.cos(), r0 * t.sin())
            }));
            let v = layer[a * geo.n_r + r];
            let t = if v > 0.0 { (v.log10() - lo) / (hi - lo) } else { 0.0 };
            cells.push(Polygon::new(pts, plots::heat_color(t).filled()));
        }
    }
    chart.draw_series(cells)?;
    Ok(())
}

fn draw_colour_bar(area: &Area<'_>, lo: f64, hi: f64) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .caption("log10 MeV", ("sans-serif", 14))
        .margin_top(30)
        .margin_bottom(30)
        .margin_left(4)
        .margin_right(40)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..1.0, lo..hi)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(8)
        .y_label_style(("sans-serif", 14))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()?;
    let steps = 100;
    chart.draw_series((0..steps).map(|k| {
        let (y0, y1) = (lo + (hi - lo) * k as f64 / steps as f64, lo + (hi - lo) * (k + 1) as f64 / steps as f64);
        Rectangle::new([(0.0, y0), (1.0, y1)], plots::heat_color((k as f64 + 0.5) / steps as f64).filled())
    }))?;
    Ok(())
}

fn mean_showers(path: &Path, geo: &CaloGeometry, r: &Scan, g: &Scan) -> Result<()> {
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let rows = SHOWN_LAYERS.len();
    let root = BitMapBackend::new(path, (2 * 400 + 130, 380 * rows as u32 + 50)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let body = root
        .titled("Mean shower per voxel: reference | generated (shared colour scale)", ("sans-serif", 20))
        .map_err(|e| draw_err(path, e))?;
    let (maps, bar) = body.split_horizontally(800);
    let v = geo.voxels_per_layer();
    // One scale for every panel: HighLevelFeatures' floor of 1e-2 MeV up to the reference maximum.
    let hi = r.mean_shower.iter().chain(&g.mean_shower).copied().fold(HEAT_MIN_MEV * 10.0, f64::max).log10();
    let lo = HEAT_MIN_MEV.log10();
    let areas = maps.split_evenly((rows, 2));
    for (k, &l) in SHOWN_LAYERS.iter().enumerate() {
        for (c, (name, s)) in [("reference", r), ("generated", g)].into_iter().enumerate() {
            let title = format!("{name}, layer {}", l + 1);
            draw_polar(&areas[2 * k + c], &title, geo, &s.mean_shower[l * v..(l + 1) * v], lo, hi)
                .map_err(|e| draw_err(path, e))?;
        }
    }
    draw_colour_bar(&bar, lo, hi).map_err(|e| draw_err(path, e))?;
    root.present().map_err(|e| draw_err(path, e))
}

/// Draws every CaloChallenge figure into `dir`.
pub fn draw(dir: &Path, geo: &CaloGeometry, r: &Scan, g: &Scan, compared: &[Compared]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let find = |name: &str| compared.iter().find(|c| c.name == name).expect("compared histogram");
    let panel = |name: String, title: String, xlabel: &str, log_x: bool, log_y: bool| Panel {
        title,
        xlabel: xlabel.into(),
        hist: find(&name),
        log_x,
        log_y,
    };
    let mut energy = vec![panel("E_ratio".into(), "E_tot / E_inc".into(), "ratio", false, false)];
    energy.push(panel("voxel".into(), "voxel energies (all layers)".into(), "E / MeV", true, true));
    for &l in &SHOWN_LAYERS {
        energy.push(panel(format!("E_layer_{l}"), format!("energy in layer {}", l + 1), "E / MeV", true, true));
    }
    histogram_figure(&dir.join("calo_energies.png"), "Energy depositions (evaluate.py binning)", &energy, 3)?;
    let mut shape = Vec::new();
    for (kind, what) in [("center_x", "centre of energy x (η)"), ("center_y", "centre of energy y (φ)")] {
        for &l in &SHOWN_LAYERS {
            shape.push(panel(format!("{kind}_{l}"), format!("{what}, layer {}", l + 1), "mm", false, true));
        }
    }
    histogram_figure(&dir.join("calo_centres.png"), "Centres of energy (evaluate.py binning)", &shape, 4)?;
    let mut widths = Vec::new();
    for (kind, what) in [("width_x", "width x (η)"), ("width_y", "width y (φ)"), ("width_r", "width r")] {
        for &l in &SHOWN_LAYERS {
            widths.push(panel(format!("{kind}_{l}"), format!("{what}, layer {}", l + 1), "mm", false, true));
        }
    }
    histogram_figure(&dir.join("calo_widths.png"), "Shower widths (evaluate.py binning)", &widths, 4)?;
    let mut sparse = Vec::new();
    for (kind, what, xl, log_y) in
        [("sparsity", "sparsity", "fraction of empty voxels", false), ("center_r", "centre of energy r", "mm", true)]
    {
        for &l in &SHOWN_LAYERS {
            sparse.push(panel(format!("{kind}_{l}"), format!("{what}, layer {}", l + 1), xl, false, log_y));
        }
    }
    histogram_figure(
        &dir.join("calo_sparsity_radius.png"),
        "Sparsity and radial centre (evaluate.py binning)",
        &sparse,
        4,
    )?;

    let x: Vec<f64> = (1..=LAYERS).map(|l| l as f64).collect();
    let mean_of = |rows: &[[f64; LAYERS]]| -> Vec<f64> {
        (0..LAYERS).map(|l| rows.iter().map(|row| row[l]).sum::<f64>() / rows.len().max(1) as f64).collect()
    };
    let profile = |title: &str, ylabel: &str, log_y: bool, reference: Vec<f64>, generated: Vec<f64>| ProfilePanel {
        title: title.into(),
        xlabel: "layer".into(),
        ylabel: ylabel.into(),
        x: x.clone(),
        reference,
        generated,
        log_y,
    };
    let (fr, fg) = (&r.features, &g.features);
    plots::profiles(
        &dir.join("calo_layer_profiles.png"),
        "Per-layer means",
        &[
            profile("mean layer energy", "MeV", true, mean_of(&fr.layer_energy), mean_of(&fg.layer_energy)),
            profile("mean sparsity", "fraction of empty voxels", false, mean_of(&fr.sparsity), mean_of(&fg.sparsity)),
            profile("mean width r", "mm", false, mean_of(&fr.width_r), mean_of(&fg.width_r)),
            profile("mean centre r", "mm", false, mean_of(&fr.centre_r), mean_of(&fg.centre_r)),
        ],
    )?;
    mean_showers(&dir.join("calo_mean_showers.png"), geo, r, g)
}
