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
        // The teacher's base (its weights are copied and stay frozen): the student inverts the
        // teacher's transform between the same base space and the data.
        base: teacher.base.clone(),
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

/// A trainable student, optionally starting from the teacher's weights (`teacher_weights`); a
/// conditional base is always the teacher's (copied; no loss term reaches it, so it stays frozen).
pub fn new_student(
    spec: &FlowSpec,
    teacher_weights: &Path,
    init_from_teacher: bool,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<(Flow, VarMap)> {
    let varmap = VarMap::new();
    let flow = Flow::new(spec, SeededInit::var_builder(&varmap, seed, dtype, device).pp(io::PREFIX))?;
    if init_from_teacher {
        let values = load_frozen(teacher_weights, &varmap, dtype, device).map_err(|m| {
            Error::config("student.init_from_teacher", format!("needs the teacher's hidden sizes: {m}"))
        })?;
        assign(&varmap, &values)?;
    } else if !spec.base.is_standard() {
        let stem = format!("{}.base.", io::PREFIX);
        let tensors = candle_core::safetensors::load(teacher_weights, device)
            .map_err(|e| Error::checkpoint(teacher_weights, e.to_string()))?;
        let base: std::collections::HashMap<String, candle_core::Tensor> =
            tensors.into_iter().filter(|(k, _)| k.starts_with(&stem)).collect();
        let wanted = varmap.data().lock().expect("varmap lock").keys().filter(|k| k.starts_with(&stem)).count();
        if base.len() != wanted {
            return Err(Error::checkpoint(
                teacher_weights,
                format!("the teacher's conditional base has {} tensors, its spec {wanted}", base.len()),
            ));
        }
        assign(&varmap, &base)?;
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
