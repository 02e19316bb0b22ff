//! Adam (Kingma & Ba) with its moments exposed, so that a checkpoint holds the optimiser's whole
//! state and a resumed run continues bit for bit. (candle-nn's `AdamW` keeps its moments
//! private.) Learning rate and β1 can change every step (OneCycle cycles both).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

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
            let (w, m, v) = match fused_cpu_update(var.as_tensor(), g, &self.m[i], &self.v[i], &k)? {
                Some(updated) => updated,
                None => tensor_update(var.as_tensor(), g, &self.m[i], &self.v[i], &k)?,
            };
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

/// Elements per parallel task of the fused update.
const FUSED_CHUNK: usize = 1 << 16;

/// The same update as [`tensor_update`], operation for operation (so the
/// numbers are identical), in one parallel pass over contiguous CPU tensors instead of a dozen
/// whole-tensor temporaries; `None` where it does not apply (GPU, strided tensors).
fn fused_cpu_update(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: &Coefficients,
) -> candle_core::Result<Option<(Tensor, Tensor, Tensor)>> {
    use candle_core::Storage;
    fn slice<'a, T>(t: &'a Tensor, s: &'a Storage) -> Option<&'a [T]>
    where
        T: candle_core::WithDType,
    {
        let (start, end) = t.layout().contiguous_offsets()?;
        match s {
            Storage::Cpu(c) => T::cpu_storage_as_slice(c).ok().map(|all| &all[start..end]),
            _ => None,
        }
    }
    fn run<T: candle_core::WithDType + num_traits::Float + Send + Sync>(
        w: &[T],
        g: &[T],
        m: &[T],
        v: &[T],
        k: &Coefficients,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        use rayon::prelude::*;
        let c = |x: f64| T::from(x).expect("a finite coefficient");
        let (scale, b1, ob1, b2, ob2) = (c(k.scale), c(k.b1), c(k.one_minus_b1), c(k.b2), c(k.one_minus_b2));
        let (ib1, ib2, eps, lr) = (c(k.inv_bias1), c(k.inv_bias2), c(k.eps), c(k.lr));
        let scaled = k.scale != 1.0;
        let n = w.len();
        let (mut nw, mut nm, mut nv) = (vec![T::zero(); n], vec![T::zero(); n], vec![T::zero(); n]);
        nw.par_chunks_mut(FUSED_CHUNK)
            .zip(nm.par_chunks_mut(FUSED_CHUNK))
            .zip(nv.par_chunks_mut(FUSED_CHUNK))
            .enumerate()
            .for_each(|(chunk, ((ow, om), ov))| {
                let s = chunk * FUSED_CHUNK;
                for j in 0..ow.len() {
                    let i = s + j;
                    let gi = if scaled { g[i] * scale + T::zero() } else { g[i] };
                    let mi = (m[i] * b1 + T::zero()) + (gi * ob1 + T::zero());
                    let vi = (v[i] * b2 + T::zero()) + ((gi * gi) * ob2 + T::zero());
                    let m_hat = mi * ib1 + T::zero();
                    let v_hat = vi * ib2 + T::zero();
                    let update = m_hat / (v_hat.sqrt() * T::one() + eps);
                    ow[j] = w[i] - (update * lr + T::zero());
                    om[j] = mi;
                    ov[j] = vi;
                }
            });
        (nw, nm, nv)
    }
    if !w.device().is_cpu() || g.dtype() != w.dtype() || m.dtype() != w.dtype() || v.dtype() != w.dtype() {
        return Ok(None);
    }
    let (sw, sg, sm, sv) =
        (w.storage_and_layout().0, g.storage_and_layout().0, m.storage_and_layout().0, v.storage_and_layout().0);
    let (shape, device) = (w.shape(), w.device());
    type Updated = Option<(Tensor, Tensor, Tensor)>;
    fn make<T: candle_core::WithDType>(
        (x, y, z): (Vec<T>, Vec<T>, Vec<T>),
        shape: &candle_core::Shape,
        d: &candle_core::Device,
    ) -> candle_core::Result<Updated> {
        Ok(Some((Tensor::from_vec(x, shape, d)?, Tensor::from_vec(y, shape, d)?, Tensor::from_vec(z, shape, d)?)))
    }
    match w.dtype() {
        candle_core::DType::F32 => {
            let (Some(a), Some(b), Some(c), Some(d)) =
                (slice::<f32>(w, &sw), slice::<f32>(g, &sg), slice::<f32>(m, &sm), slice::<f32>(v, &sv))
            else {
                return Ok(None);
            };
            make(run(a, b, c, d, k), shape, device)
        }
        candle_core::DType::F64 => {
            let (Some(a), Some(b), Some(c), Some(d)) =
                (slice::<f64>(w, &sw), slice::<f64>(g, &sg), slice::<f64>(m, &sm), slice::<f64>(v, &sv))
            else {
                return Ok(None);
            };
            make(run(a, b, c, d, k), shape, device)
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn fused_cpu_update_equals_the_tensor_operations_bit_for_bit() -> candle_core::Result<()> {
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
            let fused = fused_cpu_update(&w, &g, &m, &v, &k)?.expect("contiguous CPU tensors");
            let reference = tensor_update(&w, &g, &m, &v, &k)?;
            for (a, b) in [(&fused.0, &reference.0), (&fused.1, &reference.1), (&fused.2, &reference.2)] {
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
