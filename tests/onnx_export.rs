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

/// Exports the ZDC model `model` with `--postprocess` (two noise removals), runs each graph file
/// with ONNX Runtime on batches of 1, 7 and 1000 events (the events of `zdc.h5`, repeated) and
/// compares with the photon counts zdcflow computes from the same noise: the image flow through
/// its base (the code `sample` runs) on the conditions `sample` builds, then `sample`'s own noise
/// removal. Counts are exact except at rounding ties, where the graph's float32 flow output and
/// candle's may round to neighbours.
fn check_postprocessed_zdc(d: &Path, model: &str, python: &str) {
    use rand::{Rng, SeedableRng};
    use zdcflow::export::zdc::{self, Denoise};
    let (all_particles, all_sums) = {
        let _hdf5 = common::hdf5_in_process();
        let f = zdcflow::data::zdc::ZdcFile::open(&d.join("zdc.h5")).unwrap();
        (f.conditions.particles.clone(), f.conditions.photon_sum.clone())
    };
    let events = all_sums.len();
    let dir = d.join(model);
    let (prep, scaler) = zdc::model_processing(&dir).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/onnx_run.py");
    for variant in [Denoise::Round, Denoise::FloorRecalc, Denoise::SubFloorFill] {
        let name = format!("{model}.{}", variant.name());
        let onnx = path(d, &format!("{name}.onnx"));
        ok(d, &["export-onnx", "--model", model, "--postprocess", "--denoise", variant.name(), "--output", &onnx]);
        for n in [1, 7, 1000] {
            let rows = (0..n).map(|i| i % events);
            let particles: Vec<f32> = rows.clone().flat_map(|i| all_particles[i * 9..(i + 1) * 9].to_vec()).collect();
            let sums: Vec<f32> = rows.map(|i| all_sums[i]).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17 + n as u64);
            let z: Vec<f32> = (0..n * 1936)
                .map(|_| {
                    let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
                    ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
                })
                .collect();
            let ctx = zdc::flow_conditions(&scaler, &particles, &sums);
            let ys = zdc::flow_output(&dir, &z, &ctx).unwrap();
            let save = |stem: &str, v: &[f32], cols: usize| {
                let p = d.join(format!("{name}.{n}.{stem}"));
                let a = Array2::from_shape_vec((v.len() / cols, cols), v.to_vec()).unwrap();
                ndarray_npy::write_npy(&p, &a).unwrap();
                p.display().to_string()
            };
            let (zp, pp, sp) = (save("z.npy", &z, 1936), save("p.npy", &particles, 9), save("s.npy", &sums, 1));
            let out = path(d, &format!("{name}.{n}.photons.npy"));
            let feeds = [format!("z={zp}"), format!("particle={pp}"), format!("photon_sum={sp}")];
            let r = Command::new(python).arg(script).arg(&onnx).args(&feeds).arg(&out).output().unwrap();
            assert!(r.status.success(), "{name}: onnxruntime failed: {}", String::from_utf8_lossy(&r.stderr));
            let got = read(Path::new(&out));
            let want = zdc::photons_from_flow_output(&prep, variant, &ys, &sums);
            let before = zdc::values_before_rounding(&prep, variant, &ys, &sums);
            assert_eq!(got.len(), want.len());
            assert!(n < 1000 || want.iter().sum::<f32>() > 0.0, "{name}: the reference has no photons");
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
            eprintln!("{name}, batch {n}: {differ} of {} counts differ (by one photon, at rounding ties)", got.len());
            assert!(differ * 1000 <= got.len().max(1000), "{name}: {differ} of {} counts differ", got.len());
        }
    }
}

/// Distils the smoke ZDC student `s` (one epoch, one thread) from the teacher `t` in `d`.
fn distil_smoke_zdc_student(d: &Path) {
    let config = common::config("smoke-zdc-student.toml");
    ok(
        d,
        &[
            "--threads",
            "1",
            "distill-student",
            "--config",
            &config,
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
}

/// `export-onnx --postprocess` on a smoke ZDC student (standard-normal base).
#[test]
fn postprocessed_zdc_graph_gives_the_photon_counts_of_zdcflow() {
    let Some(python) = python_with_onnxruntime() else {
        eprintln!("no Python with onnxruntime found: the postprocessed graph is not checked");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["generate", "zdc", "--events", "400", "--seed", "3", "--output", "zdc.h5"]);
    let teacher = common::zdc_teacher_args(&["train.epochs=1", "flow.hidden_features=16", "photon_sum.epochs=1"], "t");
    ok(d, &["--threads", "1"].into_iter().chain(common::strs(&teacher)).collect::<Vec<_>>());
    distil_smoke_zdc_student(d);
    check_postprocessed_zdc(d, "s", &python);
    // A CaloChallenge-style misuse: --postprocess on a flows directory is one clear line.
    let e = fails(
        d,
        &["export-onnx", "--model", "s", "--unit", "photon_sum", "--postprocess", "--output", &path(d, "x.onnx")],
    );
    assert!(e.contains("--postprocess"), "{e}");
}

/// `export-onnx --postprocess` on a student of an imported nflows teacher with a conditional
/// base (`ConditionalDiagonalNormal`): the graph maps the noise through the base's encoder too.
#[test]
fn postprocessed_zdc_graph_of_a_conditional_base_student_gives_the_photon_counts_of_zdcflow() {
    let Some(python) = python_with_onnxruntime() else {
        eprintln!("no Python with onnxruntime found: the postprocessed graph is not checked");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["generate", "zdc", "--events", "200", "--seed", "3", "--output", "zdc.h5"]);
    let pt = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nflows-detector/zdc-condbase.pt");
    ok(d, &["import-nflows", pt, "--kind", "maf", "--detector", "zdc", "--data", "zdc.h5", "--output-dir", "t"]);
    distil_smoke_zdc_student(d);
    check_postprocessed_zdc(d, "s", &python);
}

/// `export-onnx --postprocess` on a CaloChallenge student (distilled from imported iCaloFlow
/// teachers, float64): the Flow-2 and Flow-3 graphs, run by ONNX Runtime on random energies,
/// layers and noise, give the voxels zdcflow's sampler computes for that layer from the same draws.
#[test]
fn postprocessed_calo_layer_graphs_give_the_voxels_of_zdcflow() {
    use rand::{Rng, SeedableRng};
    use zdcflow::config::FlowName;
    use zdcflow::export::calo::{layer_voxels, LayerInputs};
    let Some(python) = python_with_onnxruntime() else {
        eprintln!("no Python with onnxruntime found: the postprocessed graphs are not checked");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::ds2_imported_teacher(d, "t");
    let distill = [
        "distill-student",
        "--config",
        &common::config("smoke-ds2-student.toml"),
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
    ];
    ok(d, &distill);

    let (n, v) = (24, 144);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let normal = |rng: &mut rand_chacha::ChaCha8Rng| {
        let (u, w): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * w).cos()) as f32
    };
    // Energies are 0 (an empty layer) or well above the 15 keV threshold, as Flow-1 gives them.
    let energy = |rng: &mut rand_chacha::ChaCha8Rng| {
        if rng.random::<f64>() < 0.15 {
            0.0
        } else {
            10f64.powf(rng.random_range(0.0..4.5)) as f32
        }
    };
    let z: Vec<f32> = (0..n * v).map(|_| normal(&mut rng)).collect();
    let e_inc: Vec<f32> = (0..n).map(|_| 10f64.powf(rng.random_range(3.0..6.0)) as f32).collect();
    let e_layer: Vec<f32> = (0..n).map(|_| energy(&mut rng)).collect();
    let e_prev: Vec<f32> = (0..n).map(|_| energy(&mut rng)).collect();
    let prev_layer: Vec<f32> =
        (0..n * v).map(|_| if rng.random::<f64>() < 0.6 { 0.0 } else { rng.random_range(0.0f32..300.0) }).collect();
    let prev_noise: Vec<f32> = (0..n * v).map(|_| rng.random::<f64>() as f32).collect();
    let layer: Vec<i64> = (0..n as i64).map(|i| 1 + (i * 7) % 44).collect();
    let inputs = LayerInputs {
        z: &z,
        e_inc: &e_inc,
        e_layer: &e_layer,
        e_prev: &e_prev,
        prev_layer: &prev_layer,
        prev_noise: &prev_noise,
        layer: &layer,
    };
    let save = |name: &str, v: &[f32], cols: usize| {
        let p = d.join(name);
        let a = Array2::from_shape_vec((v.len() / cols, cols), v.iter().map(|&x| x as f64).collect()).unwrap();
        ndarray_npy::write_npy(&p, &a).unwrap();
        p.display().to_string()
    };
    let layer_path = d.join("layer.npy");
    ndarray_npy::write_npy(&layer_path, &Array2::from_shape_vec((n, 1), layer.clone()).unwrap()).unwrap();
    let mut feeds = vec![
        format!("z={}", save("z.npy", &z, v)),
        format!("e_inc={}", save("e_inc.npy", &e_inc, 1)),
        format!("e_layer={}", save("e_layer.npy", &e_layer, 1)),
    ];
    let flow3_feeds = [
        format!("e_prev={}", save("e_prev.npy", &e_prev, 1)),
        format!("prev_layer={}", save("prev_layer.npy", &prev_layer, v)),
        format!("prev_noise={}", save("prev_noise.npy", &prev_noise, v)),
        format!("layer={}", layer_path.display()),
    ];
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/onnx_run.py");
    for flow in [FlowName::Flow2, FlowName::Flow3] {
        let name = flow.as_str();
        if flow == FlowName::Flow3 {
            feeds.extend(flow3_feeds.iter().cloned());
        }
        let onnx = path(d, &format!("{name}.onnx"));
        ok(d, &["export-onnx", "--model", "s", "--postprocess", "--unit", name, "--output", &onnx]);
        let out = path(d, &format!("{name}.voxels.npy"));
        let r = Command::new(&python).arg(script).arg(&onnx).args(&feeds).arg(&out).output().unwrap();
        assert!(r.status.success(), "{name}: onnxruntime failed: {}", String::from_utf8_lossy(&r.stderr));
        let got = read(Path::new(&out));
        let want: Vec<f64> = layer_voxels(&d.join("s"), flow, &inputs).unwrap().iter().map(|&x| x as f64).collect();
        assert!(want.iter().filter(|&&x| x > 0.0).count() > n, "{name}: the reference layers are almost empty");
        let w = worst(&got, &want);
        eprintln!("{name}: worst relative difference {w:.2e} over {} voxels", got.len());
        assert!(w < 1e-5, "{name}: graph and zdcflow differ by {w}");
    }
    // Flow-1 has no layer postprocessing; the refusal names the units that do.
    let e =
        fails(d, &["export-onnx", "--model", "s", "--postprocess", "--unit", "flow1", "--output", &path(d, "f1.onnx")]);
    assert!(e.contains("flow2 or flow3"), "{e}");
    assert!(!d.join("f1.onnx").exists());
}

/// Trains smoke teachers (Flow-1/2/3) in `dtype` (f32 or f64) for CaloChallenge dataset `ds` (2
/// or 3) on a generated file, with the teacher's `[model]` settings `model_sets` (`--set` values),
/// and distils their students; returns the student's directory name.
fn smoke_calo_student(d: &Path, ds: u8, events: usize, dtype: &str, model_sets: &[&str]) -> String {
    let file = format!("ds{ds}.h5");
    if !d.join(&file).exists() {
        ok(d, &["generate", "calo", "--dataset", &ds.to_string(), "--events", &events.to_string(), "--output", &file]);
    }
    let (data, dt) = (format!("data.path={file}"), format!("model.dtype={dtype}"));
    let tag = format!("{dtype}-{}", model_sets.len());
    let (teacher, student) = (format!("t-{tag}"), format!("s-{tag}"));
    let t_config = common::config(&format!("smoke-ds{ds}.toml"));
    let s_config = common::config(&format!("smoke-ds{ds}-student.toml"));
    let t = ["train-teacher", "--config", &t_config, "--set", &data, "--set", &dt, "--set", "train.epochs=1"];
    let t_limit = ["--set", "flow3.train.max_batches=4", "--output-dir", &teacher];
    let extra: Vec<&str> = model_sets.iter().flat_map(|s| ["--set", *s]).collect();
    ok(d, &t.iter().chain(&t_limit).chain(&extra).copied().collect::<Vec<_>>());
    let s = ["distill-student", "--config", &s_config, "--teacher", &teacher, "--set", &data, "--set", &dt];
    let s_limit = ["--set", "train.epochs=1", "--set", "student.flow3.train.max_batches=2", "--output-dir", &student];
    ok(d, &s.iter().chain(&s_limit).copied().collect::<Vec<_>>());
    student
}

/// Log-uniform incident energies in 1 GeV – 1 TeV (MeV), as `sample --events` draws them.
fn energies(n: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| 10f64.powf(rng.random_range(3.0..6.0)) as f32).collect()
}

/// Writes the whole-shower graph's inputs for `e_inc` and `noise` as .npy files; returns the
/// `name=path` feeds of `scripts/onnx_run.py`.
fn save_shower_inputs(d: &Path, tag: &str, e_inc: &[f32], noise: &zdcflow::export::shower::ShowerNoise) -> Vec<String> {
    use ndarray::Array3;
    let (n, v, l) = (noise.events, noise.voxels, 44);
    let save2 = |name: &str, x: &[f32], cols: usize| {
        let p = d.join(format!("{tag}.{name}.npy"));
        ndarray_npy::write_npy(&p, &Array2::from_shape_vec((n, cols), x.to_vec()).unwrap()).unwrap();
        format!("{name}={}", p.display())
    };
    let save3 = |name: &str, x: &[f32]| {
        let p = d.join(format!("{tag}.{name}.npy"));
        ndarray_npy::write_npy(&p, &Array3::from_shape_vec((n, l, v), x.to_vec()).unwrap()).unwrap();
        format!("{name}={}", p.display())
    };
    vec![
        save2("e_inc", e_inc, 1),
        save2("noise_energies", &noise.energies, 45),
        save2("noise_first_layer", &noise.first_layer, v),
        save3("noise_layers", &noise.layers),
        save3("noise_patterns", &noise.patterns),
    ]
}

/// How a graph's showers compare with zdcflow's, voxel by voxel after the threshold.
struct ShowerComparison {
    voxels: usize,
    /// Voxels on which the threshold decided differently (one is zero, the other not).
    crossed: usize,
    /// Relative differences of the voxels both keep, sorted.
    relative: Vec<f64>,
}

impl ShowerComparison {
    fn new(got: &[f64], want: &[f32]) -> Self {
        assert_eq!(got.len(), want.len());
        let mut crossed = 0;
        let mut relative = Vec::new();
        for (&g, &w) in got.iter().zip(want) {
            let w = w as f64;
            if (g == 0.0) != (w == 0.0) {
                crossed += 1;
            } else if w != 0.0 {
                relative.push((g - w).abs() / w.abs());
            }
        }
        relative.sort_by(f64::total_cmp);
        Self { voxels: got.len(), crossed, relative }
    }

    fn worst(&self) -> f64 {
        self.relative.last().copied().unwrap_or(0.0)
    }

    fn quantile(&self, q: f64) -> f64 {
        self.relative.get(((self.relative.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0.0)
    }

    /// Voxels whose relative difference exceeds `tol`.
    fn above(&self, tol: f64) -> usize {
        self.relative.len() - self.relative.partition_point(|&r| r <= tol)
    }

    fn summary(&self) -> String {
        format!(
            "{} voxels: {} cross the threshold differently; relative difference median {:.1e}, 99.9% {:.1e}, worst \
             {:.1e}; {} above 1e-5",
            self.voxels,
            self.crossed,
            self.quantile(0.5),
            self.quantile(0.999),
            self.worst(),
            self.above(1e-5)
        )
    }
}

/// Runs the whole-shower graph `onnx` of the model `model` under ONNX Runtime on `n` showers and
/// compares them with what zdcflow's sampler generates from the same draws (the noise of
/// `sample --seed 7`).
fn check_whole_shower(d: &Path, python: &str, model: &str, onnx: &str, n: usize, tag: &str) -> ShowerComparison {
    use zdcflow::export::shower::sample_with_noise;
    let e_inc = energies(n, n as u64);
    let (want, noise) = sample_with_noise(&d.join(model), &e_inc, 7, 0).unwrap();
    let feeds = save_shower_inputs(d, tag, &e_inc, &noise);
    let out = path(d, &format!("{tag}.showers.npy"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/onnx_run.py");
    let r = Command::new(python).arg(script).arg(onnx).args(&feeds).arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{tag}: onnxruntime failed: {stderr}");
    assert!(!stderr.contains("not used by any node"), "{tag}: the graph stores an unused initializer: {stderr}");
    let got = read(Path::new(&out));
    let nonzero = want.iter().filter(|&&x| x > 0.0).count();
    assert!(nonzero >= n * 45, "{tag}: zdcflow's showers are almost empty ({nonzero} voxels > 0)");
    let c = ShowerComparison::new(&got, &want);
    eprintln!("{tag}: {n} showers ({nonzero} voxels > 0 in zdcflow's), {}", c.summary());
    c
}

/// A float64 model's graph computes zdcflow's showers: equal to the float32 rounding of
/// `sample`'s output (which is written in float32), no voxel crossing the threshold differently.
fn assert_exact(c: &ShowerComparison, tag: &str) {
    assert!(c.crossed == 0 && c.worst() <= 1e-6, "{tag}: float64 graph and zdcflow differ: {}", c.summary());
}

/// A float32 model's graph against zdcflow's float32 sampler. The two runtimes' float32 rounding
/// differs (ONNX Runtime's Softmax/Exp/MatMul against zdcflow's kernels), and the rational-quadratic
/// spline amplifies it: its bin widths are differences of knots near ±B (relative rounding
/// ~ulp(B)/width, ~1e-5 per evaluation), and every Flow-3 step is conditioned on the previous
/// layer, so differences travel through 45 layers. Per voxel most agree within 1e-5; the bounds
/// here are a few times what the smoke models show (median 3e-6, 99.9 % 3e-4, worst 6e-3 on 1000
/// DS2 showers); float64 models agree exactly ([`assert_exact`]), so the formulas are the sampler's.
fn assert_float32_close(c: &ShowerComparison, tag: &str) {
    assert!(c.crossed * 100_000 <= c.voxels, "{tag}: too many voxels cross the threshold: {}", c.summary());
    assert!(c.quantile(0.5) <= 1e-5, "{tag}: median relative difference above 1e-5: {}", c.summary());
    assert!(c.quantile(0.999) <= 2e-3, "{tag}: 99.9 % relative difference above 2e-3: {}", c.summary());
    assert!(c.worst() <= 3e-2, "{tag}: a voxel differs by more than 3 %: {}", c.summary());
}

/// `export-onnx --whole-shower` on DS2 students: one graph file runs batches of 1, 7 and 1000
/// showers under ONNX Runtime and gives zdcflow's showers from the same noise (float32 model:
/// within float32 rounding, see [`assert_float32_close`]; float64 model: exactly); the noise is
/// that of `zdcflow sample`, whose output file the library call reproduces bit for bit. The MAF
/// passes written out (`--maf-passes unrolled`) give what the Loop gives.
#[test]
fn whole_shower_graph_of_a_ds2_student_gives_the_showers_of_zdcflow_sample() {
    let Some(python) = python_with_onnxruntime() else {
        eprintln!("no Python with onnxruntime found: the whole-shower graph is not checked");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = smoke_calo_student(d, 2, 300, "f32", &[]);

    // The library call is `sample`'s computation: same showers, bit for bit, for `--seed 7`.
    ok(d, &["sample", "--model", &s, "--events", "5", "--seed", "7", "--batch-size", "5", "--output", "x.h5"]);
    let (e_inc, showers) = {
        let _hdf5 = common::hdf5_in_process();
        let f = zdcflow::data::calo::CaloFile::open(&d.join("x.h5")).unwrap();
        let c = f.read(0, 5).unwrap();
        (c.incident_energies, c.showers)
    };
    let (mine, _) = zdcflow::export::shower::sample_with_noise(&d.join(&s), &e_inc, 7, 0).unwrap();
    assert!(mine == showers, "sample_with_noise differs from `zdcflow sample`");

    // zdcflow against itself: 7 showers in one batch, and one at a time (the same draws).
    let e7 = energies(7, 7);
    let (batch, _) = zdcflow::export::shower::sample_with_noise(&d.join(&s), &e7, 7, 0).unwrap();
    let mut single = Vec::new();
    for i in 0..7 {
        single.extend(zdcflow::export::shower::sample_with_noise(&d.join(&s), &e7[i..i + 1], 7, i).unwrap().0);
    }
    let c = ShowerComparison::new(&single.iter().map(|&x| x as f64).collect::<Vec<_>>(), &batch);
    eprintln!("zdcflow against itself, batch of 7 vs one at a time: {}", c.summary());

    let onnx = path(d, "s.onnx");
    ok(d, &["export-onnx", "--model", &s, "--whole-shower", "--output", &onnx]);
    for n in [1, 7, 1000] {
        let tag = format!("ds2-f32-{n}");
        assert_float32_close(&check_whole_shower(d, &python, &s, &onnx, n, &tag), &tag);
    }
    let unrolled = path(d, "s-unrolled.onnx");
    ok(d, &["export-onnx", "--model", &s, "--whole-shower", "--maf-passes", "unrolled", "--output", &unrolled]);
    let tag = "ds2-f32-unrolled-7";
    assert_float32_close(&check_whole_shower(d, &python, &s, &unrolled, 7, tag), tag);

    // Float64, with the voxel standardisation (per-layer mean/std of the logits in the graph).
    let s64 = smoke_calo_student(d, 2, 300, "f64", &["model.calo_standardise_voxels=true"]);
    let json = std::fs::read_to_string(d.join(&s64).join("model.json")).unwrap();
    assert!(json.contains("voxel_standardisation"), "the student has no voxel standardisation");
    let onnx64 = path(d, "s64.onnx");
    ok(d, &["export-onnx", "--model", &s64, "--whole-shower", "--output", &onnx64]);
    for n in [1, 7, 1000] {
        let tag = format!("ds2-f64-{n}");
        assert_exact(&check_whole_shower(d, &python, &s64, &onnx64, n, &tag), &tag);
    }

    // Bad requests are one line each, and no file.
    let e = fails(d, &["export-onnx", "--model", "t-f32-0/flow1", "--whole-shower", "--output", &path(d, "bad.onnx")]);
    assert!(e.contains("--whole-shower"), "{e}");
    let e = fails(
        d,
        &["export-onnx", "--model", &s, "--whole-shower", "--unit", "flow3", "--output", &path(d, "bad.onnx")],
    );
    assert!(e.contains("--unit"), "{e}");
    assert!(!d.join("bad.onnx").exists());
}

/// A smoke DS3 student's whole-shower graph (40 500 voxels per shower) computes zdcflow's showers
/// too (a float64 model, so that the comparison is exact; float32 DS3 smoke models differ more
/// than DS2's through their 900-voxel contexts, up to a few % in the worst of 40 500 voxels).
#[test]
fn whole_shower_graph_of_a_ds3_student_gives_the_showers_of_zdcflow() {
    let Some(python) = python_with_onnxruntime() else {
        eprintln!("no Python with onnxruntime found: the whole-shower graph is not checked");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = smoke_calo_student(d, 3, 40, "f64", &[]);
    let onnx = path(d, "s.onnx");
    ok(d, &["export-onnx", "--model", &s, "--whole-shower", "--output", &onnx]);
    for n in [1, 7] {
        let tag = format!("ds3-f64-{n}");
        assert_exact(&check_whole_shower(d, &python, &s, &onnx, n, &tag), &tag);
    }
}

/// The C++ program `scripts/onnx_cpp/onnx_showers` (ONNX Runtime's C API, the Python wheel's
/// library) runs a DS2 student's whole-shower graph on 20 showers with noise it draws itself; the
/// showers it writes are zdcflow's from that noise. It is built when `ORT_INCLUDE` names ONNX
/// Runtime's headers (no apt or pip package ships them; see scripts/onnx_cpp/build.sh), or used
/// if already built; otherwise this test says so and checks nothing.
#[test]
fn cpp_program_runs_the_whole_shower_graph_as_zdcflow_samples() {
    use ndarray::Array3;
    let here = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/onnx_cpp");
    if std::env::var_os("ORT_INCLUDE").is_some() {
        let r = Command::new("bash").arg(format!("{here}/build.sh")).output().unwrap();
        assert!(r.status.success(), "build.sh failed: {}", String::from_utf8_lossy(&r.stderr));
    }
    let program = format!("{here}/onnx_showers");
    if !Path::new(&program).exists() {
        eprintln!(
            "{program} is not built (set ORT_INCLUDE, see scripts/onnx_cpp/build.sh): the C++ run is not checked"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = smoke_calo_student(d, 2, 300, "f32", &[]);
    let onnx = path(d, "s.onnx");
    ok(d, &["export-onnx", "--model", &s, "--whole-shower", "--output", &onnx]);
    let out = d.join("cpp");
    std::fs::create_dir_all(&out).unwrap();
    let r = Command::new(&program)
        .args([&onnx, "20", "loguniform", &out.display().to_string(), "2", "5"])
        .output()
        .unwrap();
    assert!(r.status.success(), "onnx_showers failed: {}", String::from_utf8_lossy(&r.stderr));
    let two = |name: &str| -> Vec<f32> {
        let a: Array2<f32> = ndarray_npy::read_npy(out.join(format!("{name}.npy"))).unwrap();
        a.iter().copied().collect()
    };
    let three = |name: &str| -> Vec<f32> {
        let a: Array3<f32> = ndarray_npy::read_npy(out.join(format!("{name}.npy"))).unwrap();
        a.iter().copied().collect()
    };
    let noise = zdcflow::export::shower::ShowerNoise {
        events: 20,
        voxels: 144,
        energies: two("noise_energies"),
        first_layer: two("noise_first_layer"),
        layers: three("noise_layers"),
        patterns: three("noise_patterns"),
    };
    let want = zdcflow::export::shower::sample_from_noise(&d.join(&s), &two("e_inc"), &noise).unwrap();
    let got: Vec<f64> = two("showers").iter().map(|&x| x as f64).collect();
    let c = ShowerComparison::new(&got, &want);
    eprintln!("C++ (ONNX Runtime C API), 20 DS2 showers against zdcflow: {}", c.summary());
    assert!(want.iter().filter(|&&x| x > 0.0).count() >= 20 * 45, "zdcflow's showers are almost empty");
    assert_float32_close(&c, "C++");
}
