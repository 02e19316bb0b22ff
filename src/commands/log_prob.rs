//! `zdcflow log-prob --model DIR --showers FILE.h5 --output LP.h5`: each shower's (CaloChallenge)
//! or response's (ZDC) log-density under a model, computed by [`crate::models::log_prob`], written
//! with its definition ([`LOG_PROB_DEFINITION`], [`ZDC_LOG_PROB_DEFINITION`]) and what the numbers
//! were computed from.

use std::path::Path;

use candle_core::Device;

use crate::cli::{LogProbArgs, LOG_PROB_DEFINITION, ZDC_LOG_PROB_DEFINITION};
use crate::error::{Error, Result};
use crate::models::log_prob;
use crate::models::manifest::Manifest;

/// Writes `--output` (through a temporary file): the datasets, the definition and what the numbers
/// were computed from (model, events file, seed and the noise scale `noise`).
fn write_output(a: &LogProbArgs, datasets: &[(&str, Vec<f64>)], definition: &str, noise: (&str, f64)) -> Result<()> {
    let out = crate::data::h5::TempH5::create(&a.output)?;
    let (f, p) = (out.file(), &a.output);
    for (name, values) in datasets {
        write_f64(f, p, name, values)?;
    }
    crate::data::h5::set_attr(f, p, "definition", definition)?;
    crate::data::h5::set_attr(f, p, "model", &a.model.display().to_string())?;
    crate::data::h5::set_attr(f, p, "showers", &a.showers.display().to_string())?;
    crate::data::h5::set_attr(f, p, "seed", &a.seed.to_string())?;
    crate::data::h5::set_attr(f, p, noise.0, &noise.1.to_string())?;
    out.commit()
}

fn write_f64(file: &hdf5::File, path: &Path, name: &str, values: &[f64]) -> Result<()> {
    file.new_dataset::<f64>()
        .shape(vec![values.len()])
        .create(name)
        .and_then(|ds| ds.write(&ndarray::ArrayView1::from(values)))
        .map_err(|e| Error::data(path, name, format!("cannot write: {e}")))
}

/// Runs `log-prob`; returns (events scored, mean log_prob).
pub fn run(a: &LogProbArgs, device: &Device) -> Result<(usize, f64)> {
    use crate::util::output_guard::{check_output, Input};
    check_output(&a.output, "--output", &[Input::File("--showers", &a.showers), Input::ModelDir("--model", &a.model)])?;
    if a.batch_size == 0 {
        return Err(Error::Invalid("--batch-size must be ≥ 1".into()));
    }
    let m = Manifest::load(&a.model)?;
    let (scores, definition) = match m.detector.dataset() {
        Some(dataset) => (
            log_prob::calo::score_file(&a.model, &m, dataset, &a.showers, a.seed, a.batch_size, device)?,
            LOG_PROB_DEFINITION,
        ),
        None => (
            log_prob::zdc::score_file(&a.model, &m, &a.showers, a.seed, a.batch_size, device)?,
            ZDC_LOG_PROB_DEFINITION,
        ),
    };
    write_output(a, &scores.datasets, definition, scores.noise)?;
    Ok((scores.log_prob().len(), scores.mean()))
}
