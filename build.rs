//! Records the git commit zdcflow was built from (written into metrics files and model metadata).

fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ZDCFLOW_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    // Asked of git rather than assumed to be `.git/`: in a worktree `.git` is a file, and a
    // rerun-if-changed path that does not exist reruns this script (and rebuilds the crate) on
    // every cargo command.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
    }
    if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        for path in ["refs/heads", "packed-refs"] {
            let full = format!("{common}/{path}");
            if std::path::Path::new(&full).exists() {
                println!("cargo:rerun-if-changed={full}");
            }
        }
    }
}
