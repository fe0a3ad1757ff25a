//! The workspace's shape, checked (issue 19): which crate may depend on which, no source
//! file over 500 lines outside tests, and no import circle between the modules of a crate.
//! Reads the sources only; nothing is built or run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each crate and the Sightline crates it may depend on (`[dependencies]`), lowest first.
/// A crate not listed here fails the test: place it in the layering first.
const ARROWS: [(&str, &[&str]); 10] = [
    ("crates/api", &[]),
    ("crates/telemetry", &[]),
    (
        "crates/model",
        &["sightline-api", "sightline-quality", "sightline-telemetry"],
    ),
    ("crates/quality", &[]),
    (
        "crates/store",
        &["sightline-api", "sightline-quality", "sightline-telemetry"],
    ),
    ("crates/eval", &["sightline-model", "sightline-quality"]),
    (
        "crates/batch",
        &["sightline-api", "sightline-eval", "sightline-model"],
    ),
    (
        "inference-server",
        &[
            "sightline-api",
            "sightline-batch",
            "sightline-eval",
            "sightline-model",
            "sightline-quality",
            "sightline-store",
            "sightline-telemetry",
        ],
    ),
    ("operator", &["sightline-api", "sightline-telemetry"]),
    ("e2e", &["sightline-server"]),
];

/// Longest source file outside tests.
const MAX_LINES: usize = 500;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A test-only file: `tests.rs`, `*_tests.rs` (a module's `#[cfg(test)] mod tests;`).
fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "tests.rs" || name.ends_with("_tests.rs")
}

/// The members of the workspace (`members = [...]` in the root manifest).
fn members() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("Cargo.toml")).expect("root Cargo.toml");
    let list = text
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("a members list");
    list.split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

/// The `sightline-*` crates in a manifest's `[dependencies]` (not dev or build ones).
fn sightline_dependencies(manifest: &str) -> BTreeSet<String> {
    let mut section = "";
    let mut found = BTreeSet::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[dependencies]" && line.starts_with("sightline-") {
            let name = line.split(|c: char| c == '=' || c.is_whitespace()).next();
            found.extend(name.map(str::to_string));
        }
    }
    found
}

#[test]
fn each_crate_depends_only_on_the_layers_below_it() {
    let allowed: BTreeMap<&str, &[&str]> = ARROWS.into_iter().collect();
    for member in members() {
        let Some(may) = allowed.get(member.as_str()) else {
            panic!("{member} is not in the layering (ARROWS in e2e/tests/layers.rs)");
        };
        let manifest = std::fs::read_to_string(repo().join(&member).join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("{member}/Cargo.toml: {e}"));
        let has = sightline_dependencies(&manifest);
        let wrong: Vec<_> = has.iter().filter(|d| !may.contains(&d.as_str())).collect();
        assert!(wrong.is_empty(), "{member} may not depend on {wrong:?}");
    }
}

#[test]
fn no_source_file_outside_tests_is_over_500_lines() {
    let mut long = Vec::new();
    for member in members() {
        let mut files = Vec::new();
        sources(&repo().join(&member).join("src"), &mut files);
        for file in files.iter().filter(|f| !is_test_file(f)) {
            let lines = std::fs::read_to_string(file)
                .expect("a source file")
                .lines()
                .count();
            if lines > MAX_LINES {
                long.push(format!("{}: {lines}", file.display()));
            }
        }
    }
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:#?}");
}

/// A module's path in its crate: `src/a/b.rs` and `src/a/b/mod.rs` are `["a", "b"]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut path: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if path
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        path.pop();
    }
    path
}

/// Code without its line comments (doc links name modules without importing them).
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::a::b…` and `super::…` path in `text`, as segments, resolved from `me`.
fn paths_named(text: &str, me: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for start in ["crate::", "super::"] {
        for (i, _) in text.match_indices(start) {
            let before = text[..i].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &text[i..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let mut segments: Vec<&str> =
                rest[..end].split("::").filter(|s| !s.is_empty()).collect();
            let mut target: Vec<String> = if segments.first() == Some(&"crate") {
                segments.remove(0);
                Vec::new()
            } else {
                // The file `a/b.rs` is the module `a::b`; `super` is `a`.
                let mut base = me.to_vec();
                while segments.first() == Some(&"super") {
                    segments.remove(0);
                    base.pop();
                }
                base
            };
            target.extend(segments.iter().map(|s| s.to_string()));
            out.push(target);
        }
    }
    out
}

/// The import edges between a crate's modules (files), leaving out a module's use of its
/// own ancestors or descendants (a module and its submodules are one unit).
fn module_edges(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    files.retain(|f| !is_test_file(f) && !f.starts_with(src.join("bin")));
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(src, f)).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &files {
        let me = module_path(src, file);
        let text = std::fs::read_to_string(file).expect("a source file");
        let text = code(
            text.split("\n#[cfg(test)]\nmod tests {")
                .next()
                .unwrap_or(""),
        );
        for named in paths_named(&text, &me) {
            // The longest prefix that is a module (the rest names an item in it).
            let Some(target) = (0..=named.len())
                .rev()
                .map(|n| named[..n].to_vec())
                .find(|p| modules.contains(p))
            else {
                continue;
            };
            let related = target.starts_with(&me) || me.starts_with(&target);
            if !related {
                edges.entry(me.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

/// The modules on a circle: those that reach themselves.
fn on_circles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<String> {
    let reach = |from: &Vec<String>| {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&Vec<String>> = edges.get(from).into_iter().flatten().collect();
        while let Some(next) = todo.pop() {
            if seen.insert(next.clone()) {
                todo.extend(edges.get(next).into_iter().flatten());
            }
        }
        seen
    };
    edges
        .keys()
        .filter(|m| reach(m).contains(*m))
        .map(|m| m.join("::"))
        .collect()
}

#[test]
fn no_crate_has_an_import_circle() {
    let mut circles = Vec::new();
    for member in members() {
        let on = on_circles(&module_edges(&repo().join(&member).join("src")));
        if !on.is_empty() {
            circles.push(format!("{member}: {on:?}"));
        }
    }
    assert!(
        circles.is_empty(),
        "modules on an import circle: {circles:#?}"
    );
}

#[test]
fn the_circle_check_sees_a_circle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").expect("write");
    std::fs::write(src.join("a/mod.rs"), "pub mod c;\n").expect("write");
    std::fs::write(src.join("a/c.rs"), "use crate::b::Thing;\n").expect("write");
    std::fs::write(
        src.join("b.rs"),
        "// crate::a::c in a comment\npub struct Thing;\n",
    )
    .expect("write");
    assert!(on_circles(&module_edges(src)).is_empty());
    std::fs::write(
        src.join("b.rs"),
        "use super::a::c::Other;\npub struct Thing;\n",
    )
    .expect("write");
    assert_eq!(on_circles(&module_edges(src)), vec!["a::c", "b"]);
}
