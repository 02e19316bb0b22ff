//! nflows checkpoints imported by `zdcflow import-nflows` give nflows' own numbers.
//!
//! Each `tests/data/nflows/NAME.pt` is `torch.save({'model_state_dict': flow.state_dict()})` of an
//! nflows 0.14 `Flow`; `NAME.json` beside it holds inputs and what nflows computed with them:
//! `log_prob = flow.log_prob(x, context)` and `sample = flow._transform.inverse(z, context)`
//! (schema in tests/data/nflows/README.md). The test imports each checkpoint with the binary, runs
//! `zdcflow flow log-prob` and `zdcflow flow to-data` on the stored inputs and compares:
//! float64 within 1e-9·(1 + |v|); float32 within 1e-4·(1 + |v|) for outputs and 1e-3·(1 + |v|)
//! for log-probabilities, or the file's own `architecture.tolerance` (`zdc-maf-published`: the
//! published zdc-fast-simulations module layout, `BaseContext` encoder, 1e-5). Set
//! `ZDCFLOW_NFLOWS_REFERENCE` to a directory of further pairs.

mod common;

use std::path::{Path, PathBuf};

use common::{fails, ok, path};
use ndarray::Array2;

fn pairs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nflows"))];
    if let Ok(d) = std::env::var("ZDCFLOW_NFLOWS_REFERENCE") {
        dirs.push(PathBuf::from(d));
    }
    let mut out = Vec::new();
    for d in dirs {
        let mut here: Vec<PathBuf> = std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json") && p.with_extension("pt").exists())
            .collect();
        here.sort();
        assert!(!here.is_empty(), "{} holds no NAME.json + NAME.pt pairs", d.display());
        out.extend(here);
    }
    out
}

fn matrix(v: &serde_json::Value) -> Array2<f64> {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).expect("a matrix");
    let (n, d) = (rows.len(), rows[0].len());
    Array2::from_shape_vec((n, d), rows.into_iter().flatten().collect()).unwrap()
}

fn save(a: &Array2<f64>, f64_: bool, p: &Path) {
    if f64_ {
        ndarray_npy::write_npy(p, a).unwrap();
    } else {
        ndarray_npy::write_npy(p, &a.mapv(|v| v as f32)).unwrap();
    }
}

fn load(p: &Path, f64_: bool) -> Vec<f64> {
    if f64_ {
        ndarray_npy::read_npy::<_, ndarray::ArrayD<f64>>(p).unwrap().iter().copied().collect()
    } else {
        ndarray_npy::read_npy::<_, ndarray::ArrayD<f32>>(p).unwrap().iter().map(|&v| v as f64).collect()
    }
}

/// The largest |ours − theirs| / (1 + |theirs|).
fn worst(ours: &[f64], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter().zip(theirs).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0, f64::max)
}

#[test]
fn imported_nflows_checkpoints_reproduce_nflows_log_prob_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for json in pairs() {
        let name = json.file_stem().unwrap().to_string_lossy().to_string();
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let arch = &r["architecture"];
        let f64_ = arch["dtype"] == "f64";
        let kind = arch["kind"].as_str().unwrap();
        let model = path(d, &format!("m-{name}"));
        let pt = json.with_extension("pt").display().to_string();
        let out = ok(d, &["import-nflows", &pt, "--kind", kind, "--output-dir", &model]);
        assert!(out.contains(&format!("{} blocks", arch["blocks"])), "{name}: {out}");
        let spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(Path::new(&model).join("model.json")).unwrap()).unwrap();
        let flow = &spec["units"]["flow"]["flow"];
        for (ours, theirs) in [("features", "features"), ("context_features", "context"), ("hidden_features", "hidden")]
        {
            assert_eq!(flow[ours], arch[theirs], "{name}: {ours}");
        }
        assert_eq!(flow["hidden_layers"].as_u64().unwrap(), arch["layers"].as_u64().unwrap(), "{name}: layers");
        assert_eq!(flow["spline"]["num_bins"], arch["bins"], "{name}: bins");
        assert_eq!(flow.get("base").is_some(), arch["cond_base"] == true, "{name}: base");

        let (x, c, z) = (matrix(&r["x"]), matrix(&r["context"]), matrix(&r["z"]));
        let (xp, cp, zp) =
            (d.join(format!("{name}.x.npy")), d.join(format!("{name}.c.npy")), d.join(format!("{name}.z.npy")));
        save(&x, f64_, &xp);
        save(&c, f64_, &cp);
        save(&z, f64_, &zp);
        let (lp, xs) = (d.join(format!("{name}.lp.npy")), d.join(format!("{name}.xs.npy")));
        let s = |p: &Path| p.display().to_string();
        ok(
            d,
            &[
                "--threads",
                "1",
                "flow",
                "log-prob",
                "--model",
                &model,
                "--input",
                &s(&xp),
                "--context",
                &s(&cp),
                "--output",
                &s(&lp),
            ],
        );
        ok(
            d,
            &[
                "--threads",
                "1",
                "flow",
                "to-data",
                "--model",
                &model,
                "--input",
                &s(&zp),
                "--context",
                &s(&cp),
                "--output",
                &s(&xs),
            ],
        );
        let want_lp: Vec<f64> = serde_json::from_value(r["log_prob"].clone()).unwrap();
        let want_xs: Vec<f64> = matrix(&r["sample"]).iter().copied().collect();
        let (e_lp, e_xs) = (worst(&load(&lp, f64_), &want_lp), worst(&load(&xs, f64_), &want_xs));
        let (tol_lp, tol_xs) = match &arch["tolerance"] {
            t @ serde_json::Value::Object(_) => (t["log_prob"].as_f64().unwrap(), t["sample"].as_f64().unwrap()),
            _ if f64_ => (1e-9, 1e-9),
            _ => (1e-3, 1e-4),
        };
        eprintln!("{name}: log-prob {e_lp:.2e}, to-data {e_xs:.2e}");
        assert!(e_lp <= tol_lp, "{name}: log-prob differs from nflows by {e_lp:.3e} (tolerance {tol_lp})");
        assert!(e_xs <= tol_xs, "{name}: to-data differs from nflows by {e_xs:.3e} (tolerance {tol_xs})");

        // to-latent inverts to-data (the other direction of every block). The round trip is limited by
        // the conditioning of these randomly perturbed flows (maf-residual loses 1e-5 in float64), not
        // by the code: a wrong direction or permutation gives errors of order 1.
        let zs = d.join(format!("{name}.zs.npy"));
        ok(
            d,
            &[
                "--threads",
                "1",
                "flow",
                "to-latent",
                "--model",
                &model,
                "--input",
                &s(&xs),
                "--context",
                &s(&cp),
                "--output",
                &s(&zs),
            ],
        );
        let e_z = worst(&load(&zs, f64_), &z.iter().copied().collect::<Vec<_>>());
        assert!(e_z <= if f64_ { 1e-4 } else { 1e-2 }, "{name}: to-latent(to-data(z)) differs from z by {e_z:.3e}");
    }
}

#[test]
fn import_refuses_bad_checkpoints_and_wrong_kinds_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nflows");
    std::fs::write(d.join("junk.pt"), b"not a zip").unwrap();
    let e = fails(d, &["import-nflows", &path(d, "junk.pt"), "--kind", "maf", "--output-dir", &path(d, "a")]);
    assert!(e.contains("junk.pt"), "{e}");
    let e = fails(
        d,
        &["import-nflows", &format!("{data}/icaloflow-iaf-small.pt"), "--kind", "maf", "--output-dir", &path(d, "b")],
    );
    assert!(e.contains("InverseTransform") && e.contains("--kind iaf"), "{e}");
    let e = fails(
        d,
        &["import-nflows", &format!("{data}/zdc-maf-small.pt"), "--kind", "iaf", "--output-dir", &path(d, "c")],
    );
    assert!(e.contains("--kind maf"), "{e}");
    let e = fails(
        d,
        &[
            "import-nflows",
            &format!("{data}/zdc-maf-small.pt"),
            "--kind",
            "maf",
            "--key",
            "nope",
            "--output-dir",
            &path(d, "c"),
        ],
    );
    assert!(e.contains("nope"), "{e}");
    assert!(!Path::new(&path(d, "c")).join("model.json").exists());
    // A flow pass with inputs of the wrong width names the file.
    let model = path(d, "m");
    ok(d, &["import-nflows", &format!("{data}/zdc-maf-small.pt"), "--kind", "maf", "--output-dir", &model]);
    ndarray_npy::write_npy(d.join("x.npy"), &Array2::<f32>::zeros((3, 5))).unwrap();
    let e =
        fails(d, &["flow", "log-prob", "--model", &model, "--input", &path(d, "x.npy"), "--output", &path(d, "o.npy")]);
    assert!(e.contains("x.npy") && e.contains("16 features"), "{e}");
    let e = fails(d, &["import-nflows", &format!("{data}/zdc-maf-small.pt"), "--kind", "maf", "--output-dir", &model]);
    assert!(e.contains("already holds a model"), "{e}");
}
