//! iCaloFlow generation, layer by layer, entirely in tensor ops on the sampling device:
//! Flow-1 gives the layer energies, Flow-2 layer 1, and Flow-3 each next layer conditioned on the
//! one it just produced (noised, normalised and logit-ed as in training). Post-processing follows
//! the published sampler: `clamp((sigmoid(y) − α)/(1 − 2α), 0, 1) · E_i`, voxels below 15 keV set to
//! zero, no renormalisation (unless the model was trained with `[model] calo_renormalise_layers`,
//! which scales each layer's pattern to sum 1 first); conditions use the thresholded Flow-1
//! energies without noise. A model with a voxel standardisation gives its flows the standardised
//! logits of the previous layer and de-standardises what they generate.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::FlowName;
use crate::data::geometry::{CaloGeometry, LAYERS};
use crate::data::preprocess::{inverse_logit_tensor, logit_tensor, threshold_tensor, CaloPreprocessing};
use crate::detector::calo::{flow2_context_tensor, flow3_context_tensor, layer_pattern_tensor, StandardisationTables};
use crate::detector::noise::BatchNoise;
use crate::error::{Error, Result};
use crate::flow::Flow;
use crate::models::manifest::Manifest;
use crate::models::student::frozen_flow;

pub struct CaloChain {
    flows: [Flow; 3],
    prep: CaloPreprocessing,
    /// The voxel standardisation, if the model has one.
    standardisation: Option<StandardisationTables>,
    pub geometry: CaloGeometry,
    dtype: DType,
    device: Device,
}

impl CaloChain {
    pub fn load(dir: &Path, m: &Manifest, device: &Device) -> Result<Self> {
        let dataset = m.detector.dataset().ok_or_else(|| Error::checkpoint(dir, "is not a CaloChallenge model"))?;
        let geometry = CaloGeometry::for_dataset(dataset).expect("dataset 2 or 3");
        let prep = crate::models::calo::preprocessing(m, dir)?;
        let dtype = m.dtype.dtype();
        let load = |f: FlowName| -> Result<Flow> {
            if !m.units.contains_key(f.as_str()) {
                return Err(Error::checkpoint(
                    dir,
                    format!(
                        "has no {}: sampling needs Flow-1, Flow-2 and Flow-3 (train them into one directory)",
                        f.as_str()
                    ),
                ));
            }
            frozen_flow(dir, m, f.as_str(), dtype, device)
        };
        let flows = [load(FlowName::Flow1)?, load(FlowName::Flow2)?, load(FlowName::Flow3)?];
        let standardisation = StandardisationTables::new(&prep, geometry.voxels_per_layer(), device, dtype)
            .map_err(|e| Error::checkpoint(&dir.join(crate::models::manifest::MODEL_JSON), e))?;
        Ok(Self { flows, prep, standardisation, geometry, dtype, device: device.clone() })
    }

    /// Switches every flow's products to `precision`.
    pub fn set_matmul_precision(&mut self, precision: crate::flow::MatmulPrecision) -> Result<()> {
        for f in &mut self.flows {
            f.set_matmul_precision(precision)?;
        }
        Ok(())
    }

    fn column(t: &Tensor, i: usize) -> candle_core::Result<Tensor> {
        t.narrow(1, i, 1)
    }

    /// Layer `t`'s voxels (MeV) from the flow's output `y` and layer energies `e` (n, 1).
    fn voxels(&self, y: &Tensor, e: &Tensor, t: usize) -> candle_core::Result<Tensor> {
        let y = match &self.standardisation {
            Some(s) => s.destandardise(y, t)?,
            None => y.clone(),
        };
        layer_voxels(&self.prep, &y, e)
    }

    /// Flow-3's view of generated layer `t`: noised, normalised to unit sum, logit, standardised.
    fn pattern(&self, layer: &Tensor, u: &Tensor, t: usize) -> candle_core::Result<Tensor> {
        let logits = layer_pattern_tensor(&self.prep, layer, u)?;
        match &self.standardisation {
            Some(s) => s.standardise(&logits, t),
            None => Ok(logits),
        }
    }

    /// The logits Flow-2 and Flow-3 are conditioned on, of layer energies (MeV, thresholded).
    fn energy_logits(&self, energies: &Tensor) -> candle_core::Result<Tensor> {
        logit_tensor(&(energies / self.prep.layer_scale_mev)?, self.prep.alpha)
    }

    /// Preprocessed incident energies (n, 1) of energies in MeV.
    pub fn incident(&self, e_inc: &[f32]) -> Result<Tensor> {
        let e_pre: Vec<f32> = e_inc.iter().map(|&e| self.prep.e_inc(e)).collect();
        Ok(Tensor::from_vec(e_pre, (e_inc.len(), 1), &self.device)?.to_dtype(self.dtype)?)
    }

    /// Flow-1: the 45 layer energies (n, 45) in MeV, thresholded, from noise `z` (n, 45).
    pub fn layer_energies(&self, e_pre: &Tensor, z: &Tensor) -> Result<Tensor> {
        let x1 = self.flows[0].sample_from(z, Some(e_pre))?.0;
        Ok(threshold_tensor(
            &(inverse_logit_tensor(&x1, self.prep.alpha)? * self.prep.layer_scale_mev)?,
            self.prep.threshold_mev,
        )?)
    }

    /// Flow-2: layer 1's voxels (n, voxels) in MeV, given its energy `e1` (n, 1; MeV, thresholded)
    /// and noise `z` (n, voxels).
    pub fn first_layer(&self, e_pre: &Tensor, e1: &Tensor, z: &Tensor) -> Result<Tensor> {
        let ctx2 = flow2_context_tensor(&self.prep, e_pre, &self.energy_logits(e1)?)?;
        let y = self.flows[1].sample_from(z, Some(&ctx2))?.0;
        Ok(self.voxels(&y, e1, 0)?)
    }

    /// Flow-3: layer `t`'s voxels (0-based, 1..45) given its energy `e_t`, the previous layer's
    /// energy `e_prev` (n, 1; MeV, thresholded), the previous layer `prev` (n, voxels; MeV), the
    /// uniform draws `prev_noise` (n, voxels; U[0, 1)) that noise it, and noise `z` (n, voxels).
    #[allow(clippy::too_many_arguments)]
    pub fn next_layer(
        &self,
        e_pre: &Tensor,
        e_t: &Tensor,
        e_prev: &Tensor,
        prev: &Tensor,
        prev_noise: &Tensor,
        t: usize,
        z: &Tensor,
    ) -> Result<Tensor> {
        let prev = self.pattern(prev, prev_noise, t - 1)?;
        let ctx3 = flow3_context_tensor(e_pre, &self.energy_logits(e_t)?, &self.energy_logits(e_prev)?, &prev, t)?;
        let y = self.flows[2].sample_from(z, Some(&ctx3))?.0;
        Ok(self.voxels(&y, e_t, t)?)
    }

    /// Showers (n × voxels, MeV, row-major) for incident energies in MeV.
    pub fn generate(&self, e_inc: &[f32], noise: &mut BatchNoise) -> Result<Vec<f32>> {
        let v = self.geometry.voxels_per_layer();
        let e_pre = self.incident(e_inc)?;
        let energies = self.layer_energies(&e_pre, &noise.normal(LAYERS)?)?;
        let mut layer = self.first_layer(&e_pre, &Self::column(&energies, 0)?, &noise.normal(v)?)?;
        let mut layers = Vec::with_capacity(LAYERS);
        layers.push(layer.clone());
        for t in 1..LAYERS {
            let u = noise.uniform(v)?;
            let (e_t, e_prev) = (Self::column(&energies, t)?, Self::column(&energies, t - 1)?);
            layer = self.next_layer(&e_pre, &e_t, &e_prev, &layer, &u, t, &noise.normal(v)?)?;
            layers.push(layer.clone());
        }
        let showers = Tensor::cat(&layers, 1)?.to_dtype(DType::F32)?;
        Ok(showers.flatten_all()?.to_vec1::<f32>()?)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// Layer voxels (MeV) from pattern logits `y` (n, voxels) and layer energies `e` (n, 1): the
/// clamped inverse logit, scaled to sum 1 if `prep.renormalise_layers`, times `e`, thresholded.
pub fn layer_voxels(prep: &CaloPreprocessing, y: &Tensor, e: &Tensor) -> candle_core::Result<Tensor> {
    let mut pattern = inverse_logit_tensor(y, prep.alpha)?;
    if prep.renormalise_layers {
        pattern = pattern.broadcast_div(&(pattern.sum_keepdim(1)? + 1e-16)?)?;
    }
    threshold_tensor(&pattern.broadcast_mul(e)?, prep.threshold_mev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_voxels_renormalise_only_when_asked() {
        // Fractions 0.2, 0.2, 0.0001 of a 100 MeV layer: 20, 20, 0.01 → the last is below 15 keV.
        let logit = |p: f64| crate::data::preprocess::logit(p, 1e-6) as f32;
        let y = Tensor::from_vec(vec![logit(0.2), logit(0.2), logit(1e-4)], (1, 3), &Device::Cpu).unwrap();
        let e = Tensor::from_vec(vec![100f32], (1, 1), &Device::Cpu).unwrap();
        let mut prep = CaloPreprocessing::default();
        let plain: Vec<f32> = layer_voxels(&prep, &y, &e).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!((plain[0] - 20.0).abs() < 1e-3 && plain[2] == 0.0, "{plain:?}");
        prep.renormalise_layers = true;
        let r: Vec<f32> = layer_voxels(&prep, &y, &e).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // 100 · 0.2 / 0.4001 = 49.99: the layer holds its energy again.
        assert!((r[0] - 100.0 * 0.2 / 0.4001).abs() < 1e-2 && (r[0] + r[1] + r[2] - 100.0).abs() < 0.05, "{r:?}");
    }

    /// Training's standardised pattern logits (the host rows of `models::calo::process`), undone by
    /// sampling's tables, are the plain pattern logits of the same showers and noise: the
    /// standardisation's inverse is exact (to float32 rounding), so sampling post-processes the
    /// same values with or without it.
    #[test]
    fn voxel_standardisation_round_trips_from_training_to_sampling() {
        use rand::SeedableRng;

        let g = CaloGeometry::for_dataset(2).unwrap();
        let v = g.voxels_per_layer();
        let showers = crate::data::synth::calo::generate_calo(&g, 3, 0, 40);
        let plain = CaloPreprocessing::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        // Fit on the showers' own logits (45 × V columns), as training does.
        let mut logits = vec![0f32; showers.showers.len()];
        for (shower, out) in showers.showers.chunks(g.voxels()).zip(logits.chunks_mut(g.voxels())) {
            for (layer, o) in shower.chunks(v).zip(out.chunks_mut(v)) {
                crate::detector::calo::layer_pattern(&plain, layer, &mut rng, o);
            }
        }
        let fitted = crate::data::preprocess::Standardizer::fit(&logits, g.voxels());
        assert!(fitted.std.iter().any(|&s| s > 2.0) && fitted.mean.iter().any(|&m| m < -8.0), "a real spread");
        let standardised = CaloPreprocessing { voxel_standardisation: Some(fitted), ..plain.clone() };
        let tables = StandardisationTables::new(&standardised, v, &Device::Cpu, DType::F32).unwrap().unwrap();
        let row = |y: &[f32]| Tensor::from_vec(y.to_vec(), (1, v), &Device::Cpu).unwrap();
        let values = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let mut worst = 0f32;
        for (k, shower) in showers.showers.chunks(g.voxels()).enumerate() {
            let seeded = || rand_chacha::ChaCha8Rng::seed_from_u64(100 + k as u64);
            let a = crate::models::calo::process(&plain, &g, 5e4, shower, LAYERS, &mut seeded()).unwrap();
            let b = crate::models::calo::process(&standardised, &g, 5e4, shower, LAYERS, &mut seeded()).unwrap();
            let e = Tensor::from_vec(vec![shower[..v].iter().sum::<f32>() + 1.0], (1, 1), &Device::Cpu).unwrap();
            for t in 0..LAYERS {
                let (ya, yb) = (&a.voxel_logits[t * v..(t + 1) * v], &b.voxel_logits[t * v..(t + 1) * v]);
                let back = values(&tables.destandardise(&row(yb), t).unwrap());
                for (x, y) in ya.iter().zip(&back) {
                    worst = worst.max((x - y).abs() / (1.0 + x.abs()));
                }
                // And sampling's standardisation of a layer's logits is training's.
                let again = values(&tables.standardise(&row(ya), t).unwrap());
                for (x, y) in yb.iter().zip(&again) {
                    worst = worst.max((x - y).abs() / (1.0 + x.abs()));
                }
                let (va, vb) = (
                    values(&layer_voxels(&plain, &row(ya), &e).unwrap()),
                    values(&layer_voxels(&plain, &tables.destandardise(&row(yb), t).unwrap(), &e).unwrap()),
                );
                for (x, y) in va.iter().zip(&vb) {
                    assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "layer {t}: {x} vs {y}");
                }
            }
        }
        assert!(worst < 2e-6, "{worst}");
    }
}
