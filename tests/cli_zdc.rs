//! End to end on generated ZDC data with the smoke configs: generate → train-teacher →
//! distill-student (each setup) → sample → evaluate → the baseline gate.

mod common;

use common::*;
use zdcflow::data::zdc::{ZdcFile, ZdcWriter};

fn teacher(dir: &std::path::Path) {
    ok(dir, &["generate", "zdc", "--events", "1500", "--seed", "3", "--output", "zdc.h5"]);
    ok(dir, &strs(&zdc_teacher_args(&["train.epochs=3", "flow.hidden_features=16"], "t")));
}

/// A copy of `from` with every response tripled: clearly worse channel values.
fn deliberately_worse(from: &std::path::Path, to: &std::path::Path) {
    let _hdf5 = hdf5_in_process();
    let f = ZdcFile::open(from).unwrap();
    let responses: Vec<f32> = f.read_responses(0, f.events).unwrap().into_iter().map(|v| 3.0 * v + 5.0).collect();
    let mut w = ZdcWriter::create(
        to,
        f.events,
        &[("source_events", f.source.as_ref().unwrap().source_events.to_string())],
        true,
    )
    .unwrap();
    w.write(&responses, &f.conditions, Some(&f.source.as_ref().unwrap().index)).unwrap();
    w.finish().unwrap();
}

#[test]
fn zdc_chain_runs_and_the_gate_passes_on_itself_and_fails_on_a_worse_file() {
    let tmp = tmp();
    let d = tmp.path();
    teacher(d);
    let val = jsonl_values(&d.join("t/flow/metrics.jsonl"), "val_loss");
    assert_eq!(val.len(), 3);
    assert!(val[2] < val[0], "validation NLL should decrease: {val:?}");
    for f in [
        "model.json",
        "flow/best.safetensors",
        "flow/last.safetensors",
        "flow/checkpoint/state.safetensors",
        "photon_sum/best.safetensors",
    ] {
        assert!(d.join("t").join(f).exists(), "teacher lacks {f}");
    }
    ok(
        d,
        &[
            "distill-student",
            "--config",
            &config("smoke-zdc-student.toml"),
            "--teacher",
            "t",
            "--set",
            "data.path=zdc.h5",
            "--set",
            "train.epochs=1",
            "--output-dir",
            "s",
        ],
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("s/model.json")).unwrap()).unwrap();
    assert_eq!(manifest["role"], "student");
    assert!(manifest["teacher"].as_str().unwrap().ends_with("/t"), "the student names its teacher: {manifest}");
    assert!(d.join("s/diversity.json").exists(), "bs+ch+div stores its weights");
    let out = ok(d, &["sample", "--model", "s", "--conditions", "zdc.h5", "--seed", "1", "--output", "gen.h5"]);
    assert!(out.contains("ms/sample"), "{out}");
    let gen = ZdcFile::open(&d.join("gen.h5")).unwrap();
    assert_eq!(gen.events, 300, "the test split (20 %) of 1500 events");
    ok(d, &["evaluate", "--reference", "zdc.h5", "--generated", "gen.h5", "--output", "m.json", "--plots", "plots"]);
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("m.json")).unwrap()).unwrap();
    for k in ["ws", "mae_c", "mae_cw"] {
        assert!(metrics["metrics"][k].as_f64().is_some_and(|v| v.is_finite() && v > 0.0), "{k}: {metrics}");
    }
    for png in ["zdc_channels.png", "zdc_mean_images.png", "zdc_shapes.png"] {
        assert!(std::fs::metadata(d.join("plots").join(png)).unwrap().len() > 1000, "{png}");
    }
    ok(
        d,
        &["evaluate", "--reference", "zdc.h5", "--generated", "gen.h5", "--baseline", "m.json", "--tolerance", "0.05"],
    );
    deliberately_worse(&d.join("gen.h5"), &d.join("worse.h5"));
    let out = zdcflow(
        d,
        &[
            "evaluate",
            "--reference",
            "zdc.h5",
            "--generated",
            "worse.h5",
            "--baseline",
            "m.json",
            "--tolerance",
            "0.05",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "a worse file must fail the gate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gate: ws got worse"), "{stderr}");
}

#[test]
fn every_distillation_setup_trains_and_sharded_sampling_equals_one_run() {
    let tmp = tmp();
    let d = tmp.path();
    teacher(d);
    for setup in ["bs", "bs+div", "bs+ch", "bs+ch+div"] {
        let out = format!("s-{setup}");
        ok(
            d,
            &[
                "distill-student",
                "--config",
                &config("smoke-zdc-student.toml"),
                "--teacher",
                "t",
                "--set",
                "data.path=zdc.h5",
                "--set",
                "train.epochs=1",
                "--set",
                "train.max_batches=2",
                "--set",
                &format!("distill.setup={setup}"),
                "--output-dir",
                &out,
            ],
        );
        assert_eq!(d.join(&out).join("diversity.json").exists(), setup.ends_with("div"), "{setup}");
    }
    let sample = |extra: &[&str], output: &str| {
        let mut args = vec![
            "sample",
            "--model",
            "s-bs",
            "--conditions",
            "zdc.h5",
            "--seed",
            "7",
            "--batch-size",
            "64",
            "--output",
            output,
        ];
        args.extend_from_slice(extra);
        ok(d, &args);
    };
    sample(&[], "full.h5");
    sample(&["--shard", "2/2"], "part2.h5");
    sample(&["--shard", "1/2"], "part1.h5");
    ok(d, &["merge", "--output", "merged.h5", "part2.h5", "part1.h5"]);
    let full = ZdcFile::open(&d.join("full.h5")).unwrap();
    let merged = ZdcFile::open(&d.join("merged.h5")).unwrap();
    assert_eq!(full.read_responses(0, full.events).unwrap(), merged.read_responses(0, merged.events).unwrap());
    assert_eq!(full.conditions, merged.conditions);
    assert_eq!(full.source.unwrap().index, merged.source.unwrap().index);
    let err = fails(d, &["merge", "--output", "bad.h5", "part1.h5"]);
    assert!(err.contains("shards 1..2"), "{err}");
}
