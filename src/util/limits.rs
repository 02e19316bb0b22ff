//! The limits layer: every size that comes from outside (HDF5 dataspaces, npy headers,
//! `model.json`, config values, command-line counts) is checked here against the file that is
//! supposed to hold it and against a memory budget *before* anything is allocated, so a huge or
//! lying number is one clear error line instead of an abort, a hang or a full disk.
//!
//! The memory budget is 80 % of the machine's physical memory; `ZDCFLOW_MEMORY_LIMIT=SIZE`
//! (e.g. `200G`, `512M`, or plain bytes) replaces it.

use std::path::Path;

use crate::error::{Error, Result};

/// The environment variable that overrides the memory budget.
pub const MEMORY_ENV: &str = "ZDCFLOW_MEMORY_LIMIT";

/// The most CPU threads `--threads` accepts.
pub const MAX_THREADS: usize = 1024;

/// Parses `123`, `64K`, `512M`, `200G`, `1.5T` (powers of 1024) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then_some((v * mult as f64) as u64)
}

/// Bytes as a short human-readable string ("4.7 GB").
pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The memory budget in bytes and where it comes from.
pub fn memory_budget() -> Result<(u64, String)> {
    if let Ok(v) = std::env::var(MEMORY_ENV) {
        return parse_size(&v)
            .map(|b| (b, format!("{MEMORY_ENV}={v}")))
            .ok_or_else(|| Error::Invalid(format!("{MEMORY_ENV}='{v}': expected a size such as 64G, 512M or bytes")));
    }
    Ok(match physical_memory() {
        Some(m) => (m / 10 * 8, format!("80 % of this machine's {}", human(m as f64))),
        None => (16 << 30, "the default of 16 GiB (physical memory unknown)".into()),
    })
}

/// Refuses `what` needing `bytes` of memory above the budget; the message names both numbers and
/// how to raise the limit.
pub fn check_memory(what: &str, bytes: f64) -> Result<()> {
    let (budget, source) = memory_budget()?;
    if bytes.is_finite() && bytes <= budget as f64 {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{what} needs {} of memory, above the limit of {} ({source}; set {MEMORY_ENV}=SIZE to change it)",
        human(bytes),
        human(budget as f64)
    )))
}

/// Like [`check_memory`], for a request that belongs to a file (the error names the file).
pub fn check_memory_for(path: &Path, what: &str, bytes: f64) -> Result<()> {
    // A bad ZDCFLOW_MEMORY_LIMIT is the setting's error, not the file's.
    memory_budget()?;
    check_memory(what, bytes).map_err(|e| Error::format(path, e.to_string()))
}

/// Free bytes on the filesystem that holds `path` (its parent when it does not exist yet).
#[cfg(unix)]
pub fn free_disk(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
pub fn free_disk(_path: &Path) -> Option<u64> {
    None
}

/// Refuses to start writing an output of about `bytes` (`at_least` is the smallest it can be
/// after compression) where the filesystem has less free space than that.
pub fn check_disk(output: &Path, bytes: f64, compressed: bool) -> Result<()> {
    let at_least = if compressed { bytes / 50.0 } else { bytes };
    if let Some(free) = free_disk(output) {
        if at_least > free as f64 {
            return Err(Error::format(
                output,
                format!(
                    "the output needs {}{}, the filesystem has {} free",
                    if compressed { "at least " } else { "" },
                    human(at_least),
                    human(free as f64)
                ),
            ));
        }
    }
    Ok(())
}

/// A dataset (or array) declared with `elements` values of `elem_bytes` each, stored without
/// compression, must fit in the file that holds it.
pub fn check_declared(path: &Path, what: &str, elements: f64, elem_bytes: usize, stored: u64) -> Result<()> {
    let declared = elements * elem_bytes as f64;
    if declared > stored as f64 {
        return Err(Error::format(
            path,
            format!(
                "{what} declares {} of data but the file holds only {} (truncated or corrupt)",
                human(declared),
                human(stored as f64)
            ),
        ));
    }
    Ok(())
}

/// Reads an npy header from `r` (an array of `stored` bytes in all) and checks its declared
/// shape against those bytes and against the memory budget, before a reader allocates the array.
/// `bad` puts the file's name on a message about the array.
pub fn check_npy_header(r: &mut impl std::io::Read, stored: u64, bad: impl Fn(String) -> Error) -> Result<()> {
    // A bad ZDCFLOW_MEMORY_LIMIT is the setting's error, not the file's.
    memory_budget()?;
    check_npy_text(r, stored).map_err(bad)
}

fn check_npy_text(r: &mut impl std::io::Read, stored: u64) -> std::result::Result<(), String> {
    let mut head = [0u8; 12];
    r.read_exact(&mut head[..10]).map_err(|_| "too short for an npy header".to_string())?;
    if &head[..6] != b"\x93NUMPY" {
        return Err("is not an npy array (bad magic)".into());
    }
    let (prefix, len) = if head[6] == 1 {
        (10u64, u16::from_le_bytes([head[8], head[9]]) as u64)
    } else {
        r.read_exact(&mut head[10..12]).map_err(|_| "too short for an npy header".to_string())?;
        (12, u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as u64)
    };
    if len > 1 << 20 {
        return Err(format!("declares an npy header of {len} bytes"));
    }
    let mut text = vec![0u8; len as usize];
    r.read_exact(&mut text).map_err(|_| "the npy header is truncated".to_string())?;
    let text = String::from_utf8_lossy(&text);
    let shape_text = text
        .split_once("'shape':")
        .and_then(|(_, r)| r.split_once('(')?.1.split_once(')'))
        .map(|(inside, _)| inside.to_string())
        .ok_or_else(|| "the npy header has no shape".to_string())?;
    let dims: Vec<f64> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<f64>().map_err(|_| format!("unreadable shape ({shape_text})")))
        .collect::<std::result::Result<_, _>>()?;
    let item: usize = text
        .split_once("'descr':")
        .and_then(|(_, r)| r.split('\'').nth(1))
        .and_then(|d| d.trim_start_matches(['<', '>', '|', '=']).get(1..)?.parse().ok())
        .unwrap_or(1);
    let elements: f64 = dims.iter().product();
    let available = stored.saturating_sub(prefix + len);
    if elements * item as f64 > available as f64 {
        return Err(format!(
            "its header declares shape ({shape_text}) = {} but the array holds only {} (shorter than its header says)",
            human(elements * item as f64),
            human(available as f64)
        ));
    }
    // Read as float64 (8 bytes), plus the element type's own copy.
    check_memory(&format!("array of shape ({shape_text})"), elements * (item + 8) as f64).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("4K"), Some(4096));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("1.5M"), Some(3 << 19));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("-1G"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(999.0), "999 B");
        assert_eq!(human(4.7e9), "4.7 GB");
    }

    #[test]
    fn declared_sizes_beyond_the_file_are_refused() {
        let p = Path::new("x.npz");
        assert!(check_declared(p, "arr_0", 10.0, 4, 40).is_ok());
        let e = check_declared(p, "arr_0", 1e11 * 44.0 * 44.0, 4, 4096).unwrap_err().to_string();
        assert!(e.contains("x.npz") && e.contains("774.4 TB") && e.contains("4.1 KB"), "{e}");
    }

    #[test]
    fn memory_requests_above_the_budget_are_refused() {
        assert!(check_memory("a small thing", 1e3).is_ok());
        let e = check_memory("1e14 events", 1e18).unwrap_err().to_string();
        assert!(e.contains("1e14 events") && e.contains(MEMORY_ENV), "{e}");
        assert!(check_memory("nan", f64::NAN).is_err());
    }
}
