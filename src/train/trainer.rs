//! The training loop shared by teachers, the photon-sum regressor and students.
//!
//! Per step: learning rate and β1 from the schedule, the objective's loss (its random draws
//! derived from (seed, step)), a non-finite check, backward, optional clipping, Adam. At each
//! validation point (every `eval_every` batches and at each epoch's end): the validation metric,
//! `best.safetensors` when it improved, `last.safetensors`, the resume checkpoint and a
//! `metrics.jsonl` line. Killing the process at any moment loses at most the work since the last
//! checkpoint; `--resume` replays from there to the same weights an uninterrupted run reaches.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::batches::{Batch, EpochStream, RowSource};
use super::checkpoint::{self, State};
use super::file_schedule::FilePhases;
use super::schedule;
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::flow::io::save_varmap_as;
use crate::flow::params::{assign, first_non_finite};
use crate::optim::{sorted_vars, Adam};
use crate::util::rng::{derive, tag};
use crate::util::{interrupt, progress};

/// The per-evaluation log of a unit's training, beside its weights.
pub const METRICS: &str = "metrics.jsonl";

/// What is being trained.
pub trait Objective {
    /// The scalar to minimise on a training batch; `rng` drives dropout and any sampling.
    fn loss(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> candle_core::Result<Tensor>;
    /// The validation metric summed over the batch's rows (lower is better).
    fn val_sum(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> candle_core::Result<f64>;
    /// The metric's name in logs ("nll", "kl", "mse").
    fn metric_name(&self) -> &'static str;
    /// The role of the model being trained ("teacher", "student"), recorded in its weights files.
    fn role(&self) -> &'static str {
        "teacher"
    }
}

/// Everything a run needs besides the objective.
pub struct Run<'a> {
    pub unit: String,
    pub dir: PathBuf,
    pub cfg: TrainConfig,
    pub source: &'a dyn RowSource,
    pub train_events: &'a [usize],
    pub val_events: &'a [usize],
    pub varmap: &'a VarMap,
    pub dtype: DType,
    pub device: Device,
    pub resume: bool,
    pub show_progress: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub unit: String,
    pub metric: String,
    pub epochs: usize,
    pub steps: u64,
    pub samples: u64,
    pub best_metric: Option<f64>,
    pub best_epoch: usize,
    pub best_step: u64,
    pub last_metric: Option<f64>,
    pub wall_s: f64,
    pub samples_per_s: f64,
    /// The `epochs_per_file` schedule followed (empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs_per_file: Vec<usize>,
}

#[derive(Serialize)]
struct MetricsLine<'a> {
    unit: &'a str,
    step: u64,
    epoch: usize,
    train_loss: Option<f64>,
    val_loss: Option<f64>,
    metric: &'a str,
    lr: f64,
    wall_s: f64,
    samples_per_s: f64,
    /// The data file (1-based) of this epoch, under an `epochs_per_file` schedule.
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<usize>,
}

fn weights_of(vars: &[(String, Var)]) -> HashMap<String, Tensor> {
    vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
}

struct Loop<'a, 'b> {
    run: &'b Run<'a>,
    objective: &'b dyn Objective,
    adam: Adam,
    state: State,
    total_steps: u64,
    steps_per_epoch: usize,
    phases: FilePhases,
    started: Instant,
    session_samples: u64,
    wall_before: f64,
    metrics: std::fs::File,
    last_metric: Option<f64>,
    running: (f64, usize),
    /// Step of the checkpoint on disk (whose loss and validation were finite), if any.
    kept_step: Option<u64>,
}

pub fn fit(run: &Run, objective: &dyn Objective) -> Result<Summary> {
    let cfg = &run.cfg;
    std::fs::create_dir_all(&run.dir).map_err(|e| Error::io(&run.dir, e))?;
    let vars = sorted_vars(run.varmap);
    let mut adam = Adam::new(vars, cfg.lr, cfg.beta1, cfg.beta2, cfg.eps)?;
    let fresh = State {
        unit: run.unit.clone(),
        epoch: 0,
        batch_in_epoch: 0,
        step: 0,
        samples: 0,
        best_metric: None,
        best_epoch: 0,
        best_step: 0,
        seed: cfg.seed,
        wall_s: 0.0,
        epochs_per_file: cfg.epochs_per_file.clone(),
        file: None,
    };
    let state = if run.resume { resume(run, &mut adam)? } else { fresh };
    let kept_step = run.resume.then_some(state.step);
    let phases = FilePhases::new(&run.unit, cfg, run.source, run.train_events)?;
    if state.epochs_per_file != cfg.epochs_per_file {
        return Err(Error::checkpoint(
            &checkpoint::path(&run.dir),
            format!(
                "--resume: the checkpoint follows epochs_per_file = {:?}, the configuration {:?}",
                state.epochs_per_file, cfg.epochs_per_file
            ),
        ));
    }
    let steps_per_epoch = phases.steps(state.epoch);
    let metrics = open_metrics(&run.dir, run.resume.then_some(state.step))?;
    let mut l = Loop {
        run,
        objective,
        adam,
        wall_before: state.wall_s,
        state,
        total_steps: phases.total_steps(),
        steps_per_epoch,
        phases,
        started: Instant::now(),
        session_samples: 0,
        metrics,
        last_metric: None,
        running: (0.0, 0),
        kept_step,
    };
    l.train()?;
    let wall = l.wall();
    Ok(Summary {
        unit: run.unit.clone(),
        metric: objective.metric_name().to_string(),
        epochs: l.state.epoch,
        steps: l.state.step,
        samples: l.state.samples,
        best_metric: l.state.best_metric,
        best_epoch: l.state.best_epoch,
        best_step: l.state.best_step,
        last_metric: l.last_metric,
        wall_s: wall,
        samples_per_s: l.session_samples as f64 / l.started.elapsed().as_secs_f64().max(1e-9),
        epochs_per_file: cfg.epochs_per_file.clone(),
    })
}

fn resume(run: &Run, adam: &mut Adam) -> Result<State> {
    let file = checkpoint::path(&run.dir);
    if !file.exists() {
        return Err(Error::checkpoint(&file, "--resume: no checkpoint to resume from"));
    }
    let loaded = checkpoint::load(&run.dir, &run.device)?;
    if loaded.state.unit != run.unit {
        return Err(Error::checkpoint(
            &file,
            format!("belongs to '{}', not '{}' (a checkpoint of another model)", loaded.state.unit, run.unit),
        ));
    }
    let expected = run.varmap.data().lock().expect("varmap lock").len();
    for (name, var) in adam.vars() {
        match loaded.weights.get(name) {
            Some(t) if t.shape() == var.shape() => {}
            _ => {
                return Err(Error::checkpoint(
                    &file,
                    format!("does not fit this model (tensor '{name}'); a checkpoint of another model?"),
                ))
            }
        }
    }
    if loaded.weights.len() != expected {
        return Err(Error::checkpoint(&file, "holds a different set of tensors (a checkpoint of another model?)"));
    }
    if let Some(name) = first_non_finite(&loaded.weights)? {
        return Err(Error::checkpoint(
            &file,
            format!("tensor '{name}' holds non-finite values (written by an older zdcflow after a divergence?); start over without --resume"),
        ));
    }
    assign(run.varmap, &loaded.weights)?;
    adam.load_state(&loaded.adam, loaded.state.step).map_err(|m| Error::checkpoint(&file, m))?;
    eprintln!(
        "{}: resuming from the checkpoint of step {} (epoch {}, batch {})",
        run.unit,
        loaded.state.step,
        loaded.state.epoch + 1,
        loaded.state.batch_in_epoch
    );
    Ok(loaded.state)
}

/// Opens metrics.jsonl for appending; on resume, drops lines after the checkpoint's step.
fn open_metrics(dir: &Path, keep_until: Option<u64>) -> Result<std::fs::File> {
    let path = dir.join(METRICS);
    let kept = match keep_until {
        Some(step) => std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
        None => String::new(),
    };
    crate::util::atomic::write_bytes(&path, kept.as_bytes())?;
    std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))
}

impl Loop<'_, '_> {
    /// The error of a run whose loss, gradient, validation or weights stopped being finite: nothing
    /// was written for this step, and the message says which checkpoint was kept.
    fn diverged(&self, what: &str, value: f64) -> Error {
        let kept = match self.kept_step {
            Some(s) => {
                format!("the checkpoint of step {s} is kept; --resume continues from it (a lower train.lr may help)")
            }
            None => "no checkpoint was written yet".to_string(),
        };
        Error::Invalid(format!(
            "{}: non-finite {what} ({value}) at step {} (epoch {}); {kept}",
            self.run.unit,
            self.state.step,
            self.state.epoch + 1
        ))
    }

    /// Batches and data file of `epoch`; under a per-file schedule, a log line when a file's
    /// turn begins.
    fn enter_phase(&mut self, epoch: usize) {
        self.steps_per_epoch = self.phases.steps(epoch);
        if self.phases.per_file {
            let k = self.phases.phase_of(epoch);
            self.state.file = Some(k + 1);
            if epoch == self.phases.first_epoch(k) && self.state.batch_in_epoch == 0 {
                eprintln!("{}: {}", self.run.unit, self.phases.describe(k));
            }
        }
    }

    fn wall(&self) -> f64 {
        self.wall_before + self.started.elapsed().as_secs_f64()
    }

    fn train(&mut self) -> Result<()> {
        let cfg = self.run.cfg.clone();
        while self.state.epoch < cfg.epochs {
            let epoch = self.state.epoch;
            self.enter_phase(epoch);
            let pb = progress::bar(
                self.steps_per_epoch as u64,
                &format!("{} {}/{}", self.run.unit, epoch + 1, cfg.epochs),
                "batches",
                self.run.show_progress,
            );
            let skip = self.state.batch_in_epoch;
            pb.set_position(skip as u64);
            let events = self.phases.events(epoch);
            let stream = EpochStream::training(self.run.source, events, cfg.batch_size, cfg.seed, epoch);
            for rows in stream.skip(skip).take(self.steps_per_epoch - skip) {
                let rows = rows?;
                let n = rows.n;
                let batch = Batch::from_rows(
                    rows,
                    self.run.source.x_dim(),
                    self.run.source.ctx_dim(),
                    self.run.dtype,
                    &self.run.device,
                )?;
                let loss = self.step(&batch)?;
                self.session_samples += n as u64;
                pb.inc(1);
                let rate = self.session_samples as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                pb.set_message(format!("loss {loss:.4} lr {:.2e} {rate:.0} samples/s", self.adam.lr));
                if cfg.eval_every > 0
                    && self.state.step.is_multiple_of(cfg.eval_every as u64)
                    && self.state.batch_in_epoch < self.steps_per_epoch
                {
                    self.validate_and_save()?;
                }
                if interrupt::requested() {
                    pb.finish_and_clear();
                    self.save_checkpoint()?;
                    return Err(Error::Interrupted);
                }
            }
            pb.finish_and_clear();
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
            self.validate_and_save()?;
        }
        Ok(())
    }

    fn step(&mut self, batch: &Batch) -> Result<f64> {
        let cfg = &self.run.cfg;
        let (lr, beta1) = schedule::at(cfg, self.state.step, self.total_steps, self.state.epoch);
        self.adam.lr = lr;
        self.adam.beta1 = beta1;
        let mut rng = derive(cfg.seed, &[tag::DROPOUT, self.state.step]);
        let loss = self.objective.loss(batch, &mut rng)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(self.diverged("loss", value));
        }
        let grads = loss.backward()?;
        let mut scale = 1.0;
        if cfg.grad_clip > 0.0 {
            let norm = self.adam.grad_norm(&grads)?;
            if !norm.is_finite() {
                return Err(self.diverged("gradient norm", norm));
            }
            if norm > cfg.grad_clip {
                scale = cfg.grad_clip / norm;
            }
        }
        self.adam.step(&grads, scale)?;
        self.state.step += 1;
        self.state.batch_in_epoch += 1;
        self.state.samples += batch.n as u64;
        self.running.0 += value;
        self.running.1 += 1;
        Ok(value)
    }

    fn validate(&self) -> Result<Option<f64>> {
        let cfg = &self.run.cfg;
        if self.run.val_events.is_empty() {
            return Ok(None);
        }
        let mut rng = derive(cfg.seed, &[tag::VALIDATION]);
        let (mut sum, mut rows) = (0.0, 0usize);
        let stream = EpochStream::validation(self.run.source, self.run.val_events, cfg.batch_size, cfg.seed);
        let cap = if cfg.val_batches > 0 { cfg.val_batches } else { usize::MAX };
        for r in stream.take(cap) {
            let r = r?;
            rows += r.n;
            let batch = Batch::from_rows(
                r,
                self.run.source.x_dim(),
                self.run.source.ctx_dim(),
                self.run.dtype,
                &self.run.device,
            )?;
            sum += self.objective.val_sum(&batch, &mut rng)?;
        }
        Ok((rows > 0).then(|| sum / rows as f64))
    }

    fn validate_and_save(&mut self) -> Result<()> {
        let train_loss = (self.running.1 > 0).then(|| self.running.0 / self.running.1 as f64);
        self.running = (0.0, 0);
        // Without a validation split the training loss decides "best".
        let metric = self.validate()?.or(train_loss);
        if let Some(m) = metric.filter(|m| !m.is_finite()) {
            return Err(self.diverged(&format!("validation {}", self.objective.metric_name()), m));
        }
        if let Some(name) = first_non_finite(&weights_of(self.adam.vars()))? {
            return Err(self.diverged(&format!("weights (tensor '{name}')"), f64::NAN));
        }
        self.last_metric = metric;
        let improved = match (metric, self.state.best_metric) {
            (Some(m), Some(b)) => m.is_finite() && m < b,
            (Some(m), None) => m.is_finite(),
            _ => false,
        };
        if improved {
            self.state.best_metric = metric;
            self.state.best_epoch = self.state.epoch;
            self.state.best_step = self.state.step;
            self.save_weights("best.safetensors")?;
        }
        self.save_weights("last.safetensors")?;
        self.save_checkpoint()?;
        let line = MetricsLine {
            unit: &self.run.unit,
            step: self.state.step,
            epoch: self.state.epoch,
            train_loss,
            val_loss: metric,
            metric: self.objective.metric_name(),
            lr: self.adam.lr,
            wall_s: self.wall(),
            samples_per_s: self.session_samples as f64 / self.started.elapsed().as_secs_f64().max(1e-9),
            file: self.state.file,
        };
        let path = self.run.dir.join(METRICS);
        writeln!(self.metrics, "{}", serde_json::to_string(&line).expect("metrics serialise"))
            .map_err(|e| Error::io(&path, e))?;
        if self.run.show_progress {
            eprintln!(
                "{} epoch {} step {}: train loss {:.4}, val {} {}",
                self.run.unit,
                self.state.epoch,
                self.state.step,
                train_loss.unwrap_or(f64::NAN),
                self.objective.metric_name(),
                metric.map(|m| format!("{m:.4}")).unwrap_or_else(|| "—".into()),
            );
        }
        Ok(())
    }

    fn save_weights(&self, name: &str) -> Result<()> {
        let role = self.objective.role();
        Ok(save_varmap_as(self.run.varmap, &self.run.dir.join(name), Some(&self.run.unit), Some(role))?)
    }

    fn save_checkpoint(&mut self) -> Result<()> {
        self.state.wall_s = self.wall();
        let weights = weights_of(self.adam.vars());
        if let Some(name) = first_non_finite(&weights)? {
            return Err(self.diverged(&format!("weights (tensor '{name}')"), f64::NAN));
        }
        checkpoint::save(&self.run.dir, &self.state, &weights, &self.adam.state())?;
        self.kept_step = Some(self.state.step);
        Ok(())
    }
}
