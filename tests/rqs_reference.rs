//! The spline against nflows 0.14's own outputs.
//!
//! `tests/data/rqs_public.json` was produced by
//! `nflows.transforms.splines.rational_quadratic.unconstrained_rational_quadratic_spline(inputs,
//! unnormalized_widths, unnormalized_heights, unnormalized_derivatives, inverse, tails="linear",
//! tail_bound, min_bin_width, min_bin_height, min_derivative)` in float64 (24 cases, K ∈ {4, 8, 16},
//! B ∈ {3, 14}, minimums ∈ {1e-3, 1e-6}, both directions, 576 points including the interval's
//! edges and the tails). Set `ZDCFLOW_RQS_REFERENCE` to check another file of the same schema.
//!
//! Tolerances: float64 outputs and log|det| within 1e-9·(1 + |ref|) (an independent float64
//! implementation reaches ~1e-12); float32 outputs within 1e-4·(1 + |ref|). float32 log|det| is
//! not compared: nflows itself is off by up to 2e-2 there for the steepest bins.

use candle_core::{Device, Tensor};
use zdcflow::flow::spline::{rqs, rqs_scalar};
use zdcflow::flow::spline_reference::Reference;

fn load() -> Reference {
    let path = std::env::var("ZDCFLOW_RQS_REFERENCE")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rqs_public.json").to_string());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let r: Reference = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(!r.cases.is_empty(), "{path} holds no cases");
    r
}

fn close(ours: f64, theirs: f64, rel: f64) -> bool {
    (ours - theirs).abs() <= rel * (1.0 + theirs.abs())
}

#[test]
fn rqs_reference_f64_matches_nflows() {
    let reference = load();
    let mut worst = (0.0f64, 0.0f64);
    let mut points = 0;
    for (c, case) in reference.cases.iter().enumerate() {
        let cfg = case.config();
        for i in 0..case.inputs.len() {
            let (y, l) = rqs_scalar(&cfg, case.direction(), case.inputs[i], &case.params(i));
            let (ey, el) = (case.outputs[i], case.logabsdet[i]);
            assert!(close(y, ey, 1e-9), "case {c} point {i}: output {y} vs nflows {ey}");
            assert!(close(l, el, 1e-9), "case {c} point {i}: logabsdet {l} vs nflows {el}");
            worst.0 = worst.0.max((y - ey).abs() / (1.0 + ey.abs()));
            worst.1 = worst.1.max((l - el).abs() / (1.0 + el.abs()));
            points += 1;
        }
    }
    eprintln!("{points} points; worst relative error: output {:.1e}, logabsdet {:.1e}", worst.0, worst.1);
}

/// The batched f32 op (what training and sampling run) on the same points.
#[test]
fn rqs_reference_f32_tensor_op_matches_nflows() -> candle_core::Result<()> {
    let reference = load();
    for (c, case) in reference.cases.iter().enumerate() {
        let cfg = case.config();
        let n = case.inputs.len();
        let m = cfg.params_per_feature();
        let params: Vec<f32> = (0..n).flat_map(|i| case.params(i)).map(|v| v as f32).collect();
        let inputs: Vec<f32> = case.inputs.iter().map(|&v| v as f32).collect();
        let xs = Tensor::from_vec(inputs, (n, 1), &Device::Cpu)?;
        let ps = Tensor::from_vec(params, (n, 1, m), &Device::Cpu)?;
        let (ys, _) = rqs(&xs, &ps, &cfg, case.direction())?;
        for (i, y) in ys.flatten_all()?.to_vec1::<f32>()?.into_iter().enumerate() {
            let ey = case.outputs[i];
            assert!(close(y as f64, ey, 1e-4), "case {c} point {i}: f32 output {y} vs nflows {ey}");
        }
    }
    Ok(())
}
