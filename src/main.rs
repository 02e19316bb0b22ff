//! The `zdcflow` binary: parse arguments, run, print the error chain on one line.

use std::process::ExitCode;

use clap::Parser;

/// glibc returns every block above 32 MB to the kernel when it is freed, so each training step
/// page-faulted its gigabytes of weight-sized temporaries in afresh (half of a ZDC teacher's step
/// went to zeroing fresh pages). jemalloc keeps freed pages for reuse.
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: freed pages are never handed back (the default hands
/// them back within 10 s, shorter than one ZDC step, which brought the page faults back), so
/// memory stays at the run's high-water mark. `thp:always`: jemalloc zeroes a reused page run
/// for `calloc` (candle's `zeros`, every gradient buffer) with memset; otherwise it does so with
/// `madvise(MADV_DONTNEED)`, and every page faults back in (6.2 M minor faults and 8 s of system
/// time in 2 epochs of the demo's ZDC teacher; with it 7.5 k faults and 0.9 s). It also asks for
/// transparent huge pages where the kernel's mode is `madvise`. `_RJEM_MALLOC_CONF` overrides these.
#[cfg(all(unix, not(target_env = "musl")))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 47] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1,thp:always\0";

fn main() -> ExitCode {
    let cli = zdcflow::cli::Cli::parse();
    match zdcflow::commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
