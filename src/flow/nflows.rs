//! Reading nflows 0.14 state dicts: a `Flow` whose transform is a `CompositeTransform` of
//! `MaskedPiecewiseRationalQuadraticAutoregressiveTransform` blocks (linear tails), optionally
//! each wrapped in `InverseTransform` (IAF students), with `Permutation` buffers between them, and
//! a `StandardNormal` or `ConditionalDiagonalNormal` base. The conditional base's context encoder
//! is an `nn.Sequential` of Linear layers with ReLU between (keys `0.weight`, `2.weight`, …) or
//! zdc-fast-simulations' `BaseContext` (`layers.py`: `layer1`, `layer2`, `output`, ReLU between),
//! the same network under other names.
//!
//! nflows' MADE is laid out as ours (see [`super::made`]): its deterministic degrees and masks are
//! checked against ours, and its parameters are renamed one to one
//! (`_transform._transforms.4.autoregressive_net.blocks.1.linear.weight` → `2.made.layers.1.weight`).
//! nflows' `MADE` has no `hidden_features` attribute, so its RQS transform does not rescale the
//! widths and heights by 1/√H: the raw outputs are the spline's parameters, as here.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::base::BaseSpec;
use super::made::{hidden_degrees, input_degrees, mask, output_degrees};
use super::spline::{Direction, SplineConfig};
use super::stack::{FlowKind, FlowSpec};

/// How the blocks of a checkpoint are to be read (the state dict does not say).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NflowsKind {
    /// The RQS blocks as they are (both papers' teachers).
    Maf,
    /// nflows' IAF: each block in `InverseTransform`; sampling evaluates the spline forward.
    Iaf,
    /// inductive-caloflow's students, `InverseTransform(IAFRQS)`: sampling evaluates the spline inverse.
    IcaloflowIaf,
}

impl NflowsKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "maf" => Some(Self::Maf),
            "iaf" => Some(Self::Iaf),
            "icaloflow-iaf" => Some(Self::IcaloflowIaf),
            _ => None,
        }
    }

    /// The flow kind and the spline direction of its one-pass direction, where not the kind's own.
    pub fn flow_kind(self) -> (FlowKind, Option<Direction>) {
        match self {
            Self::Maf => (FlowKind::Maf, None),
            Self::Iaf => (FlowKind::Iaf, Some(Direction::Forward)),
            Self::IcaloflowIaf => (FlowKind::Iaf, None),
        }
    }
}

/// What a state dict does not hold (the spline's range and floors).
#[derive(Clone, Copy, Debug)]
pub struct ImportOptions {
    pub kind: NflowsKind,
    pub tail_bound: f64,
    pub min_bin_width: f64,
    pub min_bin_height: f64,
    pub min_derivative: f64,
}

/// A state dict turned into a spec and tensors named as [`super::stack::Flow::new`] reads them
/// (relative to the flow's prefix: `0.made.initial.weight`, `base.0.weight`).
pub struct Imported {
    pub spec: FlowSpec,
    pub tensors: HashMap<String, Tensor>,
    /// The dtype of the checkpoint's float tensors.
    pub dtype: DType,
}

const TRANSFORMS: &str = "_transform._transforms.";
const ENCODER: &str = "_distribution._context_encoder.";

/// zdc-fast-simulations' `BaseContext` layers, in the order its `forward` applies them.
const BASE_CONTEXT_LAYERS: [&str; 3] = ["layer1", "layer2", "output"];

/// Where a context-encoder layer sits in the encoder: `nn.Sequential`'s index, or its place in
/// `BaseContext`.
fn encoder_layer(name: &str) -> Option<usize> {
    name.parse().ok().or_else(|| BASE_CONTEXT_LAYERS.iter().position(|&l| l == name))
}

/// What the keys of modules the two published codes define but this reader does not take are.
fn known_unsupported(key: &str) -> Option<&'static str> {
    if key.contains("_embedding_net.") {
        Some(
            "a context embedding net (Flow(embedding_net=…), e.g. zdc-fast-simulations' ContextEmbedder              layer1/layer2/output) is not supported: only the raw context feeds the MADEs",
        )
    } else if key.contains("batch_norm") {
        Some("batch norm (use_batch_norm=True) in the MADEs or between blocks is not supported")
    } else {
        None
    }
}

/// Keys a reader may ignore: buffers nflows recomputes (masks and degrees are checked separately).
fn ignorable(key: &str) -> bool {
    key == "_distribution._log_z"
}

enum Step {
    Block { inverse: bool, keys: BTreeMap<String, Tensor> },
    Permutation(Vec<usize>),
}

fn list(keys: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = keys.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(" and {} more", keys.len() - SHOWN));
    }
    s
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>, String> {
    t.to_dtype(DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f64>()).map_err(|e| e.to_string())
}

fn to_indices(t: &Tensor) -> Result<Vec<usize>, String> {
    let v = t.to_dtype(DType::I64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<i64>());
    v.map_err(|e| e.to_string())?
        .into_iter()
        .map(|i| usize::try_from(i).map_err(|_| format!("negative index {i}")))
        .collect()
}

fn dims2(keys: &BTreeMap<String, Tensor>, name: &str, what: &str) -> Result<(usize, usize), String> {
    let t = keys.get(name).ok_or_else(|| format!("{what}: no '{name}'"))?;
    t.dims2().map_err(|_| format!("{what}: '{name}' has shape {:?}, expected 2-D", t.dims()))
}

/// Checks a masked layer's stored mask and degrees against nflows' deterministic rule.
fn check_mask(
    keys: &BTreeMap<String, Tensor>,
    layer: &str,
    out_deg: &[usize],
    in_deg: &[usize],
    strict: bool,
    what: &str,
) -> Result<(), String> {
    if let Some(m) = keys.get(&format!("{layer}.mask")) {
        let want = mask(out_deg, in_deg, strict);
        let got = to_f64(m)?;
        if got.len() != want.len() || got.iter().zip(&want).any(|(a, &b)| *a != b as f64) {
            return Err(format!(
                "{what}: '{layer}.mask' is not nflows' deterministic MADE mask (random masks are not supported)"
            ));
        }
    }
    if let Some(d) = keys.get(&format!("{layer}.degrees")) {
        if to_indices(d)? != out_deg {
            return Err(format!("{what}: '{layer}.degrees' differ from nflows' deterministic degrees"));
        }
    }
    Ok(())
}

/// One block's MADE: its shape and its tensors under our names.
struct Made {
    features: usize,
    context: usize,
    hidden: usize,
    layers: usize,
    residual: bool,
    multiplier: usize,
    tensors: Vec<(String, Tensor)>,
}

fn read_made(keys: &BTreeMap<String, Tensor>, what: &str) -> Result<Made, String> {
    let (hidden, features) = dims2(keys, "initial_layer.weight", what)?;
    let (outputs, _) = dims2(keys, "final_layer.weight", what)?;
    if outputs % features != 0 {
        return Err(format!("{what}: final layer has {outputs} outputs, not a multiple of {features} features"));
    }
    let multiplier = outputs / features;
    let context = match keys.get("context_layer.weight") {
        Some(_) => dims2(keys, "context_layer.weight", what)?.1,
        None => 0,
    };
    let mut layer_ids: Vec<usize> =
        keys.keys().filter_map(|k| k.strip_prefix("blocks.")?.split('.').next()?.parse().ok()).collect();
    layer_ids.sort_unstable();
    layer_ids.dedup();
    if layer_ids.iter().enumerate().any(|(i, &j)| i != j) {
        return Err(format!("{what}: MADE blocks are not numbered 0..n: {layer_ids:?}"));
    }
    let residual = keys.keys().any(|k| k.starts_with("blocks.") && k.contains(".linear_layers."));
    let in_deg = input_degrees(features);
    let hid_deg = hidden_degrees(hidden, features);
    let out_deg = output_degrees(features, multiplier);
    // (stored layer, our layer, mask check: (out degrees, in degrees, strict)) for every layer.
    type Check<'a> = Option<(&'a [usize], &'a [usize], bool)>;
    let mut layers: Vec<(String, String, Check)> =
        vec![("initial_layer".into(), "initial".into(), Some((&hid_deg, &in_deg, false)))];
    if context > 0 {
        layers.push(("context_layer".into(), "context".into(), None));
    }
    for j in &layer_ids {
        if residual {
            for l in 0..2 {
                layers.push((
                    format!("blocks.{j}.linear_layers.{l}"),
                    format!("layers.{j}.lin{l}"),
                    Some((&hid_deg, &hid_deg, false)),
                ));
            }
            if context > 0 {
                layers.push((format!("blocks.{j}.context_layer"), format!("layers.{j}.context"), None));
            }
        } else {
            layers.push((format!("blocks.{j}.linear"), format!("layers.{j}"), Some((&hid_deg, &hid_deg, false))));
        }
    }
    layers.push(("final_layer".into(), "final".into(), Some((&out_deg, &hid_deg, true))));
    let mut known: Vec<String> = layer_ids.iter().map(|j| format!("blocks.{j}.degrees")).collect();
    for (from, _, _) in &layers {
        known.extend(["weight", "bias", "mask", "degrees"].iter().map(|p| format!("{from}.{p}")));
    }
    let unknown: Vec<String> = keys.keys().filter(|k| !known.contains(k)).map(|k| format!("{what}: {k}")).collect();
    if !unknown.is_empty() {
        return Err(format!("unsupported parts (batch norm, other layers) in the state dict: {}", list(&unknown)));
    }
    let mut tensors = Vec::new();
    for (from, to, check) in &layers {
        for p in ["weight", "bias"] {
            let k = format!("{from}.{p}");
            let t = keys.get(&k).ok_or_else(|| format!("{what}: no '{k}'"))?;
            tensors.push((format!("made.{to}.{p}"), t.clone()));
        }
        if let Some((out_d, in_d, strict)) = check {
            check_mask(keys, from, out_d, in_d, *strict, what)?;
        }
    }
    Ok(Made { features, context, hidden, layers: layer_ids.len(), residual, multiplier, tensors })
}

/// Reads a state dict (keys as `Flow.state_dict()` writes them, optionally under a common prefix).
pub fn import(state: Vec<(String, Tensor)>, opts: &ImportOptions) -> Result<Imported, String> {
    if state.is_empty() {
        return Err("the state dict holds no tensors".into());
    }
    // A common prefix before `_transform.` (a flow saved inside another module).
    let prefix = state
        .iter()
        .find_map(|(k, _)| k.find(TRANSFORMS).map(|i| k[..i].to_string()))
        .ok_or_else(|| format!("no '{TRANSFORMS}…' keys: not an nflows Flow state dict"))?;
    let mut steps: BTreeMap<usize, Step> = BTreeMap::new();
    let mut encoder: BTreeMap<usize, BTreeMap<String, Tensor>> = BTreeMap::new();
    let mut encoder_names = std::collections::BTreeSet::new();
    let mut unknown = Vec::new();
    let mut dtype = None;
    for (key, t) in state {
        let Some(k) = key.strip_prefix(prefix.as_str()) else {
            unknown.push(key);
            continue;
        };
        if matches!(t.dtype(), DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
            // Buffers (masks) may be float32 in a float64 model, and the state dict's order is a
            // hash map's: the widest float dtype is the model's.
            dtype = Some(match (dtype, t.dtype()) {
                (Some(DType::F64), _) | (_, DType::F64) => DType::F64,
                (Some(DType::F32), _) | (_, DType::F32) => DType::F32,
                (_, d) => d,
            });
        }
        if let Some(rest) = k.strip_prefix(TRANSFORMS) {
            let (idx, tail) = rest.split_once('.').unwrap_or((rest, ""));
            let Ok(idx) = idx.parse::<usize>() else {
                unknown.push(key);
                continue;
            };
            if tail == "_permutation" {
                steps.insert(idx, Step::Permutation(to_indices(&t)?));
                continue;
            }
            let (inverse, made_key) = if let Some(m) = tail.strip_prefix("_transform.autoregressive_net.") {
                (true, m)
            } else if let Some(m) = tail.strip_prefix("autoregressive_net.") {
                (false, m)
            } else {
                unknown.push(key);
                continue;
            };
            match steps.entry(idx).or_insert_with(|| Step::Block { inverse, keys: BTreeMap::new() }) {
                Step::Block { inverse: inv, keys } if *inv == inverse => {
                    keys.insert(made_key.to_string(), t);
                }
                _ => unknown.push(key),
            }
        } else if let Some(rest) = k.strip_prefix(ENCODER) {
            match rest.split_once('.').and_then(|(l, p)| Some((encoder_layer(l)?, l, p))) {
                Some((i, layer, p @ ("weight" | "bias"))) => {
                    encoder_names.insert(layer.to_string());
                    encoder.entry(i).or_default().insert(p.to_string(), t);
                }
                _ => unknown.push(key),
            }
        } else if !ignorable(k) {
            unknown.push(key);
        }
    }
    if let Some(why) = unknown.iter().find_map(|k| known_unsupported(k)) {
        return Err(format!("{why}; keys: {}", list(&unknown)));
    }
    if !unknown.is_empty() {
        return Err(format!(
            "unsupported keys (only MADE-RQS blocks, permutations and a standard or conditional diagonal normal base \
             with an nn.Sequential or zdc-fast-simulations BaseContext encoder are supported): {}",
            list(&unknown)
        ));
    }
    let named = encoder_names.iter().filter(|n| BASE_CONTEXT_LAYERS.contains(&n.as_str())).count();
    if named > 0 && (named != encoder_names.len() || named != BASE_CONTEXT_LAYERS.len()) {
        return Err(format!(
            "the context encoder has layers {:?}: a BaseContext has exactly {:?} (an nn.Sequential numbered ones)",
            encoder_names, BASE_CONTEXT_LAYERS
        ));
    }
    let dtype = dtype.ok_or("the state dict holds no floating-point tensors")?;
    if !matches!(dtype, DType::F32 | DType::F64) {
        return Err(format!("tensors of dtype {dtype:?}: only float32 and float64 checkpoints are supported"));
    }

    // The sequence must be block (permutation? block)*; adjacent blocks get the identity between them.
    let (flow_kind, fast_spline) = opts.kind.flow_kind();
    let wants_inverse = flow_kind == FlowKind::Iaf;
    let mut blocks: Vec<Made> = Vec::new();
    let mut perms: Vec<Option<Vec<usize>>> = Vec::new();
    for (expected, (idx, step)) in steps.into_iter().enumerate() {
        if idx != expected {
            return Err(format!("transform {expected} is missing (found {idx} next)"));
        }
        match step {
            Step::Permutation(p) => {
                if blocks.is_empty() {
                    return Err(format!("transform {idx}: a permutation before the first block is not supported"));
                }
                match perms.last_mut() {
                    Some(slot @ None) => *slot = Some(p),
                    _ => return Err(format!("transform {idx}: two permutations in a row are not supported")),
                }
            }
            Step::Block { inverse, keys } => {
                if inverse != wants_inverse {
                    return Err(if inverse {
                        format!("transform {idx} is an InverseTransform of a MADE-RQS block (an IAF): use --kind iaf or icaloflow-iaf")
                    } else {
                        format!("transform {idx} is a plain MADE-RQS block (a MAF): use --kind maf")
                    });
                }
                let what = format!("transform {idx}");
                let made = read_made(&keys, &what)?;
                if let Some(first) = blocks.first() {
                    if (made.features, made.context, made.hidden, made.layers, made.residual, made.multiplier)
                        != (first.features, first.context, first.hidden, first.layers, first.residual, first.multiplier)
                    {
                        return Err(format!("{what}: its MADE differs in shape from the first block's"));
                    }
                }
                blocks.push(made);
                perms.push(None);
            }
        }
    }
    let first = blocks.first().ok_or("the state dict holds no MADE-RQS blocks")?;
    if perms.last().is_some_and(|p| p.is_some()) {
        return Err("a permutation after the last block is not supported".into());
    }
    perms.pop();
    let (features, context) = (first.features, first.context);
    if (first.multiplier + 1) % 3 != 0 {
        return Err(format!(
            "{} spline parameters per feature: only rational-quadratic splines with linear tails (3K − 1) are supported",
            first.multiplier
        ));
    }
    let spline = SplineConfig {
        num_bins: (first.multiplier + 1) / 3,
        tail_bound: opts.tail_bound,
        min_bin_width: opts.min_bin_width,
        min_bin_height: opts.min_bin_height,
        min_derivative: opts.min_derivative,
    };
    let base = if encoder.is_empty() {
        BaseSpec::StandardNormal
    } else {
        let mut hidden = Vec::new();
        let mut width = context;
        let n = encoder.len();
        for (j, (i, layer)) in encoder.iter().enumerate() {
            let what = format!("{ENCODER}{i}");
            let (o, inp) = dims2(layer, "weight", &what)?;
            if !layer.contains_key("bias") {
                return Err(format!("{what}: no bias"));
            }
            if inp != width {
                return Err(format!("{what}: takes {inp} inputs, the layer before gives {width}"));
            }
            if j + 1 < n {
                hidden.push(o);
            } else if o != 2 * features {
                return Err(format!(
                    "{what}: gives {o} outputs, a diagonal normal over {features} features needs {}",
                    2 * features
                ));
            }
            width = o;
        }
        BaseSpec::ConditionalDiagonalNormal { hidden }
    };
    let spec = FlowSpec {
        kind: flow_kind,
        features,
        context_features: context,
        blocks: blocks.len(),
        hidden_features: first.hidden,
        hidden_layers: first.layers,
        residual: first.residual,
        dropout: 0.0,
        spline,
        permutations: perms.into_iter().map(|p| p.unwrap_or_else(|| (0..features).collect())).collect(),
        base,
        fast_spline,
    };
    spec.validate()?;
    let mut tensors = HashMap::new();
    for (b, made) in blocks.into_iter().enumerate() {
        for (name, t) in made.tensors {
            tensors.insert(format!("{b}.{name}"), t);
        }
    }
    for (j, (_, layer)) in encoder.into_iter().enumerate() {
        for (p, t) in layer {
            tensors.insert(format!("base.{j}.{p}"), t);
        }
    }
    Ok(Imported { spec, tensors, dtype })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn opts(kind: NflowsKind) -> ImportOptions {
        ImportOptions { kind, tail_bound: 14.0, min_bin_width: 1e-6, min_bin_height: 1e-6, min_derivative: 1e-6 }
    }

    fn t(dims: &[usize]) -> Tensor {
        Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap()
    }

    /// One unconditional block of 3 features, 4 hidden units, no hidden layers, 2 bins (5 params).
    fn block(prefix: &str) -> Vec<(String, Tensor)> {
        vec![
            (format!("{prefix}initial_layer.weight"), t(&[4, 3])),
            (format!("{prefix}initial_layer.bias"), t(&[4])),
            (format!("{prefix}final_layer.weight"), t(&[15, 4])),
            (format!("{prefix}final_layer.bias"), t(&[15])),
        ]
    }

    #[test]
    fn import_infers_the_architecture_and_names_unsupported_keys() {
        let mut sd = block("_transform._transforms.0.autoregressive_net.");
        sd.push(("_transform._transforms.1._permutation".into(), Tensor::new(&[2i64, 0, 1], &Device::Cpu).unwrap()));
        sd.extend(block("_transform._transforms.2.autoregressive_net."));
        let imp = import(sd.clone(), &opts(NflowsKind::Maf)).unwrap();
        let s = &imp.spec;
        assert_eq!((s.features, s.context_features, s.hidden_features, s.hidden_layers, s.blocks), (3, 0, 4, 0, 2));
        assert_eq!((s.spline.num_bins, s.permutations.clone()), (2, vec![vec![2, 0, 1]]));
        assert!(imp.tensors.contains_key("1.made.final.weight"));
        sd.push(("_transform._transforms.0.autoregressive_net.blocks.0.batch_norm.weight".into(), t(&[4])));
        let e = import(sd, &opts(NflowsKind::Maf)).err().unwrap();
        assert!(e.contains("batch_norm.weight"), "{e}");
        let e = import(block("_transform._transforms.0.autoregressive_net."), &opts(NflowsKind::Iaf)).err().unwrap();
        assert!(e.contains("--kind maf"), "{e}");
    }

    /// A conditional block (3 features, 2 context) with zdc-fast-simulations' `BaseContext` encoder.
    fn conditional_with_base_context() -> Vec<(String, Tensor)> {
        let mut sd = block("_transform._transforms.0.autoregressive_net.");
        sd.push(("_transform._transforms.0.autoregressive_net.context_layer.weight".into(), t(&[4, 2])));
        sd.push(("_transform._transforms.0.autoregressive_net.context_layer.bias".into(), t(&[4])));
        for (layer, (o, i)) in BASE_CONTEXT_LAYERS.iter().zip([(3, 2), (3, 3), (6, 3)]) {
            sd.push((format!("{ENCODER}{layer}.weight"), t(&[o, i])));
            sd.push((format!("{ENCODER}{layer}.bias"), t(&[o])));
        }
        sd
    }

    #[test]
    fn base_context_encoder_imports_as_the_sequential_one() {
        let imp = import(conditional_with_base_context(), &opts(NflowsKind::Maf)).unwrap();
        assert_eq!(imp.spec.base, BaseSpec::ConditionalDiagonalNormal { hidden: vec![3, 3] });
        for j in 0..3 {
            assert!(imp.tensors.contains_key(&format!("base.{j}.weight")), "base.{j}.weight");
        }
        // Names from both layouts, or a BaseContext without its output layer, are refused.
        let mut mixed = conditional_with_base_context();
        mixed.retain(|(k, _)| !k.contains("output."));
        let e = import(mixed.clone(), &opts(NflowsKind::Maf)).err().unwrap();
        assert!(e.contains("BaseContext"), "{e}");
        mixed.push((format!("{ENCODER}4.weight"), t(&[6, 3])));
        mixed.push((format!("{ENCODER}4.bias"), t(&[6])));
        let e = import(mixed, &opts(NflowsKind::Maf)).err().unwrap();
        assert!(e.contains("BaseContext"), "{e}");
        // A ContextEmbedder as the flow's embedding net is named.
        let mut embedded = conditional_with_base_context();
        embedded.push(("_embedding_net.layer1.weight".into(), t(&[2, 2])));
        let e = import(embedded, &opts(NflowsKind::Maf)).err().unwrap();
        assert!(e.contains("ContextEmbedder") && e.contains("_embedding_net.layer1.weight"), "{e}");
    }
}
