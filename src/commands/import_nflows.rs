//! `zdcflow import-nflows`: a PyTorch checkpoint of an nflows `Flow` → a model directory of
//! imported flows (read in Rust with candle's pickle reader, no Python needed), written by
//! [`crate::models::imported::save_flows_dir`].

use super::{Context, Report};
use crate::cli::ImportNflowsArgs;
use crate::error::{Error, Result};
use crate::flow::nflows::ImportOptions;
use crate::models::imported::{save_flows_dir, FlowImport};
use crate::models::manifest::{check_output_dir, Reuse};
use crate::util::output_guard::{self, Input};

pub fn run(a: &ImportNflowsArgs, _: &Context) -> Result<Report> {
    let d = &a.detector;
    if d.data.is_some() || d.condition_scaler.is_some() || d.flow2.is_some() || d.flow3.is_some() {
        return Err(Error::Invalid("--data, --condition-scaler, --flow2 and --flow3 need --detector".into()));
    }
    check_output_dir(&a.output_dir, Reuse::Never)?;
    let unit_dir = output_guard::join_inside(&a.output_dir, &a.unit, "--unit")?;
    let weights = unit_dir.join("best.safetensors");
    output_guard::check_output(&weights, "--output-dir", &[Input::File("checkpoint", &a.checkpoint)])?;
    let import = FlowImport {
        checkpoint: &a.checkpoint,
        key: a.key.as_deref(),
        options: ImportOptions {
            kind: a.kind.into(),
            tail_bound: a.tail_bound,
            min_bin_width: a.min_bin_width,
            min_bin_height: a.min_bin_height,
            min_derivative: a.min_derivative,
        },
        dtype: a.dtype.map(Into::into),
        unit: &a.unit,
    };
    let spec = save_flows_dir(&a.output_dir, &import)?;
    Ok(Report::line(format!(
        "imported a {:?} of {} blocks ({} features, context {}, {} hidden × {} layers, {} bins, {} parameters) into {}",
        spec.kind,
        spec.blocks,
        spec.features,
        spec.context_features,
        spec.hidden_features,
        spec.hidden_layers + 1,
        spec.spline.num_bins,
        spec.parameter_count(),
        a.output_dir.display()
    )))
}
