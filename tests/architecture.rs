//! docs/architecture.md's list of allowed imports between the top-level modules of `src/`
//! (folders such as `flow/` and single files such as `cli.rs`) matches the code.
//!
//! Every `crate::X` path in code (not in comments or string literals; `zdcflow::X` in `main.rs`)
//! of a file under `src/A` is an import A → X. The documented list must (1) name every module
//! once, (2) be ordered top to bottom so that each module imports only modules listed below it
//! (the layering; no cycles), (3) allow every import the code makes, and (4) hold no edge that
//! the code no longer makes. When this test fails after you changed imports, update the list in
//! docs/architecture.md (and the prose about the edge) in the same commit.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const DOC: &str = "docs/architecture.md";
const MARKER: &str = "<!-- allowed-imports: checked by tests/architecture.rs -->";

/// Imports between modules (from, to), each with every place that makes it.
type Edges = BTreeMap<(String, String), Vec<Site>>;

/// One import found in the code: the file and line that make it.
#[derive(Debug, Clone)]
struct Site {
    file: String,
    line: usize,
}

/// The documented layering: modules top to bottom, each with the modules it may import
/// (`known_debt`: the subset marked `*`, kept for the prose; the test treats them as allowed).
#[derive(Debug)]
struct Layering {
    order: Vec<String>,
    allowed: BTreeMap<String, BTreeSet<String>>,
    known_debt: BTreeSet<(String, String)>,
}

/// Replaces comments and the contents of string and character literals by spaces (newlines
/// kept, so offsets map to the same lines).
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0usize;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if let Some((body, hashes)) = raw_string_open(&c, i) {
            // Raw string r#"…"#: ends at a quote followed by as many hashes as it opened with.
            let mut j = body;
            while j < c.len() && !(c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#'))) {
                j += 1;
            }
            let end = (j + 1 + hashes).min(c.len());
            for &ch in &c[i..end] {
                out.push(blank(ch));
            }
            i = end;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                let step = if c[i] == '\\' { 2 } else { 1 };
                for k in 0..step {
                    if let Some(&ch) = c.get(i + k) {
                        out.push(blank(ch));
                    }
                }
                i += step;
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' && (next == Some('\\') || c.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\n', '\u{..}'); a lifetime ('a) has no closing quote.
            let mut j = i + 1;
            if next == Some('\\') {
                j += 2;
            } else {
                j += 1;
            }
            while j < c.len() && c[j] != '\'' {
                j += 1;
            }
            for _ in i..=j.min(c.len() - 1) {
                out.push(' ');
            }
            i = j + 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Where a raw string (`r"…"`, `r#"…"#`, `br"…"`) opens at `i`: the index after its quote and
/// the number of hashes.
fn raw_string_open(c: &[char], i: usize) -> Option<(usize, usize)> {
    let after_ident = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
    let mut j = match (c[i], c.get(i + 1)) {
        ('r', _) => i + 1,
        ('b', Some('r')) => i + 2,
        _ => return None,
    };
    if after_ident {
        return None;
    }
    let hashes_from = j;
    while c.get(j) == Some(&'#') {
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some((j + 1, j - hashes_from))
}

/// The top-level modules a piece of code names through `prefix::` paths (`crate::a::b`,
/// `crate::{a, b::c}`), each with its 1-based line.
fn imported_modules(code: &str, prefix: &str) -> Vec<(String, usize)> {
    let c: Vec<char> = code.chars().collect();
    let p: Vec<char> = prefix.chars().collect();
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let line_of = |pos: usize| c[..pos].iter().filter(|&&ch| ch == '\n').count() + 1;
    let ident_at = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        let start = j;
        while j < c.len() && is_ident(c[j]) {
            j += 1;
        }
        (c[start..j].iter().collect::<String>(), j)
    };
    let mut found = Vec::new();
    let mut i = 0;
    while i + p.len() <= c.len() {
        if c[i..i + p.len()] != p[..] || (i > 0 && (is_ident(c[i - 1]) || c[i - 1] == '$')) {
            i += 1;
            continue;
        }
        let mut j = i + p.len();
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        if c.get(j) == Some(&'{') {
            // A group: the first name of every item at depth 1.
            let mut depth = 1;
            let mut item_start = true;
            j += 1;
            while j < c.len() && depth > 0 {
                match c[j] {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => item_start = true,
                    ch if item_start && depth == 1 && is_ident(ch) => {
                        let (name, end) = ident_at(j);
                        if name != "self" {
                            found.push((name, line_of(j)));
                        }
                        item_start = false;
                        j = end;
                        continue;
                    }
                    _ => {}
                }
                j += 1;
            }
        } else {
            let (name, _) = ident_at(j);
            if !name.is_empty() {
                found.push((name, line_of(i)));
            }
        }
        i += p.len();
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir).expect("read src/").map(|e| e.expect("dir entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The imports between top-level modules of `src/` (self-imports left out; `lib.rs` only
/// declares the modules).
fn code_imports(root: &Path) -> (BTreeSet<String>, Edges) {
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules = BTreeSet::new();
    let mut edges = Edges::new();
    for path in files {
        let rel = path.strip_prefix(&src).expect("under src/");
        let first = rel.components().next().expect("a path").as_os_str().to_string_lossy().into_owned();
        let module = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        if module == "lib" {
            continue;
        }
        modules.insert(module.clone());
        let code = code_only(&fs::read_to_string(&path).expect("read a source file"));
        let mut names = imported_modules(&code, "crate::");
        if module == "main" {
            names.extend(imported_modules(&code, "zdcflow::"));
        }
        for (to, line) in names {
            if to != module {
                let file = format!("src/{}", rel.display());
                edges.entry((module.clone(), to)).or_default().push(Site { file, line });
            }
        }
    }
    (modules, edges)
}

/// Reads the list that follows [`MARKER`] in the document: one line per module, top to bottom,
/// `module -> dep dep* …` (`*` marks a known debt), `#` starts a comment.
fn documented(doc: &str) -> Result<Layering, String> {
    let after = doc.split_once(MARKER).ok_or(format!("{DOC} lacks the line {MARKER}"))?.1;
    let body = after.split_once("```text").ok_or(format!("{DOC}: no ```text block after the marker"))?.1;
    let block = body.split_once("```").ok_or(format!("{DOC}: the ```text block after the marker is not closed"))?.0;
    let mut order = Vec::new();
    let mut allowed = BTreeMap::new();
    let mut known_debt = BTreeSet::new();
    for raw in block.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (name, deps) = line.split_once("->").ok_or(format!("{DOC}: '{raw}' is not 'module -> modules'"))?;
        let name = name.trim().to_string();
        if allowed.contains_key(&name) {
            return Err(format!("{DOC}: '{name}' is listed twice"));
        }
        let mut set = BTreeSet::new();
        for dep in deps.split(|ch: char| ch.is_whitespace() || ch == ',').filter(|d| !d.is_empty()) {
            let bare = dep.trim_end_matches('*').to_string();
            if dep.ends_with('*') {
                known_debt.insert((name.clone(), bare.clone()));
            }
            set.insert(bare);
        }
        order.push(name.clone());
        allowed.insert(name, set);
    }
    Ok(Layering { order, allowed, known_debt })
}

/// Every way the documented layering and the code disagree, one line each.
fn disagreements(layering: &Layering, modules: &BTreeSet<String>, edges: &Edges) -> Vec<String> {
    let mut problems = Vec::new();
    let listed: BTreeSet<String> = layering.order.iter().cloned().collect();
    for m in modules.difference(&listed) {
        problems.push(format!("src/{m} is not in {DOC}'s list of allowed imports: add a line for it"));
    }
    for m in listed.difference(modules) {
        problems.push(format!("{DOC} lists '{m}', which is no module of src/ any more: remove its line"));
    }
    let position: BTreeMap<&str, usize> = layering.order.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    for (from, deps) in &layering.allowed {
        for to in deps {
            match position.get(to.as_str()) {
                None => problems.push(format!("{DOC}: '{from} -> {to}' names no listed module")),
                Some(&p) if p <= position[from.as_str()] => problems.push(format!(
                    "{DOC}: '{from} -> {to}' points up or sideways: every module may import only modules \
                     listed below it (reorder the list, or remove the import)"
                )),
                _ => {}
            }
            if !edges.contains_key(&(from.clone(), to.clone())) {
                problems.push(format!(
                    "{DOC} allows {from} -> {to}, but src/{from} no longer imports crate::{to}: remove it \
                     from the list (and from the text about it)"
                ));
            }
        }
    }
    for ((from, to), sites) in edges {
        let ok = layering.allowed.get(from).is_some_and(|deps| deps.contains(to));
        if !ok {
            let at: Vec<String> = sites.iter().take(3).map(|s| format!("{}:{}", s.file, s.line)).collect();
            problems.push(format!(
                "{} imports crate::{to}, but {DOC} does not allow {from} -> {to}: move the code to the \
                 module that owns it, or add '{to}' to the line of '{from}' in {DOC}'s list (and say why \
                 in the text) in the same change",
                at.join(", ")
            ));
        }
    }
    problems
}

#[test]
fn documented_layers_match_the_imports_of_src() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join(DOC)).unwrap_or_else(|e| panic!("{DOC}: {e}"));
    let layering = documented(&doc).unwrap_or_else(|e| panic!("{e}"));
    let (modules, edges) = code_imports(root);
    let problems = disagreements(&layering, &modules, &edges);
    assert!(problems.is_empty(), "{DOC} and the imports of src/ disagree:\n  {}", problems.join("\n  "));
}

#[test]
fn the_scanner_sees_paths_in_code_only() {
    let src = r##"
//! Doc comment naming crate::commented_out.
use crate::alpha::Thing; // crate::trailing_comment
use crate::{beta, gamma::{self, Inner}, self as me};
const S: &str = "crate::in_a_string \" crate::after_escape";
const R: &str = r#"crate::in_a_raw "quoted" string"#;
fn f<'a>(x: &'a str) -> char { let _ = crate::delta::call(x); '"' }
/* crate::in_a_block /* nested crate::deeper */ still comment */
fn g() { crate :: epsilon::h(); my_crate::not_this(); $crate::nor_this(); }
"##;
    let found = imported_modules(&code_only(src), "crate::");
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "gamma", "delta"]);
    assert_eq!(found[3].1, 7, "line numbers survive the blanking");
}

#[test]
fn an_undocumented_or_upward_import_is_reported() {
    let doc = format!("{MARKER}\n```text\ntop -> mid bottom*\nmid -> bottom\nbottom ->\n```\n");
    let layering = documented(&doc).unwrap();
    assert!(layering.known_debt.contains(&("top".to_string(), "bottom".to_string())));
    let modules: BTreeSet<String> = ["top", "mid", "bottom"].iter().map(|s| s.to_string()).collect();
    let site = || vec![Site { file: "src/x.rs".into(), line: 1 }];
    let mut edges = Edges::new();
    for (a, b) in [("top", "mid"), ("top", "bottom"), ("mid", "bottom")] {
        edges.insert((a.into(), b.into()), site());
    }
    assert!(disagreements(&layering, &modules, &edges).is_empty());
    edges.insert(("bottom".into(), "top".into()), site());
    let problems = disagreements(&layering, &modules, &edges);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("does not allow bottom -> top"), "{problems:?}");
    edges.remove(&("bottom".to_string(), "top".to_string()));
    edges.remove(&("mid".to_string(), "bottom".to_string()));
    let problems = disagreements(&layering, &modules, &edges);
    assert!(problems.len() == 1 && problems[0].contains("allows mid -> bottom"), "{problems:?}");
    let upward = documented(&format!("{MARKER}\n```text\na -> b\nb -> a\n```\n")).unwrap();
    let ab: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
    let mut e = Edges::new();
    e.insert(("a".into(), "b".into()), site());
    e.insert(("b".into(), "a".into()), site());
    assert!(disagreements(&upward, &ab, &e).iter().any(|p| p.contains("points up or sideways")));
}
