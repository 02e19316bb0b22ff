//! Where a model's parameters come from: freshly initialised from a seed (training), or read
//! from a safetensors file (sampling, teachers, resume). Both hand out the same dotted names
//! (`flow.3.made.layers.1.weight`) through a candle-nn `VarBuilder`.
//!
//! candle's CPU random generator cannot be seeded, so initial values are drawn here from a
//! ChaCha stream: the same seed gives the same model on every machine.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A `VarMap` whose missing entries are created from a seeded generator.
pub struct SeededInit {
    varmap: VarMap,
    rng: Mutex<ChaCha8Rng>,
}

impl SeededInit {
    pub fn new(varmap: VarMap, seed: u64) -> Self {
        Self { varmap, rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)) }
    }

    /// A `VarBuilder` that creates trainable variables in `varmap`.
    pub fn var_builder(varmap: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Self::new(varmap.clone(), seed)), dtype, device.clone())
    }
}

impl candle_nn::var_builder::SimpleBackend for SeededInit {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().expect("varmap lock");
        if let Some(var) = data.get(name) {
            if var.shape() != &shape {
                candle_core::bail!("parameter {name}: shape {:?} requested, {:?} stored", shape, var.shape());
            }
            return Ok(var.as_tensor().clone());
        }
        let n = shape.elem_count();
        let mut draw = {
            let mut rng = self.rng.lock().expect("rng lock");
            move |lo: f64, up: f64| if up > lo { rng.random_range(lo..up) } else { lo }
        };
        // Drawn in f64 and rounded once, straight into the variable's buffer (no f64 copy of a
        // weight, which for the paper-size ZDC teacher's output layers raised the peak memory).
        let var = match (init, dtype) {
            (Init::Const(c), _) => Var::from_tensor(&Tensor::full(c, shape, dev)?.to_dtype(dtype)?)?,
            (Init::Uniform { lo, up }, DType::F32) => {
                Var::from_vec((0..n).map(|_| draw(lo, up) as f32).collect::<Vec<f32>>(), shape, dev)?
            }
            (Init::Uniform { lo, up }, _) => {
                let values: Vec<f64> = (0..n).map(|_| draw(lo, up)).collect();
                Var::from_tensor(&Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?)?
            }
            (other, _) => candle_core::bail!("parameter {name}: unsupported initialiser {other:?}"),
        };
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("parameter {name}: a seeded initialiser needs a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().expect("varmap lock").contains_key(name)
    }
}

/// Reads a safetensors file into plain (non-trainable) tensors, checking that the file holds
/// exactly the names and shapes of `expected` (a model built with [`SeededInit`]); the error
/// names the first difference so that a checkpoint of another model is refused clearly.
pub fn load_frozen(
    path: &Path,
    expected: &VarMap,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>, String> {
    let tensors = candle_core::safetensors::load(path, device).map_err(|e| format!("cannot read weights: {e}"))?;
    let want = expected.data().lock().expect("varmap lock");
    for (name, var) in want.iter() {
        match tensors.get(name) {
            None => return Err(format!("weights lack tensor '{name}' (a checkpoint of another model?)")),
            Some(t) if t.shape() != var.shape() => {
                return Err(format!(
                    "tensor '{name}' has shape {:?}, the model needs {:?} (a checkpoint of another model?)",
                    t.shape().dims(),
                    var.shape().dims()
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = tensors.keys().find(|k| !want.contains_key(*k)) {
        return Err(format!(
            "weights hold tensor '{extra}' that the model does not have (a checkpoint of another model?)"
        ));
    }
    if let Ok(Some(id)) = super::io::read_identity(path) {
        let expected = super::io::architecture_hash(want.iter().map(|(k, v)| (k.as_str(), v.shape().dims())));
        if id.architecture != expected {
            return Err(format!(
                "weights of architecture {} but the model is {expected} (a checkpoint of another model?)",
                id.architecture
            ));
        }
    }
    drop(want);
    if let Some(name) = first_non_finite(&tensors).map_err(|e| e.to_string())? {
        return Err(format!("tensor '{name}' holds non-finite values (NaN or infinity): these weights are unusable"));
    }
    tensors.into_iter().map(|(k, t)| t.to_dtype(dtype).map(|t| (k, t)).map_err(|e| e.to_string())).collect()
}

/// The name of the first tensor (in name order) holding a NaN or an infinity.
pub fn first_non_finite(tensors: &HashMap<String, Tensor>) -> candle_core::Result<Option<String>> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        if !all_finite(&tensors[name])? {
            return Ok(Some(name.clone()));
        }
    }
    Ok(None)
}

/// Reads a contiguous CPU tensor where it lies (a float64 copy of each weight, as before, doubled
/// the peak memory of a large model at every validation); copies only on other devices.
fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    use candle_core::{CpuStorage, Storage};
    if let Some((start, end)) = t.layout().contiguous_offsets() {
        if let Storage::Cpu(storage) = &*t.storage_and_layout().0 {
            return Ok(match storage {
                CpuStorage::F32(v) => v[start..end].iter().all(|x| x.is_finite()),
                CpuStorage::F64(v) => v[start..end].iter().all(|x| x.is_finite()),
                CpuStorage::BF16(v) => v[start..end].iter().all(|x| x.is_finite()),
                CpuStorage::F16(v) => v[start..end].iter().all(|x| x.is_finite()),
                _ => true,
            });
        }
    }
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?.iter().all(|v| v.is_finite()))
}

/// Copies loaded values into the variables of `varmap` (resume, or a student initialised from
/// its teacher). Names and shapes must already have been checked by [`load_frozen`].
pub fn assign(varmap: &VarMap, values: &HashMap<String, Tensor>) -> candle_core::Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (name, var) in data.iter() {
        if let Some(v) = values.get(name) {
            var.set(&v.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
    }
    Ok(())
}

/// Builds a frozen (inference) model from a weights file: `build` runs once on a backend that
/// reads each tensor from the file when asked for it, checking names, shapes and values (see
/// [`super::weights_file`]); no seeded skeleton is built and the file is never held whole.
pub fn load_frozen_model<T>(
    weights: &Path,
    dtype: DType,
    device: &Device,
    build: impl Fn(VarBuilder) -> candle_core::Result<T>,
) -> super::error::Result<T> {
    use super::weights_file::{load_model, LoadError};
    load_model(weights, dtype, device, build).map_err(|e| match e {
        LoadError::Weights(m) => super::error::FlowError::checkpoint(weights, m),
        LoadError::Build(e) => e.into(),
    })
}
