//! ZDC generation: the photon-sum regressor predicts each response's photon count from the 9
//! particle features, the flow generates the normalised image conditioned on all 10, and the
//! ZDC post-processing turns it back into photon counts.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::noise::BatchNoise;
use crate::data::channels::PIXELS;
use crate::data::preprocess::{Standardizer, ZdcPreprocessing};
use crate::data::zdc::FEATURES;
use crate::error::{Error, Result};
use crate::flow::params::load_frozen_model;
use crate::flow::Flow;
use crate::models::manifest::Manifest;
use crate::models::regressor::Regressor;
use crate::models::student::frozen_flow;
use crate::models::zdc::{CONTEXT, FLOW_UNIT, REGRESSOR_UNIT};

pub struct ZdcSampler {
    flow: Flow,
    regressor: Regressor,
    prep: ZdcPreprocessing,
    conditions: Standardizer,
    target: Standardizer,
    dtype: DType,
    device: Device,
}

impl ZdcSampler {
    pub fn load(dir: &Path, m: &Manifest, device: &Device) -> Result<Self> {
        let dtype = m.dtype.dtype();
        let prep = crate::models::zdc::preprocessing(m, dir)?;
        let missing = |what: &str| Error::checkpoint(dir, format!("model.json lacks the {what}"));
        let conditions = m.conditions.clone().ok_or_else(|| missing("condition scaler"))?;
        let target = m.photon_sum_target.clone().ok_or_else(|| missing("photon-sum scaler"))?;
        let flow = frozen_flow(dir, m, FLOW_UNIT, dtype, device)?;
        let spec = m.unit(REGRESSOR_UNIT, dir)?.regressor.clone().ok_or_else(|| missing("regressor"))?;
        let weights = m.weights(dir, REGRESSOR_UNIT)?;
        let regressor = load_frozen_model(&weights, dtype, device, |vb| Regressor::new(&spec, vb.pp(REGRESSOR_UNIT)))?;
        Ok(Self { flow, regressor, prep, conditions, target, dtype, device: device.clone() })
    }

    /// Predicted photon sums for `particles` (n × 9).
    pub fn photon_sums(&self, particles: &[f32]) -> Result<Vec<f32>> {
        let n = particles.len() / FEATURES;
        let mut x = vec![0f32; n * FEATURES];
        let mut full = [0f32; CONTEXT];
        for (row, out) in particles.chunks(FEATURES).zip(x.chunks_mut(FEATURES)) {
            full[..FEATURES].copy_from_slice(row);
            let mut std = [0f32; CONTEXT];
            self.conditions.apply(&full, &mut std);
            out.copy_from_slice(&std[..FEATURES]);
        }
        let x = Tensor::from_vec(x, (n, FEATURES), &self.device)?.to_dtype(self.dtype)?;
        let t = self.regressor.forward(&x)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(t.into_iter().map(|v| self.target.invert(0, v).exp_m1().max(0.0)).collect())
    }

    /// Responses (n × 1936 photon counts) for `particles` (n × 9).
    pub fn generate(&self, particles: &[f32], noise: &mut BatchNoise) -> Result<Vec<f32>> {
        let n = particles.len() / FEATURES;
        let sums = self.photon_sums(particles)?;
        let mut ctx = vec![0f32; n * CONTEXT];
        for (k, out) in ctx.chunks_mut(CONTEXT).enumerate() {
            let mut raw = [0f32; CONTEXT];
            raw[..FEATURES].copy_from_slice(&particles[k * FEATURES..(k + 1) * FEATURES]);
            raw[FEATURES] = sums[k];
            self.conditions.apply(&raw, out);
        }
        let ctx = Tensor::from_vec(ctx, (n, CONTEXT), &self.device)?.to_dtype(self.dtype)?;
        let y = self.flow.to_data(&noise.normal(PIXELS)?, Some(&ctx), None, false)?.output;
        let y = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; n * PIXELS];
        out.par_chunks_mut(PIXELS).zip(y.par_chunks(PIXELS)).zip(sums.par_iter()).for_each(|((o, y), &s)| {
            self.prep.image_inverse(y, s, o);
        });
        Ok(out)
    }
}
