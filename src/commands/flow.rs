//! `zdcflow flow log-prob|to-data|to-latent`: one flow unit's raw passes on `.npy` arrays.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ndarray::Array2;

use super::{Context, Report};
use crate::cli::{FlowArgs, FlowPass, PassArgs};
use crate::error::{Error, Result};
use crate::flow::Flow;
use crate::util::atomic;
use crate::util::output_guard::{check_output, Input};

/// An `.npy` array (N, K) in float64, with the dtype the file had.
pub fn read_npy(path: &Path) -> Result<(Array2<f64>, DType)> {
    if !path.is_file() {
        return Err(Error::format(path, "no such file"));
    }
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    crate::util::limits::check_npy_header(&mut f, size, |m| Error::format(path, m))?;
    match ndarray_npy::read_npy::<_, Array2<f64>>(path) {
        Ok(a) => Ok((a, DType::F64)),
        Err(_) => match ndarray_npy::read_npy::<_, Array2<f32>>(path) {
            Ok(a) => Ok((a.mapv(f64::from), DType::F32)),
            Err(e) => Err(Error::format(path, format!("not a 2-D float32/float64 .npy array: {e}"))),
        },
    }
}

/// Writes `a` as .npy in the input's float width.
fn write_npy<D: ndarray::Dimension>(path: &Path, a: ndarray::Array<f64, D>, dtype: DType) -> Result<()> {
    atomic::write_with(path, |tmp| {
        let r = if dtype == DType::F32 {
            ndarray_npy::write_npy(tmp, &a.mapv(|v| v as f32))
        } else {
            ndarray_npy::write_npy(tmp, &a)
        };
        r.map_err(|e| Error::format(path, e.to_string()))
    })
}

fn to_tensor(a: &Array2<f64>, rows: std::ops::Range<usize>, dtype: DType, device: &Device) -> Result<Tensor> {
    let part = a.slice(ndarray::s![rows.clone(), ..]);
    let v: Vec<f64> = part.iter().copied().collect();
    Ok(Tensor::from_vec(v, (rows.len(), a.ncols()), device)?.to_dtype(dtype)?)
}

/// Reads and checks the input and context arrays of a flow pass.
pub fn inputs(flow: &Flow, a: &PassArgs) -> Result<(Array2<f64>, Option<Array2<f64>>, DType)> {
    let spec = flow.spec();
    let (x, dtype) = read_npy(&a.input)?;
    if x.nrows() == 0 {
        return Err(Error::format(&a.input, "holds no rows"));
    }
    if x.ncols() != spec.features {
        return Err(Error::format(
            &a.input,
            format!("has {} columns, the flow has {} features", x.ncols(), spec.features),
        ));
    }
    let ctx = match (&a.context, spec.context_features) {
        (None, 0) => None,
        (Some(p), 0) => return Err(Error::format(p, "the flow takes no context")),
        (None, c) => {
            return Err(Error::config(
                "--context",
                format!("the flow takes a context of {c} columns: pass --context C.npy"),
            ))
        }
        (Some(p), c) => {
            let (ctx, _) = read_npy(p)?;
            if ctx.ncols() != c || ctx.nrows() != x.nrows() {
                return Err(Error::format(
                    p,
                    format!("has shape ({}, {}), the flow needs ({}, {c})", ctx.nrows(), ctx.ncols(), x.nrows()),
                ));
            }
            Some(ctx)
        }
    };
    Ok((x, ctx, dtype))
}

/// Runs one pass over all rows in batches: log-prob gives (N, 1), the others (N, D).
pub fn apply(
    flow: &Flow,
    which: &FlowPass,
    x: &Array2<f64>,
    ctx: Option<&Array2<f64>>,
    batch: usize,
) -> Result<Array2<f64>> {
    let (n, d) = x.dim();
    let cols = if matches!(which, FlowPass::LogProb(_)) { 1 } else { d };
    let mut out = Array2::<f64>::zeros((n, cols));
    let batch = batch.max(1);
    for start in (0..n).step_by(batch) {
        let rows = start..(start + batch).min(n);
        let xs = to_tensor(x, rows.clone(), flow.dtype(), flow.device())?;
        let cs = ctx.map(|c| to_tensor(c, rows.clone(), flow.dtype(), flow.device())).transpose()?;
        let y = match which {
            FlowPass::LogProb(_) => flow.log_prob(&xs, cs.as_ref())?.unsqueeze(1)?,
            FlowPass::ToData(_) => flow.to_data(&xs, cs.as_ref())?.output,
            FlowPass::ToLatent(_) => flow.to_latent(&xs, cs.as_ref())?.output,
        };
        let y = y.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        for (i, row) in y.into_iter().enumerate() {
            for (j, v) in row.into_iter().enumerate() {
                out[[start + i, j]] = v;
            }
        }
    }
    Ok(out)
}

pub fn run(a: &FlowArgs, ctx: &Context) -> Result<Report> {
    let device = ctx.device()?;
    let args = match &a.pass {
        FlowPass::LogProb(p) | FlowPass::ToData(p) | FlowPass::ToLatent(p) => p,
    };
    let mut read = vec![Input::File("--input", &args.input), Input::ModelDir("--model", &args.model)];
    read.extend(args.context.as_deref().map(|c| Input::File("--context", c)));
    check_output(&args.output, "--output", &read)?;
    let units = crate::models::flow_dir::read(&args.model)?;
    let (_, flow) = units.load(args.unit.as_deref(), None, device)?;
    let (x, ctx, dtype) = inputs(&flow, args)?;
    let out = apply(&flow, &a.pass, &x, ctx.as_ref(), args.batch_size)?;
    if out.iter().any(|v| !v.is_finite()) {
        eprintln!("warning: {} non-finite values in the output", out.iter().filter(|v| !v.is_finite()).count());
    }
    match a.pass {
        FlowPass::LogProb(_) => write_npy(&args.output, out.column(0).to_owned(), dtype)?,
        _ => write_npy(&args.output, out, dtype)?,
    }
    let mut report = Report::default();
    report.err(format!("flow: {} rows", x.nrows()));
    Ok(report)
}
