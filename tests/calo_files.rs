//! `[data] paths`: DS3 trained on two files as one (one split over the union) with a per-file
//! Flow-3 schedule (`epochs_per_file`), for teacher and student, and a killed run resumes on the
//! right file to the uninterrupted weights.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const TEACHER: &str = r#"
[model]
detector = "ds3"

[data]
paths = ["a.h5", "b.h5"]

[train]
epochs = 1
batch_size = 128
lr = 1e-3
seed = 1

[flow1]
blocks = 1
hidden_features = 8
hidden_layers = 1

[flow3]
blocks = 1
hidden_features = 8
hidden_layers = 1
train = { max_batches = 2, epochs_per_file = [1, 2] }
"#;

const STUDENT: &str = r#"
[model]
detector = "ds3"

[data]
paths = ["a.h5", "b.h5"]

[train]
epochs = 1
batch_size = 128
lr = 1e-3
seed = 1

[student.flow3]
init_from_teacher = true
beta = 1.0
train = { max_batches = 2, epochs_per_file = [2, 1] }

[distill]
beta = 0.5
"#;

fn two_files(d: &Path) {
    ok(d, &["generate", "calo", "--dataset", "3", "--events", "12", "--seed", "1", "--output", "a.h5"]);
    ok(d, &["generate", "calo", "--dataset", "3", "--events", "9", "--seed", "2", "--output", "b.h5"]);
}

/// (epoch, file) of every line of a unit's metrics.jsonl.
fn epochs_and_files(metrics: &Path) -> Vec<(u64, Option<u64>)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["epoch"].as_u64().unwrap(), v["file"].as_u64())
        })
        .collect()
}

#[test]
fn ds3_trains_on_two_files_with_a_per_file_flow3_schedule() {
    let tmp = tmp();
    let d = tmp.path();
    two_files(d);
    std::fs::write(d.join("teacher.toml"), TEACHER).unwrap();
    std::fs::write(d.join("student.toml"), STUDENT).unwrap();
    ok(d, &["train-teacher", "--config", "teacher.toml", "--output-dir", "t"]);

    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("t/model.json")).unwrap()).unwrap();
    let files = model["data"]["files"].as_array().expect("model.json lists the data files");
    let listed: Vec<(String, u64)> =
        files.iter().map(|f| (f["path"].as_str().unwrap().to_string(), f["events"].as_u64().unwrap())).collect();
    assert_eq!(listed, vec![("a.h5".to_string(), 12), ("b.h5".to_string(), 9)]);
    assert_eq!(model["data"]["events"].as_u64(), Some(21), "one split over the union of both files");

    // Flow-3: epoch 1 on file 1, epochs 2 and 3 on file 2; Flow-1 visits the whole split every epoch.
    assert_eq!(epochs_and_files(&d.join("t/flow3/metrics.jsonl")), vec![(1, Some(1)), (2, Some(2)), (3, Some(2))]);
    assert_eq!(epochs_and_files(&d.join("t/flow1/metrics.jsonl")), vec![(1, None)]);
    let unit: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("t/flow3/model.json")).unwrap()).unwrap();
    assert_eq!(unit["training"]["epochs_per_file"], serde_json::json!([1, 2]));
    assert_eq!(unit["training"]["epochs"].as_u64(), Some(3));

    ok(d, &["distill-student", "--config", "student.toml", "--teacher", "t", "--output-dir", "s"]);
    assert_eq!(epochs_and_files(&d.join("s/flow3/metrics.jsonl")), vec![(1, Some(1)), (2, Some(1)), (3, Some(2))]);

    // The schedule must name every file, and the student must see the teacher's files.
    let err = fails(
        d,
        &["train-teacher", "--config", "teacher.toml", "--set", "flow3.train.epochs_per_file=[1]", "--output-dir", "x"],
    );
    assert!(err.contains("epochs_per_file") && err.contains("2 files"), "{err}");
    let err = fails(
        d,
        &["distill-student", "--config", "student.toml", "--set", r#"data.paths=["b.h5", "a.h5"]"#, "--teacher", "t"],
    );
    assert!(err.contains("9 + 12") && err.contains("12 + 9"), "{err}");
    let err = fails(d, &["train-teacher", "--config", "teacher.toml", "--set", "data.path=a.h5", "--output-dir", "x"]);
    assert!(err.contains("data.paths") && err.contains("not both"), "{err}");
}

#[test]
fn a_run_killed_on_the_second_file_resumes_there_to_the_uninterrupted_weights() {
    let tmp = tmp();
    let d = tmp.path();
    two_files(d);
    // Flow-3 alone, a checkpoint after every batch: 1 epoch on file 1, 3 on file 2.
    let text = TEACHER.replace("[flow1]\nblocks = 1\nhidden_features = 8\nhidden_layers = 1\n", "").replace(
        "max_batches = 2, epochs_per_file = [1, 2]",
        "max_batches = 3, eval_every = 1, epochs_per_file = [1, 3]",
    );
    std::fs::write(d.join("teacher.toml"), text).unwrap();
    let args = |out: &str| ["train-teacher", "--config", "teacher.toml", "--output-dir", out].map(String::from);
    ok(d, &args("straight").iter().map(String::as_str).collect::<Vec<_>>());
    let reference = tensors(&d.join("straight/flow3/last.safetensors"));

    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("zdcflow"))
        .current_dir(d)
        .arg("--quiet")
        .args(args("killed"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = d.join("killed/flow3/metrics.jsonl");
    let start = Instant::now();
    // The metrics line of a validation point is written after its checkpoint.
    while !std::fs::read_to_string(&metrics).unwrap_or_default().contains("\"file\":2") {
        assert!(child.try_wait().unwrap().is_none(), "training ended before reaching file 2");
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint on file 2 after 2 minutes");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(child.try_wait().unwrap().is_none(), "training already finished: nothing was interrupted");
    let status = std::process::Command::new("kill").args(["-KILL", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(!child.wait().unwrap().success());

    let mut resume: Vec<String> = args("killed").to_vec();
    resume.push("--resume".into());
    ok(d, &resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(tensors(&d.join("killed/flow3/last.safetensors")), reference, "SIGKILL + --resume ≠ uninterrupted");
    // Three validation points per epoch (eval_every = 1, 3 batches): 3 on file 1, 9 on file 2.
    let files: Vec<Option<u64>> = epochs_and_files(&metrics).into_iter().map(|(_, f)| f).collect();
    assert_eq!(files, [vec![Some(1); 3], vec![Some(2); 9]].concat());

    // A resumed run must follow the schedule its checkpoint was written under.
    let err = fails(
        d,
        &[
            "train-teacher",
            "--config",
            "teacher.toml",
            "--set",
            "flow3.train.epochs_per_file=[2, 3]",
            "--output-dir",
            "killed",
            "--resume",
        ],
    );
    assert!(err.contains("epochs_per_file"), "{err}");
}
