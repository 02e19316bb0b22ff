//! The detector models: what each flow learns from which rows, how its units are trained and
//! saved, and how a trained model directory is loaded; a model's log-density ([`log_prob`]),
//! directories of imported flows ([`flow_dir`], [`imported`]). The subcommands that train them
//! are in [`crate::commands`].

pub(crate) mod calo;
pub(crate) mod flow_dir;
pub(crate) mod imported;
pub(crate) mod log_prob;
pub(crate) mod manifest;
pub(crate) mod photon_sum;
pub(crate) mod student;
pub(crate) mod zdc;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand_chacha::ChaCha8Rng;

use crate::config::TrainConfig;
use crate::data::split::Split;
use crate::error::{Error, Result};
use crate::flow::{Flow, FlowKind, FlowSpec, PassOptions};
use crate::train::{self, checkpoint, Batch, Objective, RowSource, Summary};
use manifest::{save_unit_file, UnitFile};

/// How a training command runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub resume: bool,
    pub device: Device,
    pub show_progress: bool,
}

/// Maximum likelihood: the mean negative log-likelihood of the rows (the teachers' loss).
pub struct NllObjective<'a> {
    pub flow: &'a Flow,
}

impl NllObjective<'_> {
    fn log_prob(&self, batch: &Batch, rng: Option<&mut ChaCha8Rng>) -> candle_core::Result<Tensor> {
        let pass = self.flow.to_latent_with(&batch.x, batch.ctx.as_ref(), PassOptions { rng, traced: false })?;
        crate::flow::stack::standard_normal_log_prob(&pass.output)? + pass.ladj
    }
}

impl Objective for NllObjective<'_> {
    fn loss(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> candle_core::Result<Tensor> {
        self.log_prob(batch, Some(rng))?.mean_all()?.neg()
    }

    fn val_sum(&self, batch: &Batch, _rng: &mut ChaCha8Rng) -> candle_core::Result<f64> {
        self.log_prob(batch, None)?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>().map(|s| -s)
    }

    fn metric_name(&self) -> &'static str {
        "nll"
    }
}

/// Where a model's units are trained: its output directory, the data split, the precision and
/// how the command runs. Every teacher, student and photon-sum unit is trained through
/// [`Units::train`], which builds the [`train::Run`] and the unit's own model.json.
pub struct Units<'a> {
    pub out: &'a Path,
    pub split: &'a Split,
    pub dtype: DType,
    pub opts: &'a RunOptions,
}

impl Units<'_> {
    /// Trains unit `name` (in `out/name`) of architecture `flow` on `source`'s rows of the
    /// training split (or resumes it, or skips it if a resumed run had already finished it) and
    /// records the summary in the unit's model.json.
    pub fn train(
        &self,
        name: &str,
        cfg: TrainConfig,
        flow: &FlowSpec,
        source: &dyn RowSource,
        varmap: &VarMap,
        objective: &dyn Objective,
    ) -> Result<Summary> {
        let dir = self.out.join(name);
        let opts = self.opts;
        let unit_file = |training| UnitFile { unit: name, flow: Some(flow), training };
        let has_checkpoint = checkpoint::path(&dir).exists();
        if opts.resume && has_checkpoint {
            let state = checkpoint::load(&dir, &opts.device)?.state;
            if state.epoch >= cfg.epochs {
                if let Some(summary) = stored_summary(&dir) {
                    eprintln!("{name}: already trained ({} epochs), skipping", state.epoch);
                    return Ok(summary);
                }
            }
        }
        save_unit_file(&dir, &unit_file(None))?;
        let run = train::Run {
            unit: name.to_string(),
            dir: dir.clone(),
            cfg,
            source,
            train_events: &self.split.train,
            val_events: &self.split.val,
            varmap,
            dtype: self.dtype,
            device: opts.device.clone(),
            resume: opts.resume && has_checkpoint,
            show_progress: opts.show_progress,
        };
        let summary = train::fit(&run, objective)?;
        save_unit_file(&dir, &unit_file(Some(&summary)))?;
        Ok(summary)
    }
}

fn stored_summary(dir: &Path) -> Option<Summary> {
    let text = std::fs::read_to_string(dir.join(manifest::MODEL_JSON)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    serde_json::from_value(v.get("training")?.clone()).ok()
}

/// One line per trained unit, for the end of a training command.
pub fn summary_line(s: &Summary) -> String {
    let best = s.best_metric.map(|m| format!("{m:.4}")).unwrap_or_else(|| "—".into());
    format!(
        "{}: {} epochs, {} steps in {:.1} s; best validation {} {} (epoch {}, step {}); {:.0} samples/s",
        s.unit, s.epochs, s.steps, s.wall_s, s.metric, best, s.best_epoch, s.best_step, s.samples_per_s
    )
}

/// The flow spec of a teacher (MAF) built from a config section.
pub fn teacher_spec(section: &crate::config::FlowSection, features: usize, context: usize, seed: u64) -> FlowSpec {
    FlowSpec {
        kind: FlowKind::Maf,
        features,
        context_features: context,
        blocks: section.blocks,
        hidden_features: section.hidden_features,
        hidden_layers: section.hidden_layers,
        residual: section.residual,
        dropout: section.dropout,
        spline: section.spline(),
        permutations: crate::flow::permutation::make_permutations(section.permutations, features, section.blocks, seed),
        base: Default::default(),
        fast_spline: None,
    }
}

/// Checks that a resumed run's model matches what the (possibly edited) config now describes.
pub fn check_resume_matches(dir: &Path, stored: &manifest::Manifest, now: &manifest::Manifest) -> Result<()> {
    if stored.units != now.units
        || stored.preprocessing != now.preprocessing
        || stored.data.fractions != now.data.fractions
    {
        return Err(Error::checkpoint(
            &dir.join(manifest::MODEL_JSON),
            "--resume: the configuration describes a different model than the one being resumed",
        ));
    }
    Ok(())
}
