//! `zdcflow inspect`: a file's format, complete validation and summary, as text or JSON.

use super::{Context, Report};
use crate::cli::InspectArgs;
use crate::diagnostics::inspect;
use crate::error::{Error, Result};

pub fn run(a: &InspectArgs, ctx: &Context) -> Result<Report> {
    let summary = inspect::inspect(&a.file, ctx.show_progress)?;
    if a.json {
        Ok(Report::line(serde_json::to_string_pretty(&summary).map_err(|e| Error::Invalid(e.to_string()))?))
    } else {
        Ok(Report::text(inspect::render(&summary)))
    }
}
