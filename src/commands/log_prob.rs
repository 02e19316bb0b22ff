//! `zdcflow log-prob --model DIR --showers FILE.h5 --output LP.h5`: each shower's (CaloChallenge)
//! or response's (ZDC) log-density under a model, computed by [`crate::models::log_prob`] and
//! written there with its definition and what the numbers were computed from.

use super::{Context, Report};
use crate::cli::LogProbArgs;
use crate::error::{Error, Result};
use crate::models::log_prob;
use crate::models::manifest::Manifest;
use crate::util::output_guard::{check_output, Input};

pub fn run(a: &LogProbArgs, ctx: &Context) -> Result<Report> {
    let device = ctx.device()?;
    check_output(&a.output, "--output", &[Input::File("--showers", &a.showers), Input::ModelDir("--model", &a.model)])?;
    if a.batch_size == 0 {
        return Err(Error::Invalid("--batch-size must be ≥ 1".into()));
    }
    let m = Manifest::load(&a.model)?;
    let scores = match m.detector.dataset() {
        Some(dataset) => log_prob::calo::score_file(&a.model, &m, dataset, &a.showers, a.seed, a.batch_size, device)?,
        None => log_prob::zdc::score_file(&a.model, &m, &a.showers, a.seed, a.batch_size, device)?,
    };
    scores.write(&a.output, &a.model, &a.showers, a.seed)?;
    let (n, mean) = (scores.log_prob().len(), scores.mean());
    Ok(Report::line(format!("log-prob: {n} events, mean log_prob {mean:.3} → {}", a.output.display())))
}
