//! Probability density distillation (CaloFlow II / iCaloFlow §III.C, ZDC paper §3): an IAF student
//! learns to invert a frozen MAF teacher using only the fast passes of both.
//!
//! - Data loop: x → z (teacher, x → z) → x' (student, z → x).
//! - Latent loop: z ~ the base with ε ~ N(0, width²) → x' (student) → z' (teacher).
//!
//! Each loop's loss is the squared error between its start and end, plus — block by block —
//! between the teacher's and the student's data-side and latent-side tensors and raw MADE outputs
//! (student block k inverts teacher block k). Every term is summed over features and averaged
//! over the batch, optionally weighted per sample; the loss is β·L_x + (1 − β)·L_z. This is the
//! published code's sum over its "steps" (the permutations' outputs are permuted copies of the
//! blocks' outputs, so their squared errors are the same numbers). ZDC adds the channel loss
//! (eq. 2) on the data loop's output.

use candle_core::{DType, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::flow::{Flow, PassOptions, Trace};
use crate::train::{Batch, Objective};

/// Which terms the loss has.
#[derive(Clone, Debug)]
pub struct Terms {
    /// Weight of the data loop (the latent loop gets 1 − beta).
    pub beta: f64,
    pub latent_width: f64,
    pub step_terms: bool,
    pub made_terms: bool,
    /// Apply the batch's per-sample weights to the squared-error terms.
    pub weighted: bool,
    pub channel: Option<ChannelLoss>,
}

/// The ZDC channel loss: channel sums of the sigmoid-ed, sum-normalised images.
#[derive(Clone, Debug)]
pub struct ChannelLoss {
    /// (pixels, 5) 0/1 channel matrix.
    pub matrix: Tensor,
    pub weight: f64,
    /// Weight it per sample too (bs+ch+div).
    pub weighted: bool,
    /// (std, mean), each (1, pixels): flow features → logits when the preprocessing standardises
    /// pixels.
    pub pixel_affine: Option<(Tensor, Tensor)>,
    /// (column, mean, std) of the photon sum in the standardised context: when set the channel
    /// values are in photons (fraction × the event's photon sum S) and the loss is the mean over
    /// the 5 channels of their squared error in photons² (README "Distillation loss"); when unset,
    /// the sum over channels of squared unit-sum fractions (the paper's eq. 2 as written).
    pub photon_sum: Option<(usize, f64, f64)>,
}

/// Loss values of one batch, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossParts {
    pub data_loop: f64,
    pub latent_loop: f64,
    pub channel: f64,
}

pub struct Distillation<'a> {
    pub teacher: &'a Flow,
    pub student: &'a Flow,
    pub terms: Terms,
}

/// Σ_features (a − b)², weighted per sample, averaged over the batch.
fn squared_error(a: &Tensor, b: &Tensor, w: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let per_sample = (a - b)?.sqr()?.sum(1)?;
    match w {
        Some(w) => (per_sample * w)?.mean_all(),
        None => per_sample.mean_all(),
    }
}

/// Squared errors between matching blocks of two traces.
fn trace_terms(t: &Trace, s: &Trace, terms: &Terms, w: Option<&Tensor>) -> candle_core::Result<Option<Tensor>> {
    let mut parts = Vec::new();
    for i in 0..t.made.len() {
        if terms.step_terms {
            parts.push(squared_error(&t.data_side[i], &s.data_side[i], w)?);
            parts.push(squared_error(&t.latent_side[i], &s.latent_side[i], w)?);
        }
        if terms.made_terms {
            parts.push(squared_error(&t.made[i], &s.made[i], w)?);
        }
    }
    sum(parts)
}

fn sum(parts: Vec<Tensor>) -> candle_core::Result<Option<Tensor>> {
    let mut it = parts.into_iter();
    let Some(first) = it.next() else { return Ok(None) };
    it.try_fold(first, |acc, p| acc + p).map(Some)
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).and_then(|t| t.to_scalar::<f64>()).unwrap_or(f64::NAN)
}

/// Standard-normal samples of `shape` scaled by `width`, drawn on the host from `rng`.
pub fn latent_noise(
    rng: &mut ChaCha8Rng,
    n: usize,
    d: usize,
    width: f64,
    like: &Tensor,
) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = (0..n * d).map(|_| (width * rng.sample::<f64, _>(rand_distr::StandardNormal)) as f32).collect();
    Tensor::from_vec(v, (n, d), like.device())?.to_dtype(like.dtype())
}

impl Distillation<'_> {
    fn weights<'b>(&self, batch: &'b Batch) -> Option<&'b Tensor> {
        if self.terms.weighted {
            batch.weight.as_ref()
        } else {
            None
        }
    }

    /// x → z (teacher) → x' (student).
    fn data_loop(
        &self,
        batch: &Batch,
        rng: &mut ChaCha8Rng,
        train: bool,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let ctx = batch.ctx.as_ref();
        let w = self.weights(batch);
        let t = self.teacher.to_latent_with(&batch.x, ctx, PassOptions::traced())?;
        let s = self.student.to_data_with(
            &t.output.detach(),
            ctx,
            PassOptions { rng: train.then_some(rng), traced: true },
        )?;
        let mut loss = squared_error(&batch.x, &s.output, w)?;
        if let Some(extra) =
            trace_terms(t.trace.as_ref().expect("traced"), s.trace.as_ref().expect("traced"), &self.terms, w)?
        {
            loss = (loss + extra)?;
        }
        let channel = match &self.terms.channel {
            Some(c) => {
                let photons = match (c.photon_sum, ctx) {
                    (Some((col, mean, std)), Some(ctx)) => Some(ctx.narrow(1, col, 1)?.affine(std, mean)?),
                    _ => None,
                };
                let w = if c.weighted { batch.weight.as_ref() } else { None };
                Some(channel_loss_in(c, &batch.x, &s.output, w, photons.as_ref())?)
            }
            None => None,
        };
        Ok((loss, channel))
    }

    /// z → x' (student) → z' (teacher).
    fn latent_loop(&self, batch: &Batch, rng: &mut ChaCha8Rng, train: bool) -> candle_core::Result<Tensor> {
        let ctx = batch.ctx.as_ref();
        let w = self.weights(batch);
        let (n, d) = batch.x.dims2()?;
        let eps = latent_noise(rng, n, d, self.terms.latent_width, &batch.x)?;
        // z ~ the base (the teacher's, which the student shares): μ(c) + σ(c)·ε for a conditional one.
        let (z, _) = self.teacher.base().from_noise(&eps, ctx)?;
        let s = self.student.to_data_with(&z, ctx, PassOptions { rng: train.then_some(rng), traced: true })?;
        let t = self.teacher.to_latent_with(&s.output, ctx, PassOptions::traced())?;
        let mut loss = squared_error(&z, &t.output, w)?;
        if let Some(extra) =
            trace_terms(t.trace.as_ref().expect("traced"), s.trace.as_ref().expect("traced"), &self.terms, w)?
        {
            loss = (loss + extra)?;
        }
        Ok(loss)
    }

    /// The loss and its parts; `train` turns the student's dropout on.
    pub fn loss_parts(
        &self,
        batch: &Batch,
        rng: &mut ChaCha8Rng,
        train: bool,
    ) -> candle_core::Result<(Tensor, LossParts)> {
        let beta = self.terms.beta;
        let mut parts = LossParts::default();
        let mut total = Vec::new();
        if beta > 0.0 {
            let (lx, ch) = self.data_loop(batch, rng, train)?;
            parts.data_loop = scalar(&lx);
            total.push((lx * beta)?);
            if let (Some(ch), Some(c)) = (ch, &self.terms.channel) {
                parts.channel = scalar(&ch);
                total.push((ch * c.weight)?);
            }
        }
        if beta < 1.0 {
            let lz = self.latent_loop(batch, rng, train)?;
            parts.latent_loop = scalar(&lz);
            total.push((lz * (1.0 - beta))?);
        }
        let loss = sum(total)?.ok_or_else(|| candle_core::Error::Msg("distillation with no loss term".into()))?;
        Ok((loss, parts))
    }

    /// Σ_rows of the weighted channel loss on the data loop (0 without a channel loss).
    pub fn channel_sum(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> candle_core::Result<f64> {
        let Some(c) = &self.terms.channel else { return Ok(0.0) };
        let (_, ch) = self.data_loop(batch, rng, false)?;
        Ok(ch.map_or(0.0, |t| scalar(&t)) * c.weight * batch.n as f64)
    }

    /// KL(student ‖ teacher) estimated on student samples: Σ_rows [log q(x') − log p(x')].
    pub fn kl_sum(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> candle_core::Result<f64> {
        let ctx = batch.ctx.as_ref();
        let (n, d) = batch.x.dims2()?;
        let eps = latent_noise(rng, n, d, 1.0, &batch.x)?;
        let (x, log_q) = self.student.sample_from(&eps, ctx)?;
        let log_p = self.teacher.log_prob(&x, ctx)?;
        Ok(scalar(&(log_q - log_p)?.sum_all()?))
    }
}

/// Eq. 2: Σ_channels (w − ŵ)², averaged over samples (weighted per sample if `w` is given), on
/// channel sums of sigmoid(·) normalised to unit sum.
pub fn channel_loss(
    c: &ChannelLoss,
    x: &Tensor,
    x_student: &Tensor,
    w: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    channel_loss_in(c, x, x_student, w, None)
}

/// The channel loss with channel values in photons when `photons` (n, 1) gives each event's
/// photon sum: mean over the 5 channels of (S·(w_c − ŵ_c))², averaged (weighted) over samples.
pub fn channel_loss_in(
    c: &ChannelLoss,
    x: &Tensor,
    x_student: &Tensor,
    w: Option<&Tensor>,
    photons: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let channels = |t: &Tensor| -> candle_core::Result<Tensor> {
        let logits = match &c.pixel_affine {
            Some((std, mean)) => t.broadcast_mul(std)?.broadcast_add(mean)?,
            None => t.clone(),
        };
        let img = candle_nn::ops::sigmoid(&logits)?;
        let img = img.broadcast_div(&img.sum_keepdim(1)?)?;
        let fractions = img.matmul(&c.matrix)?;
        match photons {
            Some(s) => fractions.broadcast_mul(s),
            None => Ok(fractions),
        }
    };
    let se = squared_error(&channels(x)?, &channels(x_student)?, w)?;
    match photons {
        Some(_) => se.affine(1.0 / c.matrix.dim(1)? as f64, 0.0),
        None => Ok(se),
    }
}

/// Checkpoint selection on KL + the weighted channel loss (`selection = "kl+ch"`).
pub struct KlChannelObjective<'a> {
    pub inner: DistillObjective<'a>,
}

impl Objective for KlChannelObjective<'_> {
    fn loss(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> candle_core::Result<Tensor> {
        self.inner.loss(batch, rng)
    }

    fn val_sum(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> candle_core::Result<f64> {
        Ok(self.inner.distillation.kl_sum(batch, rng)? + self.inner.distillation.channel_sum(batch, rng)?)
    }

    fn metric_name(&self) -> &'static str {
        "kl+ch"
    }
}

/// The trainer's view: the loss, and the validation metric (KL or the loss itself).
pub struct DistillObjective<'a> {
    pub distillation: Distillation<'a>,
    pub select_by_kl: bool,
}

impl Objective for DistillObjective<'_> {
    fn loss(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> candle_core::Result<Tensor> {
        Ok(self.distillation.loss_parts(batch, rng, true)?.0)
    }

    fn val_sum(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> candle_core::Result<f64> {
        if self.select_by_kl {
            self.distillation.kl_sum(batch, rng)
        } else {
            let (loss, _) = self.distillation.loss_parts(batch, rng, false)?;
            Ok(scalar(&loss) * batch.n as f64)
        }
    }

    fn metric_name(&self) -> &'static str {
        if self.select_by_kl {
            "kl"
        } else {
            "distill-loss"
        }
    }

    fn role(&self) -> &'static str {
        "student"
    }
}
