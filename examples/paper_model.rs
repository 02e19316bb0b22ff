//! Writes a model directory with random weights of the papers' sizes (the models `zdcflow bench
//! --shower` times), for timing other runtimes on the same architecture (scripts/onnx_speed.sh):
//!     cargo run --release --example paper_model -- ds2|ds3|zdc student|teacher DIR

use std::process::ExitCode;

use zdcflow::config::Detector;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: paper_model ds2|ds3|zdc student|teacher DIR";
    let [detector, role, dir] = args.as_slice() else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let detector = match detector.as_str() {
        "ds2" => Detector::Ds2,
        "ds3" => Detector::Ds3,
        "zdc" => Detector::Zdc,
        other => {
            eprintln!("unknown detector '{other}': {usage}");
            return ExitCode::from(2);
        }
    };
    let student = match role.as_str() {
        "student" => true,
        "teacher" => false,
        other => {
            eprintln!("unknown role '{other}': {usage}");
            return ExitCode::from(2);
        }
    };
    match zdcflow::diagnostics::perf::random_model(detector, student, std::path::Path::new(dir)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paper_model: {e:#}");
            ExitCode::FAILURE
        }
    }
}
