//! What every student shares: its spec (the teacher's blocks, spline and permutations; its own
//! hidden sizes), its initialisation, the frozen teacher, and the loss terms of its config.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarMap;

use super::manifest::{Manifest, Role};
use crate::config::{Detector, DistillSection, StudentFlowSection};
use crate::distill::{ChannelLoss, Terms};
use crate::error::{Error, Result};
use crate::flow::params::{assign, load_frozen, SeededInit};
use crate::flow::{io, Flow, FlowKind, FlowSpec};

/// The IAF that mirrors `teacher`.
pub fn student_spec(teacher: &FlowSpec, s: Option<&StudentFlowSection>) -> FlowSpec {
    FlowSpec {
        kind: FlowKind::Iaf,
        hidden_features: s.and_then(|s| s.hidden_features).unwrap_or(teacher.hidden_features),
        hidden_layers: s.and_then(|s| s.hidden_layers).unwrap_or(teacher.hidden_layers),
        residual: s.and_then(|s| s.residual).unwrap_or(teacher.residual),
        dropout: s.map(|s| s.dropout).unwrap_or(0.0),
        // zdcflow's own IAF, standard-normal base (what distillation compares against).
        base: Default::default(),
        fast_spline: None,
        ..teacher.clone()
    }
}

/// Loads a teacher's manifest, checking its detector and role.
pub fn load_teacher(dir: &Path, detector: Detector) -> Result<Manifest> {
    let m = Manifest::load(dir)?;
    if m.role != Role::Teacher {
        return Err(Error::checkpoint(dir, "--teacher must be a teacher (train-teacher output), this is a student"));
    }
    if m.detector != detector {
        return Err(Error::checkpoint(dir, format!("is a {:?} teacher; the config is for {:?}", m.detector, detector)));
    }
    if let Some(name) =
        m.units.iter().find(|(_, u)| u.flow.as_ref().is_some_and(|f| !f.base.is_standard())).map(|u| u.0)
    {
        return Err(Error::checkpoint(
            dir,
            format!("unit '{name}' has a conditional base (an imported nflows ConditionalDiagonalNormal); distilling such a teacher is not supported (the student's latent space is the standard normal)"),
        ));
    }
    Ok(m)
}

/// A frozen flow unit of a trained model.
pub fn frozen_flow(dir: &Path, m: &Manifest, unit: &str, dtype: DType, device: &Device) -> Result<Flow> {
    let spec = m
        .unit(unit, dir)?
        .flow
        .as_ref()
        .ok_or_else(|| Error::checkpoint(dir, format!("unit '{unit}' is not a flow")))?;
    Ok(io::load_frozen_flow(spec, &m.weights(dir, unit)?, io::PREFIX, dtype, device)?)
}

/// A trainable student, optionally starting from the teacher's weights.
pub fn new_student(
    spec: &FlowSpec,
    init_from: Option<&Path>,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<(Flow, VarMap)> {
    let varmap = VarMap::new();
    let flow = Flow::new(spec, SeededInit::var_builder(&varmap, seed, dtype, device).pp(io::PREFIX))?;
    if let Some(weights) = init_from {
        let values = load_frozen(weights, &varmap, dtype, device).map_err(|m| {
            Error::config("student.init_from_teacher", format!("needs the teacher's hidden sizes: {m}"))
        })?;
        assign(&varmap, &values)?;
    }
    Ok((flow, varmap))
}

/// Copies a trained unit (model.json and weights) from one model directory to another.
pub fn copy_unit(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for f in [super::manifest::MODEL_JSON, "best.safetensors", "last.safetensors"] {
        let src = from.join(f);
        if src.exists() && f.ends_with(".safetensors") {
            // Re-tagged as the student's: the identity check at loading expects its model's role.
            io::copy_weights_as(&src, &to.join(f), "student")?;
        } else if src.exists() {
            let dst = to.join(f);
            crate::util::atomic::write_with(&dst, |tmp| {
                std::fs::copy(&src, tmp).map(|_| ()).map_err(|e| Error::io(&src, e))
            })?;
        }
    }
    Ok(())
}

/// The loss terms of a student flow.
pub fn terms(d: &DistillSection, beta: Option<f64>, channel: Option<ChannelLoss>) -> Terms {
    Terms {
        beta: beta.unwrap_or(d.beta),
        latent_width: d.latent_width,
        step_terms: d.step_terms,
        made_terms: d.made_terms,
        weighted: d.diversity_weights(),
        channel,
    }
}
