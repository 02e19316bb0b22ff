//! `zdcflow export-onnx` writes a graph that computes what `zdcflow flow to-data` computes.
//!
//! Imported nflows IAFs (both spline conventions: `icaloflow-iaf` and nflows' own `iaf`) and a
//! zdcflow IAF are exported; the graph is evaluated in Rust with candle-onnx's evaluator and, where a
//! Python with `onnxruntime` is found (`ZDCFLOW_PYTHON`, the peer venv `~/.cache/zdcflow-peer`, or
//! `python3`), with ONNX Runtime through `scripts/onnx_run.py`; both are compared with `flow to-data`
//! on the same z within 1e-4·(1 + |x|) (float64 agrees to ~1e-13).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use common::{fails, ok, path};
use ndarray::Array2;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nflows");

fn python_with_onnxruntime() -> Option<String> {
    let mut candidates: Vec<String> = std::env::var("ZDCFLOW_PYTHON").into_iter().collect();
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(format!("{home}/.cache/zdcflow-peer/bin/python"));
    }
    candidates.push("python3".into());
    candidates
        .into_iter()
        .find(|p| Command::new(p).args(["-c", "import onnxruntime, numpy"]).output().is_ok_and(|o| o.status.success()))
}

fn read(p: &Path) -> Vec<f64> {
    match ndarray_npy::read_npy::<_, Array2<f64>>(p) {
        Ok(a) => a.iter().copied().collect(),
        Err(_) => ndarray_npy::read_npy::<_, Array2<f32>>(p).unwrap().iter().map(|&v| v as f64).collect(),
    }
}

fn worst(ours: &[f64], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter().zip(theirs).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0, f64::max)
}

fn tensor(p: &Path) -> Tensor {
    match ndarray_npy::read_npy::<_, Array2<f64>>(p) {
        Ok(a) => Tensor::from_vec(a.iter().copied().collect::<Vec<_>>(), a.dim(), &Device::Cpu).unwrap(),
        Err(_) => {
            let a = ndarray_npy::read_npy::<_, Array2<f32>>(p).unwrap();
            Tensor::from_vec(a.iter().copied().collect::<Vec<_>>(), a.dim(), &Device::Cpu).unwrap()
        }
    }
}

/// Exports `model`, runs `flow to-data` on (z, c) and compares the graph's outputs with it.
fn check_export(d: &Path, model: &str, z: &Path, c: &Path, python: Option<&str>, name: &str) {
    let onnx = path(d, &format!("{name}.onnx"));
    ok(d, &["export-onnx", "--model", model, "--output", &onnx]);
    let xs = d.join(format!("{name}.xs.npy"));
    let s = |p: &Path| p.display().to_string();
    ok(
        d,
        &[
            "--threads",
            "1",
            "flow",
            "to-data",
            "--model",
            model,
            "--input",
            &s(z),
            "--context",
            &s(c),
            "--output",
            &s(&xs),
        ],
    );
    let want = read(&xs);

    let graph = candle_onnx::read_file(&onnx).unwrap();
    let inputs = HashMap::from([("z".to_string(), tensor(z)), ("context".to_string(), tensor(c))]);
    let out = candle_onnx::simple_eval(&graph, inputs).unwrap();
    let x = out["x"].to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let e = worst(&x, &want);
    eprintln!("{name}: candle-onnx {e:.2e}");
    assert!(e <= 1e-4, "{name}: the ONNX graph (candle-onnx) differs from flow to-data by {e:.3e}");

    match python {
        Some(py) => {
            let out = d.join(format!("{name}.ort.npy"));
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/onnx_run.py");
            let r = Command::new(py).args([script, &onnx, &s(z), &s(c), &s(&out)]).output().unwrap();
            assert!(r.status.success(), "{name}: onnxruntime failed: {}", String::from_utf8_lossy(&r.stderr));
            let e = worst(&read(&out), &want);
            eprintln!("{name}: onnxruntime {e:.2e}");
            assert!(e <= 1e-4, "{name}: the ONNX graph (onnxruntime) differs from flow to-data by {e:.3e}");
        }
        None => eprintln!("{name}: no Python with onnxruntime found, ONNX Runtime not checked (candle-onnx was)"),
    }
}

fn save_reference_inputs(d: &Path, json: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let f64_ = r["architecture"]["dtype"] == "f64";
    let m = |k: &str| {
        let rows: Vec<Vec<f64>> = serde_json::from_value(r[k].clone()).unwrap();
        Array2::from_shape_vec((rows.len(), rows[0].len()), rows.into_iter().flatten().collect()).unwrap()
    };
    let stem = Path::new(json).file_stem().unwrap().to_string_lossy().to_string();
    let (zp, cp) = (d.join(format!("{stem}.z.npy")), d.join(format!("{stem}.c.npy")));
    for (a, p) in [(m("z"), &zp), (m("context"), &cp)] {
        if f64_ {
            ndarray_npy::write_npy(p, &a).unwrap();
        } else {
            ndarray_npy::write_npy(p, &a.mapv(|v| v as f32)).unwrap();
        }
    }
    (zp, cp)
}

#[test]
fn exported_onnx_graphs_of_imported_iafs_match_flow_to_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let python = python_with_onnxruntime();
    for (name, kind) in [("icaloflow-iaf-small", "icaloflow-iaf"), ("nflows-iaf", "iaf")] {
        let model = path(d, &format!("m-{name}"));
        ok(d, &["import-nflows", &format!("{DATA}/{name}.pt"), "--kind", kind, "--output-dir", &model]);
        let (z, c) = save_reference_inputs(d, &format!("{DATA}/{name}.json"));
        check_export(d, &model, &z, &c, python.as_deref(), name);
        // The same flow in float32.
        let model32 = path(d, &format!("m32-{name}"));
        ok(
            d,
            &[
                "import-nflows",
                &format!("{DATA}/{name}.pt"),
                "--kind",
                kind,
                "--dtype",
                "f32",
                "--output-dir",
                &model32,
            ],
        );
        let (z32, c32) = (d.join(format!("{name}.z32.npy")), d.join(format!("{name}.c32.npy")));
        for (from, to) in [(&z, &z32), (&c, &c32)] {
            let a = ndarray_npy::read_npy::<_, Array2<f64>>(from).unwrap();
            ndarray_npy::write_npy(to, &a.mapv(|v| v as f32)).unwrap();
        }
        check_export(d, &model32, &z32, &c32, python.as_deref(), &format!("{name}-f32"));
    }
}

#[test]
fn export_onnx_refuses_a_maf_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = path(d, "maf");
    ok(d, &["import-nflows", &format!("{DATA}/zdc-maf-small.pt"), "--kind", "maf", "--output-dir", &model]);
    let e = fails(d, &["export-onnx", "--model", &model, "--output", &path(d, "maf.onnx")]);
    assert!(e.contains("distil a student first"), "{e}");
    assert!(!d.join("maf.onnx").exists());
}

/// `export-onnx --postprocess` on a smoke ZDC student: the graph (raw particle features, photon
/// sums and noise in, photon counts out), run by ONNX Runtime, gives the counts zdcflow computes
/// from the same noise: `flow to-data` on the conditions `sample` builds, then `sample`'s own noise
/// removal (library functions, the code `sample` runs). Counts are exact except at rounding ties,
/// where the graph's float32 flow output and candle's may round to neighbouring counts.
#[test]
fn postprocessed_zdc_graph_gives_the_photon_counts_of_zdcflow() {
    use rand::{Rng, SeedableRng};
    use zdcflow::export::zdc::{self, Denoise};
    let Some(python) = python_with_onnxruntime() else {
        eprintln!("no Python with onnxruntime found: the postprocessed graph is not checked");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["generate", "zdc", "--events", "400", "--seed", "3", "--output", "zdc.h5"]);
    let teacher = [
        "train-teacher",
        "--config",
        &common::config("smoke-zdc.toml"),
        "--set",
        "data.path=zdc.h5",
        "--set",
        "train.epochs=1",
        "--set",
        "flow.hidden_features=16",
        "--set",
        "photon_sum.epochs=1",
        "--output-dir",
        "t",
    ];
    ok(d, &["--threads", "1"].iter().chain(teacher.iter()).copied().collect::<Vec<_>>());
    let student = [
        "--threads",
        "1",
        "distill-student",
        "--config",
        &common::config("smoke-zdc-student.toml"),
        "--teacher",
        "t",
        "--set",
        "data.path=zdc.h5",
        "--set",
        "train.epochs=1",
        "--output-dir",
        "s",
    ];
    ok(d, &student);

    // The first 64 events' particles and photon sums, and seeded standard-normal noise.
    let n = 64;
    let (particles, sums) = {
        let _hdf5 = common::hdf5_in_process();
        let f = zdcflow::data::zdc::ZdcFile::open(&d.join("zdc.h5")).unwrap();
        (f.conditions.particles[..n * 9].to_vec(), f.conditions.photon_sum[..n].to_vec())
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let z: Vec<f32> = (0..n * 1936)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect();
    let (prep, scaler) = zdc::model_processing(&d.join("s")).unwrap();
    let ctx = zdc::flow_conditions(&scaler, &particles, &sums);
    let save = |name: &str, v: &[f32], cols: usize| {
        let p = d.join(name);
        ndarray_npy::write_npy(&p, &Array2::from_shape_vec((v.len() / cols, cols), v.to_vec()).unwrap()).unwrap();
        p.display().to_string()
    };
    let (zp, cp, pp, sp) =
        (save("z.npy", &z, 1936), save("c.npy", &ctx, 10), save("p.npy", &particles, 9), save("s.npy", &sums, 1));
    let yp = path(d, "y.npy");
    ok(
        d,
        &[
            "--threads",
            "1",
            "flow",
            "to-data",
            "--model",
            "s",
            "--unit",
            "flow",
            "--input",
            &zp,
            "--context",
            &cp,
            "--output",
            &yp,
        ],
    );
    let ys: Vec<f32> = read(Path::new(&yp)).into_iter().map(|v| v as f32).collect();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/onnx_run.py");
    for variant in [Denoise::Round, Denoise::FloorRecalc] {
        let name = variant.name();
        let onnx = path(d, &format!("{name}.onnx"));
        ok(d, &["export-onnx", "--model", "s", "--postprocess", "--denoise", name, "--output", &onnx]);
        let out = path(d, &format!("{name}.photons.npy"));
        let feeds = [format!("z={zp}"), format!("particle={pp}"), format!("photon_sum={sp}")];
        let r = Command::new(&python).arg(script).arg(&onnx).args(&feeds).arg(&out).output().unwrap();
        assert!(r.status.success(), "{name}: onnxruntime failed: {}", String::from_utf8_lossy(&r.stderr));
        let got = read(Path::new(&out));
        let want = zdc::photons_from_flow_output(&prep, variant, &ys, &sums);
        let before = zdc::values_before_rounding(&prep, variant, &ys, &sums);
        assert_eq!(got.len(), want.len());
        assert!(want.iter().sum::<f32>() > 0.0, "{name}: the reference has no photons");
        let mut differ = 0;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if *g == *w as f64 {
                continue;
            }
            differ += 1;
            assert!((g - *w as f64).abs() <= 1.0, "{name}: pixel {i}: graph {g}, zdcflow {w}");
            if variant == Denoise::Round {
                // A tie of round(v): v within 1e-3 of k + 1/2.
                let v = before[i];
                assert!(((v - v.floor()) - 0.5).abs() < 1e-3, "{name}: pixel {i}: graph {g}, zdcflow {w}, v = {v}");
            }
        }
        eprintln!("{name}: {differ} of {} counts differ (by one photon, at rounding ties)", got.len());
        assert!(differ * 1000 <= got.len(), "{name}: {differ} of {} counts differ", got.len());
    }
    // A CaloChallenge-style misuse: --postprocess on a flows directory is one clear line.
    let e = fails(
        d,
        &["export-onnx", "--model", "s", "--unit", "photon_sum", "--postprocess", "--output", &path(d, "x.onnx")],
    );
    assert!(e.contains("--postprocess"), "{e}");
}
