//! Ctrl-C handling: the first Ctrl-C asks long-running work to save and stop at the next safe
//! point; a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

static REQUESTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Installs the handler (idempotent).
pub fn install() {
    INSTALL.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted again: exiting without saving");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: saving a checkpoint and stopping (Ctrl-C again to exit at once)");
        });
    });
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
