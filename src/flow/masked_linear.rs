//! The trainable masked product of a MADE layer, `y = x·(W∘M)ᵀ`, as a candle op with its own
//! backward: `dx = dy·(W∘M)`, `dW = (dyᵀ·x)∘M`.
//!
//! The mask is never stored: it is the degree rule `keep(o, i) = out[o] > in[i]` (strict, output
//! layer) or `≥` (hidden layers), evaluated where it is needed. On the CPU the masked-out entries
//! of the weight itself are set to zero (in place, before every product, so that weights loaded
//! or set from anywhere — an nflows checkpoint keeps them non-zero — are covered), so the
//! forward is a plain `x·Wᵀ` with no `W∘M` temporary, and only the weight gradient is masked, in
//! the same pass that lays it out as `W`. The numbers are those of the candle expression
//! `x.matmul(&(W * M).t())`: the same GEMM calls on the same values (a masked entry is +0 here
//! where `W * M` gives −0 for a negative weight, which no sum can tell apart once a non-zero
//! term or the bias is added).

use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Shape, Tensor};
use rayon::prelude::*;

/// The connectivity of one masked layer, from its degrees.
pub struct MaskRule {
    out_deg: Vec<usize>,
    in_deg: Vec<usize>,
    strict: bool,
    /// The 0/1 mask as a tensor, made once, for devices without the in-place CPU path.
    device_mask: OnceLock<Tensor>,
}

impl MaskRule {
    pub fn new(out_deg: &[usize], in_deg: &[usize], strict: bool) -> Arc<Self> {
        Arc::new(Self { out_deg: out_deg.to_vec(), in_deg: in_deg.to_vec(), strict, device_mask: OnceLock::new() })
    }

    fn keeps(&self, out_degree: usize, in_degree: usize) -> bool {
        if self.strict {
            out_degree > in_degree
        } else {
            out_degree >= in_degree
        }
    }

    fn dims(&self) -> (usize, usize) {
        (self.out_deg.len(), self.in_deg.len())
    }

    fn device_mask(&self, like: &Tensor) -> candle_core::Result<&Tensor> {
        if let Some(m) = self.device_mask.get() {
            return Ok(m);
        }
        let m = super::made::mask(&self.out_deg, &self.in_deg, self.strict);
        let m = Tensor::from_vec(m, self.dims(), like.device())?.to_dtype(like.dtype())?;
        Ok(self.device_mask.get_or_init(|| m))
    }

    /// `W∘M`: on the CPU `weight` itself, its masked-out entries set to zero in place.
    pub fn masked_weight(&self, weight: &Tensor) -> candle_core::Result<Tensor> {
        if in_place(weight) {
            weight.inplace_op1(&ZeroMasked(self))?;
            Ok(weight.clone())
        } else {
            weight * self.device_mask(weight)?
        }
    }
}

fn in_place(weight: &Tensor) -> bool {
    weight.device().is_cpu()
        && weight.is_contiguous()
        && matches!(weight.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// `xs (n, i) · (W∘M)ᵀ` for `weight (o, i)`, differentiable in both.
pub fn forward(xs: &Tensor, weight: &Tensor, rule: &Arc<MaskRule>) -> candle_core::Result<Tensor> {
    if in_place(weight) && xs.rank() == 2 {
        rule.masked_weight(weight)?;
        xs.apply_op2(weight, MaskedMatmul(rule.clone()))
    } else {
        xs.matmul(&rule.masked_weight(weight)?.t()?)
    }
}

/// `x·Wᵀ` whose weight gradient is masked; `W`'s masked entries are zero when it runs.
struct MaskedMatmul(Arc<MaskRule>);

impl candle_core::CustomOp2 for MaskedMatmul {
    fn name(&self) -> &'static str {
        "masked-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, i) = xl.shape().dims2()?;
        let (o, wi) = wl.shape().dims2()?;
        if wi != i || (o, wi) != self.0.dims() {
            candle_core::bail!("masked-matmul: inputs {:?}, weight {:?}", xl.shape(), wl.shape());
        }
        // What `Tensor::matmul` runs for `xs.matmul(&w.t())`.
        let out = xs.matmul(w, (1, n, o, i), xl, &wl.transpose(0, 1)?)?;
        Ok((out, Shape::from((n, o))))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // The expressions candle's backward of `xs.matmul(&(w * m).t())` evaluates.
        let dx = if xs.track_op() { Some(grad.matmul(w)?) } else { None };
        let dw_t = xs.t()?.matmul(grad)?;
        let dw = dw_t.apply_op1_no_bwd(&TransposeMasked(&self.0))?;
        Ok((dx, Some(dw)))
    }
}

/// Sets the masked-out entries of a contiguous (o, i) weight to zero.
struct ZeroMasked<'a>(&'a MaskRule);

fn zero_masked<T: Copy + Default + Send>(rule: &MaskRule, w: &mut [T]) {
    let i = rule.in_deg.len();
    w.par_chunks_mut(i).zip(rule.out_deg.par_iter()).for_each(|(row, &od)| {
        for (v, &id) in row.iter_mut().zip(&rule.in_deg) {
            if !rule.keeps(od, id) {
                *v = T::default();
            }
        }
    });
}

impl candle_core::InplaceOp1 for ZeroMasked<'_> {
    fn name(&self) -> &'static str {
        "zero-masked"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("zero-masked: a contiguous weight") };
        if l.shape().dims2()? != self.0.dims() {
            candle_core::bail!("zero-masked: weight {:?} for a mask of {:?}", l.shape(), self.0.dims());
        }
        match s {
            CpuStorage::F32(w) => candle_core::utils::with_threadpool(|| zero_masked(self.0, &mut w[a..b])),
            CpuStorage::F64(w) => candle_core::utils::with_threadpool(|| zero_masked(self.0, &mut w[a..b])),
            _ => candle_core::bail!("zero-masked: f32 or f64"),
        }
        Ok(())
    }
}

/// `(gᵀ)∘M` for a gradient `g (i, o)`: the weight's gradient in the weight's layout.
struct TransposeMasked<'a>(&'a MaskRule);

/// Square tiles of the blocked transpose.
const TILE: usize = 32;

fn transpose_masked<T: Copy + Default + Send + Sync>(rule: &MaskRule, g: &[T]) -> Vec<T> {
    let (o, i) = rule.dims();
    let mut out = vec![T::default(); o * i];
    out.par_chunks_mut(TILE * i).enumerate().for_each(|(tile_row, rows)| {
        let r0 = tile_row * TILE;
        let nr = rows.len() / i.max(1);
        for c0 in (0..i).step_by(TILE) {
            let c1 = (c0 + TILE).min(i);
            for r in 0..nr {
                let od = rule.out_deg[r0 + r];
                let row = &mut rows[r * i..(r + 1) * i];
                for c in c0..c1 {
                    if rule.keeps(od, rule.in_deg[c]) {
                        row[c] = g[c * o + r0 + r];
                    }
                }
            }
        }
    });
    out
}

impl candle_core::CustomOp1 for TransposeMasked<'_> {
    fn name(&self) -> &'static str {
        "transpose-masked"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (o, i) = self.0.dims();
        if l.shape().dims2()? != (i, o) {
            candle_core::bail!("transpose-masked: gradient {:?} for a weight of {:?}", l.shape(), (o, i));
        }
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("transpose-masked: a contiguous gradient")
        };
        let out = candle_core::utils::with_threadpool(|| match s {
            CpuStorage::F32(g) => Ok(CpuStorage::F32(transpose_masked(self.0, &g[a..b]))),
            CpuStorage::F64(g) => Ok(CpuStorage::F64(transpose_masked(self.0, &g[a..b]))),
            _ => candle_core::bail!("transpose-masked: f32 or f64"),
        })?;
        Ok((out, Shape::from((o, i))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The old formulation, `x·(W∘M)ᵀ` with a 0/1 mask tensor, by candle's autograd.
    fn reference(x: &Var, w: &Var, rule: &MaskRule) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let m = Tensor::from_vec(
            super::super::made::mask(&rule.out_deg, &rule.in_deg, rule.strict),
            rule.dims(),
            x.device(),
        )?
        .to_dtype(x.dtype())?;
        let y = x.as_tensor().matmul(&(w.as_tensor() * m)?.t()?)?;
        let loss = (y.sin()? * 1.5)?.sum_all()?;
        let g = loss.backward()?;
        Ok((y, g.get(x).unwrap().clone(), g.get(w).unwrap().clone()))
    }

    fn values(t: &Tensor) -> candle_core::Result<Vec<f64>> {
        t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
    }

    /// Forward, both gradients, and the masked entries' gradient (zero) agree exactly with the
    /// old path, f32 and f64, for hidden (≥) and output (>) masks; the stored weight's unmasked
    /// entries are untouched.
    #[test]
    fn masked_matmul_agrees_with_the_mask_product_and_its_autograd() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (d, h, n) = (7, 45, 70);
        let in_deg = super::super::made::input_degrees(d);
        let hid = super::super::made::hidden_degrees(h, d);
        let out = super::super::made::output_degrees(d, 3);
        for dtype in [DType::F32, DType::F64] {
            for (od, id, strict) in [(&hid, &in_deg, false), (&hid, &hid, false), (&out, &hid, true)] {
                let rule = MaskRule::new(od, id, strict);
                let (o, i) = rule.dims();
                let w0 = Tensor::randn(0f32, 1.0, (o, i), &dev)?.to_dtype(dtype)?;
                let x0 = Tensor::randn(0f32, 1.0, (n, i), &dev)?.to_dtype(dtype)?;
                let (x, w) = (Var::from_tensor(&x0)?, Var::from_tensor(&w0.copy()?)?);
                let (y_old, dx_old, dw_old) = reference(&x, &w, &rule)?;
                let (x2, w2) = (Var::from_tensor(&x0.copy()?)?, Var::from_tensor(&w0.copy()?)?);
                let y = forward(x2.as_tensor(), w2.as_tensor(), &rule)?;
                let g = (y.sin()? * 1.5)?.sum_all()?.backward()?;
                assert_eq!(values(&y)?, values(&y_old)?, "{dtype:?} forward");
                assert_eq!(values(g.get(&x2).unwrap())?, values(&dx_old)?, "{dtype:?} dx");
                let dw = values(g.get(&w2).unwrap())?;
                assert_eq!(dw, values(&dw_old)?, "{dtype:?} dW");
                let (w_now, w_before) = (values(w2.as_tensor())?, values(&w0)?);
                for k in 0..o * i {
                    let kept = rule.keeps(od[k / i], id[k % i]);
                    assert_eq!(w_now[k], if kept { w_before[k] } else { 0.0 });
                    assert!(kept || dw[k] == 0.0);
                }
            }
        }
        Ok(())
    }

    /// Three Adam steps through either formulation leave the same weights (masked entries at
    /// zero here, at their initial values in the old path, where they have no effect).
    #[test]
    fn adam_steps_agree_with_the_mask_product() -> candle_core::Result<()> {
        use candle_nn::{AdamW, Optimizer, ParamsAdamW};
        let dev = Device::Cpu;
        let hid = super::super::made::hidden_degrees(20, 5);
        let rule = MaskRule::new(&hid, &hid, false);
        let w0 = Tensor::randn(0f32, 1.0, (20, 20), &dev)?.to_dtype(DType::F64)?;
        let x = Tensor::randn(0f32, 1.0, (30, 20), &dev)?.to_dtype(DType::F64)?;
        let m = Tensor::from_vec(super::super::made::mask(&hid, &hid, false), (20, 20), &dev)?.to_dtype(DType::F64)?;
        let params = ParamsAdamW { lr: 1e-2, weight_decay: 0.0, ..Default::default() };
        let (w_old, w_new) = (Var::from_tensor(&w0.copy()?)?, Var::from_tensor(&w0.copy()?)?);
        let (mut opt_old, mut opt_new) =
            (AdamW::new(vec![w_old.clone()], params.clone())?, AdamW::new(vec![w_new.clone()], params)?);
        for _ in 0..3 {
            let y_old = x.matmul(&(w_old.as_tensor() * &m)?.t()?)?;
            opt_old.backward_step(&y_old.tanh()?.sqr()?.sum_all()?)?;
            let y_new = forward(&x, w_new.as_tensor(), &rule)?;
            opt_new.backward_step(&y_new.tanh()?.sqr()?.sum_all()?)?;
            assert_eq!(values(&y_old)?, values(&y_new)?);
        }
        let masked_old = values(&(w_old.as_tensor() * &m)?)?;
        assert_eq!(masked_old, values(&rule.masked_weight(w_new.as_tensor())?)?);
        assert_ne!(values(w_old.as_tensor())?, values(&w0)?, "the weights moved");
        Ok(())
    }

    /// Blocked transpose at sizes that are not multiples of the tile.
    #[test]
    fn transpose_masked_handles_partial_tiles() {
        let rule = MaskRule::new(
            &(0..70).map(|r| r % 5).collect::<Vec<_>>(),
            &(0..33).map(|c| c % 4).collect::<Vec<_>>(),
            false,
        );
        let (o, i) = rule.dims();
        let g: Vec<f64> = (0..o * i).map(|k| k as f64).collect();
        let t = transpose_masked(&rule, &g);
        for r in 0..o {
            for c in 0..i {
                let want = if rule.keeps(r % 5, c % 4) { g[c * o + r] } else { 0.0 };
                assert_eq!(t[r * i + c], want);
            }
        }
    }
}
