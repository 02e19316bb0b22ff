//! `zdcflow import-nflows`: a PyTorch checkpoint of an nflows `Flow` → a model directory of
//! imported flows (read in Rust with candle's pickle reader, no Python needed).

use std::collections::BTreeMap;

use candle_core::{DType, Var};
use candle_nn::VarMap;

use crate::cli::{DtypeArg, ImportNflowsArgs, KindArg};
use crate::config::Precision;
use crate::data::pth::read_state_dict;
use crate::error::{Error, Result};
use crate::flow::nflows::{self, ImportOptions, NflowsKind};
use crate::flow::{io, FlowSpec};
use crate::models::flow_dir::{FlowsManifest, Source, FLOWS_FORMAT};
use crate::models::manifest::{check_output_dir, save_unit_file, Reuse, Unit, UnitFile};
use crate::util::output_guard::{self, Input};

pub fn run(a: &ImportNflowsArgs) -> Result<FlowSpec> {
    let d = &a.detector;
    if d.data.is_some() || d.condition_scaler.is_some() || d.flow2.is_some() || d.flow3.is_some() {
        return Err(Error::Invalid("--data, --condition-scaler, --flow2 and --flow3 need --detector".into()));
    }
    check_output_dir(&a.output_dir, Reuse::Never)?;
    let unit_dir = output_guard::join_inside(&a.output_dir, &a.unit, "--unit")?;
    let weights = unit_dir.join("best.safetensors");
    output_guard::check_output(&weights, "--output-dir", &[Input::File("checkpoint", &a.checkpoint)])?;
    let kind = match a.kind {
        KindArg::Maf => NflowsKind::Maf,
        KindArg::Iaf => NflowsKind::Iaf,
        KindArg::IcaloflowIaf => NflowsKind::IcaloflowIaf,
    };
    let opts = ImportOptions {
        kind,
        tail_bound: a.tail_bound,
        min_bin_width: a.min_bin_width,
        min_bin_height: a.min_bin_height,
        min_derivative: a.min_derivative,
    };
    let state = read_state_dict(&a.checkpoint, a.key.as_deref())?;
    let imported = nflows::import(state, &opts).map_err(|m| Error::checkpoint(&a.checkpoint, m))?;
    let precision = match a.dtype {
        Some(DtypeArg::F32) => Precision::F32,
        Some(DtypeArg::F64) => Precision::F64,
        None if imported.dtype == DType::F64 => Precision::F64,
        None => Precision::F32,
    };
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        for (name, t) in &imported.tensors {
            let t = t.to_dtype(precision.dtype())?.contiguous()?;
            data.insert(format!("{}.{name}", io::PREFIX), Var::from_tensor(&t)?);
        }
    }
    std::fs::create_dir_all(&unit_dir).map_err(|e| Error::io(&unit_dir, e))?;
    io::save_varmap(&varmap, &weights)?;
    // Loading it back checks the names and shapes against the spec's architecture.
    io::load_frozen_flow(&imported.spec, &weights, io::PREFIX, precision.dtype(), &candle_core::Device::Cpu)?;
    save_unit_file(&unit_dir, &UnitFile { unit: &a.unit, flow: Some(&imported.spec), training: None })?;
    let checkpoint = a.checkpoint.canonicalize().unwrap_or_else(|_| a.checkpoint.clone());
    let manifest = FlowsManifest {
        format: FLOWS_FORMAT.into(),
        zdcflow_version: env!("CARGO_PKG_VERSION").into(),
        dtype: precision,
        units: BTreeMap::from([(a.unit.clone(), Unit { dir: a.unit.clone(), flow: Some(imported.spec.clone()) })]),
        sources: BTreeMap::from([(a.unit.clone(), Source { checkpoint, kind, key: a.key.clone() })]),
    };
    manifest.save(&a.output_dir)?;
    Ok(imported.spec)
}
