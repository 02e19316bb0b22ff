//! `zdcflow selftest`: this build's checks on the chosen device, one line each.

use super::{Context, Report};
use crate::cli::SelftestArgs;
use crate::diagnostics::selftest;
use crate::error::{Error, Result};

pub fn run(_: &SelftestArgs, ctx: &Context) -> Result<Report> {
    let device = ctx.device()?;
    let checks = selftest::run(device)?;
    let mut r = Report::default();
    for c in &checks {
        r.out(format!("{} {} — {}", if c.passed { "PASS" } else { "FAIL" }, c.name, c.detail));
    }
    let failed = checks.iter().filter(|c| !c.passed).count();
    if failed > 0 {
        let on = crate::device::describe(device);
        return Ok(r.fail_with(Error::Invalid(format!("selftest: {failed} check(s) failed on {on}"))));
    }
    r.out(format!("selftest: all {} checks passed on {}", checks.len(), crate::device::describe(device)));
    Ok(r)
}
