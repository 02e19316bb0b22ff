//! ZDC generation: each response's photon sum comes from the conditions file (`--photon-sum
//! data`, the published protocol) or is drawn from the photon-sum flow (`--photon-sum model`),
//! the image flow generates the normalised image conditioned on the 9 features and that sum, and
//! the chosen noise removal (`--denoise`, [`super::denoise`]) turns it back into photon counts.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use super::denoise::{self, Denoise};
use crate::data::channels::PIXELS;
use crate::data::preprocess::{Standardizer, ZdcPreprocessing};
use crate::data::zdc::FEATURES;
use crate::detector::noise::BatchNoise;
use crate::detector::zdc::{conditions, CONTEXT};
use crate::error::{Error, Result};
use crate::flow::Flow;
use crate::models::manifest::Manifest;
use crate::models::photon_sum::PhotonSumModel;
use crate::models::student::frozen_flow;
use crate::models::zdc::{FLOW_UNIT, PHOTON_SUM_UNIT};

/// Where the photon sums that condition generation come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PhotonSumSource {
    /// The conditions file's `photon_sum` (the published evaluation protocol).
    Data,
    /// Drawn per response from the model's photon-sum flow (what a user without sums has).
    #[default]
    Model,
}

pub struct ZdcSampler {
    flow: Flow,
    /// None for a model without a photon-sum flow (imported with `import-nflows --detector zdc`).
    photon_sum: Option<PhotonSumModel>,
    prep: ZdcPreprocessing,
    conditions: Standardizer,
    dtype: DType,
    device: Device,
}

impl ZdcSampler {
    pub fn load(dir: &Path, m: &Manifest, device: &Device) -> Result<Self> {
        let dtype = m.dtype.dtype();
        let prep = crate::models::zdc::preprocessing(m, dir)?;
        let missing = |what: &str| Error::checkpoint(dir, format!("model.json lacks the {what}"));
        let conditions = m.conditions.clone().ok_or_else(|| missing("condition scaler"))?;
        let target = m.photon_sum_target.clone();
        let flow = frozen_flow(dir, m, FLOW_UNIT, dtype, device)?;
        if !m.units.contains_key(PHOTON_SUM_UNIT) && m.units.contains_key("regressor") {
            return Err(Error::checkpoint(
                dir,
                "was trained with the former photon-sum point regressor; retrain it (train-teacher now trains a \
                 photon-sum flow)",
            ));
        }
        let photon_sum = match (m.units.contains_key(PHOTON_SUM_UNIT), target) {
            (true, Some(target)) => Some(PhotonSumModel {
                flow: frozen_flow(dir, m, PHOTON_SUM_UNIT, dtype, device)?,
                conditions: conditions.clone(),
                target,
                dtype,
                device: device.clone(),
            }),
            (true, None) => return Err(missing("photon-sum scaler")),
            (false, _) => None,
        };
        Ok(Self { flow, photon_sum, prep, conditions, dtype, device: device.clone() })
    }

    /// Switches the image flow's products to `precision` (the 1-D photon-sum flow keeps the
    /// model's).
    pub fn set_matmul_precision(&mut self, precision: crate::flow::MatmulPrecision) -> Result<()> {
        Ok(self.flow.set_matmul_precision(precision)?)
    }

    /// Responses (n × 1936 photon counts) and the photon sums used, for `particles` (n × 9);
    /// `file_sums` are the conditions file's sums (used with [`PhotonSumSource::Data`]).
    pub fn generate(
        &self,
        particles: &[f32],
        file_sums: &[f32],
        source: PhotonSumSource,
        variant: Denoise,
        noise: &mut BatchNoise,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let n = particles.len() / FEATURES;
        // Drawn whatever the source, so that both sources use the same image latents.
        let z_sum = noise.normal(1)?;
        let sums = match source {
            PhotonSumSource::Model => match &self.photon_sum {
                Some(ps) => ps.sample(particles, &z_sum)?,
                None => {
                    return Err(Error::Invalid(
                        "this model has no photon-sum flow (an imported nflows flow): pass --photon-sum data".into(),
                    ))
                }
            },
            PhotonSumSource::Data => file_sums.iter().map(|&s| s.max(0.0)).collect(),
        };
        let ctx = conditions(&self.conditions, particles, &sums);
        let ctx = Tensor::from_vec(ctx, (n, CONTEXT), &self.device)?.to_dtype(self.dtype)?;
        // Through the flow's base (a conditional base maps the noise to μ(c) + σ(c)·ε first).
        let y = self.flow.sample_from(&noise.normal(PIXELS)?, Some(&ctx))?.0;
        let y = y.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; n * PIXELS];
        out.par_chunks_mut(PIXELS).zip(y.par_chunks(PIXELS)).zip(sums.par_iter()).for_each(|((o, y), &s)| {
            denoise::image_inverse(&self.prep, variant, y, s, o);
        });
        Ok((out, sums))
    }
}
