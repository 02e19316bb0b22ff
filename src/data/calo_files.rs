//! Several CaloChallenge files of one dataset read as one: event `i` of the union is event
//! `i − start(k)` of file `k`, the files in the order given. The iCaloFlow paper trains dataset 3
//! on `dataset_3_1.hdf5` and `dataset_3_2.hdf5` together (100 000 showers, one split over both);
//! its Flow-3 visits the files one after the other ([`CaloFiles::by_file`] gives each file's share
//! of a split).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::calo::{CaloChunk, CaloFile};
use super::geometry::CaloGeometry;
use crate::error::{Error, Result};

/// One file of a multi-file training set, as recorded in model.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: PathBuf,
    pub events: usize,
}

/// Open CaloChallenge files of the same geometry, addressed by one event index.
pub struct CaloFiles {
    pub files: Vec<CaloFile>,
    /// First union index of each file, and the total at the end (`files.len() + 1` entries).
    starts: Vec<usize>,
    pub geometry: CaloGeometry,
    pub events: usize,
}

impl CaloFiles {
    /// Opens `paths` (at least one); all must hold the same dataset.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        for p in paths {
            files.push(CaloFile::open(p)?);
        }
        Self::new(files)
    }

    pub fn new(files: Vec<CaloFile>) -> Result<Self> {
        let first = files.first().ok_or_else(|| Error::config("data.paths", "names no file"))?;
        let geometry = first.geometry.clone();
        for f in &files[1..] {
            if f.geometry.dataset != geometry.dataset || f.geometry.voxels() != geometry.voxels() {
                return Err(Error::format(
                    &f.path,
                    format!(
                        "holds dataset {} ({} voxels) but {} holds dataset {} ({} voxels); data.paths must be files of one dataset",
                        f.geometry.dataset,
                        f.geometry.voxels(),
                        first.path.display(),
                        geometry.dataset,
                        geometry.voxels()
                    ),
                ));
            }
        }
        let mut starts = vec![0];
        for f in &files {
            starts.push(starts.last().copied().unwrap_or(0) + f.events);
        }
        let events = *starts.last().expect("one entry at least");
        Ok(Self { files, starts, geometry, events })
    }

    /// Reads every file into memory once when the union holds at most `bytes` of voxel energies.
    pub fn cache_if_at_most(&mut self, bytes: usize) -> Result<bool> {
        if self.events * self.geometry.voxels() * 4 > bytes {
            return Ok(false);
        }
        for f in &mut self.files {
            f.cache_if_at_most(bytes)?;
        }
        Ok(true)
    }

    /// The file holding union event `i`, and its index there.
    pub fn locate(&self, i: usize) -> (usize, usize) {
        let k = self.starts.partition_point(|&s| s <= i).saturating_sub(1).min(self.files.len() - 1);
        (k, i - self.starts[k])
    }

    /// The path of the file holding union event `i`.
    pub fn path_of(&self, i: usize) -> &Path {
        &self.files[self.locate(i).0].path
    }

    /// The (ascending) union events `indices`, in that order.
    pub fn read_at(&self, indices: &[usize]) -> Result<CaloChunk> {
        if self.files.len() == 1 {
            return self.files[0].read_at(indices);
        }
        let mut out = CaloChunk::default();
        let mut i = 0;
        while i < indices.len() {
            let (k, _) = self.locate(indices[i]);
            let end = indices[i..].iter().position(|&e| self.locate(e).0 != k).map_or(indices.len(), |p| i + p);
            let local: Vec<usize> = indices[i..end].iter().map(|&e| e - self.starts[k]).collect();
            let part = self.files[k].read_at(&local)?;
            out.incident_energies.extend_from_slice(&part.incident_energies);
            out.showers.extend_from_slice(&part.showers);
            i = end;
        }
        Ok(out)
    }

    /// `events` (union indices) split by file, each part in the order given.
    pub fn by_file(&self, events: &[usize]) -> Vec<Vec<usize>> {
        let mut parts = vec![Vec::new(); self.files.len()];
        for &e in events {
            parts[self.locate(e).0].push(e);
        }
        parts
    }

    /// Path and size of every file.
    pub fn infos(&self) -> Vec<FileInfo> {
        self.files.iter().map(|f| FileInfo { path: f.path.clone(), events: f.events }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::calo::CaloWriter;

    fn write(path: &Path, first: f32, events: usize) {
        let g = CaloGeometry::ds2();
        let voxels = g.voxels();
        let mut w = CaloWriter::create(path, &g, events, &[], 0).unwrap();
        let chunk = CaloChunk {
            incident_energies: (0..events).map(|i| first + i as f32).collect(),
            showers: vec![1.0; events * voxels],
        };
        w.write(&chunk).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn union_events_come_from_the_right_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.h5"), dir.path().join("b.h5"));
        write(&a, 1000.0, 3);
        write(&b, 5000.0, 4);
        let files = CaloFiles::open(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(files.events, 7);
        assert_eq!(files.locate(2), (0, 2));
        assert_eq!(files.locate(3), (1, 0));
        assert_eq!(files.locate(6), (1, 3));
        assert_eq!(files.path_of(4), b.as_path());
        let chunk = files.read_at(&[1, 2, 3, 6]).unwrap();
        assert_eq!(chunk.incident_energies, vec![1001.0, 1002.0, 5000.0, 5003.0]);
        assert_eq!(files.by_file(&[6, 0, 4, 2]), vec![vec![0, 2], vec![6, 4]]);
    }
}
