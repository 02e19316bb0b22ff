//! The hostile-user suite of issue 14: every case runs the real binary on tiny files written
//! here, and asserts its exit code (0 ok, 1 error, 2 usage, 3 regression, 130 stopped), the
//! content of its one error line (1 and 2), and that no file that existed before the run changed.
//!
//! One fixture (two generated data sets, a tiny ZDC teacher, its samples, shards and metrics) is
//! built once and shared; cases that need a modified model or file work on copies in their own
//! directory. The cases of `hand_written_inputs` (at the end) write broken CaloChallenge and ZDC
//! files, bad configs and models of another kind by hand, and check that the one error line
//! names the file, the dataset or key, and the problem.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{config, hdf5_in_process, spawning, zdc_teacher_args};

/// The shared fixture's directory (under cargo's per-target temporary directory).
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bad_input_suite-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let ok = |args: &[&str]| {
            let r = run_in(&d, args, &[]);
            assert_eq!(r.code, 0, "fixture step {args:?} failed:\n{}", r.stderr);
        };
        ok(&["generate", "zdc", "--events", "600", "--seed", "1", "--output", "zdc.h5"]);
        ok(&["generate", "calo", "--dataset", "2", "--events", "40", "--seed", "1", "--output", "ds2.h5"]);
        ok(&teacher_args("t", &[]));
        ok(&["sample", "--model", "t", "--conditions", "zdc.h5", "--seed", "1", "--output", "gen.h5"]);
        for s in ["1/3", "2/3", "3/3", "2/4"] {
            let out = format!("s{}.h5", s.replace('/', "of"));
            ok(&["sample", "--model", "t", "--conditions", "zdc.h5", "--shard", s, "--output", &out]);
        }
        ok(&["evaluate", "--reference", "zdc.h5", "--generated", "gen.h5", "--output", "m.json"]);
        d
    })
}

fn teacher_args(out: &str, extra: &[&'static str]) -> Vec<&'static str> {
    let settings = ["train.epochs=1", "flow.hidden_features=8", "photon_sum.epochs=1"];
    let mut a: Vec<&'static str> =
        zdc_teacher_args(&settings, out).into_iter().map(|s| &*Box::leak(s.into_boxed_str())).collect();
    a.extend_from_slice(extra);
    a
}

struct Ran {
    code: i32,
    stderr: String,
}

fn run_in<A: AsRef<OsStr>>(dir: &Path, args: &[A], env: &[(&str, &str)]) -> Ran {
    run_limited(dir, args, env, None)
}

/// Runs zdcflow; `file_size` caps every file it writes (RLIMIT_FSIZE: a longer write fails, as
/// on a full disk).
fn run_limited<A: AsRef<OsStr>>(dir: &Path, args: &[A], env: &[(&str, &str)], file_size: Option<u64>) -> Ran {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin!("zdcflow"));
    cmd.current_dir(dir).arg("--quiet").args(args).envs(env.iter().copied());
    if let Some(bytes) = file_size {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec. An ignored SIGXFSZ turns
        // the write past the limit into an EFBIG error instead of killing the process.
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
                match libc::setrlimit(libc::RLIMIT_FSIZE, &limit) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
    }
    let _guard = spawning();
    let out = cmd.output().expect("zdcflow runs");
    Ran { code: out.status.code().unwrap_or(-1), stderr: String::from_utf8_lossy(&out.stderr).into_owned() }
}

/// Content of every file under `dirs` (recursively), by path.
fn snapshot(dirs: &[PathBuf]) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                let path = e.path();
                // Other cases' own directories change under them; each case snapshots its own.
                if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("case-")) {
                    continue;
                }
                walk(&path, out);
            }
        } else if p.symlink_metadata().is_ok_and(|m| m.is_file()) {
            // (A FIFO would block the read.)
            if let Ok(bytes) = std::fs::read(p) {
                out.insert(p.to_path_buf(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    dirs.iter().for_each(|d| walk(d, &mut out));
    out
}

/// Runs one case in `dir` (the fixture or a case directory) and checks exit code, the single
/// error line and that no earlier file changed. Returns stderr.
fn case<A: AsRef<OsStr> + Debug>(
    dir: &Path,
    args: &[A],
    env: &[(&str, &str)],
    code: i32,
    want: &[&str],
    not: &[&str],
) -> String {
    case_with(dir, args, code, want, not, || run_in(dir, args, env))
}

/// [`case`] with the run given (`run` runs `args`).
fn case_with<A: Debug>(
    dir: &Path,
    args: &[A],
    code: i32,
    want: &[&str],
    not: &[&str],
    run: impl FnOnce() -> Ran,
) -> String {
    let mut watched = vec![fixture().to_path_buf()];
    if dir != fixture() {
        watched.push(dir.to_path_buf());
    }
    let before = snapshot(&watched);
    let r = run();
    assert_eq!(r.code, code, "zdcflow {args:?}: exit {} (expected {code}):\n{}", r.code, r.stderr);
    assert!(!r.stderr.contains("panicked"), "zdcflow {args:?} panicked:\n{}", r.stderr);
    if code == 1 || code == 2 {
        let errors: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "zdcflow {args:?}: expected one error line:\n{}", r.stderr);
        for w in want {
            assert!(errors[0].contains(w), "zdcflow {args:?}: '{w}' not in: {}", errors[0]);
        }
        for n in not {
            assert!(!errors[0].contains(n), "zdcflow {args:?}: '{n}' should not be in: {}", errors[0]);
        }
    }
    let after = snapshot(&watched);
    for (p, bytes) in &before {
        assert!(after.get(p) == Some(bytes), "zdcflow {args:?} changed or removed {}", p.display());
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        let name = p.file_name().unwrap().to_string_lossy();
        assert!(!name.contains(".tmp-"), "zdcflow {args:?} left a temporary file {}", p.display());
    }
    r.stderr
}

/// A fresh directory for a case that needs its own files.
fn case_dir(name: &str) -> PathBuf {
    let d = fixture().join(format!("case-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn f(name: &str) -> String {
    fixture().join(name).display().to_string()
}

#[test]
fn usage_errors_exit_2() {
    let d = fixture();
    case(d, &["--threads", "100000", "inspect", "zdc.h5"], &[], 2, &["--threads", "1..=1024"], &[]);
    case(d, &["--threads", "0", "inspect", "zdc.h5"], &[], 2, &["--threads"], &[]);
    let eval = ["evaluate", "--reference", "ds2.h5", "--generated", "ds2.h5", "--classifier-hidden", "0"];
    case(d, &eval, &[], 2, &["--classifier-hidden"], &[]);
    case(d, &["sample", "--model", "t", "--bogus"], &[], 2, &["--bogus"], &[]);
    let err = case(d, &["generate", "zdc", "--output", "x.h5"], &[], 2, &["required arguments"], &[]);
    assert!(err.contains("--events"), "{err}");
    case(d, &["generate", "calo", "--dataset", "4", "--events", "3", "--output", "x.h5"], &[], 2, &["--dataset"], &[]);
    case(d, &["sample", "--model", "t", "--events", "3", "--gzip", "12", "--output", "x.h5"], &[], 2, &["--gzip"], &[]);
    case(d, &["generate", "zdc", "--events", "1e14", "--output", "x.h5"], &[], 2, &["1e14"], &[]);
    // Every out-of-range argument is a usage error, as clap's own are.
    let sample = ["sample", "--model", "t", "--conditions", "zdc.h5", "--output", "x.h5"];
    for (flag, value) in
        [("--shard", "0/3"), ("--shard", "4/3"), ("--shard", "a/b"), ("--shard", "3"), ("--batch-size", "0")]
    {
        case(d, &[&sample[..], &[flag, value]].concat(), &[], 2, &[flag, value], &[]);
    }
    case(d, &["--device", "tpu:7", "inspect", "zdc.h5"], &[], 2, &["--device", "tpu:7", "cpu, cuda or cuda:N"], &[]);
    case(d, &["generate", "zdc", "--events", "0", "--output", "x.h5"], &[], 2, &["--events"], &[]);
    case(d, &["sample", "--model", "t", "--events", "0", "--output", "x.h5"], &[], 2, &["--events"], &[]);
    case(d, &["bench", "--shape", "ds2-flow3", "--batch-size", "0"], &[], 2, &["--batch-size"], &[]);
    case(d, &["bench", "--shape", "ds2-flow3", "--repeats", "0"], &[], 2, &["--repeats"], &[]);
    let flow = ["flow", "log-prob", "--model", "t", "--input", "x.npy", "--output", "y.npy", "--batch-size", "0"];
    case(d, &flow, &[], 2, &["--batch-size"], &[]);
    case(
        d,
        &["log-prob", "--model", "t", "--showers", "zdc.h5", "--output", "y.h5", "--batch-size", "0"],
        &[],
        2,
        &["--batch-size"],
        &[],
    );
    case(
        d,
        &["export-onnx", "--model", "t", "--output", "x.onnx", "--opset", "99999"],
        &[],
        2,
        &["--opset", "13..=21"],
        &[],
    );
    let eval = ["evaluate", "--reference", "ds2.h5", "--generated", "ds2.h5"];
    case(d, &[&eval[..], &["--classifier-layers", "100000"]].concat(), &[], 2, &["--classifier-layers"], &[]);
    case(d, &[&eval[..], &["--classifier-runs", "0"]].concat(), &[], 2, &["--classifier-runs"], &[]);
}

#[test]
fn huge_counts_and_sizes_are_refused_before_allocating() {
    let d = fixture();
    let limit = ["memory", "ZDCFLOW_MEMORY_LIMIT"];
    case(d, &["sample", "--model", "t", "--events", "100000000000000", "--output", "x.h5"], &[], 1, &limit, &[]);
    case(d, &["generate", "zdc", "--events", "100000000000000", "--output", "x.h5"], &[], 1, &limit, &[]);
    let big3 = ["generate", "calo", "--dataset", "3", "--events", "100000000000000", "--output", "x.h5"];
    case(d, &big3, &[], 1, &["x.h5", "filesystem has", "free"], &[]);
    let big2 = ["generate", "calo", "--dataset", "2", "--events", "10000000000000", "--gzip", "1", "--output", "x.h5"];
    case(d, &big2, &[], 1, &["x.h5", "at least", "free"], &[]);
    assert!(!d.join("x.h5").exists());
    let huge = teacher_args("case-never", &["--set", "flow.hidden_features=100000000"]);
    case(d, &huge, &[], 1, &["flow.hidden_features", "memory"], &[]);
    let stu = [
        "distill-student",
        "--config",
        &config("smoke-zdc-student.toml"),
        "--teacher",
        "t",
        "--set",
        "student.flow.hidden_features=100000000",
        "--output-dir",
        "case-never",
    ];
    case(d, &stu, &[], 1, &["student.flow.hidden_features", "memory"], &[]);
    let bench = ["bench", "--shape", "ds2-flow3", "--what", "sample-iaf", "--batch-size", "100000000000"];
    case(d, &bench, &[], 1, &["--batch-size 100000000000", "memory"], &[]);
    case(
        d,
        &["bench", "--shower", "zdc", "--batch-size", "1000000000"],
        &[],
        1,
        &["--batch-size 1000000000", "memory"],
        &[],
    );
    // The classifier's size (hidden × layers × inputs) is checked against the limit before it is built.
    let cls = ["evaluate", "--reference", "ds2.h5", "--generated", "ds2.h5", "--classifier-hidden", "4096"];
    case(
        d,
        &cls,
        &[("ZDCFLOW_MEMORY_LIMIT", "100M")],
        1,
        &["classifier", "4096 hidden", "ZDCFLOW_MEMORY_LIMIT=100M"],
        &[],
    );
    let cls = ["evaluate", "--reference", "ds2.h5", "--generated", "ds2.h5", "--classifier-hidden", "65536"];
    case(d, &[&cls[..], &["--classifier-layers", "100"]].concat(), &[], 1, &["classifier", "memory"], &[]);
    let student_cfg = config("smoke-zdc-student.toml");
    case(d, &["bench", "--config", &student_cfg], &[], 1, &["smoke-zdc-student.toml", "no teacher flow"], &[]);
    // The memory limit can be set (both ways), and a bad setting is named.
    let tiny = [("ZDCFLOW_MEMORY_LIMIT", "1K")];
    case(
        d,
        &["generate", "zdc", "--events", "100", "--output", "x.h5"],
        &tiny,
        1,
        &["1.0 KB", "ZDCFLOW_MEMORY_LIMIT=1K"],
        &[],
    );
    let bad = [("ZDCFLOW_MEMORY_LIMIT", "lots")];
    case(
        d,
        &["generate", "zdc", "--events", "100", "--output", "x.h5"],
        &bad,
        1,
        &["ZDCFLOW_MEMORY_LIMIT='lots'"],
        &[],
    );
    let c = case_dir("memlimit");
    case(
        &c,
        &["generate", "zdc", "--events", "20", "--output", "z.h5"],
        &[("ZDCFLOW_MEMORY_LIMIT", "64G")],
        0,
        &[],
        &[],
    );
}

#[test]
fn model_json_sizes_and_weights_are_checked_before_use() {
    let c = case_dir("model");
    // A model.json whose flow is enormous: refused before the model is built.
    copy_dir(&fixture().join("t"), &c.join("huge"));
    let mj = c.join("huge/model.json");
    let text = std::fs::read_to_string(&mj).unwrap().replace("\"hidden_features\": 8", "\"hidden_features\": 5000000");
    std::fs::write(&mj, text).unwrap();
    let zdc = f("zdc.h5");
    case(
        &c,
        &["sample", "--model", "huge", "--conditions", &zdc, "--output", "g.h5"],
        &[],
        1,
        &["model.json", "unit flow", "memory"],
        &[],
    );
    // NaN weights: refused, not sampled into all-zero showers.
    copy_dir(&fixture().join("t"), &c.join("nan"));
    let w = c.join("nan/flow/best.safetensors");
    let mut tensors = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).unwrap();
    for t in tensors.values_mut() {
        *t = (t.ones_like().unwrap() * f64::NAN).unwrap();
    }
    candle_core::safetensors::save(&tensors, &w).unwrap();
    case(
        &c,
        &["sample", "--model", "nan", "--conditions", &zdc, "--output", "g.h5"],
        &[],
        1,
        &["best.safetensors", "non-finite"],
        &[],
    );
    assert!(!c.join("g.h5").exists());
    // Weights written before identities existed (no metadata) still load.
    copy_dir(&fixture().join("t"), &c.join("old"));
    let w = c.join("old/flow/best.safetensors");
    let tensors = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&tensors, &w).unwrap();
    case(&c, &["sample", "--model", "old", "--conditions", &zdc, "--output", "old.h5"], &[], 0, &[], &[]);
    // A teacher's weights in a student's directory (same shapes): refused by their identity.
    copy_dir(&fixture().join("t"), &c.join("swap"));
    let mj = c.join("swap/model.json");
    let text = std::fs::read_to_string(&mj).unwrap().replace("\"role\": \"teacher\"", "\"role\": \"student\"");
    std::fs::write(&mj, text).unwrap();
    case(
        &c,
        &["sample", "--model", "swap", "--conditions", &zdc, "--output", "g.h5"],
        &[],
        1,
        &["teacher's unit", "student"],
        &[],
    );
    // One unit's weights in another unit's place.
    copy_dir(&fixture().join("t"), &c.join("unit"));
    let reg = c.join("unit/photon_sum/best.safetensors");
    let tensors = candle_core::safetensors::load(&reg, &candle_core::Device::Cpu).unwrap();
    let mut meta_tensors: Vec<(String, candle_core::Tensor)> = tensors.into_iter().collect();
    meta_tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let meta = std::collections::HashMap::from([(
        "zdcflow_identity".to_string(),
        r#"{"role":"teacher","unit":"flow","architecture":"x"}"#.to_string(),
    )]);
    safetensors::tensor::serialize_to_file(meta_tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta), &reg)
        .unwrap();
    case(
        &c,
        &["sample", "--model", "unit", "--conditions", &zdc, "--output", "g.h5"],
        &[],
        1,
        &["unit 'flow'", "'photon_sum'"],
        &[],
    );
    // A unit directory that is gone is named as missing, not as "no weights yet".
    copy_dir(&fixture().join("t"), &c.join("gone"));
    std::fs::remove_dir_all(c.join("gone/photon_sum")).unwrap();
    case(
        &c,
        &["sample", "--model", "gone", "--conditions", &zdc, "--output", "g.h5"],
        &[],
        1,
        &["photon_sum", "missing"],
        &["no weights yet"],
    );
    case(
        &c,
        &["sample", "--model", "nowhere", "--events", "3", "--output", "g.h5"],
        &[],
        1,
        &["nowhere", "not a model directory"],
        &[],
    );
    let mj = c.join("broken.json");
    std::fs::create_dir_all(c.join("broken")).unwrap();
    std::fs::write(&mj, "{").unwrap();
    std::fs::copy(&mj, c.join("broken/model.json")).unwrap();
    case(
        &c,
        &["sample", "--model", "broken", "--events", "3", "--output", "g.h5"],
        &[],
        1,
        &["broken/model.json", "unreadable"],
        &[],
    );
}

#[test]
fn outputs_never_replace_inputs() {
    let d = fixture();
    let sample = |out: &str| ["sample", "--model", "t", "--conditions", "zdc.h5", "--output", out].map(str::to_string);
    let s = sample("zdc.h5");
    case(
        d,
        &s.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
        1,
        &["--output is also the --conditions input"],
        &[],
    );
    let s = sample("./zdc.h5");
    case(d, &s.iter().map(String::as_str).collect::<Vec<_>>(), &[], 1, &["--conditions"], &[]);
    let s = sample(&f("zdc.h5"));
    case(d, &s.iter().map(String::as_str).collect::<Vec<_>>(), &[], 1, &["--conditions"], &[]);
    let ev =
        |out: &str| ["evaluate", "--reference", "zdc.h5", "--generated", "gen.h5", "--output", out].map(str::to_string);
    for (out, input) in [("gen.h5", "--generated"), ("zdc.h5", "--reference")] {
        let a = ev(out);
        case(d, &a.iter().map(String::as_str).collect::<Vec<_>>(), &[], 1, &[input], &[]);
    }
    let gate =
        ["evaluate", "--reference", "zdc.h5", "--generated", "gen.h5", "--baseline", "m.json", "--output", "m.json"];
    case(d, &gate, &[], 1, &["--baseline"], &[]);
    case(d, &["merge", "--output", "s1of3.h5", "s1of3.h5", "s2of3.h5", "s3of3.h5"], &[], 1, &["shard"], &[]);
    // A symlink to an input is that input.
    let c = case_dir("link");
    std::os::unix::fs::symlink(fixture().join("zdc.h5"), c.join("alias.h5")).unwrap();
    let zdc = f("zdc.h5");
    let model = f("t");
    case(
        &c,
        &["sample", "--model", &model, "--conditions", &zdc, "--output", "alias.h5"],
        &[],
        1,
        &["--conditions"],
        &[],
    );
}

#[test]
fn the_gate_cannot_be_fooled() {
    let c = case_dir("gate");
    let base: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture().join("m.json")).unwrap()).unwrap();
    let variant = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base.clone();
        edit(&mut v);
        std::fs::write(c.join(name), serde_json::to_string(&v).unwrap()).unwrap();
        name.to_string()
    };
    let gate = |b: &str, code: i32, want: &[&str]| {
        let (r, g) = (f("zdc.h5"), f("gen.h5"));
        case(&c, &["evaluate", "--reference", &r, "--generated", &g, "--baseline", b], &[], code, want, &[])
    };
    gate(&f("m.json"), 0, &[]);
    gate(&variant("empty.json", &|v| v["metrics"] = serde_json::json!({})), 1, &["empty.json", "no metrics"]);
    gate(&variant("string.json", &|v| v["metrics"]["ws"] = "0.1".into()), 1, &["'ws'", "a string"]);
    let nulls = variant("nulls.json", &|v| {
        for x in v["metrics"].as_object_mut().unwrap().values_mut() {
            *x = serde_json::Value::Null;
        }
    });
    gate(&nulls, 1, &["nulls.json", "no metrics"]);
    gate(
        &variant("null-extra.json", &|v| v["metrics"]["zz_nan"] = serde_json::Value::Null),
        1,
        &["'zz_nan'", "missing"],
    );
    gate(&variant("bool.json", &|v| v["metrics"]["ws"] = true.into()), 1, &["'ws'", "a boolean"]);
    gate(
        &variant("extra.json", &|v| v["metrics"]["zz_other"] = 1.0.into()),
        1,
        &["'zz_other'", "missing from this run"],
    );
    gate(&variant("format.json", &|v| v["format"] = "other".into()), 1, &["format.json", "zdcflow-metrics"]);
    gate(&variant("ds2.json", &|v| v["detector"] = "ds2".into()), 1, &["ds2.json", "ds2 baseline"]);
    let better = variant("better.json", &|v| {
        let m = v["metrics"].as_object_mut().unwrap();
        for x in m.values_mut() {
            if let Some(n) = x.as_f64() {
                *x = (n / 10.0).into();
            }
        }
    });
    let err = gate(&better, 3, &[]);
    assert!(err.contains("got worse") && !err.contains("→ NaN"), "{err}");
    std::fs::write(c.join("junk.json"), "not json").unwrap();
    gate("junk.json", 1, &["junk.json", "not a zdcflow metrics file"]);
    gate("absent.json", 1, &["absent.json"]);
    let (r, g) = (f("zdc.h5"), f("gen.h5"));
    for tolerance in ["--tolerance=-1", "--tolerance=NaN"] {
        let neg = ["evaluate", "--reference", &r, "--generated", &g, "--baseline", "better.json", tolerance];
        case(&c, &neg, &[], 2, &["--tolerance", "finite number ≥ 0"], &[]);
    }
}

#[test]
fn shards_and_merges_are_checked() {
    let d = fixture();
    let s = |shard: &str| {
        ["sample", "--model", "t", "--conditions", "zdc.h5", "--shard", shard, "--output", "x.h5"].map(str::to_string)
    };
    let a = s("1/100000");
    case(d, &a.iter().map(String::as_str).collect::<Vec<_>>(), &[], 1, &["--shard", "none"], &[]);
    case(
        d,
        &["merge", "--output", "x.h5", "s1of3.h5", "s2of4.h5", "s3of3.h5"],
        &[],
        1,
        &["s2of4.h5", "2/4", "different jobs"],
        &[],
    );
    case(
        d,
        &["merge", "--output", "x.h5", "s1of3.h5", "s1of3.h5", "s3of3.h5"],
        &[],
        1,
        &["shard 1/3 is given twice"],
        &[],
    );
    case(d, &["merge", "--output", "x.h5", "s1of3.h5", "s3of3.h5"], &[], 1, &["missing 2/3"], &[]);
    case(d, &["merge", "--output", "x.h5", "gen.h5"], &[], 1, &["gen.h5", "not a shard"], &[]);
    case(d, &["evaluate", "--reference", "ds2.h5", "--generated", "gen.h5"], &[], 1, &["gen.h5", "ds2.h5"], &[]);
    let c = case_dir("merge-ok");
    let shards = [f("s1of3.h5"), f("s2of3.h5"), f("s3of3.h5")];
    case(&c, &["merge", "--output", "all.h5", &shards[2], &shards[0], &shards[1]], &[], 0, &[], &[]);
}

#[test]
fn config_messages_name_the_file_and_the_real_key() {
    let d = fixture();
    let err =
        case(d, &teacher_args("case-never", &["--set", "data.bogus=1"]), &[], 1, &["data.bogus", "unknown key"], &[]);
    assert!(!err.contains("data.bogus.bogus"), "{err}");
    case(
        d,
        &teacher_args("case-never", &["--set", "train.batch_size=-3"]),
        &[],
        1,
        &["train.batch_size"],
        &["flow.train"],
    );
    case(d, &teacher_args("case-never", &["--set", "flow.train.bogus=1"]), &[], 1, &["flow.train.bogus"], &[]);
    case(
        d,
        &teacher_args("case-never", &["--set", "flow.dropout=2"]),
        &[],
        1,
        &["smoke-zdc.toml", "flow.dropout"],
        &[],
    );
    case(d, &teacher_args("case-never", &["--set", "nonsense"]), &[], 1, &["nonsense", "KEY=VALUE"], &[]);
    let c = case_dir("configs");
    let base = std::fs::read_to_string(config("smoke-zdc.toml")).unwrap();
    std::fs::write(c.join("trainkey.toml"), base.replace("[train]\n", "[train]\nbogus_key = 1\n")).unwrap();
    std::fs::write(c.join("empty.toml"), "\n  \n").unwrap();
    std::fs::write(c.join("broken.toml"), "[model\n").unwrap();
    std::fs::write(c.join("out"), "a file").unwrap();
    let zdc = f("zdc.h5");
    let train = |cfg: &str, out: &str| -> Vec<String> {
        ["train-teacher", "--config", cfg, "--set", &format!("data.path={zdc}"), "--output-dir", out]
            .map(str::to_string)
            .to_vec()
    };
    let t = train("trainkey.toml", "x");
    case(
        &c,
        &t.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
        1,
        &["trainkey.toml", "train.bogus_key"],
        &["flow.train"],
    );
    let t = train("empty.toml", "x");
    case(&c, &t.iter().map(String::as_str).collect::<Vec<_>>(), &[], 1, &["empty.toml", "empty"], &[]);
    let t = train("broken.toml", "x");
    case(&c, &t.iter().map(String::as_str).collect::<Vec<_>>(), &[], 1, &["broken.toml", "not valid TOML"], &[]);
    let t = train("missing.toml", "x");
    case(&c, &t.iter().map(String::as_str).collect::<Vec<_>>(), &[], 1, &["missing.toml"], &[]);
    let t = train(&config("smoke-zdc.toml"), "out");
    case(&c, &t.iter().map(String::as_str).collect::<Vec<_>>(), &[], 1, &["out", "is a file"], &[]);
}

/// A float32 .npy whose header declares `shape` and that holds `body` bytes of data.
fn npy_bytes(shape: &str, body: usize) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(header.len() as u16).to_le_bytes());
    npy.extend_from_slice(header.as_bytes());
    npy.extend(std::iter::repeat_n(0u8, body));
    npy
}

fn write_sparse_calo(path: &Path, events: usize) {
    let _h = hdf5_in_process();
    let f = hdf5::File::create(path).unwrap();
    f.new_dataset::<f32>().chunk((100_000, 1)).shape((events, 1)).create("incident_energies").unwrap();
    f.new_dataset::<f32>().chunk((10, 6480)).shape((events, 6480)).create("showers").unwrap();
}

#[test]
fn broken_data_files_get_one_clear_line() {
    let c = case_dir("files");
    // The earlier kinds: missing, empty, junk, truncated, wrong shape/type, NaN, negative energy.
    std::fs::write(c.join("empty.h5"), b"").unwrap();
    std::fs::write(c.join("junk.h5"), b"this is not hdf5 at all").unwrap();
    let good = std::fs::read(fixture().join("ds2.h5")).unwrap();
    std::fs::write(c.join("truncated.h5"), &good[..good.len() / 3]).unwrap();
    {
        let _h = hdf5_in_process();
        let e = ndarray::Array2::<f32>::from_elem((3, 1), 1000.0);
        let mk = |name: &str, showers: &dyn Fn(&hdf5::File)| {
            let f = hdf5::File::create(c.join(name)).unwrap();
            f.new_dataset_builder().with_data(&e).create("incident_energies").unwrap();
            showers(&f);
        };
        mk("shape.h5", &|f| {
            f.new_dataset_builder().with_data(&ndarray::Array2::<f32>::zeros((3, 100))).create("showers").unwrap();
        });
        mk("dtype.h5", &|f| {
            f.new_dataset_builder().with_data(&ndarray::Array2::<i32>::zeros((3, 6480))).create("showers").unwrap();
        });
        mk("nan.h5", &|f| {
            let mut s = ndarray::Array2::<f32>::zeros((3, 6480));
            s[[1, 5]] = f32::NAN;
            f.new_dataset_builder().with_data(&s).create("showers").unwrap();
        });
        mk("negative.h5", &|f| {
            let mut s = ndarray::Array2::<f32>::zeros((3, 6480));
            s[[2, 5]] = -1.0;
            f.new_dataset_builder().with_data(&s).create("showers").unwrap();
        });
        mk("group.h5", &|f| {
            f.create_group("showers").unwrap();
        });
    }
    write_sparse_calo(&c.join("sparse3e9.h5"), 3_000_000_000);
    write_sparse_calo(&c.join("sparse1e8.h5"), 100_000_000);
    std::fs::create_dir_all(c.join("adir.h5")).unwrap();
    let inspect = |file: &str, want: &[&str]| {
        let mut w = vec![file];
        w.extend_from_slice(want);
        case(&c, &["inspect", file], &[], 1, &w, &[]);
    };
    inspect("nope.h5", &["no such file"]);
    inspect("empty.h5", &["empty"]);
    inspect("junk.h5", &["not a readable HDF5 file"]);
    inspect("truncated.h5", &[]);
    inspect("shape.h5", &["showers", "100 values per event"]);
    inspect("dtype.h5", &["showers", "int32"]);
    inspect("nan.h5", &["showers", "event 1", "non-finite"]);
    inspect("negative.h5", &["showers", "event 2", "negative energy"]);
    inspect("group.h5", &["showers", "is a group"]);
    inspect("sparse3e9.h5", &["3000000000", "sparse or truncated"]);
    inspect("sparse1e8.h5", &["100000000", "sparse or truncated"]);
    inspect("adir.h5", &["is a directory"]);
    // Devices and FIFOs are not "empty files".
    assert!(std::process::Command::new("mkfifo").arg(c.join("fifo.h5")).status().unwrap().success());
    inspect("fifo.h5", &["not a regular file"]);
    case(&c, &["inspect", "/dev/zero"], &[], 1, &["/dev/zero", "not a regular file"], &["empty"]);
    // A negative ZDC photon count is a photon count, not an energy in MeV.
    std::fs::copy(fixture().join("zdc.h5"), c.join("negzdc.h5")).unwrap();
    {
        let _h = hdf5_in_process();
        let file = hdf5::File::open_rw(c.join("negzdc.h5")).unwrap();
        let ds = file.dataset("responses").unwrap();
        let mut a = ds.read_dyn::<f32>().unwrap();
        a.as_slice_mut().unwrap()[2 * 1936 + 5] = -1.0;
        ds.write(&a).unwrap();
    }
    case(&c, &["inspect", "negzdc.h5"], &[], 1, &["responses", "event 2", "negative photon count (-1)"], &["MeV"]);
    // An npz whose header declares (1e11, 44, 44) but that holds 4 KB.
    let npz = |name: &str, header_shape: &str, body: usize| {
        use std::io::Write;
        let npy = npy_bytes(header_shape, body);
        let mut z = zip::ZipWriter::new(std::fs::File::create(c.join(name)).unwrap());
        z.start_file("arr_0.npy", zip::write::SimpleFileOptions::default()).unwrap();
        z.write_all(&npy).unwrap();
        z.finish().unwrap();
    };
    npz("big_responses.npz", "(100000000000, 44, 44)", 4096);
    npz("big_particles.npz", "(4, 10)", 160);
    inspect("big_responses.npz", &["arr_0", "(100000000000, 44, 44)", "shorter than its header says"]);
    npz("short_responses.npz", "(4, 44, 44)", 1000);
    npz("short_particles.npz", "(4, 10)", 160);
    inspect("short_responses.npz", &["shorter than its header says"]);
    std::fs::write(c.join("bad_responses.npz"), b"PK junk").unwrap();
    npz("bad_particles.npz", "(4, 10)", 160);
    inspect("bad_responses.npz", &["not a readable npz file"]);
}

/// Waits until a `.NAME.tmp-PID` file appears in `dir` (the write has started).
fn wait_for_temp(dir: &Path, child: &mut std::process::Child) {
    for _ in 0..600 {
        let has_temp =
            std::fs::read_dir(dir).unwrap().flatten().any(|e| e.file_name().to_string_lossy().contains(".tmp-"));
        if has_temp {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "finished before it could be stopped");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("no temporary file appeared");
}

#[test]
fn signals_remove_temporary_files() {
    let c = case_dir("signals");
    for (signal, args) in [
        ("-TERM", vec!["generate", "calo", "--dataset", "3", "--events", "20000", "--output", "big.h5"]),
        ("-INT", vec!["generate", "calo", "--dataset", "3", "--events", "20000", "--gzip", "1", "--output", "big.h5"]),
    ] {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin!("zdcflow"));
        cmd.current_dir(&c).arg("--quiet").args(&args).stderr(std::process::Stdio::null());
        let mut child = {
            let _guard = spawning();
            cmd.spawn().unwrap()
        };
        wait_for_temp(&c, &mut child);
        std::process::Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{signal}: exit 130");
        let left: Vec<String> =
            std::fs::read_dir(&c).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert!(left.is_empty(), "{signal} left {left:?}");
    }
}

#[test]
fn a_diverged_run_keeps_its_last_good_checkpoint_and_resumes_from_it() {
    let c = case_dir("diverge");
    std::fs::copy(fixture().join("zdc.h5"), c.join("zdc.h5")).unwrap();
    case(&c, &teacher_args("t", &[]), &[], 0, &[], &[]);
    let ckpt = std::fs::read(c.join("t/flow/checkpoint/state.safetensors")).unwrap();
    let last = std::fs::read(c.join("t/flow/last.safetensors")).unwrap();
    // (Resuming rewrites the unit's model.json and metrics.jsonl, so this is not a `case`.)
    let r = run_in(&c, &teacher_args("t", &["--resume", "--set", "train.lr=1e20", "--set", "train.epochs=3"]), &[]);
    let err = r.stderr.lines().filter(|l| l.starts_with("error")).collect::<Vec<_>>().join("\n");
    assert_eq!(r.code, 1, "{}", r.stderr);
    for w in ["flow", "non-finite", "the checkpoint of step", "is kept"] {
        assert!(err.contains(w) && !err.contains('\n'), "'{w}' not in one line: {}", r.stderr);
    }
    assert_eq!(std::fs::read(c.join("t/flow/checkpoint/state.safetensors")).unwrap(), ckpt, "{err}");
    assert_eq!(std::fs::read(c.join("t/flow/last.safetensors")).unwrap(), last);
    let kept: u64 = err.split("the checkpoint of step ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let r = run_in(&c, &teacher_args("t", &["--resume", "--set", "train.epochs=2"]), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("resuming from the checkpoint of step {kept}")), "{}", r.stderr);
}

/// A name, an edit of model.json and what the error must say.
type ModelEdit<'a> = (&'a str, &'a dyn Fn(&mut serde_json::Value), &'a [&'a str]);

/// A copy of the fixture's teacher with `edit` applied to its model.json.
fn edited_model(c: &Path, name: &str, edit: &dyn Fn(&mut serde_json::Value)) -> String {
    copy_dir(&fixture().join("t"), &c.join(name));
    let mj = c.join(name).join("model.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&mj).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&mj, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    name.to_string()
}

#[test]
fn outputs_never_replace_what_the_user_owns() {
    let d = fixture();
    let inside = ["inside the --model model directory"];
    for out in ["t/model.json", "t/flow/best.safetensors", "./t/../t/photon_sum/model.json"] {
        case(d, &["sample", "--model", "t", "--conditions", "zdc.h5", "--output", out], &[], 1, &inside, &[]);
    }
    case(d, &["log-prob", "--model", "t", "--showers", "zdc.h5", "--output", "t/model.json"], &[], 1, &inside, &[]);
    case(d, &["export-onnx", "--model", "t", "--output", "t/model.json"], &[], 1, &inside, &[]);
    let features = ["evaluate", "--reference", "ds2.h5", "--generated", "ds2.h5", "--features-out", "ds2.h5"];
    case(d, &features, &[], 1, &["--features-out is also the --reference input"], &[]);
    let c = case_dir("owned");
    let (zdc, gen, ds2, t) = (f("zdc.h5"), f("gen.h5"), f("ds2.h5"), f("t"));
    let zdc_features = ["evaluate", "--reference", &zdc, "--generated", &gen, "--features-out", "feat.h5"];
    case(&c, &zdc_features, &[], 1, &["feat.h5", "ZDC files have none"], &[]);
    assert!(!c.join("feat.h5").exists());
    // flow passes: the output is neither the input, the context nor a file of the model.
    ndarray_npy::write_npy(c.join("x.npy"), &ndarray::Array2::<f32>::zeros((3, 1936))).unwrap();
    ndarray_npy::write_npy(c.join("c.npy"), &ndarray::Array2::<f32>::zeros((3, 10))).unwrap();
    let unit_json = format!("{t}/flow/model.json");
    for (pass, out, input) in [
        ("log-prob", "x.npy", "--input"),
        ("log-prob", "c.npy", "--context"),
        ("to-latent", "./x.npy", "--input"),
        ("to-data", unit_json.as_str(), "--model model directory"),
    ] {
        let a =
            ["flow", pass, "--model", &t, "--unit", "flow", "--input", "x.npy", "--context", "c.npy", "--output", out];
        case(&c, &a, &[], 1, &[input], &[]);
    }
    // npy headers are checked against the file's bytes before anything is allocated.
    std::fs::write(c.join("big.npy"), npy_bytes("(1000000000000, 16)", 64)).unwrap();
    ndarray_npy::write_npy(c.join("none.npy"), &ndarray::Array2::<f32>::zeros((0, 1936))).unwrap();
    for (input, want) in [("big.npy", "shorter than its header says"), ("none.npy", "holds no rows")] {
        let a = [
            "flow",
            "log-prob",
            "--model",
            &t,
            "--unit",
            "flow",
            "--input",
            input,
            "--context",
            "c.npy",
            "--output",
            "o.npy",
        ];
        case(&c, &a, &[], 1, &[input, want], &["c.npy"]);
    }
    // A user-given unit name stays inside --output-dir.
    copy_dir(&fixture().join("t"), &c.join("victim"));
    std::fs::write(c.join("ckpt.pt"), b"not read").unwrap();
    for unit in ["../victim", "/abs/path", "a/b", ".."] {
        let a = ["import-nflows", "ckpt.pt", "--kind", "maf", "--unit", unit, "--output-dir", "b"];
        case(&c, &a, &[], 1, &["--unit", "plain name"], &[]);
    }
    assert!(!c.join("b").exists() && !Path::new("/abs/path").exists());
    // A student's --output-dir inside its teacher.
    let stu = ["distill-student", "--config", &config("smoke-zdc-student.toml"), "--teacher", &t, "--output-dir"];
    let inside_teacher = format!("{t}/student");
    case(
        &c,
        &[&stu[..], &[inside_teacher.as_str()]].concat(),
        &[],
        1,
        &["overlaps the --teacher model directory"],
        &[],
    );
    // Outputs that are not regular files: refused before anything is written, no temporary file left.
    std::fs::create_dir_all(c.join("adir")).unwrap();
    let status = std::process::Command::new("mkfifo").arg(c.join("fifo")).status().unwrap();
    assert!(status.success());
    let shards = [f("s1of3.h5"), f("s2of3.h5"), f("s3of3.h5")];
    for (out, what) in [("adir", "is a directory"), ("fifo", "is a FIFO"), ("/dev/null", "is a device")] {
        let runs: [Vec<&str>; 6] = [
            vec!["sample", "--model", &t, "--conditions", &zdc, "--output", out],
            vec!["generate", "zdc", "--events", "5", "--output", out],
            vec!["merge", "--output", out, &shards[0], &shards[1], &shards[2]],
            vec!["log-prob", "--model", &t, "--showers", &zdc, "--output", out],
            vec![
                "evaluate",
                "--reference",
                &ds2,
                "--generated",
                &ds2,
                "--classifier-epochs",
                "0",
                "--features-out",
                out,
            ],
            vec!["evaluate", "--reference", &zdc, "--generated", &gen, "--output", out],
        ];
        for a in &runs {
            case(&c, a, &[], 1, &[out, what], &[]);
        }
    }
    assert!(c.join("adir").read_dir().unwrap().next().is_none());
}

#[test]
fn model_json_is_checked_as_a_whole() {
    let c = case_dir("model-json");
    let zdc = f("zdc.h5");
    let bad: [ModelEdit; 7] = [
        (
            "std3",
            &|v| v["conditions"]["std"] = serde_json::json!([1.0, 1.0, 1.0]),
            &["conditions.std has 3 entries", "10"],
        ),
        ("mean2", &|v| v["conditions"]["mean"] = serde_json::json!([0.0, 0.0]), &["conditions.mean has 2 entries"]),
        (
            "pixels10",
            &|v| v["preprocessing"]["zdc"]["pixels"] = serde_json::json!({"mean": vec![0.0; 10], "std": vec![1.0; 10]}),
            &["preprocessing.zdc.pixels.mean has 10 entries", "1936"],
        ),
        (
            "target0",
            &|v| v["photon_sum_target"]["mean"] = serde_json::json!([]),
            &["photon_sum_target.mean has 0 entries"],
        ),
        ("noise", &|v| v["preprocessing"]["zdc"]["noise_mul"] = serde_json::json!(-1.0), &["noise_mul = -1", "≥ 0"]),
        ("alpha", &|v| v["preprocessing"]["zdc"]["alpha"] = serde_json::json!(0.5), &["alpha = 0.5", "[0, 0.5)"]),
        ("std0", &|v| v["conditions"]["std"][4] = serde_json::json!(0.0), &["conditions.std", "≤ 0"]),
    ];
    for (name, edit, want) in bad {
        let m = edited_model(&c, name, edit);
        let mut w = vec!["model.json"];
        w.extend_from_slice(want);
        case(&c, &["sample", "--model", &m, "--conditions", &zdc, "--output", "g.h5"], &[], 1, &w, &[]);
    }
    assert!(!c.join("g.h5").exists());
}

#[test]
fn generated_files_and_merges_are_checked_attribute_by_attribute() {
    let (d, c) = (fixture(), case_dir("attrs"));
    let zdc = f("zdc.h5");
    // A shard generated with another noise removal is another job (sampled as the fixture's shards).
    let other = ["sample", "--model", "t", "--conditions", "zdc.h5", "--shard", "2/3", "--denoise", "floor"];
    case(d, &[&other[..], &["--output", "case-attrs/s2.h5"]].concat(), &[], 0, &[], &[]);
    let merge = ["merge", "--output", "case-attrs/all.h5", "s1of3.h5", "case-attrs/s2.h5", "s3of3.h5"];
    case(d, &merge, &[], 1, &["s2.h5", "denoise 'floor'", "'sub-floor-fill'", "different jobs"], &[]);
    assert!(!c.join("all.h5").exists());
    // source_index rows outside the conditions file are refused, not silently clamped.
    for (name, row) in [("far.h5", 999_999i32), ("neg.h5", -5)] {
        std::fs::copy(fixture().join("gen.h5"), c.join(name)).unwrap();
        {
            let _h = hdf5_in_process();
            let file = hdf5::File::open_rw(c.join(name)).unwrap();
            let ds = file.dataset("source_index").unwrap();
            ds.write_slice(&ndarray::arr1(&[row]), ndarray::s![3..4]).unwrap();
        }
        let ev = ["evaluate", "--reference", &zdc, "--generated", name];
        case(&c, &ev, &[], 1, &[name, "source_index", "event 3", &row.to_string()], &[]);
    }
}

#[test]
fn model_files_are_readable_by_others_as_any_file_the_user_writes() {
    use std::os::unix::fs::PermissionsExt;
    let c = case_dir("perm");
    std::fs::write(c.join("probe"), b"").unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let usual = mode(&c.join("probe"));
    for file in ["model.json", "flow/best.safetensors", "flow/last.safetensors", "flow/checkpoint/state.safetensors"] {
        assert_eq!(mode(&fixture().join("t").join(file)), usual, "{file}");
    }
    assert_eq!(mode(&fixture().join("gen.h5")), usual, "gen.h5");
}

#[test]
fn a_repeated_signal_does_not_cancel_the_save() {
    let c = case_dir("twice");
    let mut args = teacher_args("t", &["--set", "train.epochs=1000"]);
    let data = format!("data.path={}", f("zdc.h5"));
    args[4] = Box::leak(data.into_boxed_str());
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin!("zdcflow"));
    cmd.current_dir(&c).arg("--quiet").args(&args).stderr(std::process::Stdio::piped());
    let mut child = {
        let _guard = spawning();
        cmd.spawn().unwrap()
    };
    // Training has begun once a unit's metrics appear.
    for _ in 0..1200 {
        if c.join("t/photon_sum/metrics.jsonl").exists() || c.join("t/flow/metrics.jsonl").exists() {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "finished before it could be stopped");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    for _ in 0..2 {
        std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("still saving") && !err.contains("without saving"), "{err}");
    let saved =
        ["photon_sum", "flow"].iter().any(|u| c.join("t").join(u).join("checkpoint/state.safetensors").exists());
    assert!(saved, "no checkpoint saved: {err}");
}

/// A checkpoint as torch.save writes it: `archive/data.pkl` and one storage, `archive/data/0`.
fn write_pt(path: &Path, pickle: &[u8], storage: &[u8]) {
    use std::io::Write;
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in [("archive/data.pkl", pickle), ("archive/data/0", storage)] {
        z.start_file(name, stored).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

/// `{'model_state_dict': {'w': t}}` pickled as torch.save does (protocol 2), `t` a float32
/// tensor of `shape` starting at element `offset` of storage '0'.
fn state_dict_pickle(shape: [i32; 2], offset: i32) -> Vec<u8> {
    let unicode = |s: &str| [&[b'X'][..], &(s.len() as u32).to_le_bytes(), s.as_bytes()].concat();
    let int = |v: i32| [&[b'J'][..], &v.to_le_bytes()].concat();
    let tuple = |items: &[i32]| [vec![b'('], items.iter().flat_map(|&v| int(v)).collect(), vec![b't']].concat();
    [
        b"\x80\x02}(".to_vec(),
        unicode("model_state_dict"),
        b"}(".to_vec(),
        unicode("w"),
        b"ctorch._utils\n_rebuild_tensor_v2\n(".to_vec(),
        // The storage: persistent id ('storage', FloatStorage, '0', 'cpu', 4 elements).
        b"(".to_vec(),
        unicode("storage"),
        b"ctorch\nFloatStorage\n".to_vec(),
        unicode("0"),
        unicode("cpu"),
        int(4),
        b"tQ".to_vec(),
        int(offset),
        tuple(&shape),
        tuple(&[shape[1], 1]),
        // requires_grad, backward hooks; the arguments' tuple, the call, both dicts' items.
        b"\x89ccollections\nOrderedDict\n)RtRuu.".to_vec(),
    ]
    .concat()
}

#[test]
fn pytorch_checkpoints_are_checked_before_allocating() {
    let c = case_dir("pt");
    let import = |pt: &'static str| ["import-nflows", pt, "--kind", "maf", "--output-dir", "out"];
    // A pickle string declaring 4 GiB in a file of a few bytes.
    write_pt(&c.join("string.pt"), b"\x80\x02X\xff\xff\xff\xffabc", &[]);
    case(&c, &import("string.pt"), &[], 1, &["string.pt", "string of 4.3 GB", "only 3 B follow"], &[]);
    // A (1e9, 1e9) tensor over 16 bytes of storage.
    write_pt(&c.join("shape.pt"), &state_dict_pickle([1_000_000_000; 2], 0), &[0; 16]);
    let want = ["shape.pt", "tensor 'w'", "[1000000000, 1000000000]", "holds only 16 B"];
    case(&c, &import("shape.pt"), &[], 1, &want, &[]);
    // Storage offsets past the storage or negative: the tensor is named, not a missing --key.
    write_pt(&c.join("offset.pt"), &state_dict_pickle([2, 2], 1000), &[0; 16]);
    case(&c, &import("offset.pt"), &[], 1, &["offset.pt", "tensor 'w'", "byte 4000"], &["--key"]);
    write_pt(&c.join("negative.pt"), &state_dict_pickle([2, 2], -1), &[0; 16]);
    case(&c, &import("negative.pt"), &[], 1, &["negative.pt", "tensor 'w'", "storage offset"], &["--key"]);
    // NaN weights: the checkpoint is named (not the weights file it would have become).
    let real = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nflows/zdc-maf-small.pt");
    {
        use std::io::{Read, Write};
        let mut src = zip::ZipArchive::new(std::fs::File::open(real).unwrap()).unwrap();
        let mut z = zip::ZipWriter::new(std::fs::File::create(c.join("nan.pt")).unwrap());
        for i in 0..src.len() {
            let mut entry = src.by_index(i).unwrap();
            let name = entry.name().to_string();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            if name.ends_with("/data/0") {
                bytes = f32::NAN.to_le_bytes().repeat(bytes.len() / 4);
            }
            z.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            z.write_all(&bytes).unwrap();
        }
        z.finish().unwrap();
    }
    case(&c, &import("nan.pt"), &[], 1, &["nan.pt", "non-finite"], &["best.safetensors"]);
    // The memory limit applies; a bad setting is the setting's error, not the checkpoint's.
    let limit = [("ZDCFLOW_MEMORY_LIMIT", "100K")];
    case(&c, &import(real), &limit, 1, &["zdc-maf-small.pt", "ZDCFLOW_MEMORY_LIMIT=100K"], &[]);
    let bad = [("ZDCFLOW_MEMORY_LIMIT", "lots")];
    case(&c, &import(real), &bad, 1, &["ZDCFLOW_MEMORY_LIMIT='lots'"], &["zdc-maf-small.pt"]);
    assert!(!c.join("out").exists(), "nothing written");
}

#[test]
fn messages_name_the_real_cause() {
    let d = fixture();
    let no_val = teacher_args("case-never", &["--set", "data.split=[1,0,0]"]);
    case(d, &no_val, &[], 1, &["data.split", "validation split is empty"], &["rqs"]);
    let stu = [
        "distill-student",
        "--config",
        &config("smoke-zdc-student.toml"),
        "--teacher",
        "t",
        "--set",
        "distill.diversity_eps=-1",
        "--output-dir",
        "case-never",
    ];
    case(d, &stu, &[], 1, &["distill.diversity_eps", "≥ 0"], &["channel_weight"]);
    assert!(!d.join("case-never").exists());
    // A bad memory limit is the setting's error, not the data file's.
    case(
        d,
        &["inspect", "zdc.h5"],
        &[("ZDCFLOW_MEMORY_LIMIT", "lots")],
        1,
        &["ZDCFLOW_MEMORY_LIMIT='lots'"],
        &["zdc.h5"],
    );
    // A file name that is not UTF-8 is not "truncated or another format".
    use std::os::unix::ffi::OsStrExt;
    let c = case_dir("names");
    let name = OsStr::from_bytes(b"bad\xff.h5");
    std::fs::copy(fixture().join("zdc.h5"), c.join(name)).unwrap();
    case(&c, &[OsStr::new("inspect"), name], &[], 1, &["bad", "UTF-8"], &["truncated"]);
}

#[test]
fn full_disks_leave_no_temporary_file() {
    let c = case_dir("full");
    let (t, zdc) = (f("t"), f("zdc.h5"));
    let shards = [f("s1of3.h5"), f("s2of3.h5"), f("s3of3.h5")];
    let runs: [Vec<&str>; 3] = [
        vec!["sample", "--model", &t, "--conditions", &zdc, "--output", "out.h5"],
        vec!["merge", "--output", "out.h5", &shards[0], &shards[1], &shards[2]],
        vec!["generate", "zdc", "--events", "600", "--output", "out.h5"],
    ];
    for a in &runs {
        // Files capped at 16 KB: the write fails part-way, as on a full disk.
        case_with(&c, a, 1, &["out.h5", "File too large"], &[], || run_limited(&c, a, &[], Some(16 << 10)));
        let left: Vec<_> = std::fs::read_dir(&c).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{a:?} left {left:?}");
    }
}

#[test]
fn a_teacher_never_writes_over_its_data() {
    let c = case_dir("teacher-data");
    std::fs::create_dir_all(c.join("m")).unwrap();
    std::fs::copy(fixture().join("zdc.h5"), c.join("zdc.h5")).unwrap();
    std::fs::copy(fixture().join("zdc.h5"), c.join("m/zdc.h5")).unwrap();
    for (data, out, want) in [
        ("data.path=zdc.h5", ".", "holds the data.path input zdc.h5"),
        ("data.path=m/zdc.h5", "m", "holds the data.path input m/zdc.h5"),
        ("data.path=zdc.h5", "zdc.h5", "is the data.path input zdc.h5"),
    ] {
        let mut a = teacher_args(out, &[]);
        a[4] = data;
        case(&c, &a, &[], 1, &["--output-dir", want], &[]);
    }
    assert!(!c.join("model.json").exists() && !c.join("m/model.json").exists());
}

#[test]
fn a_stopped_demo_does_not_suggest_resume() {
    let c = case_dir("demo");
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin!("zdcflow"));
    cmd.current_dir(&c).args(["--quiet", "demo", "--output-dir", "run"]);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = {
        let _guard = spawning();
        cmd.spawn().unwrap()
    };
    // Stopped in its first training step, where a lone train-teacher would suggest --resume.
    let teacher = c.join("run/zdc/teacher");
    for _ in 0..1200 {
        if teacher.join("photon_sum/metrics.jsonl").exists() || teacher.join("flow/metrics.jsonl").exists() {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "finished before it could be stopped");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("the demo does not resume") && !err.contains("--resume"), "{err}");
}

/// Broken data files, configs and models written by hand (formerly tests/bad_input.rs): one clear
/// error line naming the file, the dataset and the problem, a non-zero exit and no panic.
mod hand_written_inputs {
    use std::path::Path;

    use crate::common::*;
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
        let mut npz =
            ndarray_npy::NpzWriter::new(std::fs::File::create(d.join("data_n_nonrandom_responses.npz")).unwrap());
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
        ok(d, &strs(&ds2_teacher_args(&["train.epochs=1", "flow3.train.max_batches=2"], "calo")));
        let err = fails(
            d,
            &[
                "distill-student",
                "--config",
                &config("smoke-zdc-student.toml"),
                "--teacher",
                "calo",
                "--output-dir",
                "s",
            ],
        );
        assert!(err.contains("calo") && err.contains("Ds2"), "{err}");
        let err = fails(d, &["sample", "--model", "nowhere", "--events", "3", "--output", "g.h5"]);
        assert!(err.contains("nowhere") && err.contains("not a model directory"), "{err}");
        // Weights of another architecture.
        std::fs::copy(d.join("calo/flow1/best.safetensors"), d.join("calo/flow2/best.safetensors")).unwrap();
        let err = fails(d, &["sample", "--model", "calo", "--events", "3", "--output", "g.h5"]);
        assert!(err.contains("flow2/best.safetensors") && err.contains("another model"), "{err}");
        // Starting over in a trained directory without --resume.
        let err = fails(d, &strs(&ds2_teacher_args(&[], "calo")));
        assert!(err.contains("--resume"), "{err}");
    }
}
