//! Log-densities of detector responses under a model, with the Jacobian of the preprocessing, so
//! that each number is a log-density of the detector's own quantities (voxel energies in MeV,
//! photon counts): [`calo`] (Flow-1 · Flow-2 · ∏ Flow-3) and [`zdc`] (the image flow).
//! `zdcflow log-prob` writes them.

pub(crate) mod calo;
pub(crate) mod zdc;

use std::path::Path;

use crate::data::h5;
use crate::error::{Error, Result};

/// A file's scores: named per-event datasets, `log_prob` first, the noise scale of the
/// preprocessing (its attribute name and value) and what `log_prob` is.
pub struct LogProbs {
    pub datasets: Vec<(&'static str, Vec<f64>)>,
    pub noise: (&'static str, f64),
    /// [`calo::DEFINITION`] or [`zdc::DEFINITION`].
    pub definition: &'static str,
}

impl LogProbs {
    /// Writes `output` (through a temporary file): the datasets, the definition and what the
    /// numbers were computed from (the model, the events file and the noise's seed).
    pub fn write(&self, output: &Path, model: &Path, showers: &Path, seed: u64) -> Result<()> {
        let out = h5::TempH5::create(output)?;
        let f = out.file();
        for (name, values) in &self.datasets {
            f.new_dataset::<f64>()
                .shape(vec![values.len()])
                .create(*name)
                .and_then(|ds| ds.write(&ndarray::ArrayView1::from(values)))
                .map_err(|e| Error::data(output, name, format!("cannot write: {e}")))?;
        }
        h5::set_attr(f, output, "definition", self.definition)?;
        h5::set_attr(f, output, "model", &model.display().to_string())?;
        h5::set_attr(f, output, "showers", &showers.display().to_string())?;
        h5::set_attr(f, output, "seed", &seed.to_string())?;
        h5::set_attr(f, output, self.noise.0, &self.noise.1.to_string())?;
        out.commit()
    }

    /// Each event's log-density.
    pub fn log_prob(&self) -> &[f64] {
        &self.datasets[0].1
    }

    /// The mean log-density (0 of no events).
    pub fn mean(&self) -> f64 {
        let lp = self.log_prob();
        lp.iter().sum::<f64>() / lp.len().max(1) as f64
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// log|det| of a square matrix by Gaussian elimination with partial pivoting.
    pub(crate) fn log_abs_det(mut m: Vec<Vec<f64>>) -> f64 {
        let n = m.len();
        let mut s = 0.0;
        for c in 0..n {
            let p = (c..n).max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs())).unwrap();
            m.swap(c, p);
            s += m[c][c].abs().ln();
            let pivot = m[c].clone();
            for row in m.iter_mut().skip(c + 1) {
                let f = row[c] / pivot[c];
                row.iter_mut().zip(&pivot).skip(c).for_each(|(x, p)| *x -= f * p);
            }
        }
        s
    }
}
