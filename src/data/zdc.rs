//! ZDC data: the community's NumPy pairs and zdcflow's single-file HDF5 layout.
//!
//! npz pair: `data_<particle>_nonrandom_responses.npz` (key `arr_0`, (N, 44, 44) photon counts) and
//! its sibling `…_particles.npz` (key `arr_0`, (N, 10): energy, px, py, pz, x, y, z, mass, charge,
//! PDG code; some files add the photon sum as an 11th column). npz files cannot be streamed, so a
//! pair is read whole.
//!
//! zdcflow HDF5 (written by `generate zdc` and `sample`):
//! - `responses`  float32 (N, 44, 44) photon counts
//! - `particles`  float32 (N, 9): energy [GeV], px, py, pz [GeV], x, y, z [cm], mass [GeV], charge
//! - `pdg`        int32 (N,) PDG code
//! - `photon_sum` float32 (N,) sum of each response
//! - root attribute `format = "zdcflow-zdc"`; responses are read by row ranges.

use std::path::{Path, PathBuf};

use hdf5::{Dataset, File};

use super::channels::PIXELS;
use super::check::check_photon_counts;
use super::h5::{self, Matrix};
use crate::error::{Error, Result};

pub const RESPONSES: &str = "responses";
pub const PARTICLES: &str = "particles";
pub const PDG: &str = "pdg";
pub const PHOTON_SUM: &str = "photon_sum";
/// Generated files: the row of the conditions file each response was conditioned on.
pub const SOURCE_INDEX: &str = "source_index";
pub const FORMAT_ATTR: &str = "format";
pub const FORMAT_NAME: &str = "zdcflow-zdc";
/// Particle features per event: energy, px, py, pz, x, y, z, mass, charge.
pub const FEATURES: usize = 9;
pub const FEATURE_NAMES: [&str; FEATURES] = ["energy", "px", "py", "pz", "x", "y", "z", "mass", "charge"];

/// The per-event conditions of a ZDC file (small: read whole).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ZdcConditions {
    /// `events × 9`, row-major.
    pub particles: Vec<f32>,
    pub pdg: Vec<i32>,
    pub photon_sum: Vec<f32>,
}

impl ZdcConditions {
    pub fn len(&self) -> usize {
        self.pdg.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pdg.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.particles[i * FEATURES..(i + 1) * FEATURES]
    }

    /// The rows `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Self {
        Self {
            particles: indices.iter().flat_map(|&i| self.row(i).iter().copied()).collect(),
            pdg: indices.iter().map(|&i| self.pdg[i]).collect(),
            photon_sum: indices.iter().map(|&i| self.photon_sum[i]).collect(),
        }
    }
}

/// Rows of the conditions file a generated file was conditioned on, with that file's event count.
pub struct SourceRows {
    pub index: Vec<usize>,
    pub source_events: usize,
}

enum Responses {
    Hdf5 { matrix: Matrix, _file: File },
    InMemory(Vec<f32>),
}

/// An open, validated ZDC data set (HDF5 or npz pair).
pub struct ZdcFile {
    pub path: PathBuf,
    pub events: usize,
    pub conditions: ZdcConditions,
    /// Set on files written by `sample`.
    pub source: Option<SourceRows>,
    responses: Responses,
}

/// Whether an open HDF5 file has the zdcflow ZDC layout.
pub fn is_zdc(file: &File) -> bool {
    h5::has_dataset(file, RESPONSES)
}

/// Whether `path` names a ZDC npz responses file.
pub fn is_npz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

/// `…responses.npz` → `…particles.npz` (the last occurrence of "responses" in the file name).
pub fn npz_sibling(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let at = name.rfind("responses")?;
    Some(path.with_file_name(format!("{}particles{}", &name[..at], &name[at + "responses".len()..])))
}

impl ZdcFile {
    pub fn open(path: &Path) -> Result<Self> {
        if is_npz(path) {
            return Self::open_npz(path);
        }
        let file = h5::open(path)?;
        Self::from_file(file, path)
    }

    pub fn from_file(file: File, path: &Path) -> Result<Self> {
        let responses = Matrix::open(&file, path, RESPONSES, &[2, 3], false)?;
        if responses.cols != PIXELS {
            return Err(Error::data(path, RESPONSES, format!("has shape {:?}; expected (N, 44, 44)", responses.shape)));
        }
        let n = responses.rows;
        if n == 0 {
            return Err(Error::data(path, RESPONSES, "holds no events"));
        }
        let particles = Matrix::open(&file, path, PARTICLES, &[2], false)?;
        if particles.cols != FEATURES || particles.rows != n {
            return Err(Error::data(
                path,
                PARTICLES,
                format!("has shape {:?}; expected ({n}, {FEATURES}) to match '{RESPONSES}'", particles.shape),
            ));
        }
        let pdg = Matrix::open(&file, path, PDG, &[1], false)?;
        if pdg.rows != n {
            return Err(Error::data(path, PDG, format!("has {} entries; '{RESPONSES}' has {n}", pdg.rows)));
        }
        // The conditions of every event are held in memory (the responses are streamed).
        crate::util::limits::check_memory_for(path, &format!("the conditions of {n} events"), n as f64 * 96.0)?;
        let particles = particles.read_rows_f32(0, n)?;
        let pdg = pdg.read_rows_i64(0, n)?.into_iter().map(|v| v as i32).collect();
        let matrix = responses;
        let photon_sum = if h5::has_dataset(&file, PHOTON_SUM) {
            let s = Matrix::open(&file, path, PHOTON_SUM, &[1], false)?;
            if s.rows != n {
                return Err(Error::data(path, PHOTON_SUM, format!("has {} entries; '{RESPONSES}' has {n}", s.rows)));
            }
            s.read_rows_f32(0, n)?
        } else {
            sums_by_streaming(&matrix, path)?
        };
        let conditions = ZdcConditions { particles, pdg, photon_sum };
        check_conditions(path, &conditions)?;
        let source = read_source_rows(&file, path, n)?;
        Ok(Self {
            path: path.to_path_buf(),
            events: n,
            conditions,
            source,
            responses: Responses::Hdf5 { matrix, _file: file },
        })
    }

    fn open_npz(path: &Path) -> Result<Self> {
        let sibling = npz_sibling(path).ok_or_else(|| {
            Error::format(
                path,
                "a ZDC npz path must name the …responses.npz file (its …particles.npz sibling is read too)",
            )
        })?;
        if !sibling.exists() {
            return Err(Error::format(path, format!("its particles file {} is missing", sibling.display())));
        }
        let (shape, responses) = read_npz_f32(path)?;
        if shape.len() < 2 || shape.iter().skip(1).product::<usize>() != PIXELS {
            return Err(Error::data(path, "arr_0", format!("has shape {shape:?}; expected (N, 44, 44)")));
        }
        let n = shape[0];
        if n == 0 {
            return Err(Error::data(path, "arr_0", "holds no events"));
        }
        check_photon_counts(path, "arr_0", &responses, PIXELS, 0)?;
        let (pshape, table) = read_npz_f32(&sibling)?;
        if pshape.len() != 2 || pshape[0] != n || !(pshape[1] == FEATURES + 1 || pshape[1] == FEATURES + 2) {
            return Err(Error::data(
                &sibling,
                "arr_0",
                format!("has shape {pshape:?}; expected ({n}, 10) or ({n}, 11): 9 features, PDG code[, photon sum]"),
            ));
        }
        let cols = pshape[1];
        let mut particles = Vec::with_capacity(n * FEATURES);
        let mut pdg = Vec::with_capacity(n);
        for (i, row) in table.chunks(cols).enumerate() {
            particles.extend_from_slice(&row[..FEATURES]);
            let code = row[FEATURES];
            if code.fract() != 0.0 || !code.is_finite() {
                return Err(Error::data(&sibling, "arr_0", format!("row {i}: PDG code {code} is not an integer")));
            }
            pdg.push(code as i32);
        }
        let photon_sum = if cols == FEATURES + 2 {
            table.chunks(cols).map(|r| r[FEATURES + 1]).collect()
        } else {
            responses.chunks(PIXELS).map(|r| r.iter().sum()).collect()
        };
        let conditions = ZdcConditions { particles, pdg, photon_sum };
        check_conditions(&sibling, &conditions)?;
        Ok(Self {
            path: path.to_path_buf(),
            events: n,
            conditions,
            source: None,
            responses: Responses::InMemory(responses),
        })
    }

    /// Reads (and checks) every response into memory when they take at most `bytes`, so that
    /// training epochs need not read and decompress the file again. Returns whether it did.
    pub fn cache_if_at_most(&mut self, bytes: usize) -> Result<bool> {
        if matches!(self.responses, Responses::InMemory(_)) {
            return Ok(true);
        }
        if self.events * PIXELS * 4 > bytes {
            return Ok(false);
        }
        let all = self.read_responses(0, self.events)?;
        self.responses = Responses::InMemory(all);
        Ok(true)
    }

    /// Responses of events `[start, end)` as `n × 1936` photon counts, checked.
    pub fn read_responses(&self, start: usize, end: usize) -> Result<Vec<f32>> {
        let end = end.min(self.events);
        match &self.responses {
            Responses::InMemory(v) => Ok(v[start * PIXELS..end * PIXELS].to_vec()),
            Responses::Hdf5 { matrix, .. } => {
                let v = matrix.read_rows_f32(start, end)?;
                check_photon_counts(&self.path, RESPONSES, &v, PIXELS, start)?;
                Ok(v)
            }
        }
    }

    /// Responses of the (ascending) events `indices`, reading covering row ranges.
    pub fn read_responses_at(&self, indices: &[usize]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(indices.len() * PIXELS);
        for run in h5::covering_runs(indices, 64) {
            let start = indices[run.start];
            let block = self.read_responses(start, indices[run.end - 1] + 1)?;
            for &k in &indices[run] {
                out.extend_from_slice(&block[(k - start) * PIXELS..(k - start + 1) * PIXELS]);
            }
        }
        Ok(out)
    }
}

fn read_source_rows(file: &File, path: &Path, n: usize) -> Result<Option<SourceRows>> {
    if !h5::has_dataset(file, SOURCE_INDEX) {
        return Ok(None);
    }
    let m = Matrix::open(file, path, SOURCE_INDEX, &[1], false)?;
    let raw = m.read_rows_i64(0, n)?;
    let source_events = h5::get_attr(file, "source_events").and_then(|s| s.parse().ok()).unwrap_or(0);
    // A row outside the conditions file would pair events with the wrong reference rows.
    let outside = |v: i64| v < 0 || (source_events > 0 && v as u64 >= source_events as u64);
    if let Some(i) = raw.iter().position(|&v| outside(v)) {
        return Err(Error::data(
            path,
            SOURCE_INDEX,
            format!("event {i} names row {} of a conditions file of {source_events} events", raw[i]),
        ));
    }
    let index = raw.into_iter().map(|v| v as usize).collect();
    Ok(Some(SourceRows { index, source_events }))
}

fn sums_by_streaming(m: &Matrix, path: &Path) -> Result<Vec<f32>> {
    let step = 4096;
    let mut sums = Vec::with_capacity(m.rows);
    for s in (0..m.rows).step_by(step) {
        let e = (s + step).min(m.rows);
        let v = m.read_rows_f32(s, e)?;
        check_photon_counts(path, RESPONSES, &v, PIXELS, s)?;
        sums.extend(v.chunks(PIXELS).map(|r| r.iter().sum::<f32>()));
    }
    Ok(sums)
}

fn check_conditions(path: &Path, c: &ZdcConditions) -> Result<()> {
    if let Some(i) = c.particles.iter().position(|v| !v.is_finite()) {
        return Err(Error::data(path, PARTICLES, format!("event {} has a non-finite feature", i / FEATURES)));
    }
    if let Some(i) = c.particles.chunks(FEATURES).position(|r| r[0] < 0.0) {
        return Err(Error::data(
            path,
            PARTICLES,
            format!("event {i} has a negative energy ({})", c.particles[i * FEATURES]),
        ));
    }
    if let Some(i) = c.photon_sum.iter().position(|v| !v.is_finite() || *v < 0.0) {
        return Err(Error::data(path, PHOTON_SUM, format!("event {i} has photon sum {}", c.photon_sum[i])));
    }
    Ok(())
}

/// Reads the npy header of entry `key` and checks its declared shape against the bytes the entry
/// holds and against the memory budget, before ndarray-npy allocates the array.
fn check_npy_header(path: &Path, key: &str) -> Result<()> {
    let bad = |m: String| Error::data(path, key.trim_end_matches(".npy"), m);
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| Error::format(path, format!("not a readable npz file: {e}")))?;
    let name = if key.ends_with(".npy") { key.to_string() } else { format!("{key}.npy") };
    let mut entry = zip.by_name(&name).map_err(|e| bad(format!("unreadable: {e}")))?;
    let size = entry.size();
    crate::util::limits::check_npy_header(&mut entry, size, bad)
}

/// Reads `arr_0` of an npz file as f32, whatever numeric dtype it was saved with.
fn read_npz_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    use ndarray::ArrayD;
    use ndarray_npy::NpzReader;
    let open = || -> Result<NpzReader<std::fs::File>> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        NpzReader::new(f).map_err(|e| Error::format(path, format!("not a readable npz file: {e}")))
    };
    let names = open()?.names().map_err(|e| Error::format(path, format!("not a readable npz file: {e}")))?;
    let key = names
        .iter()
        .find(|n| n.trim_end_matches(".npy") == "arr_0")
        .cloned()
        .ok_or_else(|| Error::data(path, "arr_0", format!("missing (the archive holds {names:?})")))?;
    check_npy_header(path, &key)?;
    macro_rules! try_type {
        ($t:ty) => {
            if let Ok(a) = open()?.by_name::<ndarray::OwnedRepr<$t>, ndarray::IxDyn>(&key) {
                let a: ArrayD<$t> = a;
                let shape = a.shape().to_vec();
                return Ok((shape, a.iter().map(|&v| v as f32).collect()));
            }
        };
    }
    try_type!(f32);
    try_type!(f64);
    try_type!(i64);
    try_type!(i32);
    try_type!(i16);
    try_type!(u8);
    try_type!(u16);
    try_type!(u32);
    try_type!(u64);
    Err(Error::data(path, "arr_0", "is not a numeric array (or is stored in an unsupported layout)"))
}

/// Writes the zdcflow ZDC layout sequentially through a temporary file.
pub struct ZdcWriter {
    out: h5::TempH5,
    responses: Dataset,
    particles: Dataset,
    pdg: Dataset,
    photon_sum: Dataset,
    source_index: Option<Dataset>,
    events: usize,
    written: usize,
}

impl ZdcWriter {
    /// `with_source_index`: also write which conditions-file row each event came from.
    pub fn create(path: &Path, events: usize, attrs: &[(&str, String)], with_source_index: bool) -> Result<Self> {
        let out = h5::TempH5::create(path)?;
        let f = out.file();
        let responses = h5::create_f32(
            f,
            path,
            RESPONSES,
            &[events, super::channels::SIDE, super::channels::SIDE],
            h5::DEFAULT_GZIP,
        )?;
        let particles = h5::create_f32(f, path, PARTICLES, &[events, FEATURES], h5::DEFAULT_GZIP)?;
        let pdg = h5::create_i32(f, path, PDG, events)?;
        let photon_sum = h5::create_f32(f, path, PHOTON_SUM, &[events], h5::DEFAULT_GZIP)?;
        let source_index = if with_source_index { Some(h5::create_i32(f, path, SOURCE_INDEX, events)?) } else { None };
        h5::set_attr(f, path, FORMAT_ATTR, FORMAT_NAME)?;
        for (k, v) in attrs {
            h5::set_attr(f, path, k, v)?;
        }
        Ok(Self { out, responses, particles, pdg, photon_sum, source_index, events, written: 0 })
    }

    /// Appends events: responses `n × 1936`, with their conditions (photon sums computed here) and,
    /// if the file has them, their source rows.
    pub fn write(&mut self, responses: &[f32], conditions: &ZdcConditions, source: Option<&[usize]>) -> Result<()> {
        let sums: Vec<f32> = responses.chunks(PIXELS).map(|r| r.iter().sum()).collect();
        self.write_with_sums(responses, conditions, &sums, source)
    }

    /// Like [`Self::write`], with the `photon_sum` column given: generated files record the sum
    /// each response was conditioned on (the data's, or the one drawn from the photon-sum flow).
    pub fn write_with_sums(
        &mut self,
        responses: &[f32],
        conditions: &ZdcConditions,
        sums: &[f32],
        source: Option<&[usize]>,
    ) -> Result<()> {
        let n = conditions.len();
        let path = &self.out.path;
        if responses.len() != n * PIXELS
            || conditions.particles.len() != n * FEATURES
            || sums.len() != n
            || self.written + n > self.events
        {
            return Err(Error::Invalid(format!("{}: block of {n} events does not fit", path.display())));
        }
        h5::write_rows_f32(&self.responses, path, self.written, responses)?;
        h5::write_rows_f32(&self.particles, path, self.written, &conditions.particles)?;
        h5::write_rows_i32(&self.pdg, path, self.written, &conditions.pdg)?;
        h5::write_rows_f32(&self.photon_sum, path, self.written, sums)?;
        if let (Some(ds), Some(src)) = (&self.source_index, source) {
            let v: Vec<i32> = src.iter().map(|&i| i as i32).collect();
            h5::write_rows_i32(ds, path, self.written, &v)?;
        }
        self.written += n;
        Ok(())
    }

    /// Sets a file attribute (e.g. a summary known only once every event is written).
    pub fn set_attr(&self, key: &str, value: &str) -> Result<()> {
        h5::set_attr(self.out.file(), &self.out.path, key, value)
    }

    pub fn finish(self) -> Result<()> {
        if self.written != self.events {
            let path = self.out.path.display();
            return Err(Error::Invalid(format!("{path}: {} of {} events written", self.written, self.events)));
        }
        drop((self.responses, self.particles, self.pdg, self.photon_sum, self.source_index));
        self.out.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npz_sibling_swaps_responses_for_particles() {
        assert_eq!(
            npz_sibling(Path::new("/d/data_n_nonrandom_responses.npz")).unwrap(),
            PathBuf::from("/d/data_n_nonrandom_particles.npz")
        );
        assert!(npz_sibling(Path::new("/d/other.npz")).is_none());
    }
}
