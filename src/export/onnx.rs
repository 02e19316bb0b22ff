//! A flow's sampling direction (z, context → x) as a standard ONNX graph (opset ≥ 13), built with
//! candle-onnx's protobuf types: the MADE masks are folded into the weights, and the
//! rational-quadratic spline with linear tails is written with standard operators (Softmax, CumSum,
//! GatherElements, Where, Sqrt…), the same formulas as nflows' `rational_quadratic_spline`.
//!
//! Only flows that sample in one MADE pass per block (IAF students, imported `iaf` and
//! `icaloflow-iaf` flows) are exported; a MAF samples in D sequential passes per block.

use std::collections::HashMap;

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

    /// A float initializer in the graph's dtype.
    pub(crate) fn floats(&mut self, stem: &str, dims: &[usize], values: &[f64]) -> String {
        let name = self.fresh(stem);
        let raw: Vec<u8> = if self.dtype == DataType::Double {
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        } else {
            values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect()
        };
        self.inits.push(TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: self.dtype as i32,
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    pub(crate) fn scalar(&mut self, v: f64) -> String {
        self.floats("c", &[], &[v])
    }

    pub(crate) fn ints(&mut self, values: &[i64]) -> String {
        let name = self.fresh("i");
        self.inits.push(TensorProto {
            name: name.clone(),
            dims: vec![values.len() as i64],
            data_type: DataType::Int64 as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
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

    /// `xs · Wᵀ + b` with `weight` (out, in) stored transposed.
    fn linear(&mut self, xs: &str, weight: &[f64], bias: &[f64], outputs: usize, inputs: usize, stem: &str) -> String {
        let mut wt = vec![0.0; weight.len()];
        for o in 0..outputs {
            for i in 0..inputs {
                wt[i * outputs + o] = weight[o * inputs + i];
            }
        }
        let w = self.floats(&format!("{stem}_weight_t"), &[inputs, outputs], &wt);
        let b = self.floats(&format!("{stem}_bias"), &[outputs], bias);
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

    /// The spline on (N, D) inputs with raw parameters (N, D·(3K−1)).
    fn rqs(&mut self, inputs: &str, params: &str, spec: &FlowSpec, dir: Direction) -> String {
        let s = &spec.spline;
        let (k, d, b) = (s.num_bins, spec.features, s.tail_bound);
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
    if !OPSETS.contains(&opset) {
        return Err(format!(
            "opset {opset}: the graph is written for opsets {}..={} (ReduceSum and Squeeze with axes inputs)",
            OPSETS.start(),
            OPSETS.end()
        ));
    }
    Ok(Builder { nodes: Vec::new(), inits: Vec::new(), count: 0, dtype: data_type(dtype)? })
}

/// A graph input or output (N, cols) of `dt`.
pub(crate) fn value_info(name: &str, cols: usize, dt: DataType) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dt as i32,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimParam("N".into())),
                            ..Default::default()
                        },
                        tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(cols as i64)),
                            ..Default::default()
                        },
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Builder {
    /// Adds the flow's sampling direction from the node `zs` (and `ctx` for a conditional flow);
    /// returns the name of x. The base is not included (z is the base-space sample).
    pub(crate) fn flow(
        &mut self,
        spec: &FlowSpec,
        tensors: &HashMap<String, Tensor>,
        prefix: &str,
        zs: &str,
        ctx: &str,
    ) -> Result<String, String> {
        let g = self;
        let (d, h, c) = (spec.features, spec.hidden_features, spec.context_features);
        let m = spec.spline.params_per_feature();
        let in_deg = input_degrees(d);
        let hid_deg = hidden_degrees(h, d);
        let out_deg = output_degrees(d, m);
        let (m_in, m_hid, m_out) =
            (mask(&hid_deg, &in_deg, false), mask(&hid_deg, &hid_deg, false), mask(&out_deg, &hid_deg, true));
        let dir = spec.fast_direction();
        let mut x = zs.to_string();
        for i in (0..spec.blocks).rev() {
            if let Some(p) = spec.permutations.get(i) {
                let mut inv = vec![0i64; d];
                for (j, &q) in p.iter().enumerate() {
                    inv[q] = j as i64;
                }
                let idx = g.ints(&inv);
                x = g.op("Gather", &[&x, &idx], vec![int_attr("axis", 1)]);
            }
            let key = |s: &str| format!("{prefix}.{i}.made.{s}");
            let stem = format!("block{i}");
            let mut t = g.linear(
                &x,
                &masked(tensors, &key("initial.weight"), &m_in)?,
                &values(tensors, &key("initial.bias"))?,
                h,
                d,
                &format!("{stem}_initial"),
            );
            if c > 0 {
                let ctx = g.linear(
                    ctx,
                    &values(tensors, &key("context.weight"))?,
                    &values(tensors, &key("context.bias"))?,
                    h,
                    c,
                    &format!("{stem}_context"),
                );
                let r = g.relu(&ctx);
                t = g.add(&t, &r);
            }
            if !spec.residual {
                t = g.relu(&t);
            }
            for j in 0..spec.hidden_layers {
                if spec.residual {
                    let r = g.relu(&t);
                    let w0 = masked(tensors, &key(&format!("layers.{j}.lin0.weight")), &m_hid)?;
                    let mut u = g.linear(
                        &r,
                        &w0,
                        &values(tensors, &key(&format!("layers.{j}.lin0.bias")))?,
                        h,
                        h,
                        &format!("{stem}_layer{j}_lin0"),
                    );
                    if c > 0 {
                        let cw = values(tensors, &key(&format!("layers.{j}.context.weight")))?;
                        let cb = values(tensors, &key(&format!("layers.{j}.context.bias")))?;
                        let cc = g.linear(ctx, &cw, &cb, h, c, &format!("{stem}_layer{j}_context"));
                        u = g.add(&u, &cc);
                    }
                    let u = g.relu(&u);
                    let w1 = masked(tensors, &key(&format!("layers.{j}.lin1.weight")), &m_hid)?;
                    let v = g.linear(
                        &u,
                        &w1,
                        &values(tensors, &key(&format!("layers.{j}.lin1.bias")))?,
                        h,
                        h,
                        &format!("{stem}_layer{j}_lin1"),
                    );
                    t = g.add(&t, &v);
                } else {
                    let w = masked(tensors, &key(&format!("layers.{j}.weight")), &m_hid)?;
                    let l = g.linear(
                        &t,
                        &w,
                        &values(tensors, &key(&format!("layers.{j}.bias")))?,
                        h,
                        h,
                        &format!("{stem}_layer{j}"),
                    );
                    t = g.relu(&l);
                }
            }
            let wf = masked(tensors, &key("final.weight"), &m_out)?;
            let params = g.linear(&t, &wf, &values(tensors, &key("final.bias"))?, d * m, h, &format!("{stem}_final"));
            x = g.rqs(&x, &params, spec, dir);
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
            h = self.linear(&h, &weight, &bias, w[1], w[0], &format!("base{i}"));
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
        let graph = GraphProto {
            name: "zdcflow_sample".into(),
            node: self.nodes,
            initializer: self.inits,
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
