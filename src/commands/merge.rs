//! `zdcflow merge`: joins the shard files of a `sample --shard` job array into one file.

use std::path::{Path, PathBuf};

use super::Globals;
use crate::cli::MergeArgs;
use crate::data::calo::CaloWriter;
use crate::data::h5;
use crate::data::open::DataFile;
use crate::data::zdc::{ZdcConditions, ZdcWriter};
use crate::error::{Error, Result};
use crate::sample::parse_shard;
use crate::util::progress;

pub fn run(a: &MergeArgs, g: &Globals) -> Result<()> {
    let n = merge(&a.inputs, &a.output, g.show_progress)?;
    println!("merged {} shards ({n} events) into {}", a.inputs.len(), a.output.display());
    Ok(())
}

/// One input of a merge: shard `index` of `of`, and the job it comes from (model, seed,
/// conditions file).
struct Shard {
    index: usize,
    of: usize,
    job: (Option<String>, Option<String>, Option<String>),
    path: PathBuf,
}

/// Joins shard files (any order; their `shard` attributes order them); returns the events.
fn merge(inputs: &[PathBuf], output: &Path, show_progress: bool) -> Result<usize> {
    let named: Vec<(&str, &Path)> = inputs.iter().map(|p| ("shard", p.as_path())).collect();
    crate::util::atomic::ensure_not_input(output, "--output", &named)?;
    let mut shards = Vec::new();
    for p in inputs {
        let f = h5::open(p)?;
        let tag = h5::get_attr(&f, "shard")
            .ok_or_else(|| Error::format(p, "is not a shard (no 'shard' attribute from sample --shard)"))?;
        let (i, n) =
            parse_shard(&tag).map_err(|_| Error::format(p, format!("has an unreadable shard attribute '{tag}'")))?;
        let key = (h5::get_attr(&f, "model"), h5::get_attr(&f, "seed"), h5::get_attr(&f, "source_file"));
        shards.push(Shard { index: i, of: n, job: key, path: p.clone() });
    }
    shards.sort_by_key(|s| s.index);
    let n = shards[0].of;
    if let Some(s) = shards.iter().find(|s| s.of != n) {
        return Err(Error::format(
            &s.path,
            format!(
                "is shard {}/{} but {} is shard {}/{n}: shards of different jobs (another --shard N)",
                s.index,
                s.of,
                shards[0].path.display(),
                shards[0].index
            ),
        ));
    }
    let have: Vec<usize> = shards.iter().map(|s| s.index).collect();
    if let Some(w) = have.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::Invalid(format!("merge: shard {}/{n} is given twice", w[0])));
    }
    if have != (1..=n).collect::<Vec<_>>() {
        let missing: Vec<String> = (1..=n).filter(|i| !have.contains(i)).map(|i| format!("{i}/{n}")).collect();
        return Err(Error::Invalid(format!("merge needs shards 1..{n} of one job; missing {}", missing.join(", "))));
    }
    if let Some(s) = shards.iter().find(|s| s.job != shards[0].job) {
        return Err(Error::format(&s.path, "comes from another model, seed or conditions file than the first shard"));
    }
    let files: Vec<DataFile> = shards.iter().map(|s| DataFile::open(&s.path)).collect::<Result<_>>()?;
    let total: usize = files.iter().map(|f| f.events()).sum();
    let pb = progress::bar(total as u64, "merging", "events", show_progress);
    let first = h5::open(&shards[0].path)?;
    let mut attrs: Vec<(&str, String)> = Vec::new();
    for k in [
        "generator",
        "model",
        "model_role",
        "seed",
        "selection",
        "source_file",
        "source_events",
        "photon_sum_source",
        "denoise",
    ] {
        if let Some(v) = h5::get_attr(&first, k) {
            attrs.push((k, v));
        }
    }
    attrs.push(("merged_shards", n.to_string()));
    match &files[0] {
        DataFile::Calo(c) => {
            let mut w = CaloWriter::create(output, &c.geometry, total, &attrs, h5::DEFAULT_GZIP)?;
            for f in &files {
                let DataFile::Calo(f) = f else { return Err(Error::Invalid("shards of different formats".into())) };
                for chunk in f.chunks(f.default_chunk_events()) {
                    let (_, c) = chunk?;
                    pb.inc(c.len() as u64);
                    w.write(&c)?;
                }
            }
            w.finish()?;
        }
        DataFile::Zdc(_) => {
            let mut w = ZdcWriter::create(output, total, &attrs, true)?;
            for f in &files {
                let DataFile::Zdc(f) = f else { return Err(Error::Invalid("shards of different formats".into())) };
                let step = 4096;
                for s in (0..f.events).step_by(step) {
                    let e = (s + step).min(f.events);
                    let rows: Vec<usize> = (s..e).collect();
                    let cond: ZdcConditions = f.conditions.select(&rows);
                    let src: Option<Vec<usize>> = f.source.as_ref().map(|src| src.index[s..e].to_vec());
                    w.write_with_sums(&f.read_responses(s, e)?, &cond, &cond.photon_sum, src.as_deref())?;
                    pb.inc((e - s) as u64);
                }
            }
            w.finish()?;
        }
    }
    pb.finish_and_clear();
    Ok(total)
}
