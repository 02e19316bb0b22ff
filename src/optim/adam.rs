//! Adam (Kingma & Ba) with its moments exposed, so that a checkpoint holds the optimiser's whole
//! state and a resumed run continues bit for bit. (candle-nn's `AdamW` keeps its moments
//! private.) Learning rate and β1 can change every step (OneCycle cycles both).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, Layout, Tensor, Var};

pub struct Adam {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub step: u64,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Adam {
    pub fn new(vars: Vec<(String, Var)>, lr: f64, beta1: f64, beta2: f64, eps: f64) -> candle_core::Result<Self> {
        let m = vars.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = vars.iter().map(|(_, v)| v.zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { vars, m, v, step: 0, lr, beta1, beta2, eps })
    }

    /// Global L2 norm of the gradients of the optimised variables.
    pub fn grad_norm(&self, grads: &GradStore) -> candle_core::Result<f64> {
        let mut total = 0.0;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            }
        }
        Ok(total.sqrt())
    }

    /// One update; `scale` multiplies every gradient first (gradient clipping).
    pub fn step(&mut self, grads: &GradStore, scale: f64) -> candle_core::Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let bias1 = 1.0 - b1.powi(t);
        let bias2 = 1.0 - b2.powi(t);
        let k = Coefficients {
            scale,
            b1,
            one_minus_b1: 1.0 - b1,
            b2,
            one_minus_b2: 1.0 - b2,
            inv_bias1: 1.0 / bias1,
            inv_bias2: 1.0 / bias2,
            eps: self.eps,
            lr: self.lr,
        };
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            if fused_cpu_update(var.as_tensor(), g, &self.m[i], &self.v[i], &k)? {
                continue;
            }
            let (w, m, v) = tensor_update(var.as_tensor(), g, &self.m[i], &self.v[i], &k)?;
            var.set(&w)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments as named tensors (`m.<var>`, `v.<var>`).
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores moments saved by [`Adam::state`]; every variable must be present.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: u64) -> Result<(), String> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("{prefix}.{name}");
                let t = state.get(&key).ok_or_else(|| format!("optimiser state lacks '{key}'"))?;
                if t.shape() != var.shape() {
                    return Err(format!("optimiser state '{key}' has shape {:?}, expected {:?}", t.dims(), var.dims()));
                }
                *slot = t.to_dtype(var.dtype()).and_then(|t| t.to_device(var.device())).map_err(|e| e.to_string())?;
            }
        }
        self.step = step;
        Ok(())
    }

    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }
}

/// The scalars of one Adam step, in the form the tensor expressions above use them.
struct Coefficients {
    scale: f64,
    b1: f64,
    one_minus_b1: f64,
    b2: f64,
    one_minus_b2: f64,
    inv_bias1: f64,
    inv_bias2: f64,
    eps: f64,
    lr: f64,
}

/// New (weights, m, v) from tensor operations (any device).
fn tensor_update(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: &Coefficients,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let g = if k.scale != 1.0 { g.affine(k.scale, 0.0)? } else { g.clone() };
    let m = (m.affine(k.b1, 0.0)? + g.affine(k.one_minus_b1, 0.0)?)?;
    let v = (v.affine(k.b2, 0.0)? + g.sqr()?.affine(k.one_minus_b2, 0.0)?)?;
    let m_hat = m.affine(k.inv_bias1, 0.0)?;
    let v_hat = v.affine(k.inv_bias2, 0.0)?;
    let update = (m_hat / v_hat.sqrt()?.affine(1.0, k.eps)?)?;
    Ok(((w - update.affine(k.lr, 0.0)?)?, m, v))
}

/// Elements per parallel task of the in-place update.
const FUSED_CHUNK: usize = 1 << 16;

/// The same update as [`tensor_update`], operation for operation (so the numbers are
/// identical), written into the existing weight and moment buffers on the CPU: no temporaries and no
/// fresh pages (a weight-sized allocation per tensor per step is what made the kernel zero pages
/// for as long as the products ran on the paper-size ZDC teacher). Three passes: m, v, then the
/// weights from the new moments. `false` where it does not apply (GPU, strided tensors, mixed
/// dtypes).
fn fused_cpu_update(w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, k: &Coefficients) -> candle_core::Result<bool> {
    let same_dtype = [g, m, v].iter().all(|t| t.dtype() == w.dtype());
    let floats = matches!(w.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    if !w.device().is_cpu() || !same_dtype || !floats || ![w, g, m, v].iter().all(|t| t.is_contiguous()) {
        return Ok(false);
    }
    m.inplace_op2(g, &AdamPass { k, pass: Pass::FirstMoment })?;
    v.inplace_op2(g, &AdamPass { k, pass: Pass::SecondMoment })?;
    w.inplace_op3(m, v, &AdamPass { k, pass: Pass::Weights })?;
    Ok(true)
}

#[derive(Clone, Copy)]
enum Pass {
    FirstMoment,
    SecondMoment,
    Weights,
}

struct AdamPass<'a> {
    k: &'a Coefficients,
    pass: Pass,
}

/// The scalars of [`Coefficients`] in the tensors' float type.
struct Scalars<T> {
    scale: T,
    b1: T,
    ob1: T,
    b2: T,
    ob2: T,
    ib1: T,
    ib2: T,
    eps: T,
    lr: T,
    scaled: bool,
}

impl<T: num_traits::Float> Scalars<T> {
    fn of(k: &Coefficients) -> Self {
        let c = |x: f64| T::from(x).expect("a finite coefficient");
        Scalars {
            scale: c(k.scale),
            b1: c(k.b1),
            ob1: c(k.one_minus_b1),
            b2: c(k.b2),
            ob2: c(k.one_minus_b2),
            ib1: c(k.inv_bias1),
            ib2: c(k.inv_bias2),
            eps: c(k.eps),
            lr: c(k.lr),
            scaled: k.scale != 1.0,
        }
    }

    fn grad(&self, g: T) -> T {
        if self.scaled {
            g * self.scale + T::zero()
        } else {
            g
        }
    }

    fn first_moment(&self, m: T, g: T) -> T {
        let g = self.grad(g);
        (m * self.b1 + T::zero()) + (g * self.ob1 + T::zero())
    }

    fn second_moment(&self, v: T, g: T) -> T {
        let g = self.grad(g);
        (v * self.b2 + T::zero()) + ((g * g) * self.ob2 + T::zero())
    }

    fn weight(&self, w: T, m: T, v: T) -> T {
        let m_hat = m * self.ib1 + T::zero();
        let v_hat = v * self.ib2 + T::zero();
        let update = m_hat / (v_hat.sqrt() * T::one() + self.eps);
        w - (update * self.lr + T::zero())
    }
}

fn contiguous<'a, T>(all: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    let (start, end) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("adam: strided tensor".into()))?;
    Ok(&all[start..end])
}

impl AdamPass<'_> {
    /// One pass over `dst`: m or v from the gradient `src.0`, or the weights from the new moments `src`.
    fn run<T: num_traits::Float + Send + Sync>(&self, dst: &mut [T], src: (&[T], Option<&[T]>)) {
        use rayon::prelude::*;
        let s = Scalars::<T>::of(self.k);
        let pass = self.pass;
        dst.par_chunks_mut(FUSED_CHUNK).enumerate().for_each(|(chunk, out)| {
            let start = chunk * FUSED_CHUNK;
            for (j, x) in out.iter_mut().enumerate() {
                let i = start + j;
                *x = match (pass, src) {
                    (Pass::FirstMoment, (g, _)) => s.first_moment(*x, g[i]),
                    (Pass::SecondMoment, (g, _)) => s.second_moment(*x, g[i]),
                    (Pass::Weights, (m, Some(v))) => s.weight(*x, m[i], v[i]),
                    (Pass::Weights, (_, None)) => unreachable!("the weight pass gets both moments"),
                };
            }
        });
    }
}

fn storage_mismatch() -> candle_core::Error {
    candle_core::Error::Msg("adam: tensors of different dtypes".into())
}

impl candle_core::InplaceOp2 for AdamPass<'_> {
    fn name(&self) -> &'static str {
        "adam-moment"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dl: &Layout, g: &CpuStorage, gl: &Layout) -> candle_core::Result<()> {
        let (start, end) =
            dl.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("adam: strided tensor".into()))?;
        match (dst, g) {
            (CpuStorage::F32(d), CpuStorage::F32(g)) => self.run(&mut d[start..end], (contiguous(g, gl)?, None)),
            (CpuStorage::F64(d), CpuStorage::F64(g)) => self.run(&mut d[start..end], (contiguous(g, gl)?, None)),
            _ => return Err(storage_mismatch()),
        }
        Ok(())
    }
}

impl candle_core::InplaceOp3 for AdamPass<'_> {
    fn name(&self) -> &'static str {
        "adam-weights"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        m: &CpuStorage,
        ml: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<()> {
        let (start, end) =
            dl.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("adam: strided tensor".into()))?;
        match (dst, m, v) {
            (CpuStorage::F32(d), CpuStorage::F32(m), CpuStorage::F32(v)) => {
                self.run(&mut d[start..end], (contiguous(m, ml)?, Some(contiguous(v, vl)?)))
            }
            (CpuStorage::F64(d), CpuStorage::F64(m), CpuStorage::F64(v)) => {
                self.run(&mut d[start..end], (contiguous(m, ml)?, Some(contiguous(v, vl)?)))
            }
            _ => return Err(storage_mismatch()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn in_place_cpu_update_equals_the_tensor_operations_bit_for_bit() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let k = Coefficients {
            scale: 0.37,
            b1: 0.9,
            one_minus_b1: 0.1,
            b2: 0.999,
            one_minus_b2: 1.0 - 0.999,
            inv_bias1: 1.0 / (1.0 - 0.9f64.powi(3)),
            inv_bias2: 1.0 / (1.0 - 0.999f64.powi(3)),
            eps: 1e-8,
            lr: 3e-3,
        };
        let n = 3 * FUSED_CHUNK + 17;
        for dtype in [DType::F32, DType::F64] {
            let w = Tensor::randn(0f32, 1.0, n, &dev)?.to_dtype(dtype)?;
            let g = Tensor::randn(0f32, 1.0, n, &dev)?.to_dtype(dtype)?;
            let m = Tensor::randn(0f32, 0.1, n, &dev)?.to_dtype(dtype)?;
            let v = Tensor::rand(0f32, 0.1, n, &dev)?.to_dtype(dtype)?;
            let reference = tensor_update(&w, &g, &m, &v, &k)?;
            assert!(fused_cpu_update(&w, &g, &m, &v, &k)?, "contiguous CPU tensors are updated in place");
            for (a, b) in [(&w, &reference.0), (&m, &reference.1), (&v, &reference.2)] {
                let (a, b) = (a.to_dtype(DType::F64)?.to_vec1::<f64>()?, b.to_dtype(DType::F64)?.to_vec1::<f64>()?);
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{dtype:?}");
            }
        }
        Ok(())
    }

    /// One Adam step by hand: g = 2x at x = 3 → m = 0.1·6 = 0.6, v = 0.001·36 = 0.036,
    /// m̂ = 6, v̂ = 36, x ← 3 − 0.1·6/(6 + 1e-8) = 2.9.
    #[test]
    fn adam_first_step_matches_hand_computation() -> candle_core::Result<()> {
        let x = Var::new(&[3.0f64], &Device::Cpu)?;
        let mut opt = Adam::new(vec![("x".into(), x.clone())], 0.1, 0.9, 0.999, 1e-8)?;
        let grads = x.as_tensor().sqr()?.sum_all()?.backward()?;
        opt.step(&grads, 1.0)?;
        let v = x.as_tensor().to_vec1::<f64>()?[0];
        assert!((v - 2.9).abs() < 1e-9, "{v}");
        let state = opt.state();
        assert!((state["m.x"].to_vec1::<f64>()?[0] - 0.6).abs() < 1e-12);
        assert!((state["v.x"].to_vec1::<f64>()?[0] - 0.036).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn adam_minimises_a_quadratic() -> candle_core::Result<()> {
        let x = Var::new(&[3.0f32, -2.0], &Device::Cpu)?;
        let mut opt = Adam::new(vec![("x".into(), x.clone())], 0.05, 0.9, 0.999, 1e-8)?;
        for _ in 0..500 {
            let grads = x.as_tensor().sqr()?.sum_all()?.backward()?;
            opt.step(&grads, 1.0)?;
        }
        let n = x.as_tensor().abs()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        assert!(n < 1e-2, "{n}");
        Ok(())
    }
}
