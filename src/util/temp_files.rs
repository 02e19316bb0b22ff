//! The process-wide registry of temporary files: every temporary sibling that an atomic write
//! (`util::atomic`, the flow library's own writes, HDF5 outputs, the classifier's row file) may
//! leave behind, so that the signal handler (`util::interrupt`) removes them all.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// Temporary files of this process that may exist (see [`remove_temps`]).
static LIVE_TEMPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The temporary sibling used while writing `path` (`.<name>.tmp-<pid>`, same directory, so the
/// rename is atomic), remembered so that [`remove_temps`] deletes it if the process is stopped.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    remember(&tmp);
    tmp
}

/// Remembers a temporary file made elsewhere for [`remove_temps`].
pub fn remember(tmp: &Path) {
    if let Ok(mut live) = LIVE_TEMPS.lock() {
        if !live.iter().any(|p| p == tmp) {
            live.push(tmp.to_path_buf());
        }
    }
}

/// Registers the temporary files of the flow library's own writes here too (idempotent).
pub fn watch_flow_writes() {
    static WATCH: Once = Once::new();
    WATCH.call_once(|| crate::flow::io::on_temp_file(remember));
}

/// Deletes every temporary file remembered by [`temp_path`] / [`remember`] still on disk (for a
/// signal handler; never blocks).
pub fn remove_temps() {
    remove_temps_where(|_| true);
}

/// [`remove_temps`] of the remembered files that `select` picks (tests remove only their own,
/// since other tests of the process may be writing theirs).
pub fn remove_temps_where(select: impl Fn(&Path) -> bool) {
    if let Ok(live) = LIVE_TEMPS.try_lock() {
        for p in live.iter().filter(|p| select(p)) {
            let _ = std::fs::remove_file(p);
        }
    }
}
