//! What `zdcflow selftest` checks: this build on the chosen device — the spline against nflows' own
//! outputs, invertibility of MAF and IAF stacks, and agreement of outputs and gradients with the
//! CPU. It is how a GPU node (which has no Rust toolchain to run `cargo test`) verifies the `cuda`
//! build; `scripts/gpu-check.sh` runs it.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::flow::params::SeededInit;
use crate::flow::permutation::{make_permutations, PermutationScheme};
use crate::flow::spline::{rqs, SplineConfig};
use crate::flow::spline_reference::Reference;
use crate::flow::{io, Flow, FlowKind, FlowSpec};

const REFERENCE: &str = include_str!("../../tests/data/rqs_public.json");

/// One check's outcome.
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

fn check(name: &str, worst: f64, limit: f64, what: &str) -> Check {
    Check { name: name.into(), passed: worst <= limit, detail: format!("worst {what} {worst:.2e} (limit {limit:.0e})") }
}

fn max_abs(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
}

/// The spline on the device against nflows' float64 outputs (576 points).
fn reference(device: &Device, dtype: DType, limit: f64) -> Result<Check> {
    let r: Reference =
        serde_json::from_str(REFERENCE).map_err(|e| Error::Invalid(format!("embedded reference: {e}")))?;
    let mut worst = 0f64;
    for c in &r.cases {
        let cfg = c.config();
        let n = c.inputs.len();
        let params: Vec<f64> = (0..n).flat_map(|i| c.params(i)).collect();
        let x = Tensor::from_vec(c.inputs.clone(), (n, 1), device)?.to_dtype(dtype)?;
        let p = Tensor::from_vec(params, (n, 1, cfg.params_per_feature()), device)?.to_dtype(dtype)?;
        let y = rqs(&x, &p, &cfg, c.direction())?.0.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        for (got, want) in y.iter().zip(&c.outputs) {
            worst = worst.max((got - want).abs() / (1.0 + want.abs()));
        }
    }
    Ok(check(&format!("spline vs nflows reference ({dtype:?})"), worst, limit, "relative error"))
}

fn spec(kind: FlowKind) -> FlowSpec {
    FlowSpec {
        kind,
        features: 24,
        context_features: 7,
        blocks: 4,
        hidden_features: 48,
        hidden_layers: 2,
        residual: false,
        dropout: 0.0,
        spline: SplineConfig::default(),
        permutations: make_permutations(PermutationScheme::Alternating, 24, 4, 5),
        base: Default::default(),
        fast_spline: None,
    }
}

/// The same random-weight stack on `device` (trainable) and, for comparison, on the CPU.
fn stacks(kind: FlowKind, device: &Device) -> Result<((Flow, VarMap), (Flow, VarMap))> {
    let s = spec(kind);
    let build = |dev: &Device| -> Result<(Flow, VarMap)> {
        let vm = VarMap::new();
        let f = Flow::new(&s, SeededInit::var_builder(&vm, 11, DType::F32, dev).pp(io::PREFIX))?;
        Ok((f, vm))
    };
    Ok((build(device)?, build(&Device::Cpu)?))
}

fn randn(rng: &mut ChaCha8Rng, n: usize, d: usize, scale: f32) -> Vec<f32> {
    (0..n * d).map(|_| scale * rng.sample::<f32, _>(rand_distr::StandardNormal)).collect()
}

fn flow_checks(kind: FlowKind, device: &Device) -> Result<Vec<Check>> {
    let ((flow, vm), (cpu_flow, cpu_vm)) = stacks(kind, device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (n, d, c) = (256, 24, 7);
    let (xv, cv) = (randn(&mut rng, n, d, 2.0), randn(&mut rng, n, c, 1.0));
    let x = Tensor::from_vec(xv.clone(), (n, d), device)?;
    let ctx = Tensor::from_vec(cv.clone(), (n, c), device)?;
    let name = format!("{kind:?}");
    let z = flow.to_latent(&x, Some(&ctx))?;
    let back = flow.to_data(&z.output, Some(&ctx))?;
    let mut out = vec![check(&format!("{name} inverse(forward(x)) = x"), max_abs(&back.output, &x)?, 1e-4, "|Δx|")];
    let x_cpu = Tensor::from_vec(xv, (n, d), &Device::Cpu)?;
    let ctx_cpu = Tensor::from_vec(cv, (n, c), &Device::Cpu)?;
    let z_cpu = cpu_flow.to_latent(&x_cpu, Some(&ctx_cpu))?;
    out.push(check(
        &format!("{name} x → z agrees with the CPU"),
        max_abs(&z.output.to_device(&Device::Cpu)?, &z_cpu.output)?,
        1e-3,
        "|Δz|",
    ));
    // Gradients of the fast pass, as training computes them.
    let loss = |f: &Flow, x: &Tensor, ctx: &Tensor| -> Result<Tensor> {
        let p = match kind {
            FlowKind::Maf => f.to_latent(x, Some(ctx))?,
            FlowKind::Iaf => f.to_data(x, Some(ctx))?,
        };
        Ok((p.output.sqr()?.mean_all()? + p.ladj.mean_all()?)?)
    };
    let g = loss(&flow, &x, &ctx)?.backward()?;
    let g_cpu = loss(&cpu_flow, &x_cpu, &ctx_cpu)?.backward()?;
    let mut worst = 0f64;
    let cpu_vars = cpu_vm.data().lock().expect("varmap").clone();
    for (k, var) in vm.data().lock().expect("varmap").iter() {
        let a = g
            .get(var.as_tensor())
            .ok_or_else(|| Error::Invalid(format!("no gradient for {k}")))?
            .to_device(&Device::Cpu)?;
        let b = g_cpu.get(cpu_vars[k].as_tensor()).ok_or_else(|| Error::Invalid(format!("no CPU gradient for {k}")))?;
        let scale = b.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?.max(1e-6);
        worst = worst.max(max_abs(&a, b)? / scale);
    }
    out.push(check(&format!("{name} gradients agree with the CPU"), worst, 1e-3, "relative difference"));
    Ok(out)
}

/// Runs every check on `device`.
pub fn run(device: &Device) -> Result<Vec<Check>> {
    let mut checks = vec![reference(device, DType::F32, 1e-4)?, reference(device, DType::F64, 1e-9)?];
    for kind in [FlowKind::Maf, FlowKind::Iaf] {
        checks.extend(flow_checks(kind, device)?);
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selftest_passes_on_the_cpu() {
        for c in run(&Device::Cpu).unwrap() {
            assert!(c.passed, "{}: {}", c.name, c.detail);
        }
    }
}
