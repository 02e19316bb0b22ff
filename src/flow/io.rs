//! A stack on disk: `<stem>.safetensors` (weights, keys `flow.<block>.made.…`) and
//! `<stem>.json` (its [`FlowSpec`]). Both are written atomically; loading checks that the
//! weights are those of the spec's architecture.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarMap;

use super::error::{FlowError as Error, Result};
use super::params::load_frozen_model;
use super::stack::{Flow, FlowSpec};

/// Writes that never leave a half-written file behind: a temporary sibling (`.<name>.tmp-<pid>`,
/// the application's naming), flushed, then renamed over the target.
mod atomic {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use super::{Error, Result};

    /// Told of every temporary file before it is written (see [`super::on_temp_file`]).
    pub(super) static TEMP_HOOK: OnceLock<fn(&Path)> = OnceLock::new();

    fn temp_path(path: &Path) -> PathBuf {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        if let Some(hook) = TEMP_HOOK.get() {
            hook(&tmp);
        }
        tmp
    }

    /// Runs `write` on a temporary path, then renames it to `path`.
    pub(super) fn write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        // The rename would replace a directory, device, FIFO or socket at `path`.
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            return Err(Error::Invalid(format!("{}: exists and is not a regular file", path.display())));
        }
        let tmp = temp_path(path);
        let result = write(&tmp).and_then(|()| {
            super::usual_permissions(&tmp).map_err(|e| Error::io(path, e))?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    pub(super) fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
        write_with(path, |tmp| {
            let mut f = std::fs::File::create(tmp).map_err(|e| Error::io(path, e))?;
            f.write_all(bytes).map_err(|e| Error::io(path, e))
        })
    }
}

/// Sets the function told of each temporary file the flow library writes through (before it is
/// written), once per process: the application registers them so that a signal handler can remove
/// them (`util::temp_files`). Without one, a stopped process may leave them behind.
pub fn on_temp_file(hook: fn(&Path)) {
    let _ = atomic::TEMP_HOOK.set(hook);
}

/// Gives a finished temporary file the permissions of a file the user creates (0666 less the
/// umask): writers that go through a private temporary file (safetensors' own, 0600) or copy
/// another file would otherwise leave a model directory with files a colleague cannot read.
pub fn usual_permissions(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The umask is only readable by setting it; /proc shows it without that race.
        let umask = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string())))
            .and_then(|v| u32::from_str_radix(&v, 8).ok())
            .unwrap_or(0o022);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666 & !umask))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The prefix of a stack's parameters in a weights file.
pub const PREFIX: &str = "flow";

fn paths(stem: &Path) -> (PathBuf, PathBuf) {
    (stem.with_extension("json"), stem.with_extension("safetensors"))
}

/// Saves the spec and the variables of a stack built from `varmap`.
pub fn save(spec: &FlowSpec, varmap: &VarMap, stem: &Path) -> Result<()> {
    let (json, weights) = paths(stem);
    let text = serde_json::to_string_pretty(spec).map_err(|e| Error::Invalid(e.to_string()))?;
    atomic::write_bytes(&json, text.as_bytes())?;
    save_varmap(varmap, &weights)
}

/// Atomically writes a `VarMap` as safetensors, with the architecture hash of its tensors in
/// the header (see [`Identity`]).
pub fn save_varmap(varmap: &VarMap, path: &Path) -> Result<()> {
    save_varmap_as(varmap, path, None, None)
}

/// The key of a weights file's header metadata that holds its [`Identity`].
pub const IDENTITY_KEY: &str = "zdcflow_identity";

/// Who a weights file belongs to: the unit that wrote it, the role of its model, and a hash of
/// its tensor names and shapes. Files written before zdcflow recorded this have none and load
/// as before.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub architecture: String,
}

/// FNV-1a over the sorted `name:dims;` list: the same for every file of one architecture.
pub fn architecture_hash<'a>(tensors: impl Iterator<Item = (&'a str, &'a [usize])>) -> String {
    let mut items: Vec<String> = tensors.map(|(n, d)| format!("{n}:{d:?};")).collect();
    items.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in items.concat().bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Like [`save_varmap`], recording the unit name and role too.
pub fn save_varmap_as(varmap: &VarMap, path: &Path, unit: Option<&str>, role: Option<&str>) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut tensors: Vec<(String, candle_core::Tensor)> =
        data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    drop(data);
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let identity = Identity {
        role: role.map(str::to_string),
        unit: unit.map(str::to_string),
        architecture: architecture_hash(tensors.iter().map(|(k, t)| (k.as_str(), t.dims()))),
    };
    write_tensors(path, &tensors, &identity)
}

fn write_tensors(path: &Path, tensors: &[(String, candle_core::Tensor)], identity: &Identity) -> Result<()> {
    let meta = std::collections::HashMap::from([(
        IDENTITY_KEY.to_string(),
        serde_json::to_string(identity).expect("identity serialises"),
    )]);
    atomic::write_with(path, |tmp| {
        safetensors::tensor::serialize_to_file(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta), tmp)
            .map_err(|e| Error::checkpoint(path, format!("cannot write: {e}")))
    })
}

/// The identity in a weights file's header; `None` for files written before identities existed.
pub fn read_identity(path: &Path) -> Result<Option<Identity>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| Error::checkpoint(path, "not a safetensors file (too short)"))?;
    let n = u64::from_le_bytes(len);
    let size = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if n > 100 << 20 || n + 8 > size {
        return Err(Error::checkpoint(
            path,
            format!("not a safetensors file (header of {n} bytes in a {size}-byte file)"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::checkpoint(path, format!("not a safetensors file (unreadable header: {e})")))?;
    match v.get("__metadata__").and_then(|m| m.get(IDENTITY_KEY)).and_then(|s| s.as_str()) {
        None => Ok(None),
        Some(s) => serde_json::from_str(s)
            .map(Some)
            .map_err(|e| Error::checkpoint(path, format!("unreadable identity in the header: {e}"))),
    }
}

/// Copies a weights file, recording `role` as its role (a teacher's unit copied into a student).
pub fn copy_weights_as(from: &Path, to: &Path, role: &str) -> Result<()> {
    let identity = read_identity(from)?;
    let tensors = candle_core::safetensors::load(from, &candle_core::Device::Cpu)
        .map_err(|e| Error::checkpoint(from, format!("cannot read weights: {e}")))?;
    let mut tensors: Vec<(String, candle_core::Tensor)> = tensors.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let identity = Identity {
        role: Some(role.to_string()),
        unit: identity.and_then(|i| i.unit),
        architecture: architecture_hash(tensors.iter().map(|(k, t)| (k.as_str(), t.dims()))),
    };
    write_tensors(to, &tensors, &identity)
}

/// Checks a weights file's identity (when it has one) against the unit and role expected.
pub fn check_identity(path: &Path, unit: &str, role: &str) -> Result<()> {
    let Some(id) = read_identity(path)? else { return Ok(()) };
    if let Some(r) = id.role.as_deref().filter(|r| *r != role) {
        return Err(Error::checkpoint(
            path,
            format!("holds the weights of a {r}'s unit, but this model is a {role} (files swapped between model directories, a checkpoint of another model?)"),
        ));
    }
    if let Some(u) = id.unit.as_deref().filter(|u| *u != unit) {
        return Err(Error::checkpoint(
            path,
            format!("holds the weights of unit '{u}', not of '{unit}' (files swapped, a checkpoint of another model?)"),
        ));
    }
    Ok(())
}

/// Reads a spec from JSON, validating it.
pub fn read_spec(path: &Path) -> Result<FlowSpec> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let spec: FlowSpec =
        serde_json::from_str(&text).map_err(|e| Error::checkpoint(path, format!("not a flow spec: {e}")))?;
    spec.validate().map_err(|e| Error::checkpoint(path, e))?;
    Ok(spec)
}

/// Builds a frozen (inference) stack of `spec` from the tensors under `prefix` in `weights`.
pub fn load_frozen_flow(spec: &FlowSpec, weights: &Path, prefix: &str, dtype: DType, device: &Device) -> Result<Flow> {
    load_frozen_model(weights, dtype, device, |vb| Flow::frozen(spec, vb.pp(prefix)))
}

/// Loads a stack saved by [`save`].
pub fn load(stem: &Path, dtype: DType, device: &Device) -> Result<Flow> {
    let (json, weights) = paths(stem);
    let spec = read_spec(&json)?;
    load_frozen_flow(&spec, &weights, PREFIX, dtype, device)
}
