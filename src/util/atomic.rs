//! Writes that never leave a half-written file behind: write to a temporary sibling, flush it
//! to disk, then rename over the target (atomic on POSIX filesystems).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use super::temp_files::temp_path;

/// Runs `write` on a temporary path, then renames it to `path`.
pub fn write_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    write_via(path, temp_path(path), write)
}

/// Like [`write_with`], with a temporary name that keeps the extension (`.plot.tmp-PID.png`),
/// for writers that choose the format by the extension (PNG figures).
pub fn write_keeping_extension<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let stem = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let tmp = temp_path(&path.with_file_name(&stem));
    let tmp = tmp.with_file_name(format!("{}{ext}", tmp.file_name().unwrap_or_default().to_string_lossy()));
    super::temp_files::remember(&tmp);
    write_via(path, tmp, write)
}

fn write_via<F>(path: &Path, tmp: PathBuf, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    crate::util::output_guard::refuse_non_regular(path, "the output")?;
    let result = write(&tmp).and_then(|()| {
        crate::flow::io::usual_permissions(&tmp).map_err(|e| Error::io(path, e))?;
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| retarget(e, &tmp, path))
}

/// An error about the temporary file, told about the target the user named.
fn retarget(e: Error, tmp: &Path, path: &Path) -> Error {
    let swap = |p: PathBuf| if p == tmp { path.to_path_buf() } else { p };
    match e {
        Error::Io { path: p, err } => Error::Io { path: swap(p), err },
        Error::Hdf5 { path: p, msg } => Error::Hdf5 { path: swap(p), msg },
        Error::Format { path: p, msg } => Error::Format { path: swap(p), msg },
        Error::Checkpoint { path: p, msg } => Error::Checkpoint { path: swap(p), msg },
        Error::Data { path: p, dataset, msg } => Error::Data { path: swap(p), dataset, msg },
        Error::Invalid(m) => Error::Invalid(m.replace(&tmp.display().to_string(), &path.display().to_string())),
        other => other,
    }
}

/// Atomically writes `bytes` to `path`.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|e| Error::io(path, e))?;
        f.write_all(bytes).map_err(|e| Error::io(path, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn written_files_get_the_usual_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.safetensors");
        // A writer that makes a private file, as safetensors does.
        write_with(&p, |tmp| {
            std::fs::write(tmp, b"x").map_err(|e| Error::io(tmp, e))?;
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600)).map_err(|e| Error::io(tmp, e))
        })
        .unwrap();
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), mode(&probe), "as a file the user creates");
    }

    #[test]
    fn write_errors_name_the_target_not_the_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("a.json");
        let e = write_bytes(&p, b"x").unwrap_err().to_string();
        assert!(e.contains("missing-dir/a.json") && !e.contains(".tmp-"), "{e}");
    }

    #[test]
    fn stopped_writes_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = temp_path(&dir.path().join("big.h5"));
        std::fs::write(&tmp, b"partial").unwrap();
        // The signal handler's removal, restricted to this test's directory: other tests of this
        // process may be writing their own temporary files meanwhile.
        crate::util::temp_files::remove_temps_where(|p| p.starts_with(dir.path()));
        assert!(!tmp.exists());
    }

    #[test]
    fn failed_write_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_bytes(&p, b"old").unwrap();
        let r = write_with(&p, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::Invalid("boom".into()))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file removed");
    }
}
