//! The metrics file `evaluate --output` writes, and the regression gate `--baseline` applies.
//!
//! Everything under `metrics` is gated: lower is better, except AUCs, where closer to 0.5 is
//! better (the gate compares |AUC − 0.5|). A metric is worse when its badness exceeds the
//! baseline's by more than the relative tolerance. Numbers under `details` are informational.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::util::atomic;

pub const FORMAT: &str = "zdcflow-metrics";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub events: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetricsFile {
    pub format: String,
    pub zdcflow_version: String,
    pub commit: String,
    pub detector: String,
    pub reference: FileInfo,
    pub generated: FileInfo,
    /// Seed of the evaluation's own random draws (classifier, KPD subsets).
    pub seed: u64,
    pub metrics: Map<String, Value>,
    pub details: Value,
}

impl MetricsFile {
    pub fn new(detector: &str, reference: FileInfo, generated: FileInfo, seed: u64) -> Self {
        Self {
            format: FORMAT.into(),
            zdcflow_version: env!("CARGO_PKG_VERSION").into(),
            commit: env!("ZDCFLOW_GIT_COMMIT").into(),
            detector: detector.into(),
            reference,
            generated,
            seed,
            metrics: Map::new(),
            details: Value::Null,
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("metrics serialise");
        atomic::write_bytes(path, text.as_bytes())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let m: Self =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not a zdcflow metrics file: {e}")))?;
        if m.format != FORMAT {
            return Err(Error::format(path, format!("format '{}' is not '{FORMAT}'", m.format)));
        }
        Ok(m)
    }
}

/// Numeric leaves of a JSON object as (dotted path, value); array elements as `name[i]`.
pub fn flatten(map: &Map<String, Value>) -> Vec<(String, f64)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
        match v {
            Value::Number(n) => out.extend(n.as_f64().map(|x| (prefix.to_string(), x))),
            Value::Object(m) => m.iter().for_each(|(k, v)| walk(&join(prefix, k), v, out)),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| walk(&format!("{prefix}[{i}]"), v, out)),
            _ => {}
        }
    }
    fn join(prefix: &str, k: &str) -> String {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    }
    let mut out = Vec::new();
    map.iter().for_each(|(k, v)| walk(k, v, &mut out));
    out
}

/// How bad a metric value is (lower is better).
fn badness(name: &str, v: f64) -> f64 {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    if leaf.starts_with("auc") {
        (v - 0.5).abs()
    } else {
        v.abs()
    }
}

/// One metric that got worse.
#[derive(Clone, Debug, Serialize)]
pub struct Regression {
    pub metric: String,
    pub baseline: f64,
    pub current: f64,
    /// Relative worsening of the badness.
    pub worse_by: f64,
}

/// Every leaf of a metrics object that is not a number (string, null, bool, empty container),
/// as (dotted path, what it is).
fn non_numeric(map: &Map<String, Value>) -> Vec<(String, &'static str)> {
    fn walk(prefix: String, v: &Value, out: &mut Vec<(String, &'static str)>) {
        match v {
            Value::Number(_) => {}
            Value::Object(m) if !m.is_empty() => m.iter().for_each(|(k, v)| walk(format!("{prefix}.{k}"), v, out)),
            Value::Array(a) if !a.is_empty() => {
                a.iter().enumerate().for_each(|(i, v)| walk(format!("{prefix}[{i}]"), v, out))
            }
            Value::Object(_) => out.push((prefix, "an empty object")),
            Value::Array(_) => out.push((prefix, "an empty list")),
            Value::String(_) => out.push((prefix, "a string")),
            Value::Bool(_) => out.push((prefix, "a boolean")),
            // NaN is written as null: a metric that could not be computed.
            Value::Null => out.push((prefix, "null")),
        }
    }
    let mut out = Vec::new();
    map.iter().for_each(|(k, v)| walk(k.clone(), v, &mut out));
    out
}

/// A baseline the gate can use: at least one numeric metric, and every metric a number or null
/// (NaN: not computable on that data; the current run must still have it). A gate over nothing,
/// or over strings it would skip, would pass whatever the run produced.
pub fn check_baseline(baseline: &MetricsFile, path: &Path) -> Result<()> {
    if flatten(&baseline.metrics).is_empty() {
        return Err(Error::format(path, "the baseline has no metrics: a gate against it would always pass"));
    }
    if let Some((name, what)) = non_numeric(&baseline.metrics).into_iter().find(|(_, w)| *w != "null") {
        return Err(Error::format(path, format!("baseline metric '{name}' is {what}, not a number")));
    }
    Ok(())
}

/// Metrics worse than the baseline by more than `tolerance` (relative); a metric that became NaN
/// (written as null) counts as worse. A metric of the baseline that the current run lacks is an
/// error (the runs are not comparable), returned as its message.
pub fn compare(current: &MetricsFile, baseline: &MetricsFile, tolerance: f64) -> Result<Vec<Regression>, String> {
    let mut now: std::collections::HashMap<String, f64> = flatten(&current.metrics).into_iter().collect();
    now.extend(non_numeric(&current.metrics).into_iter().filter(|(_, w)| *w == "null").map(|(k, _)| (k, f64::NAN)));
    let mut worse = Vec::new();
    for (name, _) in non_numeric(&baseline.metrics).into_iter().filter(|(_, w)| *w == "null") {
        if !now.contains_key(&name) {
            return Err(format!(
                "baseline metric '{name}' is missing from this run (other settings or another zdcflow version?)"
            ));
        }
        eprintln!("gate: {name} is NaN (null) in the baseline: not gated");
    }
    for (name, old) in flatten(&baseline.metrics) {
        let new = *now.get(&name).ok_or_else(|| {
            format!("baseline metric '{name}' is missing from this run (other settings or another zdcflow version?)")
        })?;
        let (b_old, b_new) = (badness(&name, old), badness(&name, new));
        let limit = b_old * (1.0 + tolerance) + 1e-12;
        if b_new.is_nan() && !b_old.is_nan() || b_new > limit {
            let worse_by = if b_old > 0.0 { b_new / b_old - 1.0 } else { f64::INFINITY };
            worse.push(Regression { metric: name, baseline: old, current: new, worse_by });
        }
    }
    Ok(worse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(metrics: Value) -> MetricsFile {
        let info = FileInfo { path: "x".into(), events: 1, model: None, seed: None };
        let mut m = MetricsFile::new("zdc", info.clone(), info, 1);
        m.metrics = metrics.as_object().unwrap().clone();
        m
    }

    #[test]
    fn gate_passes_on_itself_and_flags_worse_metrics() {
        let base = file(serde_json::json!({"ws": 2.0, "mae_c": 1.0, "classifier": {"auc": 0.6}, "per": [1.0, 2.0]}));
        assert!(compare(&base, &base, 0.05).unwrap().is_empty());
        let slightly =
            file(serde_json::json!({"ws": 2.09, "mae_c": 0.5, "classifier": {"auc": 0.4}, "per": [1.0, 2.0]}));
        assert!(
            compare(&slightly, &base, 0.05).unwrap().is_empty(),
            "within 5 % (and AUC 0.4 is as far from 0.5 as 0.6)"
        );
        let worse = file(serde_json::json!({"ws": 2.2, "mae_c": 1.0, "classifier": {"auc": 0.7}, "per": [1.0, null]}));
        let names: Vec<String> = compare(&worse, &base, 0.05).unwrap().into_iter().map(|r| r.metric).collect();
        assert_eq!(names, vec!["classifier.auc", "per[1]", "ws"], "a metric that became NaN (null) is worse");
        let lacking = file(serde_json::json!({"ws": 2.0, "mae_c": 1.0, "classifier": {"auc": 0.6}, "per": [1.0]}));
        let e = compare(&lacking, &base, 0.05).unwrap_err();
        assert!(e.contains("'per[1]'") && e.contains("missing"), "{e}");
    }

    #[test]
    fn baselines_without_numbers_are_refused() {
        let p = Path::new("base.json");
        assert!(check_baseline(&file(serde_json::json!({"ws": 1.0})), p).is_ok());
        let e = check_baseline(&file(serde_json::json!({})), p).unwrap_err().to_string();
        assert!(e.contains("base.json") && e.contains("no metrics"), "{e}");
        let e = check_baseline(&file(serde_json::json!({"ws": 1.0, "mae": "0.3"})), p).unwrap_err().to_string();
        assert!(e.contains("'mae'") && e.contains("a string"), "{e}");
        let e = check_baseline(&file(serde_json::json!({"a": {"b": null}})), p).unwrap_err().to_string();
        assert!(e.contains("no metrics"), "a baseline of NaNs only gates nothing: {e}");
        assert!(check_baseline(&file(serde_json::json!({"a": {"b": null}, "c": 1.0})), p).is_ok());
        let e = check_baseline(&file(serde_json::json!({"a": [], "c": 1.0})), p).unwrap_err().to_string();
        assert!(e.contains("'a'") && e.contains("empty list"), "{e}");
    }
}
