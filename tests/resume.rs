//! Killed runs resume to the same weights as uninterrupted ones; Ctrl-C saves first; a
//! non-finite loss stops the run and keeps the last good checkpoint.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn train_args(out: &str) -> Vec<String> {
    let settings =
        ["train.epochs=6", "train.eval_every=3", "flow.hidden_features=16", "flow.dropout=0.1", "photon_sum.epochs=3"];
    std::iter::once("--quiet".to_string()).chain(zdc_teacher_args(&settings, out)).collect()
}

/// Starts training, waits for the flow's first checkpoint, then signals the process.
fn interrupted_run(dir: &Path, out: &str, signal: &str) -> std::process::ExitStatus {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("zdcflow"))
        .current_dir(dir)
        .args(train_args(out))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = dir.join(out).join("flow/checkpoint/state.safetensors");
    let start = Instant::now();
    while !ckpt.exists() {
        assert!(child.try_wait().unwrap().is_none(), "training ended before its first checkpoint");
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint after 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.try_wait().unwrap().is_none(), "training already finished: nothing was interrupted");
    let status = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    child.wait().unwrap()
}

#[test]
fn killed_and_interrupted_runs_resume_to_the_uninterrupted_weights() {
    let tmp = tmp();
    let d = tmp.path();
    ok(d, &["generate", "zdc", "--events", "3000", "--seed", "2", "--output", "zdc.h5"]);
    let args = train_args("straight");
    ok(d, &args[1..].iter().map(String::as_str).collect::<Vec<_>>());
    let reference = tensors(&d.join("straight/flow/last.safetensors"));

    let killed = interrupted_run(d, "killed", "-KILL");
    assert!(!killed.success());
    let mut resume = train_args("killed");
    resume.push("--resume".into());
    ok(d, &resume[1..].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(tensors(&d.join("killed/flow/last.safetensors")), reference, "SIGKILL + --resume ≠ uninterrupted");
    assert_eq!(
        tensors(&d.join("killed/photon_sum/last.safetensors")),
        tensors(&d.join("straight/photon_sum/last.safetensors"))
    );

    let interrupted = interrupted_run(d, "ctrl-c", "-INT");
    assert_eq!(interrupted.code(), Some(130), "Ctrl-C saves, then exits with 130");
    let mut resume = train_args("ctrl-c");
    resume.push("--resume".into());
    ok(d, &resume[1..].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(tensors(&d.join("ctrl-c/flow/last.safetensors")), reference, "Ctrl-C + --resume ≠ uninterrupted");

    let metrics = jsonl_values(&d.join("killed/flow/metrics.jsonl"), "step");
    assert!(metrics.windows(2).all(|w| w[0] < w[1]), "metrics.jsonl holds each step once after a resume: {metrics:?}");
}

#[test]
fn a_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint() {
    let tmp = tmp();
    let d = tmp.path();
    ok(d, &["generate", "zdc", "--events", "1500", "--seed", "2", "--output", "zdc.h5"]);
    let teacher = zdc_teacher_args(&["train.lr=1e30", "train.eval_every=1", "flow.hidden_features=16"], "t");
    let err = fails(d, &strs(&teacher));
    // The diverging step is caught by its loss or by the validation after it; either way only a
    // checkpoint whose loss and validation were finite may be on disk.
    assert!(err.contains("non-finite") && err.contains("at step"), "{err}");
    if err.contains("no checkpoint was written yet") {
        assert!(!d.join("t/flow/checkpoint/state.safetensors").exists(), "{err}");
        assert!(!d.join("t/flow/last.safetensors").exists(), "{err}");
        return;
    }
    let step: u64 =
        err.split("the checkpoint of step ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let ckpt = zdcflow::train::checkpoint::load(&d.join("t/flow"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(ckpt.state.step, step, "the error names the checkpoint kept");
    assert!(ckpt.weights.values().all(|t| t
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite())));
}
