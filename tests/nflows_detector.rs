//! `import-nflows --detector`: nflows checkpoints of detector shape (tests/data/nflows-detector/,
//! written by scripts/detector_checkpoints.py with nflows 0.14) wrapped into detector models that
//! `sample`, `evaluate` and `distill-student --teacher` take unchanged.

mod common;

use std::path::Path;

use common::{config, fails, ok};

use common::nflows_detector_ckpt as ckpt;

fn model_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap()).unwrap()
}

#[test]
fn an_imported_zdc_flow_with_a_conditional_base_samples_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["generate", "zdc", "--events", "200", "--seed", "3", "--output", "zdc.h5"]);
    let pt = ckpt("zdc-condbase.pt");
    let out =
        ok(d, &["import-nflows", &pt, "--kind", "maf", "--detector", "zdc", "--data", "zdc.h5", "--output-dir", "m"]);
    assert!(out.contains("Zdc teacher"), "{out}");
    let m = model_json(&d.join("m"));
    assert_eq!(m["format"], "zdcflow-model");
    assert_eq!(m["units"]["flow"]["flow"]["base"]["type"], "conditional-diagonal-normal");
    assert_eq!(m["conditions"]["mean"].as_array().unwrap().len(), 10);
    assert!(m["units"].get("photon_sum").is_none());

    // Sampling goes through the flow's conditional base; photon sums come from the conditions file.
    let sample = |model: &str, out: &str| {
        ok(
            d,
            &[
                "sample",
                "--model",
                model,
                "--conditions",
                "zdc.h5",
                "--photon-sum",
                "data",
                "--seed",
                "1",
                "--output",
                out,
            ],
        )
    };
    sample("m", "g.h5");
    ok(d, &["evaluate", "--reference", "zdc.h5", "--generated", "g.h5", "--output", "metrics.json"]);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["metrics"]["ws"].as_f64().unwrap().is_finite(), "{metrics}");
    // Same seed, same model: the same file (every draw is seeded).
    sample("m", "g2.h5");
    let read = |f: &str| {
        let _g = common::hdf5_in_process();
        let file = hdf5::File::open(d.join(f)).unwrap();
        file.dataset("responses").unwrap().read_raw::<f32>().unwrap()
    };
    let (a, b) = (read("g.h5"), read("g2.h5"));
    assert_eq!(a, b);
    assert!(a.iter().all(|v| v.is_finite() && *v >= 0.0) && a.iter().any(|&v| v > 0.0));

    // An explicit scaler is stored as given and changes what is generated.
    std::fs::write(
        d.join("scaler.json"),
        serde_json::json!({"mean": [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 500.0], "std": vec![2.0; 10]})
            .to_string(),
    )
    .unwrap();
    ok(
        d,
        &[
            "import-nflows",
            &pt,
            "--kind",
            "maf",
            "--detector",
            "zdc",
            "--data",
            "zdc.h5",
            "--condition-scaler",
            "scaler.json",
            "--output-dir",
            "m2",
        ],
    );
    assert_eq!(model_json(&d.join("m2"))["conditions"]["mean"][9], 500.0);
    sample("m2", "g3.h5");
    assert_ne!(a, read("g3.h5"));

    // What is missing is said in one line.
    let err = fails(d, &["sample", "--model", "m", "--conditions", "zdc.h5", "--seed", "1", "--output", "g4.h5"]);
    assert!(err.contains("--photon-sum data"), "{err}");
    assert!(!d.join("g4.h5").exists());
    let err = fails(
        d,
        &[
            "import-nflows",
            &ckpt("ds2-flow1.pt"),
            "--kind",
            "maf",
            "--detector",
            "zdc",
            "--data",
            "zdc.h5",
            "--output-dir",
            "bad",
        ],
    );
    assert!(err.contains("1936 features and 10 conditions"), "{err}");
    let err = fails(d, &["import-nflows", &pt, "--kind", "maf", "--detector", "zdc", "--output-dir", "bad"]);
    assert!(err.contains("--data"), "{err}");
    let err = fails(d, &["import-nflows", &pt, "--kind", "maf", "--data", "zdc.h5", "--output-dir", "bad"]);
    assert!(err.contains("need --detector"), "{err}");
    std::fs::write(d.join("short.json"), r#"{"mean": [0.0], "std": [1.0]}"#).unwrap();
    let err = fails(
        d,
        &[
            "import-nflows",
            &pt,
            "--kind",
            "maf",
            "--detector",
            "zdc",
            "--data",
            "zdc.h5",
            "--condition-scaler",
            "short.json",
            "--output-dir",
            "bad",
        ],
    );
    assert!(err.contains("short.json") && err.contains("10 means"), "{err}");
    // A conditional-base teacher distils: the student shares the teacher's base (copied, not
    // trained: the loss never reaches it), starting from a fresh transform.
    ok(
        d,
        &[
            "distill-student",
            "--config",
            &config("smoke-zdc-student.toml"),
            "--teacher",
            "m",
            "--set",
            "data.path=zdc.h5",
            "--set",
            "student.flow.init_from_teacher=false",
            "--set",
            "train.epochs=1",
            "--output-dir",
            "s",
        ],
    );
    let s = model_json(&d.join("s"));
    assert_eq!(s["units"]["flow"]["flow"]["base"], m["units"]["flow"]["flow"]["base"]);
    let tensors = |dir: &str| {
        let dir = d.join(dir);
        let unit = dir.join(model_json(&dir)["units"]["flow"]["dir"].as_str().unwrap());
        let weights = ["best.safetensors", "last.safetensors"].map(|f| unit.join(f)).into_iter().find(|p| p.exists());
        candle_core::safetensors::load(weights.unwrap(), &candle_core::Device::Cpu).unwrap()
    };
    let (tw, sw) = (tensors("m"), tensors("s"));
    let base: Vec<&String> = tw.keys().filter(|k| k.contains(".base.")).collect();
    assert!(!base.is_empty());
    for k in base {
        let (a, b) = (tw[k].flatten_all().unwrap(), sw[k].flatten_all().unwrap());
        assert_eq!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap(), "base tensor {k} changed");
    }
    let made = tw.keys().find(|k| k.ends_with("made.initial.weight")).unwrap();
    let (a, b) = (tw[made].flatten_all().unwrap(), sw[made].flatten_all().unwrap());
    assert_ne!(a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap(), "the transform is the student's own");
    sample("s", "gs.h5");
    let gs = read("gs.h5");
    assert!(gs.iter().all(|v| v.is_finite() && *v >= 0.0) && gs.iter().any(|&v| v > 0.0));
    assert!(!d.join("bad").join("model.json").exists());

    // Each response's log-density in photon space: the flow's density plus the preprocessing's
    // log|det|, seeded; the student's transform gives other numbers.
    let log_prob = |model: &str, seed: &str, out: &str| {
        ok(
            d,
            &[
                "log-prob",
                "--model",
                model,
                "--showers",
                "zdc.h5",
                "--seed",
                seed,
                "--batch-size",
                "64",
                "--output",
                out,
            ],
        );
        let _g = common::hdf5_in_process();
        let f = hdf5::File::open(d.join(out)).unwrap();
        let get = |n: &str| f.dataset(n).unwrap().read_raw::<f64>().unwrap();
        (get("log_prob"), get("log_q"), get("log_det"), get("photon_sum"))
    };
    let (lp, q, det, sums) = log_prob("m", "1", "lp.h5");
    assert_eq!(lp.len(), 200);
    for i in 0..200 {
        assert!(lp[i].is_finite() && (lp[i] - (q[i] + det[i])).abs() < 1e-9 * (1.0 + lp[i].abs()), "event {i}");
    }
    let file_sums = {
        let _g = common::hdf5_in_process();
        zdcflow::data::zdc::ZdcFile::open(&d.join("zdc.h5")).unwrap().conditions.photon_sum
    };
    assert!(sums.iter().zip(&file_sums).all(|(a, &b)| *a == b.max(0.0) as f64));
    assert_eq!(log_prob("m", "1", "lp2.h5").0, lp, "same seed, same densities");
    assert_ne!(log_prob("m", "2", "lp3.h5").0, lp, "the noise comes from the seed");
    assert_ne!(log_prob("s", "1", "lp-s.h5").1, q, "the student's flow gives other densities");
}

#[test]
fn three_imported_icaloflow_flows_sample_evaluate_and_distil() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = common::ds2_imported_teacher(d, "t");
    let (f1, f2, f3) = (ckpt("ds2-flow1.pt"), ckpt("ds2-flow2.pt"), ckpt("ds2-flow3.pt"));
    assert!(out.contains("Ds2 teacher"), "{out}");
    let m = model_json(&d.join("t"));
    assert_eq!(m["detector"], "ds2");
    assert_eq!(m["dtype"], "f64");
    assert_eq!(m["preprocessing"]["calo"]["layer_scale_mev"], 6.5e4);
    for (u, f, c) in [("flow1", 45, 1), ("flow2", 144, 2), ("flow3", 144, 191)] {
        assert_eq!(m["units"][u]["flow"]["features"], f, "{u}");
        assert_eq!(m["units"][u]["flow"]["context_features"], c, "{u}");
    }
    ok(d, &["sample", "--model", "t", "--events", "12", "--seed", "1", "--output", "g.h5"]);
    // bf16 products are for float32 models: one line naming the model, no output file.
    let err = fails(d, &["sample", "--model", "t", "--events", "2", "--precision", "bf16", "--output", "g16.h5"]);
    assert!(err.contains("float64") && err.contains('t') && !d.join("g16.h5").exists(), "{err}");
    ok(d, &["evaluate", "--reference", "ds2.h5", "--generated", "g.h5", "--output", "metrics.json"]);
    let s = std::fs::read_to_string(d.join("metrics.json")).unwrap();
    assert!(s.contains("separation_power"), "{s}");
    ok(
        d,
        &[
            "distill-student",
            "--config",
            &config("smoke-ds2-student.toml"),
            "--teacher",
            "t",
            "--set",
            "data.path=ds2.h5",
            "--set",
            "train.epochs=1",
            "--set",
            "student.flow2.train.max_batches=2",
            "--set",
            "student.flow3.train.max_batches=2",
            "--output-dir",
            "s",
        ],
    );
    ok(d, &["sample", "--model", "s", "--events", "4", "--seed", "1", "--output", "gs.h5"]);

    // Each shower's log-density under the factorisation, with the preprocessing's log|det|.
    ok(d, &["log-prob", "--model", "t", "--showers", "ds2.h5", "--batch-size", "25", "--output", "lp.h5"]);
    ok(d, &["log-prob", "--model", "s", "--showers", "ds2.h5", "--output", "lp-s.h5"]);
    {
        let _g = common::hdf5_in_process();
        let f = hdf5::File::open(d.join("lp.h5")).unwrap();
        let get = |n: &str| f.dataset(n).unwrap().read_raw::<f64>().unwrap();
        let lp = get("log_prob");
        assert_eq!(lp.len(), 60);
        assert!(lp.iter().all(|v| v.is_finite()), "{lp:?}");
        let (q1, q2, q3, det) = (get("log_q_flow1"), get("log_q_flow2"), get("log_q_flow3"), get("log_det"));
        for i in 0..60 {
            assert!((lp[i] - (q1[i] + q2[i] + q3[i] + det[i])).abs() < 1e-9 * (1.0 + lp[i].abs()));
        }
        let s = hdf5::File::open(d.join("lp-s.h5")).unwrap().dataset("log_prob").unwrap().read_raw::<f64>().unwrap();
        assert_ne!(s, lp, "the student's flows give other densities");
    }
    let err = fails(d, &["log-prob", "--model", "t", "--showers", "ds2.h5", "--output", "ds2.h5"]);
    assert!(err.contains("--output"), "{err}");
    // Flow-2 given Flow-3's checkpoint: the shapes say so.
    let err = fails(
        d,
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
            &f3,
            "--flow3",
            &f3,
            "--output-dir",
            "bad",
        ],
    );
    assert!(err.contains("ds2-flow3.pt") && err.contains("flow2"), "{err}");
    let err = fails(
        d,
        &["import-nflows", &f1, "--kind", "maf", "--detector", "ds2", "--data", "ds2.h5", "--output-dir", "bad"],
    );
    assert!(err.contains("--flow2"), "{err}");
    let err = fails(
        d,
        &[
            "import-nflows",
            &f1,
            "--kind",
            "maf",
            "--detector",
            "ds3",
            "--data",
            "ds2.h5",
            "--flow2",
            &f2,
            "--flow3",
            &f3,
            "--output-dir",
            "bad",
        ],
    );
    assert!(err.contains("dataset 2"), "{err}");
}
