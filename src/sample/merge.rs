//! Shard merging: the shard files of a `sample --shard` job array joined into one file, in shard
//! order, with the job's attributes (`zdcflow merge`).

use std::path::{Path, PathBuf};

use super::parse_shard;
use crate::data::calo::CaloWriter;
use crate::data::h5;
use crate::data::open::DataFile;
use crate::data::zdc::{ZdcConditions, ZdcWriter};
use crate::error::{Error, Result};
use crate::util::progress;

/// The attributes that `sample` writes to describe how its events were generated: every shard
/// of one job has the same, and the merged file keeps them.
const JOB_ATTRS: [&str; 10] = [
    "generator",
    "model",
    "model_role",
    "seed",
    "selection",
    "precision",
    "source_file",
    "source_events",
    "photon_sum_source",
    "denoise",
];

/// One input of a merge: shard `index` of `of`, and the job it comes from ([`JOB_ATTRS`]).
struct Shard {
    index: usize,
    of: usize,
    job: Vec<Option<String>>,
    path: PathBuf,
}

/// Joins shard files (any order; their `shard` attributes order them) into `output`; returns the
/// events.
pub fn merge(inputs: &[PathBuf], output: &Path, show_progress: bool) -> Result<usize> {
    let mut shards = Vec::new();
    for p in inputs {
        let f = h5::open(p)?;
        let tag = h5::get_attr(&f, "shard")
            .ok_or_else(|| Error::format(p, "is not a shard (no 'shard' attribute from sample --shard)"))?;
        let (i, n) =
            parse_shard(&tag).map_err(|_| Error::format(p, format!("has an unreadable shard attribute '{tag}'")))?;
        let job = JOB_ATTRS.iter().map(|k| h5::get_attr(&f, k)).collect();
        shards.push(Shard { index: i, of: n, job, path: p.clone() });
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
    for s in &shards {
        if let Some(k) = (0..JOB_ATTRS.len()).find(|&k| s.job[k] != shards[0].job[k]) {
            let show = |v: &Option<String>| v.as_deref().map_or("(none)".to_string(), |v| format!("'{v}'"));
            return Err(Error::format(
                &s.path,
                format!(
                    "has {} {}, {} has {}: shards of different jobs",
                    JOB_ATTRS[k],
                    show(&s.job[k]),
                    shards[0].path.display(),
                    show(&shards[0].job[k])
                ),
            ));
        }
    }
    let files: Vec<DataFile> = shards.iter().map(|s| DataFile::open(&s.path)).collect::<Result<_>>()?;
    let total: usize = files.iter().map(|f| f.events()).sum();
    let pb = progress::bar(total as u64, "merging", "events", show_progress);
    let mut attrs: Vec<(&str, String)> =
        JOB_ATTRS.iter().zip(&shards[0].job).filter_map(|(k, v)| Some((*k, v.clone()?))).collect();
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
