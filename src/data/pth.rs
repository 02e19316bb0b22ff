//! PyTorch checkpoints (`torch.save` zip archives) read as named tensors, every size the file
//! declares checked before anything is allocated for it.
//!
//! candle's pickle reader allocates a string's declared length before reading it, reads a
//! tensor's declared shape whatever its storage holds, and skips a tensor it cannot describe with
//! a line on stderr (a state dict of broken tensors then looked empty: "pass --key"). Here the
//! pickle is still parsed by candle's [`Stack`], one opcode at a time, each string's length
//! checked against the bytes that follow it; the tensors are described here, each shape and
//! storage offset checked against its storage in the archive and the memory budget.

use std::io::{Cursor, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Layout, Shape, Tensor};

use crate::error::{Error, Result};
use crate::util::limits::{self, human};

/// A tensor as the pickle declares it: its archive entry and how to read it.
struct Stored {
    name: String,
    entry: String,
    dtype: DType,
    layout: Layout,
}

/// Reads the state dict of a checkpoint: the dict under `key`, or without one the dict under
/// `model_state_dict` if there is one, else the top level.
pub fn read_state_dict(path: &Path, key: Option<&str>) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(Error::checkpoint(path, "no such file"));
    }
    // A bad ZDCFLOW_MEMORY_LIMIT is the setting's error, not the file's.
    limits::memory_budget()?;
    let bad = |m: String| Error::checkpoint(path, m);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a PyTorch checkpoint (not a zip archive): {e}")))?;
    let pkl = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl"))
        .map(str::to_string)
        .ok_or_else(|| bad("holds no data.pkl (not a checkpoint saved by torch.save?)".into()))?;
    let pickle = {
        let mut entry = zip.by_name(&pkl).map_err(|e| bad(format!("unreadable {pkl}: {e}")))?;
        let size = entry.size();
        limits::check_memory_for(path, &format!("reading its pickle ({pkl})"), size as f64)?;
        let mut bytes = Vec::new();
        entry.by_ref().take(size).read_to_end(&mut bytes).map_err(|e| bad(format!("unreadable {pkl}: {e}")))?;
        bytes
    };
    let dir = pkl.trim_end_matches(".pkl");
    let entries = state_dict(parse(&pickle).map_err(bad)?, key).map_err(bad)?;
    let mut stored = Vec::new();
    for (name, value) in entries {
        let Object::Unicode(name) = name else { continue };
        if let Some(t) = describe(value, dir).map_err(|e| bad(format!("tensor '{name}': {e}")))? {
            stored.push(Stored { name, ..t });
        }
    }
    if stored.is_empty() {
        return Err(bad(match key {
            Some(k) => format!("key '{k}' holds no tensors"),
            None => "holds no tensors at the top level (a state dict nested under a key? pass --key)".into(),
        }));
    }
    let mut total = 0.0;
    for t in &stored {
        let stored_bytes = zip
            .by_name(&t.entry)
            .map(|e| e.size())
            .map_err(|_| bad(format!("tensor '{}': its storage {} is missing from the archive", t.name, t.entry)))?;
        let bytes = t.layout.shape().dims().iter().map(|&d| d as f64).product::<f64>() * t.dtype.size_in_bytes() as f64;
        if t.layout.start_offset() as f64 + bytes > stored_bytes as f64 {
            return Err(bad(format!(
                "tensor '{}' declares shape {:?} ({}) at byte {} of its storage, which holds only {} (corrupt or edited)",
                t.name,
                t.layout.dims(),
                human(bytes),
                t.layout.start_offset(),
                human(stored_bytes as f64)
            )));
        }
        // The bytes read, then the tensor made from them.
        total += 2.0 * bytes;
    }
    limits::check_memory_for(path, "reading its tensors", total)?;
    let tensors = stored
        .into_iter()
        .map(|t| {
            let tensor = read_tensor(&mut zip, &t).map_err(|e| bad(format!("tensor '{}': {e}", t.name)))?;
            Ok((t.name, tensor))
        })
        .collect::<Result<Vec<_>>>()?;
    // Refused here, naming the checkpoint, rather than in the weights file an import writes.
    for (name, t) in &tensors {
        if !t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?.iter().all(|v| v.is_finite()) {
            return Err(bad(format!(
                "tensor '{name}' holds non-finite values (NaN or infinity): these weights are unusable"
            )));
        }
    }
    Ok(tensors)
}

/// Parses a pickle with candle's machine, refusing a string longer than the bytes that follow
/// it (candle would allocate the declared length first) and integers wider than 8 bytes.
fn parse(pickle: &[u8]) -> std::result::Result<Object, String> {
    const BINUNICODE: u8 = b'X';
    const LONG1: u8 = 0x8a;
    let mut r = Cursor::new(pickle);
    let mut stack = Stack::empty();
    loop {
        let at = r.position() as usize;
        match pickle.get(at) {
            Some(&BINUNICODE) => {
                if let Some(len) = pickle.get(at + 1..at + 5) {
                    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    let left = pickle.len() - (at + 5);
                    if len > left {
                        return Err(format!(
                            "its pickle declares a string of {} at byte {at}, but only {} follow (corrupt or hostile)",
                            human(len as f64),
                            human(left as f64)
                        ));
                    }
                }
            }
            Some(&LONG1) if pickle.get(at + 1).is_some_and(|&n| n > 8) => {
                return Err(format!("its pickle declares an integer of {} bytes at byte {at}", pickle[at + 1]));
            }
            _ => {}
        }
        match stack.read(&mut r) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(format!("unreadable pickle at byte {at}: {e}")),
        }
    }
    stack.finalize().map_err(|e| format!("unreadable pickle: {e}"))
}

fn is_class(o: &Object, module: &str, class: &str) -> bool {
    matches!(o, Object::Class { module_name, class_name } if module_name == module && class_name == class)
}

/// The entries of the state dict: under `key`, or under `model_state_dict`, or the top level.
fn state_dict(obj: Object, key: Option<&str>) -> std::result::Result<Vec<(Object, Object)>, String> {
    // A TorchScript module holds its state dict as the arguments of its BUILD.
    let obj = match obj {
        Object::Build { callable, args } if matches!(&*callable, Object::Reduce { callable: c, .. } if is_class(c, "__torch__", "Module")) => {
            *args
        }
        o => o,
    };
    let Object::Dict(mut entries) = obj else {
        return Err("its top level is not a dict (not a state dict saved by torch.save?)".into());
    };
    let position =
        |entries: &[(Object, Object)], k: &str| entries.iter().position(|(n, _)| *n == Object::Unicode(k.into()));
    match key {
        Some(k) => match position(&entries, k).map(|i| entries.swap_remove(i).1) {
            Some(Object::Dict(d)) => Ok(d),
            Some(_) => Err(format!("key '{k}' does not hold a dict of tensors")),
            None => {
                let keys: Vec<String> = entries.iter().filter_map(|(n, _)| n.clone().unicode().ok()).take(8).collect();
                Err(format!("cannot read key '{k}': not found (top-level keys: {})", keys.join(", ")))
            }
        },
        None => {
            let nested = position(&entries, "model_state_dict").filter(|&i| matches!(entries[i].1, Object::Dict(_)));
            match nested.map(|i| entries.swap_remove(i).1) {
                Some(Object::Dict(d)) => Ok(d),
                _ => Ok(entries),
            }
        }
    }
}

/// A state dict's value as a stored tensor (`torch._utils._rebuild_tensor_v2`, possibly wrapped
/// as a parameter or a tensor subclass); `None` for a value that is not a tensor.
fn describe(value: Object, dir: &str) -> std::result::Result<Option<Stored>, String> {
    let Ok((mut callable, mut args)) = value.reduce() else { return Ok(None) };
    if is_class(&callable, "torch._tensor", "_rebuild_from_type_v2") {
        // (function, type, args, state)
        match args.tuple() {
            Ok(mut a) if a.len() >= 3 => (callable, args) = (a.remove(0), a.remove(1)),
            _ => return Ok(None),
        }
    } else if is_class(&callable, "torch._utils", "_rebuild_parameter") {
        // (data, requires_grad, backward_hooks)
        match args.tuple().ok().filter(|a| !a.is_empty()).map(|mut a| a.remove(0).reduce()) {
            Some(Ok(inner)) => (callable, args) = inner,
            _ => return Ok(None),
        }
    }
    if !is_class(&callable, "torch._utils", "_rebuild_tensor_v2") {
        return Ok(None);
    }
    let bad = |what: &str| format!("its {what} is not readable (a corrupt or edited pickle)");
    // (storage, storage_offset, size, stride, requires_grad, backward_hooks)
    let mut a = args.tuple().map_err(|_| bad("arguments"))?;
    if a.len() < 4 {
        return Err(bad("arguments"));
    }
    let count = |o: Object| o.int_or_long().ok().and_then(|v| usize::try_from(v).ok());
    let dims = |o: Object, what: &str| -> std::result::Result<Vec<usize>, String> {
        o.tuple().map_err(|_| bad(what))?.into_iter().map(|d| count(d).ok_or_else(|| bad(what))).collect()
    };
    let stride = dims(a.remove(3), "stride")?;
    let shape = dims(a.remove(2), "shape")?;
    let offset = count(a.remove(1)).ok_or_else(|| bad("storage offset"))?;
    // ('storage', storage type, key, location, size)
    let mut storage = match a.remove(0).persistent_load().and_then(Object::tuple) {
        Ok(s) if s.len() >= 5 => s,
        _ => return Err(bad("storage")),
    };
    let key = storage.remove(2).unicode().map_err(|_| bad("storage key"))?;
    let dtype = match storage.remove(1).class().map_err(|_| bad("storage type"))?.1.as_str() {
        "FloatStorage" => DType::F32,
        "DoubleStorage" => DType::F64,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "ByteStorage" => DType::U8,
        "LongStorage" => DType::I64,
        other => return Err(format!("its storage type {other} is not supported")),
    };
    if stride.len() != shape.len() {
        return Err(bad("stride"));
    }
    let start = offset.checked_mul(dtype.size_in_bytes()).ok_or_else(|| bad("storage offset"))?;
    let layout = Layout::new(Shape::from(shape), stride, start);
    Ok(Some(Stored { name: String::new(), entry: format!("{dir}/{key}"), dtype, layout }))
}

/// Reads a tensor whose size was checked against its storage and the memory budget.
fn read_tensor<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    t: &Stored,
) -> std::result::Result<Tensor, String> {
    let fortran = t.layout.is_fortran_contiguous() && !t.layout.is_contiguous();
    if !t.layout.is_contiguous() && !fortran {
        return Err(format!("strides {:?} are not contiguous; save it with .contiguous()", t.layout.stride()));
    }
    let mut entry = zip.by_name(&t.entry).map_err(|e| e.to_string())?;
    let mut skipped = std::io::sink();
    std::io::copy(&mut entry.by_ref().take(t.layout.start_offset() as u64), &mut skipped).map_err(|e| e.to_string())?;
    let mut bytes = vec![0u8; t.layout.shape().elem_count() * t.dtype.size_in_bytes()];
    entry.read_exact(&mut bytes).map_err(|e| format!("its storage is shorter than its header says ({e})"))?;
    let dims = t.layout.dims();
    if !fortran {
        return Tensor::from_raw_buffer(&bytes, t.dtype, dims, &Device::Cpu).map_err(|e| e.to_string());
    }
    // Column-major: read with the dimensions reversed, then transposed back.
    let reversed: Vec<usize> = dims.iter().rev().copied().collect();
    let order: Vec<usize> = (0..dims.len()).rev().collect();
    Tensor::from_raw_buffer(&bytes, t.dtype, &reversed, &Device::Cpu)
        .and_then(|x| x.permute(order))
        .map_err(|e| e.to_string())
}
