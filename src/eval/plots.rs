//! PNG figures (plotters): reference (black) against generated (red) on the same axes.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::stats::{histogram, normalised, shared_edges};
use crate::error::{Error, Result};

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const REFERENCE: RGBColor = RGBColor(20, 20, 20);
const GENERATED: RGBColor = RGBColor(210, 40, 40);

/// One histogram panel: reference and generated values of a quantity.
pub struct HistPanel {
    pub title: String,
    pub xlabel: String,
    pub reference: Vec<f64>,
    pub generated: Vec<f64>,
}

/// One profile panel: a quantity against x (e.g. mean energy per layer).
pub struct ProfilePanel {
    pub title: String,
    pub xlabel: String,
    pub ylabel: String,
    pub x: Vec<f64>,
    pub reference: Vec<f64>,
    pub generated: Vec<f64>,
    pub log_y: bool,
}

/// One heat map: `values` row-major, `rows × cols`.
pub struct HeatPanel {
    pub title: String,
    pub values: Vec<f64>,
    pub rows: usize,
    pub cols: usize,
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: cannot draw the figure: {e}", path.display()))
}

fn grid(n: usize) -> (usize, usize) {
    let cols = (n as f64).sqrt().ceil().max(1.0) as usize;
    (n.div_ceil(cols), cols)
}

#[allow(clippy::type_complexity)]
fn canvas<'a>(
    path: &'a Path,
    n: usize,
    title: &str,
) -> Result<(DrawingArea<BitMapBackend<'a>, Shift>, Vec<DrawingArea<BitMapBackend<'a>, Shift>>)> {
    register_font();
    let (rows, cols) = grid(n);
    let root = BitMapBackend::new(path, (420 * cols as u32, 320 * rows as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let body = root.titled(title, ("sans-serif", 22)).map_err(|e| draw_err(path, e))?;
    let areas = body.split_evenly((rows, cols));
    Ok((root, areas))
}

/// Normalised step histograms, one panel per quantity.
pub fn histograms(path: &Path, title: &str, panels: &[HistPanel]) -> Result<()> {
    // Drawn to a temporary file and renamed: a full disk never leaves a truncated figure.
    crate::util::atomic::write_keeping_extension(path, |path| {
        let (root, areas) = canvas(path, panels.len(), title)?;
        for (p, area) in panels.iter().zip(areas.iter()) {
            draw_histogram(area, p).map_err(|e| draw_err(path, e))?;
        }
        root.present().map_err(|e| draw_err(path, e))
    })
}

/// Histograms on a log count axis, the reference as a filled band and the generated as a line,
/// with `notes[i]` (e.g. the panel's WS) written in panel i: differences in the sparse tails, which
/// a linear axis flattens to zero, stay visible.
pub fn log_histograms(path: &Path, title: &str, panels: &[HistPanel], notes: &[String]) -> Result<()> {
    crate::util::atomic::write_keeping_extension(path, |path| {
        let (root, areas) = canvas(path, panels.len(), title)?;
        for (i, (p, area)) in panels.iter().zip(areas.iter()).enumerate() {
            let note = notes.get(i).map(String::as_str).unwrap_or("");
            draw_log_histogram(area, p, note).map_err(|e| draw_err(path, e))?;
        }
        root.present().map_err(|e| draw_err(path, e))
    })
}

fn draw_log_histogram(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    p: &HistPanel,
    note: &str,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let finite = |v: &[f64]| v.iter().copied().filter(|x| x.is_finite()).collect::<Vec<_>>();
    let (r, g) = (finite(&p.reference), finite(&p.generated));
    let edges = shared_edges(&r, &g, 40);
    let hr = normalised(&histogram(&r, &edges));
    let hg = normalised(&histogram(&g, &edges));
    // The floor: a little below one event of the larger sample; empty bins are drawn on it.
    let floor = 0.5 / r.len().max(g.len()).max(1) as f64;
    let ymax = hr.iter().chain(&hg).copied().fold(floor, f64::max) * 2.0;
    let (x0, x1) = (edges[0], edges[edges.len() - 1]);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, (floor..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(&p.xlabel)
        .y_desc("fraction (log)")
        .x_labels(6)
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .light_line_style(WHITE)
        .draw()?;
    let on_floor = |pts: Vec<(f64, f64)>| pts.into_iter().map(|(x, y)| (x, y.max(floor))).collect::<Vec<_>>();
    let band = on_floor(steps(&edges, &hr));
    let band_style = REFERENCE.mix(0.25).filled();
    chart
        .draw_series(std::iter::once(Polygon::new(band, band_style)))?
        .label("reference")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], band_style));
    chart
        .draw_series(LineSeries::new(on_floor(steps(&edges, &hg)), GENERATED.stroke_width(2)))?
        .label("generated")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GENERATED.stroke_width(2)));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    if !note.is_empty() {
        area.draw(&Text::new(note.to_string(), (72, 34), ("sans-serif", 15).into_font().color(&BLACK)))?;
    }
    Ok(())
}

fn steps(edges: &[f64], h: &[f64]) -> Vec<(f64, f64)> {
    let mut pts = Vec::with_capacity(2 * h.len() + 2);
    pts.push((edges[0], 0.0));
    for (i, &v) in h.iter().enumerate() {
        pts.push((edges[i], v));
        pts.push((edges[i + 1], v));
    }
    pts.push((edges[h.len()], 0.0));
    pts
}

/// An axis tick without needless decimals: "1000", "2.5", "0.04" (ten ticks of "900.0" ran into
/// each other on photon axes).
fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn draw_histogram(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    p: &HistPanel,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let finite = |v: &[f64]| v.iter().copied().filter(|x| x.is_finite()).collect::<Vec<_>>();
    let (r, g) = (finite(&p.reference), finite(&p.generated));
    let edges = shared_edges(&r, &g, 40);
    let hr = normalised(&histogram(&r, &edges));
    let hg = normalised(&histogram(&g, &edges));
    let ymax = hr.iter().chain(&hg).copied().fold(0.0, f64::max).max(1e-9) * 1.15;
    let (x0, x1) = (edges[0], edges[edges.len() - 1]);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(x0..x1, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc(&p.xlabel)
        .y_desc("fraction")
        .x_labels(6)
        .x_label_formatter(&|v| tick_label(*v))
        .light_line_style(WHITE)
        .draw()?;
    chart
        .draw_series(LineSeries::new(steps(&edges, &hr), REFERENCE.stroke_width(2)))?
        .label("reference")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], REFERENCE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(steps(&edges, &hg), GENERATED.stroke_width(2)))?
        .label("generated")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GENERATED.stroke_width(2)));
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}

/// Line profiles, one panel per quantity.
pub fn profiles(path: &Path, title: &str, panels: &[ProfilePanel]) -> Result<()> {
    // Drawn to a temporary file and renamed: a full disk never leaves a truncated figure.
    crate::util::atomic::write_keeping_extension(path, |path| {
        let (root, areas) = canvas(path, panels.len(), title)?;
        for (p, area) in panels.iter().zip(areas.iter()) {
            draw_profile(area, p).map_err(|e| draw_err(path, e))?;
        }
        root.present().map_err(|e| draw_err(path, e))
    })
}

fn draw_profile(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    p: &ProfilePanel,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let tr = |v: f64| if p.log_y { v.max(1e-12).log10() } else { v };
    let ys: Vec<f64> = p.reference.iter().chain(&p.generated).map(|&v| tr(v)).filter(|v| v.is_finite()).collect();
    let (mut lo, mut hi) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        (lo, hi) = (lo.min(0.0) - 0.5, hi.max(0.0) + 0.5);
    }
    let pad = 0.08 * (hi - lo);
    let (x0, x1) = (
        p.x.first().copied().unwrap_or(0.0),
        p.x.last().copied().unwrap_or(1.0).max(p.x.first().copied().unwrap_or(0.0) + 1.0),
    );
    let ylabel = if p.log_y { format!("log10 {}", p.ylabel) } else { p.ylabel.clone() };
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(x0..x1, (lo - pad)..(hi + pad))?;
    chart.configure_mesh().x_desc(&p.xlabel).y_desc(ylabel).light_line_style(WHITE).draw()?;
    for (vals, color, label) in [(&p.reference, REFERENCE, "reference"), (&p.generated, GENERATED, "generated")] {
        let pts: Vec<(f64, f64)> =
            p.x.iter().zip(vals.iter()).map(|(&x, &y)| (x, tr(y))).filter(|(_, y)| y.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}

/// A white → blue → yellow scale for t in [0, 1].
pub(crate) fn heat_color(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64, s: f64| (a + (b - a) * s).round() as u8;
    if t < 0.5 {
        let s = t / 0.5;
        RGBColor(lerp(255.0, 40.0, s), lerp(255.0, 70.0, s), lerp(255.0, 160.0, s))
    } else {
        let s = (t - 0.5) / 0.5;
        RGBColor(lerp(40.0, 250.0, s), lerp(70.0, 220.0, s), lerp(160.0, 30.0, s))
    }
}

/// ZDC mean images: heat maps side by side on one shared log10 colour scale, with a colour bar
/// (in photons) on the right. Pixels with no photons are white.
pub fn heatmaps_with_colorbar(path: &Path, title: &str, panels: &[HeatPanel], unit: &str) -> Result<()> {
    register_font();
    let (w, h) = (400 * panels.len() as u32 + 110, 420);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
    let body = root.titled(title, ("sans-serif", 22)).map_err(|e| draw_err(path, e))?;
    let (maps, bar) = body.split_horizontally(400 * panels.len() as u32);
    let logs = |v: &[f64]| v.iter().map(|&x| if x > 0.0 { x.log10() } else { f64::NAN }).collect::<Vec<_>>();
    let all: Vec<f64> = panels.iter().flat_map(|p| logs(&p.values)).filter(|v| v.is_finite()).collect();
    let (lo, hi) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo.is_finite() { (lo, hi.max(lo + 1e-6)) } else { (0.0, 1.0) };
    for (p, area) in panels.iter().zip(maps.split_evenly((1, panels.len())).iter()) {
        draw_heatmap(area, p, lo, hi).map_err(|e| draw_err(path, e))?;
    }
    draw_colorbar(&bar, lo, hi, unit).map_err(|e| draw_err(path, e))?;
    root.present().map_err(|e| draw_err(path, e))
}

fn draw_colorbar(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    lo: f64,
    hi: f64,
    unit: &str,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .margin_top(34)
        .margin_bottom(36)
        .margin_right(50)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..1f64, lo..hi)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(7)
        .y_label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 14))
        .y_desc(unit)
        .y_label_formatter(&|v| {
            let p = 10f64.powf(*v);
            if p >= 100.0 {
                format!("{p:.0}")
            } else if p >= 1.0 {
                format!("{p:.1}")
            } else {
                // Two significant digits below 1.
                let digits = (-p.log10().floor()) as usize + 1;
                format!("{p:.digits$}")
            }
        })
        .draw()?;
    let steps = 100;
    chart.draw_series((0..steps).map(|i| {
        let (a, b) = (lo + (hi - lo) * i as f64 / steps as f64, lo + (hi - lo) * (i + 1) as f64 / steps as f64);
        Rectangle::new([(0.0, a), (1.0, b)], heat_color(i as f64 / (steps - 1) as f64).filled())
    }))?;
    Ok(())
}

fn draw_heatmap(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    p: &HeatPanel,
    lo: f64,
    hi: f64,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(36)
        .build_cartesian_2d(0..p.cols, 0..p.rows)?;
    chart.configure_mesh().disable_mesh().draw()?;
    let span = (hi - lo).max(1e-12);
    chart.draw_series((0..p.rows).flat_map(|r| {
        (0..p.cols).map(move |c| {
            let v = p.values[r * p.cols + c];
            let t = if v > 0.0 { (v.log10() - lo) / span } else { 0.0 };
            Rectangle::new([(c, p.rows - 1 - r), (c + 1, p.rows - r)], heat_color(t).filled())
        })
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tick_label;

    #[test]
    fn tick_labels_keep_only_the_decimals_that_tell() {
        let got: Vec<String> = [0.0, 1000.0, -250.0, 12.5, 2.5, 0.04, -0.5].map(tick_label).into();
        assert_eq!(got, ["0", "1000", "-250", "12.5", "2.5", "0.04", "-0.50"]);
    }
}
