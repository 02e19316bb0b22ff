//! The dense-layer pieces the flow networks share: PyTorch's default initialisation and a fused
//! bias add for the CPU.

use candle_core::Tensor;
use candle_nn::Init;

/// nflows' `nn.Linear` default initialisation: U(±1/√fan_in) for weight and bias.
pub fn torch_default_init(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -bound, up: bound }
}

/// `ys (n, o) + bias (o)`. On the CPU a fused op whose backward sums the gradient's columns in one
/// cache-friendly pass: candle's generic broadcast-add backward reduces over the batch dimension
/// with strided reads and cost as much as the layer's matmul.
pub fn add_bias(ys: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    if ys.device().is_cpu() && ys.rank() == 2 && matches!(ys.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
    {
        ys.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd)
    } else {
        ys.broadcast_add(bias)
    }
}

struct BiasAdd;
struct ColumnSum;

/// The elements of a contiguous tensor's storage `s` with layout `l`; `op` names the op in the error.
pub(crate) fn contiguous_slice<'a, T>(s: &'a [T], l: &candle_core::Layout, op: &str) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

fn bias_add_rows<T: Copy + std::ops::Add<Output = T> + Send + Sync>(x: &[T], b: &[T]) -> Vec<T> {
    use rayon::prelude::*;
    let o = b.len();
    let mut out = x.to_vec();
    candle_core::utils::with_threadpool(|| {
        out.par_chunks_mut(o).with_min_len(64).for_each(|row| {
            for (v, &bb) in row.iter_mut().zip(b) {
                *v = *v + bb;
            }
        })
    });
    out
}

fn column_sums<T: Copy + Default + std::ops::Add<Output = T> + Send + Sync>(g: &[T], o: usize) -> Vec<T> {
    use rayon::prelude::*;
    let rows = g.len() / o.max(1);
    let per_task = rows.div_ceil(candle_core::utils::get_num_threads().max(1)).max(64);
    candle_core::utils::with_threadpool(|| {
        g.par_chunks(per_task * o)
            .map(|block| {
                let mut acc = vec![T::default(); o];
                for row in block.chunks(o) {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a = *a + v;
                    }
                }
                acc
            })
            .reduce(|| vec![T::default(); o], |a, b| a.into_iter().zip(b).map(|(x, y)| x + y).collect())
    })
}

impl candle_core::CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let (_, o) = l1.shape().dims2()?;
        if l2.shape().elem_count() != o {
            candle_core::bail!("bias-add: bias of {} for {o} columns", l2.shape().elem_count());
        }
        let out = match (s1, s2) {
            (S::F32(x), S::F32(b)) => {
                S::F32(bias_add_rows(contiguous_slice(x, l1, "bias-add")?, contiguous_slice(b, l2, "bias-add")?))
            }
            (S::F64(x), S::F64(b)) => {
                S::F64(bias_add_rows(contiguous_slice(x, l1, "bias-add")?, contiguous_slice(b, l2, "bias-add")?))
            }
            _ => candle_core::bail!("bias-add: f32 or f64 of one kind"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gb = grad.contiguous()?.apply_op1_no_bwd(&ColumnSum)?.reshape(b.shape())?;
        Ok((Some(grad.clone()), Some(gb)))
    }
}

impl candle_core::CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "column-sum"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let (_, o) = l.shape().dims2()?;
        let out = match s {
            S::F32(g) => S::F32(column_sums(contiguous_slice(g, l, "bias-add")?, o)),
            S::F64(g) => S::F64(column_sums(contiguous_slice(g, l, "bias-add")?, o)),
            _ => candle_core::bail!("column-sum: f32 or f64"),
        };
        Ok((out, candle_core::Shape::from(o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_bias_add_matches_broadcast_add_and_its_gradients() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::arange(0f64, 12.0, &dev)?.reshape((4, 3))?)?;
        let b = Var::new(&[0.5f64, -1.0, 2.0], &dev)?;
        let w = Tensor::new(&[[1.0f64, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [1.0, 0.0, -1.0]], &dev)?;
        let fused = add_bias(x.as_tensor(), b.as_tensor())?;
        let plain = x.as_tensor().broadcast_add(b.as_tensor())?;
        assert_eq!(fused.to_vec2::<f64>()?, plain.to_vec2::<f64>()?);
        let g1 = (fused * &w)?.sum_all()?.backward()?;
        let g2 = (plain * &w)?.sum_all()?.backward()?;
        assert_eq!(g1.get(b.as_tensor()).unwrap().to_vec1::<f64>()?, g2.get(b.as_tensor()).unwrap().to_vec1::<f64>()?);
        assert_eq!(g1.get(x.as_tensor()).unwrap().to_vec2::<f64>()?, g2.get(x.as_tensor()).unwrap().to_vec2::<f64>()?);
        Ok(())
    }
}
