//! End to end on generated CaloChallenge dataset-2 data with the smoke configs: the three
//! iCaloFlow teachers, the Flow-2/Flow-3 students, sampling in the official layout, evaluation.

mod common;

use common::*;
use zdcflow::data::calo::CaloFile;

#[test]
fn ds2_chain_trains_three_flows_distils_samples_official_layout_and_evaluates() {
    let tmp = tmp();
    let d = tmp.path();
    ok(d, &["generate", "calo", "--dataset", "2", "--events", "200", "--seed", "4", "--output", "ds2.h5"]);
    ok(d, &["generate", "calo", "--dataset", "2", "--events", "100", "--seed", "5", "--output", "ref.h5"]);
    ok(d, &strs(&ds2_teacher_args(&["train.epochs=1", "flow3.train.max_batches=8"], "t")));
    for unit in ["flow1", "flow2", "flow3"] {
        for f in ["model.json", "best.safetensors", "last.safetensors", "metrics.jsonl"] {
            assert!(d.join("t").join(unit).join(f).exists(), "{unit}/{f} missing");
        }
    }
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
            "student.flow3.train.max_batches=4",
            "--output-dir",
            "s",
        ],
    );
    per_flow_configs_distil_into_one_student_directory(d);
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("s/model.json")).unwrap()).unwrap();
    assert_eq!(m["units"]["flow1"]["flow"]["kind"], "maf", "Flow-1 stays the teacher's MAF");
    assert_eq!(m["units"]["flow3"]["flow"]["kind"], "iaf");
    ok(d, &["sample", "--model", "s", "--events", "30", "--seed", "1", "--batch-size", "16", "--output", "gen.h5"]);
    ok(d, &["sample", "--model", "s", "--teacher", "--events", "3", "--seed", "1", "--output", "gen-teacher.h5"]);
    let gen = CaloFile::open(&d.join("gen.h5")).unwrap();
    assert_eq!((gen.events, gen.geometry.voxels()), (30, 6480));
    let c = gen.read(0, 30).unwrap();
    // bf16 products: the same draws through slightly different networks — the same incident
    // energies, showers that differ, but by little (AMX tiles for the batches of 16, the rounded
    // float32 path for the last 14 showers, or for all where the CPU has no tiles).
    ok(
        d,
        &[
            "sample",
            "--model",
            "s",
            "--events",
            "30",
            "--seed",
            "1",
            "--batch-size",
            "16",
            "--precision",
            "bf16",
            "--output",
            "gen-bf16.h5",
        ],
    );
    let low = CaloFile::open(&d.join("gen-bf16.h5")).unwrap().read(0, 30).unwrap();
    assert_eq!(low.incident_energies, c.incident_energies);
    assert_ne!(low.showers, c.showers, "bf16 products must change the showers");
    let totals = |s: &[f32]| s.chunks(6480).map(|v| v.iter().map(|&e| e as f64).sum::<f64>()).collect::<Vec<_>>();
    let mut rel: Vec<f64> =
        totals(&low.showers).iter().zip(totals(&c.showers)).map(|(a, b)| (a - b).abs() / b.max(1e-9)).collect();
    rel.sort_by(f64::total_cmp);
    assert!(rel[15] < 0.05, "median relative change of the shower energy in bf16: {}", rel[15]);
    let err = fails(d, &["sample", "--model", "s", "--events", "3", "--precision", "tf32", "--output", "gen-tf32.h5"]);
    assert!(err.contains("tf32") && !d.join("gen-tf32.h5").exists(), "{err}");
    assert!(c.incident_energies.iter().all(|&e| (1e3..=1e6).contains(&e)), "E_inc log-uniform in 1 GeV – 1 TeV");
    assert!(c.showers.iter().all(|&v| v == 0.0 || v >= 0.015), "generated voxels are 0 or above the 15 keV threshold");
    ok(
        d,
        &[
            "evaluate",
            "--reference",
            "ref.h5",
            "--generated",
            "gen.h5",
            "--output",
            "m.json",
            "--plots",
            "plots",
            "--classifier-epochs",
            "1",
            "--classifier-hidden",
            "16",
            "--classifier-layers",
            "1",
            "--classifiers",
            "low,low-normed,high",
            "--classifier-runs",
            "2",
            "--classifier-showers",
            "25",
            "--features-out",
            "features.h5",
        ],
    );
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("m.json")).unwrap()).unwrap();
    for k in ["fpd", "kpd"] {
        assert!(metrics["metrics"][k].as_f64().is_some_and(f64::is_finite), "{k}: {metrics}");
    }
    for k in ["classifier_high", "classifier_low", "classifier_low_normed"] {
        let auc = metrics["metrics"][k]["auc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auc), "{k} AUC {auc}");
        let runs = &metrics["details"]["classifier"][k]["runs"];
        assert_eq!(runs.as_array().map(Vec::len), Some(2), "{k}: two runs");
        assert!(metrics["details"]["classifier"][k]["auc_std"].as_f64().is_some(), "{k}: std");
    }
    // The subset asked for is recorded: 25 of the 30 showers per class, cut 15 / 5 / 5.
    assert_eq!(metrics["details"]["classifier"]["showers_per_class"], 25);
    assert_eq!(metrics["details"]["classifier"]["showers_available_per_class"], 30);
    assert_eq!(metrics["details"]["classifier"]["split_per_class"], serde_json::json!([15, 5, 5]));
    assert!(metrics["metrics"]["separation_power"]["mean"].as_f64().unwrap() > 0.0);
    assert!(metrics["metrics"]["separation_power"]["voxel"].as_f64().is_some());
    {
        let _guard = hdf5_in_process();
        let features = hdf5::File::open(d.join("features.h5")).unwrap();
        assert_eq!(features.dataset("generated/E_layers").unwrap().shape(), vec![30, 45]);
        assert_eq!(features.dataset("reference/Einc").unwrap().shape(), vec![100]);
    }
    for png in [
        "calo_energies.png",
        "calo_centres.png",
        "calo_widths.png",
        "calo_sparsity_radius.png",
        "calo_layer_profiles.png",
        "calo_mean_showers.png",
    ] {
        assert!(d.join("plots").join(png).exists(), "{png}");
    }
    let err = fails(d, &["evaluate", "--reference", "ref.h5", "--generated", "t/model.json"]);
    assert!(err.contains("t/model.json"), "{err}");
}

/// The fast recipe end to end: the voxel standardisation is fitted once and stored in model.json,
/// a later config adding Flow-3 to the directory reuses it (another preprocessing is refused), and
/// the model samples and scores showers.
#[test]
fn ds2_fast_recipe_stores_its_standardisation_and_samples() {
    let tmp = tmp();
    let d = tmp.path();
    ok(d, &["generate", "calo", "--dataset", "2", "--events", "120", "--seed", "6", "--output", "ds2.h5"]);
    let teacher = |flows: &str, noise: &str| {
        let settings = [
            "train.epochs=1",
            "flow3.train.max_batches=4",
            "model.calo_standardise_voxels=true",
            &format!("model.calo_noise_mev={noise}"),
            &format!("model.flows={flows}"),
        ];
        zdcflow(d, &strs(&ds2_teacher_args(&settings, "t")))
    };
    assert!(teacher(r#"["flow1","flow2"]"#, "5e-4").status.success());
    let read = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("t/model.json")).unwrap()).unwrap()
    };
    let first = read()["preprocessing"]["calo"].clone();
    assert_eq!(first["noise_mev"], 5e-4);
    let s = &first["voxel_standardisation"];
    assert_eq!((s["mean"].as_array().unwrap().len(), s["std"].as_array().unwrap().len()), (45 * 144, 45 * 144));
    assert!(s["std"].as_array().unwrap().iter().all(|x| x.as_f64().unwrap() > 0.0));
    let other = teacher(r#"["flow3"]"#, "1e-3");
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("other data or settings"));
    assert!(teacher(r#"["flow3"]"#, "5e-4").status.success(), "Flow-3 joins with the same settings");
    assert_eq!(read()["preprocessing"]["calo"], first, "the standardisation is reused, not refitted");
    ok(d, &["sample", "--model", "t", "--events", "4", "--seed", "1", "--output", "gen.h5"]);
    let c = CaloFile::open(&d.join("gen.h5")).unwrap().read(0, 4).unwrap();
    assert!(c.showers.iter().all(|v| v.is_finite() && (*v == 0.0 || *v >= 0.015)));
    assert!(c.showers.iter().any(|&v| v > 0.0));
    ok(d, &["log-prob", "--model", "t", "--showers", "ds2.h5", "--output", "lp.h5", "--batch-size", "50"]);
}

/// The papers' student configs come one per flow: Flow-2's then Flow-3's into the same directory
/// give one student with both (Flow-2 kept from the first run); distilling a flow there again
/// without --resume is refused, and with it continues that flow.
fn per_flow_configs_distil_into_one_student_directory(d: &std::path::Path) {
    let smoke = std::fs::read_to_string(config("smoke-ds2-student.toml")).unwrap();
    let (head, flows) = smoke.split_at(smoke.find("[student.flow2]").unwrap());
    let (flow2, rest) = flows.split_at(flows.find("[student.flow3]").unwrap());
    let (flow3, distill) = rest.split_at(rest.find("[distill]").unwrap());
    std::fs::write(d.join("only-flow2.toml"), format!("{head}{flow2}{distill}")).unwrap();
    std::fs::write(d.join("only-flow3.toml"), format!("{head}{flow3}{distill}")).unwrap();
    let distil = |cfg: &str| {
        vec![
            "distill-student".to_string(),
            "--config".into(),
            cfg.into(),
            "--teacher".into(),
            "t".into(),
            "--set".into(),
            "train.epochs=1".into(),
            "--set".into(),
            "train.max_batches=2".into(),
            "--output-dir".into(),
            "per-flow".into(),
        ]
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    ok(d, &args(&distil("only-flow2.toml")));
    let flow2_weights = std::fs::read(d.join("per-flow/flow2/best.safetensors")).unwrap();
    ok(d, &args(&distil("only-flow3.toml")));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("per-flow/model.json")).unwrap()).unwrap();
    assert_eq!(
        (m["units"]["flow2"]["flow"]["kind"].as_str(), m["units"]["flow3"]["flow"]["kind"].as_str()),
        (Some("iaf"), Some("iaf"))
    );
    assert_eq!(m["units"]["flow1"]["flow"]["kind"], "maf");
    assert_eq!(std::fs::read(d.join("per-flow/flow2/best.safetensors")).unwrap(), flow2_weights, "Flow-2 kept");
    let e = fails(d, &args(&distil("only-flow3.toml")));
    assert!(e.contains("already holds a distilled flow3") && e.contains("--resume"), "{e}");
    let mut resume = distil("only-flow3.toml");
    resume.push("--resume".into());
    ok(d, &args(&resume));
    assert_eq!(std::fs::read(d.join("per-flow/flow2/best.safetensors")).unwrap(), flow2_weights, "Flow-2 kept");
}
