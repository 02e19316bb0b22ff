//! A flow's sampling direction (z, context → x) as a standard ONNX graph (opset ≥ 13), built with
//! candle-onnx's protobuf types: the MADE masks are folded into the weights, and the
//! rational-quadratic spline with linear tails is written with standard operators (Softmax, CumSum,
//! GatherElements, Where, Sqrt…), the same formulas as nflows' `rational_quadratic_spline`.
//!
//! Only flows that sample in one MADE pass per block (IAF students, imported `iaf` and
//! `icaloflow-iaf` flows) are exported; a MAF samples in D sequential passes per block.

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Tensor};
use candle_onnx::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::flow::made::{hidden_degrees, input_degrees, mask, output_degrees};
use crate::flow::{Direction, FlowKind, FlowSpec};

/// The graph's input and output names.
/// The operator sets the graphs are written for: 13 brought ReduceSum's and Squeeze's axes
/// inputs; 21 is the newest that ONNX Runtime 1.18+ and the ONNX 1.16 checker accept (later
/// numbers are refused by runtimes that do not know them yet).
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

pub const INPUT_Z: &str = "z";
pub const INPUT_CONTEXT: &str = "context";
pub const OUTPUT_X: &str = "x";

/// nflows' `searchsorted` eps on the last knot.
const SEARCH_EPS: f64 = 1e-6;

/// A graph under construction: nodes and initializers, with fresh names; float constants are
/// made in `dtype` (which a caller may switch, e.g. to float64 for a postprocessing tail).
pub(crate) struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    count: usize,
    pub(crate) dtype: DataType,
    /// Constants already stored, by (type, dims, bytes): every use refers to one initializer.
    consts: HashMap<(i32, Vec<i64>, Vec<u8>), String>,
    /// A layer's (weight, bias) initializers by its stem: a layer written again (the passes of an
    /// unrolled MAF solve) refers to the same weights.
    layers: HashMap<String, (String, String)>,
}

pub(crate) fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
}

impl Builder {
    fn fresh(&mut self, stem: &str) -> String {
        self.count += 1;
        format!("{stem}_{}", self.count)
    }

    pub(crate) fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_with_outputs(op, inputs, attrs, 1).remove(0)
    }

    /// A node with `outputs` outputs (e.g. TopK's values and indices).
    pub(crate) fn op_with_outputs(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        let first = self.fresh(&op.to_lowercase());
        let names: Vec<String> =
            (0..outputs).map(|k| if k == 0 { first.clone() } else { format!("{first}_{k}") }).collect();
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: format!("{first}_node"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: names.clone(),
            attribute: attrs,
            ..Default::default()
        });
        names
    }

    fn float_bytes(&self, values: &[f64]) -> Vec<u8> {
        if self.dtype == DataType::Double {
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        } else {
            values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect()
        }
    }

    fn initializer(&mut self, name: String, dims: Vec<i64>, data_type: DataType, raw_data: Vec<u8>) -> String {
        self.inits.push(TensorProto {
            name: name.clone(),
            dims,
            data_type: data_type as i32,
            raw_data,
            ..Default::default()
        });
        name
    }

    /// A small constant, stored once however often it is used.
    fn constant(&mut self, stem: &str, dims: Vec<i64>, data_type: DataType, raw: Vec<u8>) -> String {
        let key = (data_type as i32, dims, raw);
        if let Some(name) = self.consts.get(&key) {
            return name.clone();
        }
        let name = self.fresh(stem);
        self.consts.insert(key.clone(), name.clone());
        self.initializer(name, key.1, data_type, key.2)
    }

    /// A float initializer in the graph's dtype.
    pub(crate) fn floats(&mut self, stem: &str, dims: &[usize], values: &[f64]) -> String {
        let name = self.fresh(stem);
        let raw = self.float_bytes(values);
        self.initializer(name, dims.iter().map(|&d| d as i64).collect(), self.dtype, raw)
    }

    pub(crate) fn scalar(&mut self, v: f64) -> String {
        let raw = self.float_bytes(&[v]);
        self.constant("c", vec![], self.dtype, raw)
    }

    pub(crate) fn ints(&mut self, values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant("i", vec![values.len() as i64], DataType::Int64, raw)
    }

    /// An int64 scalar.
    pub(crate) fn int_scalar(&mut self, v: i64) -> String {
        self.constant("i", vec![], DataType::Int64, v.to_le_bytes().to_vec())
    }

    pub(crate) fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], vec![])
    }
    pub(crate) fn sub(&mut self, a: &str, b: &str) -> String {
        self.op("Sub", &[a, b], vec![])
    }
    pub(crate) fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }
    pub(crate) fn div(&mut self, a: &str, b: &str) -> String {
        self.op("Div", &[a, b], vec![])
    }
    pub(crate) fn relu(&mut self, a: &str) -> String {
        self.op("Relu", &[a], vec![])
    }

    /// `a · s + t` with scalar constants.
    pub(crate) fn affine(&mut self, a: &str, s: f64, t: f64) -> String {
        let s = self.scalar(s);
        let t = self.scalar(t);
        let m = self.mul(a, &s);
        self.add(&m, &t)
    }

    /// `xs[..., start..end]` on the last of three axes.
    fn slice(&mut self, a: &str, start: usize, end: usize) -> String {
        let (s, e, ax) = (self.ints(&[start as i64]), self.ints(&[end as i64]), self.ints(&[2]));
        self.op("Slice", &[a, &s, &e, &ax], vec![])
    }

    fn concat(&mut self, parts: &[&str]) -> String {
        self.op("Concat", parts, vec![int_attr("axis", 2)])
    }

    /// `xs · Wᵀ + b` with `weight` (out, in) stored transposed, once per `stem`.
    fn linear(&mut self, xs: &str, weight: &[f64], bias: &[f64], outputs: usize, inputs: usize, stem: &str) -> String {
        let (w, b) = match self.layers.get(stem) {
            Some(wb) => wb.clone(),
            None => {
                let mut wt = vec![0.0; weight.len()];
                for o in 0..outputs {
                    for i in 0..inputs {
                        wt[i * outputs + o] = weight[o * inputs + i];
                    }
                }
                let w = self.floats(&format!("{stem}_weight_t"), &[inputs, outputs], &wt);
                let b = self.floats(&format!("{stem}_bias"), &[outputs], bias);
                self.layers.insert(stem.to_string(), (w.clone(), b.clone()));
                (w, b)
            }
        };
        let m = self.op("MatMul", &[xs, &w], vec![]);
        self.add(&m, &b)
    }

    /// torch's softplus, written stably: relu(x) + log(1 + exp(−|x|)).
    fn softplus(&mut self, a: &str) -> String {
        let r = self.relu(a);
        let abs = self.op("Abs", &[a], vec![]);
        let neg = self.op("Neg", &[&abs], vec![]);
        let e = self.op("Exp", &[&neg], vec![]);
        let one = self.scalar(1.0);
        let p = self.add(&e, &one);
        let l = self.op("Log", &[&p], vec![]);
        self.add(&r, &l)
    }

    /// Normalised bin sizes → knots with the ends pinned to ±B, and the bin sizes (nflows' steps).
    fn knots(&mut self, raw: &str, k: usize, min: f64, bound: f64) -> (String, String) {
        let soft = self.op("Softmax", &[raw], vec![int_attr("axis", -1)]);
        let sizes = self.affine(&soft, 1.0 - min * k as f64, min);
        let axis = self.ints(&[2]);
        let cum = self.op("CumSum", &[&sizes, &axis], vec![]);
        let scaled = self.affine(&cum, 2.0 * bound, -bound);
        // Columns of ±B with the batch's shape: (first column · 0) ± B.
        let first = self.slice(&sizes, 0, 1);
        let zero = self.scalar(0.0);
        let zeros = self.mul(&first, &zero);
        let left = self.affine(&zeros, 1.0, -bound);
        let right = self.affine(&zeros, 1.0, bound);
        let inner = self.slice(&scaled, 0, k - 1);
        let knots = self.concat(&[&left, &inner, &right]);
        let hi = self.slice(&knots, 1, k + 1);
        let lo = self.slice(&knots, 0, k);
        let sizes = self.sub(&hi, &lo);
        (knots, sizes)
    }

    fn gather(&mut self, data: &str, idx: &str) -> String {
        self.op("GatherElements", &[data, idx], vec![int_attr("axis", 2)])
    }

    /// The spline on (N, d) inputs with raw parameters (N, d·(3K−1)).
    fn rqs(&mut self, inputs: &str, params: &str, spec: &FlowSpec, d: usize, dir: Direction) -> String {
        let s = &spec.spline;
        let (k, b) = (s.num_bins, s.tail_bound);
        let shape = self.ints(&[-1, d as i64, (3 * k - 1) as i64]);
        let p = self.op("Reshape", &[params, &shape], vec![]);
        let (uw, uh, ud) = (self.slice(&p, 0, k), self.slice(&p, k, 2 * k), self.slice(&p, 2 * k, 3 * k - 1));
        let (cumw, widths) = self.knots(&uw, k, s.min_bin_width, b);
        let (cumh, heights) = self.knots(&uh, k, s.min_bin_height, b);
        // Derivatives: the inner ones from the network, the boundary ones fixed (nflows' constant pad).
        let pad = ((1.0 - s.min_derivative).exp() - 1.0).ln();
        let first = self.slice(&ud, 0, 1);
        let zero = self.scalar(0.0);
        let zeros = self.mul(&first, &zero);
        let pad_col = self.affine(&zeros, 1.0, pad);
        let padded = self.concat(&[&pad_col, &ud, &pad_col]);
        let sp = self.softplus(&padded);
        let derivs = self.affine(&sp, 1.0, s.min_derivative);

        let ax = self.ints(&[2]);
        let x3 = self.op("Unsqueeze", &[inputs, &ax], vec![]);
        let locs = if dir == Direction::Inverse { &cumh } else { &cumw };
        let mut eps = vec![0.0; k + 1];
        eps[k] = SEARCH_EPS;
        let eps = self.floats("search_eps", &[k + 1], &eps);
        let search = self.add(locs, &eps);
        let ge = self.op("GreaterOrEqual", &[&x3, &search], vec![]);
        let gef = self.op("Cast", &[&ge], vec![int_attr("to", self.dtype as i64)]);
        let count = self.op("ReduceSum", &[&gef, &ax], vec![int_attr("keepdims", 1)]);
        let (lo, hi) = (self.scalar(1.0), self.scalar(k as f64));
        // idx = clip(count − 1, 0, K − 1), as min(max(count, 1), K) − 1.
        let clipped = self.op("Clip", &[&count, &lo, &hi], vec![]);
        let idxf = self.affine(&clipped, 1.0, -1.0);
        let idx = self.op("Cast", &[&idxf], vec![int_attr("to", DataType::Int64 as i64)]);

        let cw_k = self.slice(&cumw, 0, k);
        let ch_k = self.slice(&cumh, 0, k);
        let delta_all = self.div(&heights, &widths);
        let d_lo = self.slice(&derivs, 0, k);
        let d_hi = self.slice(&derivs, 1, k + 1);
        let in_cw = self.gather(&cw_k, &idx);
        let in_w = self.gather(&widths, &idx);
        let in_ch = self.gather(&ch_k, &idx);
        let in_h = self.gather(&heights, &idx);
        let delta = self.gather(&delta_all, &idx);
        let d0 = self.gather(&d_lo, &idx);
        let d1 = self.gather(&d_hi, &idx);
        // d0 + d1 − 2δ
        let dd = self.add(&d0, &d1);
        let two_delta = self.affine(&delta, 2.0, 0.0);
        let curv = self.sub(&dd, &two_delta);
        let out3 = if dir == Direction::Inverse {
            let y = self.sub(&x3, &in_ch);
            let yc = self.mul(&y, &curv);
            let dm = self.sub(&delta, &d0);
            let hdm = self.mul(&in_h, &dm);
            let a = self.add(&yc, &hdm);
            let hd = self.mul(&in_h, &d0);
            let bq = self.sub(&hd, &yc);
            let dy = self.mul(&delta, &y);
            let c = self.affine(&dy, -1.0, 0.0);
            let b2 = self.mul(&bq, &bq);
            let ac = self.mul(&a, &c);
            let ac4 = self.affine(&ac, 4.0, 0.0);
            let disc = self.sub(&b2, &ac4);
            let disc = self.relu(&disc);
            let sq = self.op("Sqrt", &[&disc], vec![]);
            let nb = self.affine(&bq, -1.0, 0.0);
            let den = self.sub(&nb, &sq);
            let c2 = self.affine(&c, 2.0, 0.0);
            let root = self.div(&c2, &den);
            let rw = self.mul(&root, &in_w);
            self.add(&rw, &in_cw)
        } else {
            let xr = self.sub(&x3, &in_cw);
            let theta = self.div(&xr, &in_w);
            let omt = self.affine(&theta, -1.0, 1.0);
            let tomt = self.mul(&theta, &omt);
            let t2 = self.mul(&theta, &theta);
            let dt2 = self.mul(&delta, &t2);
            let d0t = self.mul(&d0, &tomt);
            let inner = self.add(&dt2, &d0t);
            let num = self.mul(&in_h, &inner);
            let ct = self.mul(&curv, &tomt);
            let den = self.add(&delta, &ct);
            let q = self.div(&num, &den);
            self.add(&in_ch, &q)
        };
        let out = self.op("Squeeze", &[&out3, &ax], vec![]);
        let (lb, ub) = (self.scalar(-b), self.scalar(b));
        let above = self.op("GreaterOrEqual", &[inputs, &lb], vec![]);
        let below = self.op("LessOrEqual", &[inputs, &ub], vec![]);
        let inside = self.op("And", &[&above, &below], vec![]);
        self.op("Where", &[&inside, &out, inputs], vec![])
    }
}

fn values(tensors: &HashMap<String, Tensor>, name: &str) -> Result<Vec<f64>, String> {
    let t = tensors.get(name).ok_or_else(|| format!("the weights lack '{name}'"))?;
    t.to_dtype(DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f64>()).map_err(|e| e.to_string())
}

fn masked(tensors: &HashMap<String, Tensor>, name: &str, m: &[f32]) -> Result<Vec<f64>, String> {
    let w = values(tensors, name)?;
    if w.len() != m.len() {
        return Err(format!("'{name}' has {} values, its mask {}", w.len(), m.len()));
    }
    Ok(w.iter().zip(m).map(|(w, &m)| w * m as f64).collect())
}

/// The graph's float type for a model dtype.
pub(crate) fn data_type(dtype: DType) -> Result<DataType, String> {
    match dtype {
        DType::F32 => Ok(DataType::Float),
        DType::F64 => Ok(DataType::Double),
        other => Err(format!("dtype {other:?}: only float32 and float64 export")),
    }
}

/// Checks that `spec` can be exported at `opset` and returns an empty graph builder in `dtype`.
pub(crate) fn builder(spec: &FlowSpec, dtype: DType, opset: i64) -> Result<Builder, String> {
    if spec.kind != FlowKind::Iaf {
        return Err(
            "only flows that sample in one pass (IAF students, imported iaf / icaloflow-iaf flows) export to ONNX; \
             a MAF samples in D sequential passes per block: distil a student first"
                .into(),
        );
    }
    empty(dtype, opset)
}

/// An empty graph builder in `dtype` for the opsets the graphs are written for, for any flows.
pub(crate) fn empty(dtype: DType, opset: i64) -> Result<Builder, String> {
    if !OPSETS.contains(&opset) {
        return Err(format!(
            "opset {opset}: the graph is written for opsets {}..={} (ReduceSum and Squeeze with axes inputs)",
            OPSETS.start(),
            OPSETS.end()
        ));
    }
    Ok(Builder {
        nodes: Vec::new(),
        inits: Vec::new(),
        count: 0,
        dtype: data_type(dtype)?,
        consts: HashMap::new(),
        layers: HashMap::new(),
    })
}

/// A graph input or output (N, cols) of `dt`.
pub(crate) fn value_info(name: &str, cols: usize, dt: DataType) -> ValueInfoProto {
    value_info_dims(name, &[cols], dt)
}

/// A graph input or output (N, dims…) of `dt`, N symbolic (any batch size).
pub(crate) fn value_info_dims(name: &str, dims: &[usize], dt: DataType) -> ValueInfoProto {
    let batch = tensor_shape_proto::Dimension {
        value: Some(tensor_shape_proto::dimension::Value::DimParam("N".into())),
        ..Default::default()
    };
    let rest = dims.iter().map(|&d| tensor_shape_proto::Dimension {
        value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
        ..Default::default()
    });
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dt as i32,
                shape: Some(TensorShapeProto { dim: std::iter::once(batch).chain(rest).collect() }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// How a MAF's D sequential MADE passes per block are written (an IAF samples in one pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MafPasses {
    /// One ONNX `Loop` per block, its body one pass (the graph stays small).
    #[default]
    Loop,
    /// The D passes written out one after the other (same shared weights, D× the nodes).
    Unrolled,
}

/// One block's MADE: its weights (masks folded in) read once, its nodes written on demand.
struct MadeNet<'a> {
    spec: &'a FlowSpec,
    tensors: &'a HashMap<String, Tensor>,
    key: String,
    stem: String,
}

/// A MADE's context terms: the first layer's relu(W_c·c + b_c) and each residual layer's W·c + b.
struct ContextTerms {
    first: Option<String>,
    layers: Vec<Option<String>>,
}

impl MadeNet<'_> {
    fn key(&self, s: &str) -> String {
        format!("{}.{s}", self.key)
    }

    fn masks(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (d, h) = (self.spec.features, self.spec.hidden_features);
        let in_deg = input_degrees(d);
        let hid_deg = hidden_degrees(h, d);
        let out_deg = output_degrees(d, self.spec.spline.params_per_feature());
        (mask(&hid_deg, &in_deg, false), mask(&hid_deg, &hid_deg, false), mask(&out_deg, &hid_deg, true))
    }

    fn context_terms(&self, g: &mut Builder, ctx: &str) -> Result<ContextTerms, String> {
        let (h, c) = (self.spec.hidden_features, self.spec.context_features);
        if c == 0 {
            return Ok(ContextTerms { first: None, layers: vec![None; self.spec.hidden_layers] });
        }
        let w = values(self.tensors, &self.key("context.weight"))?;
        let b = values(self.tensors, &self.key("context.bias"))?;
        let first = g.linear(ctx, &w, &b, h, c, &format!("{}_context", self.stem));
        let first = Some(g.relu(&first));
        let mut layers = Vec::new();
        for j in 0..self.spec.hidden_layers {
            layers.push(if self.spec.residual {
                let cw = values(self.tensors, &self.key(&format!("layers.{j}.context.weight")))?;
                let cb = values(self.tensors, &self.key(&format!("layers.{j}.context.bias")))?;
                Some(g.linear(ctx, &cw, &cb, h, c, &format!("{}_layer{j}_context", self.stem)))
            } else {
                None
            });
        }
        Ok(ContextTerms { first, layers })
    }

    /// From the first masked layer's pre-activation `pre` (N, H) to the last hidden layer's output.
    fn trunk(&self, g: &mut Builder, pre: &str, terms: &ContextTerms) -> Result<String, String> {
        let h = self.spec.hidden_features;
        let (_, m_hid, _) = self.masks();
        let mut t = pre.to_string();
        if let Some(c) = &terms.first {
            t = g.add(&t, c);
        }
        if !self.spec.residual {
            t = g.relu(&t);
        }
        for (j, term) in terms.layers.iter().enumerate() {
            let stem = format!("{}_layer{j}", self.stem);
            if self.spec.residual {
                let r = g.relu(&t);
                let w0 = masked(self.tensors, &self.key(&format!("layers.{j}.lin0.weight")), &m_hid)?;
                let b0 = values(self.tensors, &self.key(&format!("layers.{j}.lin0.bias")))?;
                let mut u = g.linear(&r, &w0, &b0, h, h, &format!("{stem}_lin0"));
                if let Some(c) = term {
                    u = g.add(&u, c);
                }
                let u = g.relu(&u);
                let w1 = masked(self.tensors, &self.key(&format!("layers.{j}.lin1.weight")), &m_hid)?;
                let b1 = values(self.tensors, &self.key(&format!("layers.{j}.lin1.bias")))?;
                let v = g.linear(&u, &w1, &b1, h, h, &format!("{stem}_lin1"));
                t = g.add(&t, &v);
            } else {
                let w = masked(self.tensors, &self.key(&format!("layers.{j}.weight")), &m_hid)?;
                let b = values(self.tensors, &self.key(&format!("layers.{j}.bias")))?;
                let l = g.linear(&t, &w, &b, h, h, &stem);
                t = g.relu(&l);
            }
        }
        Ok(t)
    }

    /// The one-MADE-pass direction: spline(`input`; MADE(`input`)) in direction `dir`.
    fn fast_pass(&self, g: &mut Builder, input: &str, ctx: &str, dir: Direction) -> Result<String, String> {
        let (d, h) = (self.spec.features, self.spec.hidden_features);
        let m = self.spec.spline.params_per_feature();
        let (m_in, _, m_out) = self.masks();
        let terms = self.context_terms(g, ctx)?;
        let w = masked(self.tensors, &self.key("initial.weight"), &m_in)?;
        let b = values(self.tensors, &self.key("initial.bias"))?;
        let pre = g.linear(input, &w, &b, h, d, &format!("{}_initial", self.stem));
        let t = self.trunk(g, &pre, &terms)?;
        let wf = masked(self.tensors, &self.key("final.weight"), &m_out)?;
        let params = g.linear(
            &t,
            &wf,
            &values(self.tensors, &self.key("final.bias"))?,
            d * m,
            h,
            &format!("{}_final", self.stem),
        );
        Ok(g.rqs(input, &params, self.spec, d, dir))
    }

    /// The other direction, as zdcflow's `MadeRqs::slow_pass` solves it: D passes, pass t computing
    /// only feature t's spline parameters from the first layer's pre-activation, which each solved
    /// feature then updates by its own column. The weights are stored once, per feature slices
    /// gathered by index; `passes` says whether the D passes are a `Loop` or written out.
    fn slow_pass(
        &self,
        g: &mut Builder,
        target: &str,
        ctx: &str,
        dir: Direction,
        passes: MafPasses,
    ) -> Result<String, String> {
        let (d, h) = (self.spec.features, self.spec.hidden_features);
        let m = self.spec.spline.params_per_feature();
        let (m_in, _, m_out) = self.masks();
        let terms = self.context_terms(g, ctx)?;
        // w_in (H, D) masked → its columns as rows (D, H); w_out (D·m, H) → (D, H, m); b_out (D, m).
        let w_in = masked(self.tensors, &self.key("initial.weight"), &m_in)?;
        let mut cols = vec![0.0; d * h];
        for o in 0..h {
            for i in 0..d {
                cols[i * h + o] = w_in[o * d + i];
            }
        }
        let w_cols = g.floats(&format!("{}_initial_columns", self.stem), &[d, h], &cols);
        let b_in = values(self.tensors, &self.key("initial.bias"))?;
        let b_in = g.floats(&format!("{}_initial_bias", self.stem), &[h], &b_in);
        let w_out = masked(self.tensors, &self.key("final.weight"), &m_out)?;
        let mut per = vec![0.0; d * h * m];
        for t in 0..d {
            for j in 0..h {
                for k in 0..m {
                    per[(t * h + j) * m + k] = w_out[(t * m + k) * h + j];
                }
            }
        }
        let w_per = g.floats(&format!("{}_final_per_feature", self.stem), &[d, h, m], &per);
        let b_out = values(self.tensors, &self.key("final.bias"))?;
        let b_per = g.floats(&format!("{}_final_bias", self.stem), &[d, m], &b_out);
        // pre = b_in broadcast to (N, H).
        let shape = g.op("Shape", &[target], vec![]);
        let (zero, one) = (g.ints(&[0]), g.ints(&[1]));
        let shape = g.op("Slice", &[&shape, &zero, &one], vec![]);
        let hh = g.ints(&[h as i64]);
        let shape = g.op("Concat", &[&shape, &hh], vec![int_attr("axis", 0)]);
        let pre = g.op("Expand", &[&b_in, &shape], vec![]);

        // One pass: (feature index t as an int64 scalar, pre) → (y_t (N, 1), the next pre).
        let pass = |g: &mut Builder, t: &str, pre: &str| -> Result<(String, String), String> {
            let hidden = self.trunk(g, pre, &terms)?;
            let w = g.op("Gather", &[&w_per, t], vec![int_attr("axis", 0)]);
            let b = g.op("Gather", &[&b_per, t], vec![int_attr("axis", 0)]);
            let mm = g.op("MatMul", &[&hidden, &w], vec![]);
            let params = g.add(&mm, &b);
            let axis0 = g.ints(&[0]);
            let t1 = g.op("Unsqueeze", &[t, &axis0], vec![]);
            let column = g.op("Gather", &[target, &t1], vec![int_attr("axis", 1)]);
            let y = g.rqs(&column, &params, self.spec, 1, dir);
            let w_col = g.op("Gather", &[&w_cols, t], vec![int_attr("axis", 0)]);
            let step = g.mul(&y, &w_col);
            Ok((y, g.add(pre, &step)))
        };
        let columns = match passes {
            MafPasses::Unrolled => {
                let mut pre = pre;
                let mut ys = Vec::with_capacity(d);
                for t in 0..d {
                    let ti = g.int_scalar(t as i64);
                    let (y, next) = pass(g, &ti, &pre)?;
                    ys.push(y);
                    pre = next;
                }
                let refs: Vec<&str> = ys.iter().map(|s| s.as_str()).collect();
                return Ok(g.op("Concat", &refs, vec![int_attr("axis", 1)]));
            }
            MafPasses::Loop => {
                let dt = g.dtype;
                let (_, scans) = g.repeat(d, &[(pre.as_str(), dt)], 1, |g, t, carried| {
                    let (y, next) = pass(g, t, &carried[0])?;
                    Ok((vec![next], vec![y]))
                })?;
                scans.into_iter().next().expect("one scan output")
            }
        };
        // (D, N, 1) → (N, D).
        let tr = g.op("Transpose", &[&columns], vec![ints_attr("perm", &[1, 0, 2])]);
        Ok(g.op("Flatten", &[&tr], vec![int_attr("axis", 1)]))
    }
}

pub(crate) fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
}

/// A body graph's input or output of `elem` type and unknown shape (a scalar where `scalar`).
fn body_value(name: &str, elem: DataType, scalar: bool) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: scalar.then(TensorShapeProto::default),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Builder {
    /// An ONNX `Loop` of `trips` iterations. `carried` are the loop-carried values' initial names and
    /// types; `body(g, i, carried)` writes one iteration (i the 0-based int64 iteration number) and
    /// returns the next carried values and `scans` per-iteration outputs. Returns the final carried
    /// values and the scan outputs, each stacked on a new first axis (trips, …). The body refers to
    /// the graph's initializers and values by name (outer scope): weights are stored once.
    pub(crate) fn repeat<F>(
        &mut self,
        trips: usize,
        carried: &[(&str, DataType)],
        scans: usize,
        body: F,
    ) -> Result<(Vec<String>, Vec<String>), String>
    where
        F: FnOnce(&mut Self, &str, &[String]) -> Result<(Vec<String>, Vec<String>), String>,
    {
        let outer = std::mem::take(&mut self.nodes);
        let iter = self.fresh("iteration");
        let cond_in = self.fresh("cond_in");
        let inner: Vec<String> = carried.iter().map(|_| self.fresh("carried")).collect();
        let result = body(self, &iter, &inner);
        let body_nodes = std::mem::replace(&mut self.nodes, outer);
        let (next, scan_out) = result?;
        if next.len() != carried.len() || scan_out.len() != scans {
            return Err("a Loop body returned the wrong number of values".into());
        }
        // Body outputs are fresh names (an Identity each), so that no output is also an input.
        let mut body_nodes = body_nodes;
        let types: Vec<DataType> = carried.iter().map(|c| c.1).chain(std::iter::repeat_n(self.dtype, scans)).collect();
        let mut identity = |input: &str, stem: &str| {
            let output = self.fresh(stem);
            body_nodes.push(NodeProto {
                op_type: "Identity".into(),
                input: vec![input.to_string()],
                output: vec![output.clone()],
                ..Default::default()
            });
            output
        };
        let mut outputs = vec![body_value(&identity(&cond_in, "cond_out"), DataType::Bool, true)];
        for (v, dt) in next.iter().chain(&scan_out).zip(&types) {
            outputs.push(body_value(&identity(v, "body_out"), *dt, false));
        }
        let mut inputs = vec![body_value(&iter, DataType::Int64, true), body_value(&cond_in, DataType::Bool, true)];
        inputs.extend(inner.iter().zip(carried).map(|(n, c)| body_value(n, c.1, false)));
        let graph = GraphProto {
            name: self.fresh("loop_body"),
            node: body_nodes,
            input: inputs,
            output: outputs,
            ..Default::default()
        };
        let trips = self.constant("trips", vec![], DataType::Int64, (trips as i64).to_le_bytes().to_vec());
        let mut loop_inputs = vec![trips, String::new()];
        loop_inputs.extend(carried.iter().map(|c| c.0.to_string()));
        let finals: Vec<String> = carried.iter().map(|_| self.fresh("loop_final")).collect();
        let stacked: Vec<String> = (0..scans).map(|_| self.fresh("loop_scan")).collect();
        let name = self.fresh("loop");
        self.nodes.push(NodeProto {
            op_type: "Loop".into(),
            name,
            input: loop_inputs,
            output: finals.iter().chain(&stacked).cloned().collect(),
            attribute: vec![AttributeProto {
                name: "body".into(),
                r#type: AttributeType::Graph as i32,
                g: Some(graph),
                ..Default::default()
            }],
            ..Default::default()
        });
        Ok((finals, stacked))
    }

    /// Adds the flow's sampling direction from the node `zs` (and `ctx` for a conditional flow);
    /// returns the name of x. The base is not included (z is the base-space sample). Blocks whose
    /// sampling direction is their fast one (IAF) take one MADE pass; the others (MAF) D passes,
    /// written as `passes` says.
    pub(crate) fn flow(
        &mut self,
        spec: &FlowSpec,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        zs: &str,
        ctx: &str,
    ) -> Result<String, String> {
        self.flow_with(spec, tensors, prefix, zs, ctx, MafPasses::Loop)
    }

    /// [`Self::flow`] with the MAF passes' form.
    pub(crate) fn flow_with(
        &mut self,
        spec: &FlowSpec,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        zs: &str,
        ctx: &str,
        passes: MafPasses,
    ) -> Result<String, String> {
        let d = spec.features;
        let fast = spec.fast_direction();
        let id = self.fresh("flow");
        let mut x = zs.to_string();
        for i in (0..spec.blocks).rev() {
            if let Some(p) = spec.permutations.get(i) {
                let mut inv = vec![0i64; d];
                for (j, &q) in p.iter().enumerate() {
                    inv[q] = j as i64;
                }
                let idx = self.ints(&inv);
                x = self.op("Gather", &[&x, &idx], vec![int_attr("axis", 1)]);
            }
            let net = MadeNet { spec, tensors, key: format!("{prefix}.{i}.made"), stem: format!("{id}_block{i}") };
            x = match spec.kind {
                FlowKind::Iaf => net.fast_pass(self, &x, ctx, fast)?,
                FlowKind::Maf => {
                    let dir = match fast {
                        Direction::Forward => Direction::Inverse,
                        Direction::Inverse => Direction::Forward,
                    };
                    net.slow_pass(self, &x, ctx, dir, passes)?
                }
            };
        }
        Ok(x)
    }

    /// Standard-normal noise `eps` through the flow's base: `μ(c) + exp(log σ(c))·ε` with
    /// `[μ, log σ] = encoder(ctx)` for a conditional base (weights under `<prefix>.base.`), `eps`
    /// itself for the standard normal.
    pub(crate) fn base_from_noise(
        &mut self,
        spec: &FlowSpec,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        eps: &str,
        ctx: &str,
    ) -> Result<String, String> {
        let crate::flow::base::BaseSpec::ConditionalDiagonalNormal { hidden } = &spec.base else {
            return Ok(eps.to_string());
        };
        let d = spec.features;
        let widths: Vec<usize> =
            std::iter::once(spec.context_features).chain(hidden.iter().copied()).chain([2 * d]).collect();
        let id = self.fresh("base");
        let mut h = ctx.to_string();
        for (i, w) in widths.windows(2).enumerate() {
            let weight = values(tensors, &format!("{prefix}.base.{i}.weight"))?;
            let bias = values(tensors, &format!("{prefix}.base.{i}.bias"))?;
            if weight.len() != w[0] * w[1] || bias.len() != w[1] {
                return Err(format!(
                    "base layer {i}: weights of {} values, the spec needs {}",
                    weight.len(),
                    w[0] * w[1]
                ));
            }
            h = self.linear(&h, &weight, &bias, w[1], w[0], &format!("{id}_{i}"));
            if i + 2 < widths.len() {
                h = self.relu(&h);
            }
        }
        let axis = self.ints(&[1]);
        let (zero, mid, end) = (self.ints(&[0]), self.ints(&[d as i64]), self.ints(&[2 * d as i64]));
        let mu = self.op("Slice", &[&h, &zero, &mid, &axis], vec![]);
        let log_sigma = self.op("Slice", &[&h, &mid, &end, &axis], vec![]);
        let sigma = self.op("Exp", &[&log_sigma], vec![]);
        let scaled = self.mul(eps, &sigma);
        Ok(self.add(&scaled, &mu))
    }

    /// Renames the last node's output to `name` (through an Identity).
    pub(crate) fn output_as(&mut self, x: &str, name: &str) {
        self.op("Identity", &[x], vec![]);
        self.nodes.last_mut().expect("the graph has nodes").output = vec![name.into()];
    }

    /// The finished model.
    pub(crate) fn model(
        self,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
        doc: String,
        opset: i64,
    ) -> ModelProto {
        // A constant made for an optional step the model does not have (e.g. a layer index for
        // voxel tables it lacks) is dropped here, so that ONNX Runtime has nothing to warn about.
        let mut used = HashSet::new();
        referenced_names(&self.nodes, &mut used);
        let initializer = self.inits.into_iter().filter(|t| used.contains(&t.name)).collect();
        let graph = GraphProto {
            name: "zdcflow_sample".into(),
            node: self.nodes,
            initializer,
            input: inputs,
            output: outputs,
            doc_string: doc,
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
            producer_name: "zdcflow".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
            ..Default::default()
        }
    }
}

/// Every name a node of `nodes` or of their subgraphs (a Loop's body) reads.
fn referenced_names(nodes: &[NodeProto], used: &mut HashSet<String>) {
    for node in nodes {
        used.extend(node.input.iter().cloned());
        for attr in &node.attribute {
            if let Some(body) = &attr.g {
                referenced_names(&body.node, used);
                used.extend(body.output.iter().map(|o| o.name.clone()));
            }
        }
    }
}

/// The sampling direction of the flow `spec` with `tensors` (names as in a weights file, under
/// `prefix`), in float32 or float64, as an ONNX model of the given opset.
pub fn export(
    spec: &FlowSpec,
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    dtype: DType,
    opset: i64,
) -> Result<ModelProto, String> {
    let mut g = builder(spec, dtype, opset)?;
    let dt = g.dtype;
    let (d, c) = (spec.features, spec.context_features);
    let x = g.flow(spec, tensors, prefix, INPUT_Z, INPUT_CONTEXT)?;
    g.output_as(&x, OUTPUT_X);
    let mut inputs = vec![value_info(INPUT_Z, d, dt)];
    if c > 0 {
        inputs.push(value_info(INPUT_CONTEXT, c, dt));
    }
    let doc = format!(
        "zdcflow flow, sampling direction: x = f⁻¹(z | context); {} blocks, {} features, context {}, {} bins, tail bound {}",
        spec.blocks, d, c, spec.spline.num_bins, spec.spline.tail_bound
    );
    Ok(g.model(inputs, vec![value_info(OUTPUT_X, d, dt)], doc, opset))
}

/// The serialised model.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}
