//! Ctrl-C and SIGTERM handling. In training, the first signal asks long-running work to save and
//! stop at the next safe point; a second one exits at once, unless it comes within
//! [`REPEAT_GRACE`] of the first (`timeout` and job schedulers send SIGTERM to the process and
//! again to its group, a hurried user presses Ctrl-C twice): that one is the same request, and
//! the save goes on. Everywhere else (sample, generate,
//! merge, evaluate…) a signal removes this process's temporary files and exits with 130, so no
//! `.NAME.tmp-PID` is left behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// A repeated signal sooner than this after the first is taken as the same request.
pub const REPEAT_GRACE: Duration = Duration::from_secs(3);

static REQUESTED: AtomicBool = AtomicBool::new(false);
static FIRST: Mutex<Option<Instant>> = Mutex::new(None);
static GRACEFUL: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

fn exit_now() -> ! {
    crate::util::temp_files::remove_temps();
    #[cfg(unix)]
    // SAFETY: _exit ends the process without running atexit handlers (HDF5's could wait on a lock
    // that another thread holds at this moment).
    unsafe {
        libc::_exit(130)
    }
    #[cfg(not(unix))]
    std::process::exit(130)
}

/// Installs the signal handler (idempotent): temporary files (those of the flow library's writes
/// included) are removed and the process exits.
pub fn install_cleanup() {
    super::temp_files::watch_flow_writes();
    INSTALL.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if !GRACEFUL.load(Ordering::SeqCst) {
                exit_now();
            }
            let now = Instant::now();
            let first = *FIRST.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(now);
            if REQUESTED.swap(true, Ordering::SeqCst) {
                if now.duration_since(first) < REPEAT_GRACE {
                    eprintln!("\ninterrupt repeated within {} s: still saving", REPEAT_GRACE.as_secs());
                    return;
                }
                eprintln!("\ninterrupted again: exiting without saving");
                exit_now();
            }
            eprintln!(
                "\ninterrupt: saving a checkpoint and stopping (Ctrl-C again after {} s to exit at once)",
                REPEAT_GRACE.as_secs()
            );
        });
    });
}

/// Training: the first signal asks for a checkpoint and a clean stop (see [`requested`]).
pub fn install() {
    GRACEFUL.store(true, Ordering::SeqCst);
    install_cleanup();
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
