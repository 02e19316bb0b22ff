//! `zdcflow selftest`: this build's checks on the chosen device, one line each.

use super::Globals;
use crate::diagnostics::selftest;
use crate::error::{Error, Result};

pub fn run(g: &Globals) -> Result<()> {
    let device = crate::device::open(&g.device)?;
    let checks = selftest::run(&device)?;
    for c in &checks {
        println!("{} {} — {}", if c.passed { "PASS" } else { "FAIL" }, c.name, c.detail);
    }
    let failed = checks.iter().filter(|c| !c.passed).count();
    if failed > 0 {
        return Err(Error::Invalid(format!(
            "selftest: {failed} check(s) failed on {}",
            crate::device::describe(&device)
        )));
    }
    println!("selftest: all {} checks passed on {}", checks.len(), crate::device::describe(&device));
    Ok(())
}
