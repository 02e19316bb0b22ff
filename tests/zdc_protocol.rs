//! The ZDC inference protocol end to end: `sample --photon-sum data|model`, `--denoise`, and the
//! noise floor that `evaluate` reports.

mod common;

use common::*;
use zdcflow::data::zdc::{ZdcFile, ZdcWriter};

fn details(file: &std::path::Path) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    v["details"].clone()
}

fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    path.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or_else(|| panic!("no number at {path:?} in {v}"))
}

/// `from` with every event written twice in a row: the two halves of each condition are equal.
fn duplicated(from: &std::path::Path, to: &std::path::Path) {
    let _hdf5 = hdf5_in_process();
    let f = ZdcFile::open(from).unwrap();
    let rows: Vec<usize> = (0..f.events).flat_map(|i| [i, i]).collect();
    let responses = f.read_responses_at(&rows).unwrap();
    let mut w = ZdcWriter::create(to, rows.len(), &[], false).unwrap();
    w.write(&responses, &f.conditions.select(&rows), None).unwrap();
    w.finish().unwrap();
}

#[test]
fn noise_floor_is_zero_for_identical_halves_and_positive_for_different_data() {
    let tmp = tmp();
    let d = tmp.path();
    ok(d, &["generate", "zdc", "--events", "400", "--seed", "3", "--output", "a.h5"]);
    ok(d, &["generate", "zdc", "--events", "400", "--seed", "4", "--output", "b.h5"]);
    duplicated(&d.join("a.h5"), &d.join("dup.h5"));

    // Identical halves: every condition's two events are the same response.
    let out = ok(d, &["evaluate", "--reference", "dup.h5", "--generated", "dup.h5", "--output", "m-dup.json"]);
    assert!(out.contains("reference vs reference"), "the floor row is printed:\n{out}");
    let m = details(&d.join("m-dup.json"));
    assert!(num(&m, &["noise_floor", "ws"]).abs() < 1e-9, "{m}");
    assert!(num(&m, &["noise_floor", "mae_c"]).abs() < 1e-9, "{m}");
    assert!((num(&m, &["noise_floor", "mean_image_corr"]) - 1.0).abs() < 1e-9, "{m}");

    // Disjoint halves of real (non-duplicated) data differ: a positive floor.
    ok(d, &["evaluate", "--reference", "a.h5", "--generated", "a.h5", "--output", "m-a.json"]);
    let m = details(&d.join("m-a.json"));
    assert!(num(&m, &["noise_floor", "ws"]) > 0.1, "{m}");
    assert!(num(&m, &["noise_floor", "mean_image_corr"]) < 1.0 - 1e-6, "{m}");

    // --reference2: the same file gives exactly zero, another sample of the generator a positive WS.
    ok(d, &["evaluate", "--reference", "a.h5", "--generated", "a.h5", "--reference2", "a.h5", "--output", "m-r2.json"]);
    assert!(num(&details(&d.join("m-r2.json")), &["noise_floor", "ws"]).abs() < 1e-12);
    ok(d, &["evaluate", "--reference", "a.h5", "--generated", "a.h5", "--reference2", "b.h5", "--output", "m-r3.json"]);
    assert!(num(&details(&d.join("m-r3.json")), &["noise_floor", "ws"]) > 0.1);
    let e = fails(d, &["evaluate", "--reference", "a.h5", "--generated", "a.h5", "--reference2", "missing.h5"]);
    assert!(e.contains("missing.h5"), "{e}");
}

#[test]
fn photon_sum_data_reproduces_the_file_sums_and_model_draws_its_own() {
    let tmp = tmp();
    let d = tmp.path();
    ok(d, &["generate", "zdc", "--events", "600", "--seed", "5", "--output", "zdc.h5"]);
    let teacher = zdc_teacher_args(&["train.epochs=1", "flow.hidden_features=8", "photon_sum.epochs=3"], "t");
    let log = zdcflow(d, &strs(&teacher));
    assert!(log.status.success(), "{}", String::from_utf8_lossy(&log.stderr));
    // The photon-sum flow's test report is printed (not with --quiet: read its file) and saved.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("t/photon_sum/test.json")).unwrap()).unwrap();
    assert!(report["nll"].as_f64().unwrap().is_finite() && report["ws_photon_sum"].as_f64().unwrap() >= 0.0);

    let sample = |src: &str, denoise: &str, out: &str| {
        ok(
            d,
            &[
                "sample",
                "--model",
                "t",
                "--conditions",
                "zdc.h5",
                "--photon-sum",
                src,
                "--denoise",
                denoise,
                "--seed",
                "2",
                "--output",
                out,
            ],
        )
    };
    sample("data", "round", "gen-data.h5");
    // The default noise removal (no --denoise).
    let default_log = ok(
        d,
        &[
            "sample",
            "--model",
            "t",
            "--conditions",
            "zdc.h5",
            "--photon-sum",
            "data",
            "--seed",
            "2",
            "--output",
            "gen-default.h5",
        ],
    );
    sample("model", "round", "gen-model.h5");
    sample("data", "sub-floor", "gen-sub.h5");
    {
        let _hdf5 = hdf5_in_process();
        let src = ZdcFile::open(&d.join("zdc.h5")).unwrap();
        let data = ZdcFile::open(&d.join("gen-data.h5")).unwrap();
        let model = ZdcFile::open(&d.join("gen-model.h5")).unwrap();
        let idx = &data.source.as_ref().unwrap().index;
        let want: Vec<f32> = idx.iter().map(|&i| src.conditions.photon_sum[i]).collect();
        assert_eq!(data.conditions.photon_sum, want, "--photon-sum data must record the file's sums exactly");
        assert_ne!(model.conditions.photon_sum, want, "--photon-sum model draws its own sums");
        // Drawn sums vary within a condition set: not all equal.
        let first = model.conditions.photon_sum[0];
        assert!(model.conditions.photon_sum.iter().any(|&s| s != first));
        // Same latents, different noise removal: sub-floor never has more photons than round.
        let (a, b) = (data.read_responses(0, data.events).unwrap(), {
            let s = ZdcFile::open(&d.join("gen-sub.h5")).unwrap();
            s.read_responses(0, s.events).unwrap()
        });
        let (sa, sb): (f64, f64) = (a.iter().map(|&v| v as f64).sum(), b.iter().map(|&v| v as f64).sum());
        assert!(sb < sa, "sub-floor total {sb} should be below round's {sa}");
        // The default keeps every image's total at the (whole) photon sum it was generated for.
        let f = ZdcFile::open(&d.join("gen-default.h5")).unwrap();
        let images = f.read_responses(0, f.events).unwrap();
        for (i, (img, &s)) in images.chunks(1936).zip(&f.conditions.photon_sum).enumerate() {
            assert_eq!(img.iter().sum::<f32>(), s.round(), "event {i}: the default changed the photon total");
        }
        assert!(
            default_log.contains("photon-total error |Σ − S|/S: median 0.00 %, 90th percentile 0.00 %"),
            "{default_log}"
        );
    }
    ok(d, &["evaluate", "--reference", "zdc.h5", "--generated", "gen-data.h5", "--output", "m.json"]);
    let m = details(&d.join("m.json"));
    assert_eq!(m["photon_sum_source"], "data");
    assert_eq!(m["denoise"], "round");
    assert!(m["photon_total_error"]["p90"].as_f64().unwrap() >= m["photon_total_error"]["median"].as_f64().unwrap());
    let out = ok(d, &["evaluate", "--reference", "zdc.h5", "--generated", "gen-default.h5", "--output", "m2.json"]);
    assert!(out.contains("photon-total error |Σ − S|/S of the generated images: median 0.00 %"), "{out}");
    assert_eq!(details(&d.join("m2.json"))["denoise"], "sub-floor-fill");
    let e = fails(d, &["sample", "--model", "t", "--conditions", "zdc.h5", "--denoise", "nope", "--output", "x.h5"]);
    assert!(e.contains("nope"), "{e}");
}
