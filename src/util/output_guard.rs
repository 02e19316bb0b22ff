//! The one check every command runs on the paths it will write, before it writes anything: an
//! output must not be one of the command's inputs, nor lie inside an input model directory, nor
//! be something other than a regular file (a directory, a device such as `/dev/null`, a FIFO, a
//! socket: the atomic rename would replace it), and a name taken from the user (`--unit`) must
//! stay inside the output directory. Paths are compared canonically (`./a.h5`, absolute paths and
//! symlinks are one file).

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// What a command reads, by the flag that names it.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// One file (`--conditions`, `--reference`, a shard…).
    File(&'a str, &'a Path),
    /// A model directory: every file inside it belongs to the model.
    ModelDir(&'a str, &'a Path),
}

/// Refuses `output` (named by `flag`) when writing it would replace an input, a model's file or
/// something that is not a regular file.
pub fn check_output(output: &Path, flag: &str, inputs: &[Input]) -> Result<()> {
    refuse_non_regular(output, flag)?;
    let out = resolved(output);
    for input in inputs {
        match *input {
            Input::File(name, path) if resolved(path) == out => {
                return Err(Error::format(
                    output,
                    format!(
                        "{flag} is also the {name} input; writing it would replace that file — choose another {flag}"
                    ),
                ));
            }
            Input::ModelDir(name, dir) if out.starts_with(resolved(dir)) => {
                return Err(Error::format(
                    output,
                    format!(
                        "{flag} lies inside the {name} model directory {}; writing it could replace the model's files — choose another {flag}",
                        dir.display()
                    ),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses an output directory that is, or lies inside, an input model directory, or that holds
/// one (the new model's files would land among the input model's).
pub fn check_output_dir(dir: &Path, flag: &str, models: &[(&str, &Path)]) -> Result<()> {
    let out = resolved(dir);
    for (name, model) in models {
        let model = resolved(model);
        if out.starts_with(&model) || model.starts_with(&out) {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "{flag} overlaps the {name} model directory {}; its files could be replaced — choose another {flag}",
                    model.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses an output directory that is or holds one of the command's input files (`data.path`):
/// any file in it may be written (checkpoints, metrics, figures).
pub fn check_dir_holds_no_input(dir: &Path, flag: &str, inputs: &[(&str, &Path)]) -> Result<()> {
    let out = resolved(dir);
    for (name, input) in inputs {
        let input_at = resolved(input);
        if input_at.starts_with(&out) {
            let relation = if input_at == out { "is" } else { "holds" };
            return Err(Error::checkpoint(
                dir,
                format!(
                    "{flag} {relation} the {name} input {}; the model's files written there could replace it — choose another {flag}",
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

/// `dir/name` for a name the user chose (`--unit`): one plain path component, so the result
/// cannot land outside `dir` (no `/`, `..`, `.` or absolute path).
pub fn join_inside(dir: &Path, name: &str, flag: &str) -> Result<PathBuf> {
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !name.contains('/') => Ok(dir.join(name)),
        _ => Err(Error::Invalid(format!(
            "{flag} '{name}': must be a plain name (no '/', '.' or '..'), so it stays inside {}",
            dir.display()
        ))),
    }
}

/// Refuses an existing `path` that is not a regular file (a symlink counts as what it points to).
pub fn refuse_non_regular(path: &Path, flag: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(Error::format(
            path,
            format!("{flag} exists and is {}, not a regular file; it would be replaced — choose a file name", kind(&m)),
        )),
        _ => Ok(()),
    }
}

fn kind(m: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if m.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// The canonical form of `path`, also for paths that do not exist yet: the longest existing
/// ancestor canonicalised (symlinks resolved), the rest normalised by name (`..` removes the
/// component before it, as it will once the missing directories are created).
fn resolved(path: &Path) -> PathBuf {
    let absolute =
        if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(path) };
    let mut base = absolute.as_path();
    let mut tail = Vec::new();
    loop {
        if let Ok(c) = base.canonicalize() {
            let mut out = c;
            for part in tail.iter().rev() {
                match part {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    c => out.push(c.as_os_str()),
                }
            }
            return out;
        }
        match (base.parent(), base.components().next_back()) {
            (Some(parent), Some(last)) => {
                tail.push(last);
                base = parent;
            }
            _ => return absolute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_equal_to_an_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.h5");
        std::fs::write(&a, b"x").unwrap();
        let dotted = dir.path().join(".").join("a.h5");
        let e = check_output(&dotted, "--output", &[Input::File("--conditions", &a)]).unwrap_err().to_string();
        assert!(e.contains("--conditions") && e.contains("a.h5"), "{e}");
        let roundabout = dir.path().join("new").join("..").join("a.h5");
        assert!(check_output(&roundabout, "--output", &[Input::File("--conditions", &a)]).is_err());
        assert!(check_output(&dir.path().join("b.h5"), "--output", &[Input::File("--conditions", &a)]).is_ok());
    }

    #[test]
    fn an_output_inside_an_input_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir_all(model.join("flow")).unwrap();
        let inputs = [Input::ModelDir("--model", &model)];
        for inside in ["m/model.json", "m/flow/best.safetensors", "m/new/x.h5"] {
            let e = check_output(&dir.path().join(inside), "--output", &inputs).unwrap_err().to_string();
            assert!(e.contains("inside the --model model directory"), "{e}");
        }
        assert!(check_output(&dir.path().join("mx.h5"), "--output", &inputs).is_ok());
    }

    #[test]
    fn outputs_that_are_not_regular_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_output(dir.path(), "--output", &[]).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = check_output(Path::new("/dev/null"), "--output", &[]).unwrap_err().to_string();
        assert!(e.contains("is a device"), "{e}");
    }

    #[test]
    fn output_directories_holding_an_input_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("zdc.h5");
        std::fs::write(&data, b"x").unwrap();
        let inputs = [("data.path", data.as_path())];
        for out in [dir.path().to_path_buf(), dir.path().join("."), data.clone()] {
            let e = check_dir_holds_no_input(&out, "--output-dir", &inputs).unwrap_err().to_string();
            assert!(e.contains("data.path input") && e.contains("zdc.h5"), "{e}");
        }
        assert!(check_dir_holds_no_input(&dir.path().join("t"), "--output-dir", &inputs).is_ok());
    }

    #[test]
    fn user_names_stay_inside_the_output_directory() {
        let d = Path::new("out");
        assert_eq!(join_inside(d, "flow2", "--unit").unwrap(), d.join("flow2"));
        for bad in ["../victim", "/abs/path", "a/b", ".", "..", ""] {
            assert!(join_inside(d, bad, "--unit").is_err(), "{bad}");
        }
    }

    #[test]
    fn overlapping_output_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        std::fs::create_dir_all(&t).unwrap();
        for out in ["t", "t/s", "."] {
            assert!(check_output_dir(&dir.path().join(out), "--output-dir", &[("--teacher", &t)]).is_err(), "{out}");
        }
        assert!(check_output_dir(&dir.path().join("s"), "--output-dir", &[("--teacher", &t)]).is_ok());
    }
}
