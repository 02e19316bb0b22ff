//! `[distill]`: the students' PDD loss, the ZDC setups, and how the kept checkpoint is chosen.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The four setups of the ZDC paper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Setup {
    #[default]
    #[serde(rename = "bs")]
    Baseline,
    #[serde(rename = "bs+div")]
    Diversity,
    #[serde(rename = "bs+ch")]
    Channel,
    #[serde(rename = "bs+ch+div")]
    ChannelDiversity,
}

/// Units of the ZDC channel loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelUnits {
    #[default]
    Photons,
    Fractions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// Lowest validation KL(student ‖ teacher) estimate (iCaloFlow).
    #[default]
    Kl,
    /// Lowest validation distillation loss.
    ValLoss,
    /// ZDC: lowest validation KL + the weighted channel loss (diversity-weighted for +div), so that
    /// +ch setups are selected on what they optimise too.
    #[serde(rename = "kl+ch")]
    KlChannel,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillSection {
    pub setup: Setup,
    /// Weight of the data loop; the latent loop gets 1 − beta.
    pub beta: f64,
    /// Standard deviation of the latent loop's z.
    pub latent_width: f64,
    /// Squared errors between every block's intermediate tensors.
    pub step_terms: bool,
    /// Squared errors between every block's MADE outputs.
    pub made_terms: bool,
    /// Refines `setup`: the ZDC channel loss (eq. 2).
    pub channel_loss: Option<bool>,
    /// Refines `setup`: inverse-diversity sample weights (eq. 1, 3).
    pub diversity_weights: Option<bool>,
    pub channel_weight: f64,
    /// Units of the channel values in the channel loss: photons (default; mean over the channels of
    /// the squared error in photons²) or fractions (the paper's eq. 2 on unit-sum images).
    pub channel_units: ChannelUnits,
    /// ε of eq. 3.
    pub diversity_eps: f64,
    /// Weight of a condition with f_div = 0 (seen once, or identical responses): "top" (the
    /// normalised maximum, default) or "eps" (ε only).
    pub zero_diversity: ZeroDiversity,
    pub selection: Selection,
}

impl Default for DistillSection {
    /// Every key's default.
    fn default() -> Self {
        Self {
            setup: Setup::default(),
            beta: 0.5,
            latent_width: 1.0,
            step_terms: true,
            made_terms: true,
            channel_loss: None,
            diversity_weights: None,
            // The one default of `distill.channel_weight` (README "Distillation loss"): with the
            // channel loss in photons², a mean channel error of 10 photons then costs 1, about the
            // whole PDD loss of a student started from its teacher.
            channel_weight: 0.01,
            channel_units: ChannelUnits::default(),
            diversity_eps: 1e-3,
            zero_diversity: Default::default(),
            selection: Selection::default(),
        }
    }
}

impl DistillSection {
    pub fn channel_loss(&self) -> bool {
        self.channel_loss.unwrap_or(matches!(self.setup, Setup::Channel | Setup::ChannelDiversity))
    }

    pub fn diversity_weights(&self) -> bool {
        self.diversity_weights.unwrap_or(matches!(self.setup, Setup::Diversity | Setup::ChannelDiversity))
    }

    pub(super) fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(Error::config("distill.beta", format!("must be in [0, 1], got {}", self.beta)));
        }
        if self.latent_width.is_nan() || self.latent_width <= 0.0 {
            return Err(Error::config("distill.latent_width", "must be > 0"));
        }
        for (key, v) in [("distill.channel_weight", self.channel_weight), ("distill.diversity_eps", self.diversity_eps)]
        {
            if v.is_nan() || v < 0.0 {
                return Err(Error::config(key, format!("must be ≥ 0, got {v}")));
            }
        }
        Ok(())
    }
}

/// What a condition with f_div = 0 gets (the paper does not say; 1/0 is infinite).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ZeroDiversity {
    /// The top normalised value, 1 (its weight |X_c| + ε): the limit of 1/f_div → ∞, clipped.
    #[default]
    Top,
    /// Weight ε only: such conditions (a response seen once has no spread to learn) barely count.
    Eps,
}
