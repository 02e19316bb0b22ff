//! CaloChallenge dataset 2/3 files: `incident_energies` (N, 1) and `showers` (N, voxels), MeV,
//! read and written by row ranges so that a 16 GB dataset-3 file never has to fit in memory.
//! Files we write keep the official names, shapes and float32 dtype (they open unchanged in the
//! official h5py-based evaluation).

use std::path::{Path, PathBuf};

use hdf5::{Dataset, File};

use super::check::check_energies;
use super::geometry::CaloGeometry;
use super::h5::{self, Matrix};
use crate::error::{Error, Result};

pub const E_INC: &str = "incident_energies";
pub const SHOWERS: &str = "showers";

/// Fraction of the shower energy seen by the silicon; the files store visible energy divided by it.
pub const SAMPLING_FRACTION: f64 = 0.033;
/// The official 0.5 keV readout threshold on visible energy, in file units (≈ 15.15 keV): what
/// the synthetic readout zeroes and what the evaluation (`evaluate.py`) thresholds at.
pub const READOUT_THRESHOLD_MEV: f64 = 0.5e-3 / SAMPLING_FRACTION;

/// Bytes of showers read per chunk by default (bounds memory when streaming).
pub const CHUNK_BYTES: usize = 64 << 20;

/// A block of consecutive events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CaloChunk {
    /// MeV, one per event.
    pub incident_energies: Vec<f32>,
    /// MeV, `events × voxels`, row-major.
    pub showers: Vec<f32>,
}

impl CaloChunk {
    pub fn len(&self) -> usize {
        self.incident_energies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.incident_energies.is_empty()
    }
}

/// An open, shape-checked CaloChallenge file.
pub struct CaloFile {
    pub path: PathBuf,
    pub geometry: CaloGeometry,
    pub events: usize,
    e_inc: Matrix,
    showers: Matrix,
    /// The whole file, once [`CaloFile::cache_if_at_most`] has read it.
    cache: Option<CaloChunk>,
    // Keeps the file open for the datasets.
    _file: File,
}

/// Whether an open HDF5 file has the CaloChallenge datasets.
pub fn is_calo(file: &File) -> bool {
    h5::has_dataset(file, E_INC) && h5::has_dataset(file, SHOWERS)
}

impl CaloFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = h5::open(path)?;
        Self::from_file(file, path)
    }

    pub fn from_file(file: File, path: &Path) -> Result<Self> {
        let e_inc = Matrix::open(&file, path, E_INC, &[1, 2], true)?;
        let showers = Matrix::open(&file, path, SHOWERS, &[2], true)?;
        if e_inc.cols != 1 {
            return Err(Error::data(path, E_INC, format!("has shape {:?}; expected (N, 1)", e_inc.shape)));
        }
        let geometry = CaloGeometry::from_voxels(showers.cols).ok_or_else(|| {
            Error::data(
                path,
                SHOWERS,
                format!("has {} values per event; CaloChallenge dataset 2 has 6480, dataset 3 has 40500", showers.cols),
            )
        })?;
        if e_inc.rows != showers.rows {
            return Err(Error::data(
                path,
                SHOWERS,
                format!("has {} events but '{E_INC}' has {}", showers.rows, e_inc.rows),
            ));
        }
        if showers.rows == 0 {
            return Err(Error::data(path, SHOWERS, "holds no events"));
        }
        Ok(Self { path: path.to_path_buf(), geometry, events: showers.rows, e_inc, showers, cache: None, _file: file })
    }

    /// Reads (and checks) the whole file into memory when its showers take at most `bytes`, so
    /// that training epochs need not read and decompress it again. Returns whether it did.
    pub fn cache_if_at_most(&mut self, bytes: usize) -> Result<bool> {
        if self.cache.is_some() {
            return Ok(true);
        }
        if self.events * self.geometry.voxels() * 4 > bytes {
            return Ok(false);
        }
        let mut all = CaloChunk::default();
        for chunk in self.chunks(self.default_chunk_events()) {
            let (_, c) = chunk?;
            all.incident_energies.extend(c.incident_energies);
            all.showers.extend(c.showers);
        }
        self.cache = Some(all);
        Ok(true)
    }

    /// Events per streaming chunk of about [`CHUNK_BYTES`].
    pub fn default_chunk_events(&self) -> usize {
        (CHUNK_BYTES / (4 * self.geometry.voxels())).max(1)
    }

    /// Events `[start, end)`, checked: finite, energies ≥ 0, incident energies > 0.
    pub fn read(&self, start: usize, end: usize) -> Result<CaloChunk> {
        let end = end.min(self.events);
        if let Some(c) = &self.cache {
            let v = self.geometry.voxels();
            return Ok(CaloChunk {
                incident_energies: c.incident_energies[start..end].to_vec(),
                showers: c.showers[start * v..end * v].to_vec(),
            });
        }
        let incident_energies = self.e_inc.read_rows_f32(start, end)?;
        let showers = self.showers.read_rows_f32(start, end)?;
        check_incident(&self.path, &incident_energies, start)?;
        check_energies(&self.path, SHOWERS, &showers, self.geometry.voxels(), start)?;
        Ok(CaloChunk { incident_energies, showers })
    }

    /// The (ascending) events `indices`, reading covering row ranges.
    pub fn read_at(&self, indices: &[usize]) -> Result<CaloChunk> {
        let v = self.geometry.voxels();
        let mut out = CaloChunk::default();
        for run in h5::covering_runs(indices, 16) {
            let start = indices[run.start];
            let block = self.read(start, indices[run.end - 1] + 1)?;
            for &k in &indices[run] {
                out.incident_energies.push(block.incident_energies[k - start]);
                out.showers.extend_from_slice(&block.showers[(k - start) * v..(k - start + 1) * v]);
            }
        }
        Ok(out)
    }

    /// Only the incident energies (small), checked.
    pub fn read_incident_energies(&self) -> Result<Vec<f32>> {
        let e = self.e_inc.read_rows_f32(0, self.events)?;
        check_incident(&self.path, &e, 0)?;
        Ok(e)
    }

    /// Iterates over the file in chunks of `chunk` events: `(first event, chunk)`.
    pub fn chunks(&self, chunk: usize) -> impl Iterator<Item = Result<(usize, CaloChunk)>> + '_ {
        let chunk = chunk.max(1);
        (0..self.events).step_by(chunk).map(move |s| self.read(s, s + chunk).map(|c| (s, c)))
    }
}

fn check_incident(path: &Path, e: &[f32], first: usize) -> Result<()> {
    if let Some((i, v)) = e.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v > 0.0)) {
        return Err(Error::data(
            path,
            E_INC,
            format!("event {} has incident energy {v}; must be finite and > 0", first + i),
        ));
    }
    Ok(())
}

/// Writes a CaloChallenge file sequentially, chunk by chunk, through a temporary file that is
/// renamed into place by [`CaloWriter::finish`].
pub struct CaloWriter {
    out: h5::TempH5,
    e_inc: Dataset,
    showers: Dataset,
    geometry: CaloGeometry,
    events: usize,
    written: usize,
}

impl CaloWriter {
    /// `gzip`: compression level 0–9 (0: none; see [`h5::DEFAULT_GZIP`]).
    pub fn create(
        path: &Path,
        geometry: &CaloGeometry,
        events: usize,
        attrs: &[(&str, String)],
        gzip: u8,
    ) -> Result<Self> {
        let out = h5::TempH5::create(path)?;
        let e_inc = h5::create_f32(out.file(), path, E_INC, &[events, 1], gzip)?;
        let showers = h5::create_f32(out.file(), path, SHOWERS, &[events, geometry.voxels()], gzip)?;
        for (k, v) in attrs {
            h5::set_attr(out.file(), path, k, v)?;
        }
        Ok(Self { out, e_inc, showers, geometry: geometry.clone(), events, written: 0 })
    }

    pub fn write(&mut self, chunk: &CaloChunk) -> Result<()> {
        let n = chunk.len();
        let path = &self.out.path;
        if chunk.showers.len() != n * self.geometry.voxels() || self.written + n > self.events {
            return Err(Error::Invalid(format!("{}: chunk of {n} events does not fit", path.display())));
        }
        h5::write_rows_f32(&self.e_inc, path, self.written, &chunk.incident_energies)?;
        h5::write_rows_f32(&self.showers, path, self.written, &chunk.showers)?;
        self.written += n;
        Ok(())
    }

    pub fn finish(self) -> Result<()> {
        if self.written != self.events {
            let path = self.out.path.display();
            return Err(Error::Invalid(format!("{path}: {} of {} events written", self.written, self.events)));
        }
        drop(self.e_inc);
        drop(self.showers);
        self.out.commit()
    }
}
