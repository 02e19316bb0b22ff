//! Progress bars on stderr (hidden when `--quiet` or when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `what`; `unit` names a step ("events", "batches").
pub fn bar(len: u64, what: &str, unit: &str, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let template = format!("{{prefix:>12}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}} ({{elapsed}}, eta {{eta}})");
    pb.set_style(ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
    pb.set_prefix(what.to_string());
    pb
}
