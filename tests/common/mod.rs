//! Helpers for the end-to-end tests: run the real `zdcflow` binary in a temporary directory.
#![allow(dead_code)]

pub mod flows;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use assert_cmd::cargo::cargo_bin_cmd;

pub fn config(name: &str) -> String {
    format!("{}/configs/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A child process inherits the descriptors, and with them HDF5's file locks, of the files the
/// test process has open when it is spawned; a later open of such a file then fails with "unable
/// to lock file". Tests that open HDF5 files in-process hold [`hdf5_in_process`], and no child is
/// spawned meanwhile.
static SPAWNING: RwLock<()> = RwLock::new(());

pub fn hdf5_in_process() -> RwLockWriteGuard<'static, ()> {
    SPAWNING.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held while a child process is spawned.
pub fn spawning() -> RwLockReadGuard<'static, ()> {
    SPAWNING.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `zdcflow --quiet ARGS…` run in `dir`.
pub fn zdcflow(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = cargo_bin_cmd!("zdcflow");
    cmd.current_dir(dir).arg("--quiet").args(args);
    let _guard = spawning();
    cmd.output().expect("zdcflow runs")
}

/// Runs and asserts success; returns stdout.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = zdcflow(dir, args);
    assert!(
        out.status.success(),
        "zdcflow {args:?} failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs and asserts a clean failure: non-zero exit, no panic, one `error:` line. Returns it.
pub fn fails(dir: &Path, args: &[&str]) -> String {
    let out = zdcflow(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "zdcflow {args:?} should fail but succeeded:\n{stderr}");
    assert!(!stderr.contains("panicked"), "zdcflow {args:?} panicked:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "expected one error line for {args:?}, got:\n{stderr}");
    errors[0].to_string()
}

pub fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// Values of every `key` in a JSON-lines file.
pub fn jsonl_values(file: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get(key)?.as_f64())
        .collect()
}

/// Every tensor of a safetensors file, as f64 values by name.
pub fn tensors(file: &Path) -> std::collections::BTreeMap<String, Vec<f64>> {
    candle_core::safetensors::load(file, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            (k, t.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap())
        })
        .collect()
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn pathbuf(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// `args` as the `&str`s that [`zdcflow`], [`ok`] and [`fails`] take.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `train-teacher` of a tiny ZDC teacher (configs/smoke-zdc.toml) on the directory's `zdc.h5`,
/// with `settings` (each `key=value` after its own `--set`), into `out`.
pub fn zdc_teacher_args(settings: &[&str], out: &str) -> Vec<String> {
    smoke_teacher_args("smoke-zdc.toml", "zdc.h5", settings, out)
}

/// `train-teacher` of tiny DS2 teachers (configs/smoke-ds2.toml: Flow-1, Flow-2, Flow-3) on the
/// directory's `ds2.h5`, with `settings` (each `key=value` after its own `--set`), into `out`.
pub fn ds2_teacher_args(settings: &[&str], out: &str) -> Vec<String> {
    smoke_teacher_args("smoke-ds2.toml", "ds2.h5", settings, out)
}

fn smoke_teacher_args(config_name: &str, data: &str, settings: &[&str], out: &str) -> Vec<String> {
    let data = format!("data.path={data}");
    let mut a: Vec<String> =
        ["train-teacher", "--config", &config(config_name), "--set", &data].map(String::from).into();
    for s in settings {
        a.extend(["--set".to_string(), s.to_string()]);
    }
    a.extend(["--output-dir".to_string(), out.to_string()]);
    a
}

/// A checkpoint of tests/data/nflows-detector/.
pub fn nflows_detector_ckpt(name: &str) -> String {
    format!("{}/tests/data/nflows-detector/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Generates a 60-event DS2 file `ds2.h5` in `dir` and imports the inductive-caloflow DS2
/// teacher of tests/data/nflows-detector/ (`ds2-flow{1,2,3}.pt`) for it into `out`; returns
/// import-nflows' output.
pub fn ds2_imported_teacher(dir: &Path, out: &str) -> String {
    ok(dir, &["generate", "calo", "--dataset", "2", "--events", "60", "--seed", "4", "--output", "ds2.h5"]);
    let [f1, f2, f3] = ["ds2-flow1.pt", "ds2-flow2.pt", "ds2-flow3.pt"].map(nflows_detector_ckpt);
    ok(
        dir,
        &[
            "import-nflows",
            &f1,
            "--kind",
            "maf",
            "--detector",
            "ds2",
            "--data",
            "ds2.h5",
            "--flow2",
            &f2,
            "--flow3",
            &f3,
            "--output-dir",
            out,
        ],
    )
}
