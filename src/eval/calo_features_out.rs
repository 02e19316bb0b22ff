//! `evaluate --features-out F.h5`: the per-shower high-level features of both files, under the
//! attribute names of CaloChallenge's `HighLevelFeatures.py` (after `evaluate.py`'s threshold):
//! groups `reference` and `generated`, each with `Einc`, `E_tot` (n) and `E_layers`, `EC_etas`,
//! `EC_phis`, `width_etas`, `width_phis`, `sparsity`, `EC_r`, `width_r` (n × 45, column l =
//! layer l), float64, MeV and mm.

use std::path::Path;

use hdf5::Group;
use ndarray::{Array1, Array2};

use super::calo_features::CaloFeatures;
use crate::data::geometry::LAYERS;
use crate::data::h5::TempH5;
use crate::error::{Error, Result};

fn err(path: &Path, what: &str, e: hdf5::Error) -> Error {
    Error::Hdf5 { path: path.to_path_buf(), msg: format!("cannot write {what}: {e}") }
}

fn write_group(g: &Group, path: &Path, f: &CaloFeatures) -> Result<()> {
    let vector = |name: &str, v: &[f64]| -> Result<()> {
        g.new_dataset_builder()
            .with_data(&Array1::from(v.to_vec()))
            .create(name)
            .map(|_| ())
            .map_err(|e| err(path, name, e))
    };
    vector("Einc", &f.e_inc)?;
    vector("E_tot", &f.e_total)?;
    for (name, rows) in [
        ("E_layers", &f.layer_energy),
        ("EC_etas", &f.centre_x),
        ("EC_phis", &f.centre_y),
        ("width_etas", &f.width_x),
        ("width_phis", &f.width_y),
        ("sparsity", &f.sparsity),
        ("EC_r", &f.centre_r),
        ("width_r", &f.width_r),
    ] {
        let m =
            Array2::from_shape_vec((rows.len(), LAYERS), rows.iter().flatten().copied().collect()).expect("n × layers");
        g.new_dataset_builder().with_data(&m).create(name).map_err(|e| err(path, name, e))?;
    }
    Ok(())
}

/// Writes both files' features to `path` (a temporary name renamed into place).
pub fn write(path: &Path, reference: &CaloFeatures, generated: &CaloFeatures) -> Result<()> {
    let out = TempH5::create(path)?;
    for (name, f) in [("reference", reference), ("generated", generated)] {
        let g = out.file().create_group(name).map_err(|e| err(path, name, e))?;
        write_group(&g, path, f)?;
    }
    crate::data::h5::set_attr(
        out.file(),
        path,
        "content",
        "HighLevelFeatures.py features after evaluate.py's 15.15 keV threshold",
    )?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_file_holds_the_official_names() {
        let mut f = CaloFeatures::default();
        for i in 0..3 {
            f.e_inc.push(1000.0 * (i + 1) as f64);
            f.e_total.push(900.0 * (i + 1) as f64);
            let row = [i as f64; LAYERS];
            for v in [
                &mut f.layer_energy,
                &mut f.centre_x,
                &mut f.centre_y,
                &mut f.width_x,
                &mut f.width_y,
                &mut f.centre_r,
                &mut f.width_r,
                &mut f.sparsity,
            ] {
                v.push(row);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.h5");
        write(&path, &f, &f).unwrap();
        let h = hdf5::File::open(&path).unwrap();
        let e: Vec<f64> = h.dataset("generated/E_tot").unwrap().read_raw().unwrap();
        assert_eq!(e, vec![900.0, 1800.0, 2700.0]);
        let w = h.dataset("reference/width_r").unwrap();
        assert_eq!(w.shape(), vec![3, LAYERS]);
        let v: Vec<f64> = w.read_raw().unwrap();
        assert_eq!(v[2 * LAYERS + 7], 2.0);
        for name in ["Einc", "E_layers", "EC_etas", "EC_phis", "width_etas", "width_phis", "sparsity", "EC_r"] {
            assert!(h.dataset(&format!("reference/{name}")).is_ok(), "{name}");
        }
    }
}
