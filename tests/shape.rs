//! The daemons keep the shape their docs describe: no circle of imports
//! among the files of `src/idle/`, `src/idle/core/`, `src/tracker/` and
//! the reference server's `src/lab/serve/`, and no file longer than 400
//! lines before its test module.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

const DIRS: [&str; 7] = [
    "src/idle",
    "src/idle/core",
    "src/tracker",
    "src/lab/serve",
    "src/lab/serve/login",
    "src/lab/serve/mail",
    "src/lab/serve/session",
];
const MAX_LINES: usize = 400;

/// Module name -> source, for the files of one directory (`mod.rs` is "mod").
fn modules(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.join("mod.rs").is_file() {
            // A child directory is one module here; its own files are
            // checked as a directory of their own.
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.insert(name, String::new());
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            out.insert(name, fs::read_to_string(&path).expect("read file"));
        }
    }
    out
}

/// The code before the test module (tests may use anything), without
/// comments.
fn code(src: &str) -> String {
    let before = src.find("#[cfg(test)]\nmod").map_or(src, |i| &src[..i]);
    before
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which modules of the same directory a file's code names.
fn edges(name: &str, src: &str, mods: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut to = BTreeSet::new();
    let code = code(src);
    let code = code.as_str();
    let mut names = Vec::new();
    if name == "mod" {
        // mod.rs names its children directly: `use child::..`, `child::..`.
        for m in mods.keys() {
            let mention = format!("{m}::");
            if code
                .match_indices(&mention)
                .any(|(i, _)| i == 0 || !is_ident(code.as_bytes()[i - 1]))
            {
                names.push(m.clone());
            }
        }
    } else {
        for (i, _) in code.match_indices("super::") {
            let rest = &code[i + 7..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    names.push(ident(item.trim()).to_owned());
                }
            } else {
                names.push(ident(rest).to_owned());
            }
        }
    }
    for n in names {
        if n.is_empty() || n == name || n == "mod" {
            continue;
        }
        // A sibling module, or else an item of the parent (mod.rs).
        to.insert(if mods.contains_key(&n) {
            n
        } else {
            "mod".into()
        });
    }
    to.remove(name);
    to
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn ident(s: &str) -> &str {
    let end = s.bytes().position(|b| !is_ident(b)).unwrap_or(s.len());
    &s[..end]
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_owned());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_owned());
        for next in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_circle_of_imports() {
    for dir in DIRS {
        let mods = modules(Path::new(dir));
        let graph: BTreeMap<String, BTreeSet<String>> = mods
            .iter()
            .map(|(name, src)| (name.clone(), edges(name, src, &mods)))
            .collect();
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{dir}: import circle {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_checker_sees_a_circle() {
    let mut mods = BTreeMap::new();
    mods.insert("a".to_owned(), "use super::b::X;".to_owned());
    mods.insert("b".to_owned(), "use super::{a::Y, c};".to_owned());
    mods.insert("c".to_owned(), "fn f() {}".to_owned());
    let graph = mods
        .iter()
        .map(|(n, s)| (n.clone(), edges(n, s, &mods)))
        .collect();
    assert!(find_cycle(&graph).is_some());
}

#[test]
fn no_file_over_400_lines_before_its_tests() {
    for dir in DIRS {
        for (name, src) in modules(Path::new(dir)) {
            if name == "tests" {
                // A test module of its own.
                continue;
            }
            let before = src
                .find("#[cfg(test)]\nmod")
                .map_or(&src[..], |i| &src[..i]);
            let lines = before.lines().count();
            assert!(lines <= MAX_LINES, "{dir}/{name}.rs: {lines} lines");
        }
    }
}

#[test]
fn every_file_says_what_it_owns() {
    for dir in DIRS {
        for (name, src) in modules(Path::new(dir)) {
            let is_dir = src.is_empty();
            assert!(
                is_dir || src.starts_with("//!"),
                "{dir}/{name}.rs has no module doc"
            );
        }
    }
}
