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
    /// The mask as a staircase (rows and columns ordered by degree), made at the first product
    /// of a large batch.
    staircase: OnceLock<Staircase>,
}

impl MaskRule {
    pub fn new(out_deg: &[usize], in_deg: &[usize], strict: bool) -> Arc<Self> {
        Arc::new(Self {
            out_deg: out_deg.to_vec(),
            in_deg: in_deg.to_vec(),
            strict,
            device_mask: OnceLock::new(),
            staircase: OnceLock::new(),
        })
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

    fn staircase(&self) -> &Staircase {
        self.staircase.get_or_init(|| Staircase::new(self))
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
        if n >= MIN_ROWS_FOR_STAIRCASE {
            if let (Some(x), Some(wv)) = (host_f32_f64(xs, xl), host_f32_f64(w, wl)) {
                let st = self.0.staircase();
                let out = candle_core::utils::with_threadpool(|| match (x, wv) {
                    (Host::F32(x), Host::F32(w)) => Ok(CpuStorage::F32(st.forward(x, w, n))),
                    (Host::F64(x), Host::F64(w)) => Ok(CpuStorage::F64(st.forward(x, w, n))),
                    _ => Err(candle_core::Error::Msg("masked-matmul: inputs and weight of one dtype".into())),
                })?;
                return Ok((out, Shape::from((n, o))));
            }
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
        if xs.dim(0)? >= MIN_ROWS_FOR_STAIRCASE {
            let grad = grad.contiguous()?;
            let dx = if xs.track_op() { Some(grad.apply_op2_no_bwd(w, &StaircaseInputGrad(&self.0))?) } else { None };
            let dw = grad.apply_op2_no_bwd(&xs.contiguous()?, &StaircaseWeightGrad(&self.0))?;
            return Ok((dx, Some(dw)));
        }
        // The expressions candle's backward of `xs.matmul(&(w * m).t())` evaluates.
        let dx = if xs.track_op() { Some(grad.matmul(w)?) } else { None };
        let dw_t = xs.t()?.matmul(grad)?;
        let dw = dw_t.apply_op1_no_bwd(&TransposeMasked(&self.0))?;
        Ok((dx, Some(dw)))
    }
}

/// From this many rows a product runs as a staircase of GEMMs that skip the masked-out blocks
/// (below, one dense GEMM is as fast).
const MIN_ROWS_FOR_STAIRCASE: usize = 256;

/// Row groups of a staircase: more skip more of the masked-out half, fewer make larger GEMMs.
const STAIRCASE_GROUPS: usize = 8;

/// A mask seen with its rows and columns each ordered by degree (a stable sort): then row r keeps
/// a prefix of `prefix[r]` columns, the prefixes never shrink, and the product with the masked
/// weight is one GEMM per row group over the group's longest prefix. All three products of
/// training (the forward, the input gradient, the weight gradient) skip what the mask removes,
/// about half of a MADE layer. They sum the same non-zero terms as the dense products in
/// another order (float rounding differs, as between two GEMM libraries).
struct Staircase {
    /// Stored row of each ordered row; `None` where the degrees are already in order.
    rows: Option<Vec<usize>>,
    /// Stored column of each ordered column; `None` where already in order.
    cols: Option<Vec<usize>>,
    /// Kept prefix of each ordered row.
    prefix: Vec<usize>,
    /// (first ordered row, rows, longest prefix) of each group.
    groups: Vec<(usize, usize, usize)>,
    /// The layer's inputs.
    inputs: usize,
}

fn degree_order(degrees: &[usize]) -> Option<Vec<usize>> {
    if degrees.windows(2).all(|w| w[0] <= w[1]) {
        return None;
    }
    let mut order: Vec<usize> = (0..degrees.len()).collect();
    order.sort_by_key(|&k| degrees[k]);
    Some(order)
}

impl Staircase {
    fn new(rule: &MaskRule) -> Self {
        let (o, i) = rule.dims();
        let (rows, cols) = (degree_order(&rule.out_deg), degree_order(&rule.in_deg));
        let row_deg = |r: usize| rule.out_deg[rows.as_ref().map_or(r, |p| p[r])];
        let sorted_in: Vec<usize> = (0..i).map(|c| rule.in_deg[cols.as_ref().map_or(c, |p| p[c])]).collect();
        let prefix: Vec<usize> = (0..o).map(|r| sorted_in.partition_point(|&d| rule.keeps(row_deg(r), d))).collect();
        let per = o.div_ceil(STAIRCASE_GROUPS).max(1);
        let groups = (0..o)
            .step_by(per)
            .map(|start| (start, per.min(o - start), prefix[per.min(o - start) + start - 1]))
            .collect();
        Self { rows, cols, prefix, groups, inputs: i }
    }

    /// `x` (n, i) with its columns in the ordered layout.
    fn ordered_inputs<'a, T: Copy>(&self, x: &'a [T], n: usize, i: usize) -> std::borrow::Cow<'a, [T]> {
        match &self.cols {
            None => std::borrow::Cow::Borrowed(x),
            Some(cols) => std::borrow::Cow::Owned(
                x.chunks(i.max(1)).take(n).flat_map(|row| cols.iter().map(move |&c| row[c])).collect(),
            ),
        }
    }

    /// The weight (o, i) with rows and columns in the ordered layout.
    fn ordered_weight<'a, T: Copy>(&self, w: &'a [T], o: usize, i: usize) -> std::borrow::Cow<'a, [T]> {
        if self.rows.is_none() && self.cols.is_none() {
            return std::borrow::Cow::Borrowed(w);
        }
        let mut out = Vec::with_capacity(o * i);
        for r in 0..o {
            let row = &w[self.rows.as_ref().map_or(r, |p| p[r]) * i..][..i];
            match &self.cols {
                None => out.extend_from_slice(row),
                Some(cols) => out.extend(cols.iter().map(|&c| row[c])),
            }
        }
        std::borrow::Cow::Owned(out)
    }

    /// `dy` (n, o) with its columns in the ordered row layout.
    fn ordered_outputs<'a, T: Copy>(&self, dy: &'a [T], n: usize, o: usize) -> std::borrow::Cow<'a, [T]> {
        match &self.rows {
            None => std::borrow::Cow::Borrowed(dy),
            Some(rows) => std::borrow::Cow::Owned(
                dy.chunks(o.max(1)).take(n).flat_map(|row| rows.iter().map(move |&r| row[r])).collect(),
            ),
        }
    }

    /// Scatters `ordered` (n, len) back to the stored column order of `order`.
    fn unorder_columns<T: Copy + num_traits::Zero>(
        ordered: Vec<T>,
        order: &Option<Vec<usize>>,
        n: usize,
        len: usize,
    ) -> Vec<T> {
        let Some(order) = order else { return ordered };
        let mut out = vec![T::zero(); n * len];
        for (dst, src) in out.chunks_mut(len.max(1)).zip(ordered.chunks(len.max(1))) {
            for (k, &v) in src.iter().enumerate() {
                dst[order[k]] = v;
            }
        }
        out
    }

    fn dims(&self) -> (usize, usize) {
        (self.prefix.len(), self.inputs)
    }

    /// `x (n, i) · Wᵀ` for the masked weight `w (o, i)`.
    fn forward<T: candle_core::WithDType + num_traits::Float>(&self, x: &[T], w: &[T], n: usize) -> Vec<T> {
        let (o, i) = self.dims();
        let (xo, wo) = (self.ordered_inputs(x, n, i), self.ordered_weight(w, o, i));
        let mut y = vec![T::zero(); n * o];
        for &(start, len, cols) in self.groups.iter().filter(|g| g.1 > 0 && g.2 > 0) {
            // SAFETY: dst y[b·o + start + c] for b < n, c < len ≤ o − start; lhs xo[b·i + k], k < cols ≤ i;
            // rhs wo[(start + c)·i + k]: inside the (n, o), (n, i) and (o, i) buffers.
            unsafe {
                gemm::gemm(
                    n,
                    len,
                    cols,
                    y.as_mut_ptr().add(start),
                    1,
                    o as isize,
                    false,
                    xo.as_ptr(),
                    1,
                    i as isize,
                    wo.as_ptr().add(start * i),
                    i as isize,
                    1,
                    T::zero(),
                    T::one(),
                    false,
                    false,
                    false,
                    parallelism(),
                );
            }
        }
        Self::unorder_columns(y, &self.rows, n, o)
    }

    /// `dy (n, o) · (W∘M)` for the masked weight `w (o, i)`: the input gradient (n, i).
    fn input_grad<T: candle_core::WithDType + num_traits::Float>(&self, dy: &[T], w: &[T], n: usize) -> Vec<T> {
        let (o, i) = self.dims();
        let (dyo, wo) = (self.ordered_outputs(dy, n, o), self.ordered_weight(w, o, i));
        let mut dx = vec![T::zero(); n * i];
        for &(start, len, cols) in self.groups.iter().filter(|g| g.1 > 0 && g.2 > 0) {
            // SAFETY: dst dx[b·i + c] for c < cols ≤ i; lhs dyo[b·o + start + r], r < len;
            // rhs wo[(start + r)·i + c]: inside the (n, i), (n, o) and (o, i) buffers.
            unsafe {
                gemm::gemm(
                    n,
                    cols,
                    len,
                    dx.as_mut_ptr(),
                    1,
                    i as isize,
                    true,
                    dyo.as_ptr().add(start),
                    1,
                    o as isize,
                    wo.as_ptr().add(start * i),
                    1,
                    i as isize,
                    T::one(),
                    T::one(),
                    false,
                    false,
                    false,
                    parallelism(),
                );
            }
        }
        Self::unorder_columns(dx, &self.cols, n, i)
    }

    /// `(dyᵀ · x)∘M` (o, i): the weight gradient in the weight's layout.
    fn weight_grad<T: candle_core::WithDType + num_traits::Float>(&self, dy: &[T], x: &[T], n: usize) -> Vec<T> {
        let (o, i) = self.dims();
        let (dyo, xo) = (self.ordered_outputs(dy, n, o), self.ordered_inputs(x, n, i));
        let mut dw = vec![T::zero(); o * i];
        for &(start, len, cols) in self.groups.iter().filter(|g| g.1 > 0 && g.2 > 0) {
            // SAFETY: dst dw[(start + r)·i + c] for r < len, c < cols; lhs dyo[b·o + start + r];
            // rhs xo[b·i + c], b < n: inside the (o, i), (n, o) and (n, i) buffers.
            unsafe {
                gemm::gemm(
                    len,
                    cols,
                    n,
                    dw.as_mut_ptr().add(start * i),
                    1,
                    i as isize,
                    false,
                    dyo.as_ptr().add(start),
                    o as isize,
                    1,
                    xo.as_ptr(),
                    1,
                    i as isize,
                    T::zero(),
                    T::one(),
                    false,
                    false,
                    false,
                    parallelism(),
                );
            }
            // Rows of the group that keep fewer columns than its longest prefix.
            for r in start..start + len {
                dw[r * i + self.prefix[r]..r * i + cols].iter_mut().for_each(|v| *v = T::zero());
            }
        }
        match (&self.rows, &self.cols) {
            (None, None) => dw,
            (rows, cols) => {
                let mut out = vec![T::zero(); o * i];
                for r in 0..o {
                    let dst = &mut out[rows.as_ref().map_or(r, |p| p[r]) * i..][..i];
                    let src = &dw[r * i..(r + 1) * i];
                    match cols {
                        None => dst.copy_from_slice(src),
                        Some(cols) => src.iter().zip(cols).for_each(|(&v, &c)| dst[c] = v),
                    }
                }
                out
            }
        }
    }
}

fn parallelism() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    }
}

/// A contiguous f32 or f64 CPU buffer.
enum Host<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

fn host_f32_f64<'a>(s: &'a CpuStorage, l: &Layout) -> Option<Host<'a>> {
    let (a, b) = l.contiguous_offsets()?;
    match s {
        CpuStorage::F32(v) => Some(Host::F32(&v[a..b])),
        CpuStorage::F64(v) => Some(Host::F64(&v[a..b])),
        _ => None,
    }
}

/// The input gradient `dy · (W∘M)` of a staircase product (inputs: dy (n, o), W (o, i)).
struct StaircaseInputGrad<'a>(&'a MaskRule);

impl candle_core::CustomOp2 for StaircaseInputGrad<'_> {
    fn name(&self) -> &'static str {
        "masked-matmul-input-grad"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, o) = gl.shape().dims2()?;
        let (wo, i) = wl.shape().dims2()?;
        if wo != o || (o, i) != self.0.dims() {
            candle_core::bail!("masked-matmul input gradient: gradient {:?}, weight {:?}", gl.shape(), wl.shape());
        }
        let st = self.0.staircase();
        let out = candle_core::utils::with_threadpool(|| match (host_f32_f64(g, gl), host_f32_f64(w, wl)) {
            (Some(Host::F32(g)), Some(Host::F32(w))) => Ok(CpuStorage::F32(st.input_grad(g, w, n))),
            (Some(Host::F64(g)), Some(Host::F64(w))) => Ok(CpuStorage::F64(st.input_grad(g, w, n))),
            _ => Err(candle_core::Error::Msg("masked-matmul input gradient: contiguous f32 or f64".into())),
        })?;
        Ok((out, Shape::from((n, i))))
    }
}

/// The weight gradient `(dyᵀ · x)∘M` of a staircase product (inputs: dy (n, o), x (n, i)).
struct StaircaseWeightGrad<'a>(&'a MaskRule);

impl candle_core::CustomOp2 for StaircaseWeightGrad<'_> {
    fn name(&self) -> &'static str {
        "masked-matmul-weight-grad"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        gl: &Layout,
        x: &CpuStorage,
        xl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, o) = gl.shape().dims2()?;
        let (xn, i) = xl.shape().dims2()?;
        if xn != n || (o, i) != self.0.dims() {
            candle_core::bail!("masked-matmul weight gradient: gradient {:?}, inputs {:?}", gl.shape(), xl.shape());
        }
        let st = self.0.staircase();
        let out = candle_core::utils::with_threadpool(|| match (host_f32_f64(g, gl), host_f32_f64(x, xl)) {
            (Some(Host::F32(g)), Some(Host::F32(x))) => Ok(CpuStorage::F32(st.weight_grad(g, x, n))),
            (Some(Host::F64(g)), Some(Host::F64(x))) => Ok(CpuStorage::F64(st.weight_grad(g, x, n))),
            _ => Err(candle_core::Error::Msg("masked-matmul weight gradient: contiguous f32 or f64".into())),
        })?;
        Ok((out, Shape::from((o, i))))
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

    /// From `MIN_ROWS_FOR_STAIRCASE` rows the products run as staircases (rows and columns
    /// reordered by degree, masked-out blocks skipped): forward, input and weight gradients equal
    /// the mask product's autograd to rounding (f64 1e-12, f32 1e-5 of the largest value), and
    /// the masked entries' weight gradient is exactly zero. Layers whose inputs, outputs or both
    /// are out of degree order (a MADE's first, hidden and output layers), and input degrees
    /// that leave whole rows empty (the output layer's degree-1 features).
    #[test]
    fn staircase_products_agree_with_the_mask_product_and_its_autograd() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (d, h, n) = (9, 70, MIN_ROWS_FOR_STAIRCASE + 13);
        let in_deg = super::super::made::input_degrees(d);
        let hid = super::super::made::hidden_degrees(h, d);
        let out = super::super::made::output_degrees(d, 5);
        let mut shuffled = hid.clone();
        shuffled.reverse();
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            for (od, id, strict) in
                [(&hid, &in_deg, false), (&hid, &hid, false), (&out, &hid, true), (&shuffled, &out, false)]
            {
                let rule = MaskRule::new(od, id, strict);
                let (o, i) = rule.dims();
                let w0 = Tensor::randn(0f32, 1.0, (o, i), &dev)?.to_dtype(dtype)?;
                let x0 = Tensor::randn(0f32, 1.0, (n, i), &dev)?.to_dtype(dtype)?;
                let (x, w) = (Var::from_tensor(&x0)?, Var::from_tensor(&w0.copy()?)?);
                let (y_old, dx_old, dw_old) = reference(&x, &w, &rule)?;
                let (x2, w2) = (Var::from_tensor(&x0.copy()?)?, Var::from_tensor(&w0.copy()?)?);
                let y = forward(x2.as_tensor(), w2.as_tensor(), &rule)?;
                let g = (y.sin()? * 1.5)?.sum_all()?.backward()?;
                let close = |a: &Tensor, b: &Tensor, what: &str| -> candle_core::Result<()> {
                    let (a, b) = (values(a)?, values(b)?);
                    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
                    let worst = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
                    assert!(worst <= tol * scale, "{dtype:?} {what}: differs by {worst} (scale {scale})");
                    Ok(())
                };
                close(&y, &y_old, "forward")?;
                close(g.get(&x2).unwrap(), &dx_old, "dx")?;
                let dw = g.get(&w2).unwrap();
                close(dw, &dw_old, "dW")?;
                let dw = values(dw)?;
                for k in 0..o * i {
                    assert!(rule.keeps(od[k / i], id[k % i]) || dw[k] == 0.0, "{dtype:?} masked dW entry {k}");
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
