//! Bad input gets one clear error line naming the file, the dataset and the problem, a non-zero
//! exit and no panic — for every case in the issue, on files the tests write themselves.

mod common;

use std::path::Path;

use common::*;
use ndarray::{Array1, Array2, Array3};

fn calo_file(path: &Path, e_inc: Array2<f32>, showers: Array2<f32>) {
    let _hdf5 = hdf5_in_process();
    let f = hdf5::File::create(path).unwrap();
    f.new_dataset_builder().with_data(&e_inc).create("incident_energies").unwrap();
    f.new_dataset_builder().with_data(&showers).create("showers").unwrap();
}

fn good_showers(n: usize) -> Array2<f32> {
    Array2::from_shape_fn((n, 6480), |(i, j)| ((i + j) % 7) as f32)
}

fn e_inc(n: usize) -> Array2<f32> {
    Array2::from_elem((n, 1), 1000.0)
}

fn inspect_fails(dir: &Path, file: &str, expected: &[&str]) {
    let err = fails(dir, &["inspect", file]);
    assert!(err.contains(file), "the error names the file: {err}");
    for e in expected {
        assert!(err.contains(e), "expected '{e}' in: {err}");
    }
}

#[test]
fn missing_empty_junk_and_truncated_files_are_refused() {
    let t = tmp();
    let d = t.path();
    inspect_fails(d, "nope.h5", &["no such file"]);
    std::fs::write(d.join("empty.h5"), b"").unwrap();
    inspect_fails(d, "empty.h5", &["empty"]);
    std::fs::write(d.join("junk.h5"), b"this is not hdf5 at all").unwrap();
    inspect_fails(d, "junk.h5", &["not a readable HDF5 file"]);
    calo_file(&d.join("good.h5"), e_inc(50), good_showers(50));
    let bytes = std::fs::read(d.join("good.h5")).unwrap();
    std::fs::write(d.join("truncated.h5"), &bytes[..bytes.len() / 3]).unwrap();
    let err = fails(d, &["inspect", "truncated.h5"]);
    assert!(err.contains("truncated.h5"), "{err}");
    ok(d, &["inspect", "good.h5"]);
}

#[test]
fn calochallenge_layout_errors_name_the_dataset() {
    let t = tmp();
    let d = t.path();
    let hdf5 = hdf5_in_process();
    let f = hdf5::File::create(d.join("only_einc.h5")).unwrap();
    f.new_dataset_builder().with_data(&e_inc(3)).create("incident_energies").unwrap();
    drop((f, hdf5));
    inspect_fails(d, "only_einc.h5", &["neither a CaloChallenge file", "incident_energies"]);

    calo_file(&d.join("shape.h5"), e_inc(3), Array2::zeros((3, 1000)));
    inspect_fails(d, "shape.h5", &["showers", "1000 values per event", "6480"]);

    let hdf5 = hdf5_in_process();
    let f = hdf5::File::create(d.join("dtype.h5")).unwrap();
    f.new_dataset_builder().with_data(&e_inc(3)).create("incident_energies").unwrap();
    f.new_dataset_builder().with_data(&Array2::<i32>::zeros((3, 6480))).create("showers").unwrap();
    drop((f, hdf5));
    inspect_fails(d, "dtype.h5", &["showers", "int32", "float"]);

    calo_file(&d.join("count.h5"), e_inc(4), good_showers(5));
    inspect_fails(d, "count.h5", &["showers", "5 events", "4"]);

    calo_file(&d.join("none.h5"), e_inc(0), good_showers(0));
    inspect_fails(d, "none.h5", &["showers", "no events"]);

    let mut nan = good_showers(6);
    nan[[4, 100]] = f32::NAN;
    calo_file(&d.join("nan.h5"), e_inc(6), nan);
    inspect_fails(d, "nan.h5", &["showers", "event 4", "non-finite"]);

    let mut neg = good_showers(6);
    neg[[2, 7]] = -1.5;
    calo_file(&d.join("negative.h5"), e_inc(6), neg);
    inspect_fails(d, "negative.h5", &["showers", "event 2", "negative energy"]);

    let mut bad_e = e_inc(6);
    bad_e[[1, 0]] = -5.0;
    calo_file(&d.join("einc.h5"), bad_e, good_showers(6));
    inspect_fails(d, "einc.h5", &["incident_energies", "event 1"]);
}

fn zdc_file(path: &Path, responses: Array3<f32>, particles: Array2<f32>, pdg: Array1<i32>) {
    let _hdf5 = hdf5_in_process();
    let f = hdf5::File::create(path).unwrap();
    f.new_dataset_builder().with_data(&responses).create("responses").unwrap();
    f.new_dataset_builder().with_data(&particles).create("particles").unwrap();
    f.new_dataset_builder().with_data(&pdg).create("pdg").unwrap();
}

#[test]
fn zdc_layout_and_value_errors_name_the_dataset() {
    let t = tmp();
    let d = t.path();
    let responses = || Array3::from_shape_fn((4, 44, 44), |(i, r, c)| ((i + r + c) % 3) as f32);
    let particles = || Array2::from_elem((4, 9), 1.0f32);
    let pdg = || Array1::from_elem(4, 2112);
    zdc_file(&d.join("good.h5"), responses(), particles(), pdg());
    ok(d, &["inspect", "good.h5"]);
    zdc_file(&d.join("shape.h5"), Array3::zeros((4, 40, 40)), particles(), pdg());
    inspect_fails(d, "shape.h5", &["responses", "(N, 44, 44)"]);
    zdc_file(&d.join("particles.h5"), responses(), Array2::zeros((3, 9)), pdg());
    inspect_fails(d, "particles.h5", &["particles", "(4, 9)"]);
    let mut nan = particles();
    nan[[2, 3]] = f32::NAN;
    zdc_file(&d.join("nan.h5"), responses(), nan, pdg());
    inspect_fails(d, "nan.h5", &["particles", "event 2", "non-finite"]);
    let mut neg = responses();
    neg[[1, 5, 5]] = -2.0;
    zdc_file(&d.join("neg.h5"), neg, particles(), pdg());
    inspect_fails(d, "neg.h5", &["responses", "event 1", "negative"]);

    // An npz responses file without its particles sibling.
    let mut npz = ndarray_npy::NpzWriter::new(std::fs::File::create(d.join("data_n_nonrandom_responses.npz")).unwrap());
    npz.add_array("arr_0", &responses()).unwrap();
    npz.finish().unwrap();
    inspect_fails(d, "data_n_nonrandom_responses.npz", &["particles.npz"]);
}

#[test]
fn bad_configs_and_models_of_another_kind_are_refused_with_their_key_or_file() {
    let t = tmp();
    let d = t.path();
    ok(d, &["generate", "calo", "--dataset", "2", "--events", "60", "--seed", "1", "--output", "ds2.h5"]);
    let train = |sets: &[&str]| {
        let mut args = vec!["train-teacher", "--config", "CONFIG", "--output-dir", "t"];
        let cfg = config("smoke-zdc.toml");
        args[2] = &cfg;
        for s in sets {
            args.push("--set");
            args.push(s);
        }
        fails(d, &args)
    };
    assert!(train(&["train.no_such_key=1"]).contains("train.no_such_key"));
    assert!(train(&["flow.dropout=2"]).contains("flow.dropout"));
    assert!(train(&["data.path=missing.h5"]).contains("missing.h5"));
    // A CaloChallenge file given to the ZDC model.
    let err = train(&["data.path=ds2.h5"]);
    assert!(err.contains("ds2.h5"), "{err}");
    // A ZDC config's student pointed at a CaloChallenge teacher, and a directory that is no model.
    ok(
        d,
        &[
            "train-teacher",
            "--config",
            &config("smoke-ds2.toml"),
            "--set",
            "data.path=ds2.h5",
            "--set",
            "train.epochs=1",
            "--set",
            "flow3.train.max_batches=2",
            "--output-dir",
            "calo",
        ],
    );
    let err = fails(
        d,
        &["distill-student", "--config", &config("smoke-zdc-student.toml"), "--teacher", "calo", "--output-dir", "s"],
    );
    assert!(err.contains("calo") && err.contains("Ds2"), "{err}");
    let err = fails(d, &["sample", "--model", "nowhere", "--events", "3", "--output", "g.h5"]);
    assert!(err.contains("nowhere") && err.contains("not a model directory"), "{err}");
    // Weights of another architecture.
    std::fs::copy(d.join("calo/flow1/best.safetensors"), d.join("calo/flow2/best.safetensors")).unwrap();
    let err = fails(d, &["sample", "--model", "calo", "--events", "3", "--output", "g.h5"]);
    assert!(err.contains("flow2/best.safetensors") && err.contains("another model"), "{err}");
    // Starting over in a trained directory without --resume.
    let err = fails(
        d,
        &["train-teacher", "--config", &config("smoke-ds2.toml"), "--set", "data.path=ds2.h5", "--output-dir", "calo"],
    );
    assert!(err.contains("--resume"), "{err}");
}
