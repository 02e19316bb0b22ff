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
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let g = if scale != 1.0 { g.affine(scale, 0.0)? } else { g.clone() };
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&m / bias1)?;
            let v_hat = (&v / bias2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            var.set(&(var.as_tensor() - (update * self.lr)?)?)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

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
