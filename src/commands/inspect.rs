//! `zdcflow inspect`: a file's format, complete validation and summary, as text or JSON.

use super::Globals;
use crate::cli::InspectArgs;
use crate::diagnostics::inspect;
use crate::error::{Error, Result};

pub fn run(a: &InspectArgs, g: &Globals) -> Result<()> {
    let summary = inspect::inspect(&a.file, g.show_progress)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| Error::Invalid(e.to_string()))?);
    } else {
        print!("{}", inspect::render(&summary));
    }
    Ok(())
}
