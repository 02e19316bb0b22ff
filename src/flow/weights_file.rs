//! Frozen models read straight from a safetensors file, one tensor at a time.
//!
//! A model is built on a `VarBuilder` whose backend reads each tensor from the file when the
//! model asks for it (checking its name, shape and values), so no seeded skeleton is built and
//! the file is never held in memory whole: a model of N bytes loads in about N bytes plus its
//! largest tensor. After the build, the file must hold nothing the model did not ask for, and
//! its recorded architecture hash (when it has one) must be the model's.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

/// One tensor's place in the file.
struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    /// Byte range from the start of the data section.
    start: u64,
    end: u64,
}

/// Why a frozen model could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The weights file is unreadable or does not fit the model (a message for the file).
    Weights(String),
    /// Building the model failed for another reason.
    Build(candle_core::Error),
}

struct Inner {
    file: Mutex<File>,
    data_start: u64,
    entries: HashMap<String, Entry>,
    architecture: Option<String>,
    /// Names and shapes the model asked for.
    requested: Mutex<BTreeMap<String, Vec<usize>>>,
    /// The first problem met while building (the build sees only a generic error).
    problem: Mutex<Option<String>>,
}

fn safetensors_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F64" => DType::F64,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        _ => return None,
    })
}

impl Inner {
    fn open(path: &Path) -> Result<Self, String> {
        let mut file = File::open(path).map_err(|e| format!("cannot read weights: {e}"))?;
        let size = file.metadata().map_err(|e| format!("cannot read weights: {e}"))?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|_| "cannot read weights: not a safetensors file (too short)".to_string())?;
        let n = u64::from_le_bytes(len);
        if n > 100 << 20 || n + 8 > size {
            return Err(format!(
                "cannot read weights: not a safetensors file (header of {n} bytes in a {size}-byte file)"
            ));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(|e| format!("cannot read weights: {e}"))?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| format!("cannot read weights: not a safetensors file (unreadable header: {e})"))?;
        let data_len = size - 8 - n;
        let mut entries = HashMap::new();
        let mut architecture = None;
        for (name, v) in &header {
            if name == "__metadata__" {
                architecture = v
                    .get(super::io::IDENTITY_KEY)
                    .and_then(|s| s.as_str())
                    .map(|s| {
                        serde_json::from_str::<super::io::Identity>(s)
                            .map(|id| id.architecture)
                            .map_err(|e| format!("unreadable identity in the header: {e}"))
                    })
                    .transpose()?;
                continue;
            }
            let bad = |what: &str| format!("cannot read weights: tensor '{name}' in the header: {what}");
            let dtype = v.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("no dtype"))?;
            let dtype = safetensors_dtype(dtype).ok_or_else(|| bad(&format!("unsupported dtype {dtype}")))?;
            let shape: Vec<usize> = v
                .get("shape")
                .and_then(|s| s.as_array())
                .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                .ok_or_else(|| bad("no shape"))?;
            let offsets: Vec<u64> = v
                .get("data_offsets")
                .and_then(|s| s.as_array())
                .and_then(|a| a.iter().map(|d| d.as_u64()).collect())
                .filter(|o: &Vec<u64>| o.len() == 2)
                .ok_or_else(|| bad("no data offsets"))?;
            let (start, end) = (offsets[0], offsets[1]);
            let bytes = shape.iter().try_fold(dtype.size_in_bytes() as u64, |acc, &d| acc.checked_mul(d as u64));
            if start > end || end > data_len || bytes != Some(end - start) {
                return Err(bad(&format!(
                    "data offsets {start}..{end} do not fit shape {shape:?} in a {data_len}-byte data section (truncated file?)"
                )));
            }
            entries.insert(name.clone(), Entry { dtype, shape, start, end });
        }
        Ok(Self {
            file: Mutex::new(file),
            data_start: 8 + n,
            entries,
            architecture,
            requested: Mutex::new(BTreeMap::new()),
            problem: Mutex::new(None),
        })
    }

    /// Reads `name` (checking its shape and that every value is finite) as `dtype` on `device`.
    fn read(&self, name: &str, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor, String> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| format!("weights lack tensor '{name}' (a checkpoint of another model?)"))?;
        if entry.shape != shape.dims() {
            return Err(format!(
                "tensor '{name}' has shape {:?}, the model needs {:?} (a checkpoint of another model?)",
                entry.shape,
                shape.dims()
            ));
        }
        let io = |e: std::io::Error| format!("cannot read weights: tensor '{name}': {e}");
        let mut file = self.file.lock().expect("weights file lock");
        file.seek(SeekFrom::Start(self.data_start + entry.start)).map_err(io)?;
        let n = shape.elem_count();
        let tensor = if entry.dtype == DType::F32 {
            // Straight into the tensor's buffer: no second copy of the bytes.
            let mut values = vec![0f32; n];
            // SAFETY: `values` owns n·4 initialised bytes, and every bit pattern is a valid f32.
            let bytes = unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), n * 4) };
            file.read_exact(bytes).map_err(io)?;
            drop(file);
            for v in values.iter_mut() {
                *v = f32::from_bits(u32::from_le(v.to_bits()));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(non_finite(name));
            }
            Tensor::from_vec(values, shape.clone(), &Device::Cpu).map_err(|e| e.to_string())?
        } else {
            let mut bytes = vec![0u8; (entry.end - entry.start) as usize];
            file.read_exact(&mut bytes).map_err(io)?;
            drop(file);
            let t =
                Tensor::from_raw_buffer(&bytes, entry.dtype, shape.dims(), &Device::Cpu).map_err(|e| e.to_string())?;
            drop(bytes);
            let values =
                t.to_dtype(DType::F64).and_then(|t| t.flatten_all()?.to_vec1::<f64>()).map_err(|e| e.to_string())?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(non_finite(name));
            }
            t
        };
        tensor.to_dtype(dtype).and_then(|t| t.to_device(device)).map_err(|e| e.to_string())
    }
}

fn non_finite(name: &str) -> String {
    format!("tensor '{name}' holds non-finite values (NaN or infinity): these weights are unusable")
}

struct Backend(Arc<Inner>);

impl candle_nn::var_builder::SimpleBackend for Backend {
    fn get(&self, shape: Shape, name: &str, _init: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.0.read(name, &shape, dtype, dev) {
            Ok(t) => {
                self.0.requested.lock().expect("lock").insert(name.to_string(), shape.dims().to_vec());
                Ok(t)
            }
            Err(m) => {
                self.0.problem.lock().expect("lock").get_or_insert(m.clone());
                Err(candle_core::Error::Msg(m))
            }
        }
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("parameter {name}: a frozen model's weights are read with their shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.entries.contains_key(name)
    }
}

/// Builds a frozen model with `build` from the tensors of the safetensors file `path`.
pub fn load_model<T>(
    path: &Path,
    dtype: DType,
    device: &Device,
    build: impl Fn(VarBuilder) -> candle_core::Result<T>,
) -> Result<T, LoadError> {
    let inner = Arc::new(Inner::open(path).map_err(LoadError::Weights)?);
    let vb = VarBuilder::from_backend(Box::new(Backend(inner.clone())), dtype, device.clone());
    let model = match build(vb) {
        Ok(m) => m,
        Err(e) => {
            return Err(match inner.problem.lock().expect("lock").take() {
                Some(m) => LoadError::Weights(m),
                None => LoadError::Build(e),
            })
        }
    };
    let requested = inner.requested.lock().expect("lock");
    let mut names: Vec<&String> = inner.entries.keys().collect();
    names.sort();
    if let Some(extra) = names.into_iter().find(|k| !requested.contains_key(*k)) {
        return Err(LoadError::Weights(format!(
            "weights hold tensor '{extra}' that the model does not have (a checkpoint of another model?)"
        )));
    }
    if let Some(recorded) = &inner.architecture {
        let expected = super::io::architecture_hash(requested.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        if *recorded != expected {
            return Err(LoadError::Weights(format!(
                "weights of architecture {recorded} but the model is {expected} (a checkpoint of another model?)"
            )));
        }
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny(vb: VarBuilder) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((vb.get((3, 2), "a.weight")?, vb.get(3, "a.bias")?))
    }

    fn write(path: &Path, tensors: &[(&str, Tensor)]) {
        let map: HashMap<String, Tensor> = tensors.iter().map(|(k, t)| (k.to_string(), t.clone())).collect();
        candle_core::safetensors::save(&map, path).unwrap();
    }

    #[test]
    fn reads_every_tensor_the_model_asks_for_and_refuses_misfits() {
        let dir = std::env::temp_dir().join(format!("zdcflow-weights-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("w.safetensors");
        let w = Tensor::new(&[[1f64, 2.], [3., 4.], [5., 6.]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f64, -1., 2.], &Device::Cpu).unwrap();
        for dt in [DType::F32, DType::F64, DType::F16] {
            write(&p, &[("a.weight", w.to_dtype(dt).unwrap()), ("a.bias", b.to_dtype(dt).unwrap())]);
            let (lw, lb) = load_model(&p, DType::F32, &Device::Cpu, tiny).unwrap();
            assert_eq!(lw.to_vec2::<f32>().unwrap(), vec![vec![1., 2.], vec![3., 4.], vec![5., 6.]]);
            assert_eq!(lb.to_vec1::<f32>().unwrap(), vec![0.5, -1., 2.]);
        }
        let err = |r: Result<(Tensor, Tensor), LoadError>| match r {
            Err(LoadError::Weights(m)) => m,
            other => panic!("expected a weights error, got {:?}", other.map(|_| ())),
        };
        write(&p, &[("a.weight", w.t().unwrap().contiguous().unwrap()), ("a.bias", b.clone())]);
        assert!(err(load_model(&p, DType::F32, &Device::Cpu, tiny)).contains("has shape [2, 3]"));
        write(&p, &[("a.weight", w.clone())]);
        assert!(err(load_model(&p, DType::F32, &Device::Cpu, tiny)).contains("lack tensor 'a.bias'"));
        write(&p, &[("a.weight", w.clone()), ("a.bias", b.clone()), ("b.bias", b.clone())]);
        assert!(err(load_model(&p, DType::F32, &Device::Cpu, tiny)).contains("'b.bias' that the model does not have"));
        let nan = Tensor::new(&[0.5f32, f32::NAN, 2.], &Device::Cpu).unwrap();
        write(&p, &[("a.weight", w.to_dtype(DType::F32).unwrap()), ("a.bias", nan)]);
        assert!(err(load_model(&p, DType::F32, &Device::Cpu, tiny)).contains("'a.bias' holds non-finite"));
        // A truncated file is refused by its header, not read past its end.
        write(&p, &[("a.weight", w.clone()), ("a.bias", b.clone())]);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        assert!(err(load_model(&p, DType::F32, &Device::Cpu, tiny)).contains("truncated"));
        // The architecture hash in an identity header is checked against what the model asked for.
        let vm = VarMap::new();
        vm.get((3, 2), "a.weight", Init::Const(1.0), DType::F32, &Device::Cpu).unwrap();
        vm.get(3, "a.bias", Init::Const(0.0), DType::F32, &Device::Cpu).unwrap();
        super::super::io::save_varmap(&vm, &p).unwrap();
        assert!(load_model(&p, DType::F32, &Device::Cpu, tiny).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
