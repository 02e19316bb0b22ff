//! `zdcflow merge`: joins the shard files of a `sample --shard` job array into one file
//! ([`crate::sample::merge`]).

use super::{Context, Report};
use crate::cli::MergeArgs;
use crate::error::Result;
use crate::util::output_guard::{check_output, Input};

pub fn run(a: &MergeArgs, ctx: &Context) -> Result<Report> {
    let named: Vec<Input> = a.inputs.iter().map(|p| Input::File("shard", p)).collect();
    check_output(&a.output, "--output", &named)?;
    let n = crate::sample::merge::merge(&a.inputs, &a.output, ctx.show_progress)?;
    Ok(Report::line(format!("merged {} shards ({n} events) into {}", a.inputs.len(), a.output.display())))
}
