//! The crate's house rule on imports: no module depends, directly or through others, on a
//! module that depends on it. A cycle means two modules are really one, or that a type lives
//! in the wrong one; either way, neither can be read, tested or moved alone.
//!
//! Checked on the source text, since the compiler allows cycles: every `crate::`, `super::`
//! and `self::` path in `src/**/*.rs` (comments and literals left out) is resolved to the
//! module it names, giving two graphs —
//! - between the top-level modules of each crate (the library's `lib.rs`, the binary's
//!   `main.rs`), and
//! - between sibling files of each directory module (`upstream/h1.rs` → `upstream/body.rs`);
//!   `mod.rs` is left out there, as it declares its children.
//!
//! Each must be acyclic; a failure names the cycle and, per edge, the files that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Edges that still close a cycle, each with why it is allowed for now. An edge listed here
/// that no longer exists fails the test, so that the list only ever shrinks.
const PENDING: &[(&str, &str, &str)] = &[(
    "control/transition",
    "control/rollouts",
    "control/ is being restructured (issue 12)",
)];

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = rust_files(&src);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(&src, f)).collect();
    let roots = [
        crate_modules(&src.join("lib.rs")),
        crate_modules(&src.join("main.rs")),
    ];

    // edge (from, to) → files that make it
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let here = module_path(&src, file);
        let shown = file.strip_prefix(&src).unwrap().display().to_string();
        let text = code_only(&fs::read_to_string(file).unwrap());
        for path in paths(&text) {
            let Some(to) = resolve(&here, &path) else {
                continue;
            };
            let (Some(from_top), Some(to_top)) = (here.first(), to.first()) else {
                continue;
            };
            let same_crate = roots
                .iter()
                .any(|r| r.contains(from_top) && r.contains(to_top));
            if same_crate && from_top != to_top {
                edges
                    .entry((from_top.clone(), to_top.clone()))
                    .or_default()
                    .insert(shown.clone());
            }
            // Siblings: here = P + [a], to = P + [b, ..], b a module of its own.
            if here.len() >= 2
                && to.len() >= here.len()
                && to[..here.len() - 1] == here[..here.len() - 1]
            {
                let sibling = to[..here.len()].to_vec();
                if sibling != here && modules.contains(&sibling) {
                    edges
                        .entry((here.join("/"), sibling.join("/")))
                        .or_default()
                        .insert(shown.clone());
                }
            }
        }
    }

    let mut problems = Vec::new();
    for (from, to, why) in PENDING {
        if edges.remove(&(from.to_string(), to.to_string())).is_none() {
            problems.push(format!(
                "{from} → {to} no longer exists: remove it from PENDING ({why})"
            ));
        }
    }
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().insert(to);
    }
    for cycle in cycles(&graph) {
        let mut text = format!("import cycle: {}", cycle.join(" → "));
        for pair in cycle.windows(2) {
            let files = &edges[&(pair[0].to_string(), pair[1].to_string())];
            let files: Vec<&str> = files.iter().map(String::as_str).collect();
            text += &format!("\n    {} → {}: {}", pair[0], pair[1], files.join(", "));
        }
        problems.push(text);
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

/// The resolver and the cycle search, on a made-up crate: a test of the test, so that an
/// empty result above means "no cycle" and not "nothing was read".
#[test]
fn the_import_scan_resolves_nested_groups_and_relative_paths_and_finds_a_cycle() {
    let text = code_only(
        "use crate::{a::{b, c::D}, e};\n// crate::commented\nlet s = \"crate::quoted\";\n\
         let c = '\"'; fn f<'a>() { super::super::g::h(); self::x::Y; r#\"crate::raw\"#; }",
    );
    let found: Vec<String> = paths(&text).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        found,
        [
            "crate::a::b",
            "crate::a::c::D",
            "crate::e",
            "super::super::g::h",
            "self::x::Y"
        ],
    );
    let here = vec!["m".to_string(), "n".to_string()];
    let top = |p: &str| resolve(&here, &p.split("::").map(String::from).collect::<Vec<_>>());
    assert_eq!(
        top("super::super::g::h"),
        Some(vec!["g".into(), "h".into()])
    );
    assert_eq!(top("super::k"), Some(vec!["m".into(), "k".into()]));
    assert_eq!(
        top("self::x"),
        Some(vec!["m".into(), "n".into(), "x".into()])
    );

    let graph = BTreeMap::from([
        ("a", BTreeSet::from(["b"])),
        ("b", BTreeSet::from(["c"])),
        ("c", BTreeSet::from(["a"])),
    ]);
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c", "a"]]);
    let acyclic = BTreeMap::from([
        ("a", BTreeSet::from(["b", "c"])),
        ("b", BTreeSet::from(["c"])),
    ]);
    assert!(cycles(&acyclic).is_empty());
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `src/a/b.rs` → [a, b]; `src/a/mod.rs` → [a]; `src/lib.rs` → [].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The top-level modules a crate root declares (`mod x;`, `pub mod x;`).
fn crate_modules(root: &Path) -> BTreeSet<String> {
    let text = code_only(&fs::read_to_string(root).unwrap());
    let tokens = tokens(&text);
    tokens
        .windows(3)
        .filter(|w| w[0] == "mod" && w[2] == ";")
        .map(|w| w[1].clone())
        .collect()
}

/// The text with comments, string, byte-string, raw-string and char literals blanked out.
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let at = |k: usize| c.get(k).copied().unwrap_or(' ');
    while i < c.len() {
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c[i] == 'r'
            && (at(i + 1) == '"' || (at(i + 1) == '#' && (at(i + 2) == '"' || at(i + 2) == '#')))
        {
            let hashes = c[i + 1..].iter().take_while(|&&ch| ch == '#').count();
            i += 1 + hashes + 1;
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            while i < c.len() && !c[i..].iter().take(close.len()).copied().eq(close.chars()) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
            // A char literal; a lifetime (`'a`) has no closing quote right after one char.
            i += 1;
            while i < c.len() && c[i] != '\'' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Identifiers and single punctuation characters, with `::` as one token.
fn tokens(text: &str) -> Vec<String> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_alphanumeric() || c[i] == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if !c[i].is_whitespace() {
                out.push(c[i].to_string());
            }
            i += 1;
        }
    }
    out
}

/// Every path that starts at `crate`, `super` or `self`, with `use` groups expanded:
/// `crate::{a::{b, c}, d}` gives `crate::a::b`, `crate::a::c`, `crate::d`.
fn paths(text: &str) -> Vec<Vec<String>> {
    let t = tokens(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let starts = matches!(t[i].as_str(), "crate" | "super" | "self")
            && t.get(i + 1).is_some_and(|n| n == "::")
            && (i == 0 || t[i - 1] != "::");
        if starts {
            let mut trees = Vec::new();
            i = tree(&t, i, Vec::new(), &mut trees);
            out.extend(trees);
        } else {
            i += 1;
        }
    }
    out
}

/// Reads one use tree at `t[i]` after `prefix`; returns the index after it.
fn tree(t: &[String], mut i: usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    loop {
        match t.get(i).map(String::as_str) {
            Some("{") => {
                i += 1;
                while t.get(i).is_some_and(|s| s != "}") {
                    if t[i] == "," {
                        i += 1;
                    } else {
                        i = tree(t, i, prefix.clone(), out);
                    }
                }
                return i + 1;
            }
            Some(id) if id.chars().all(|ch| ch.is_alphanumeric() || ch == '_') => {
                if id != "self" || prefix.is_empty() {
                    prefix.push(id.to_string());
                }
                i += 1;
                if t.get(i).is_some_and(|s| s == "::") {
                    i += 1;
                    continue;
                }
                out.push(prefix);
                return i;
            }
            _ => {
                out.push(prefix);
                return i;
            }
        }
    }
}

/// The absolute module path a path names, from the module `here`.
fn resolve(here: &[String], path: &[String]) -> Option<Vec<String>> {
    let (base, rest) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (here.to_vec(), &path[1..]),
        "super" => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            (
                here.get(..here.len().checked_sub(ups)?)?.to_vec(),
                &path[ups..],
            )
        }
        _ => return None,
    };
    Some(base.into_iter().chain(rest.iter().cloned()).collect())
}

/// One cycle per strongly connected component of more than one node, as a closed walk
/// (`a → b → a`), found by a depth-first search from the component's first node.
fn cycles<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(k, v)| std::iter::once(*k).chain(v.iter().copied()))
        .collect();
    let reach = |from: &'a str| {
        let mut seen = BTreeSet::from([from]);
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            for &m in graph.get(n).into_iter().flatten() {
                if seen.insert(m) {
                    stack.push(m);
                }
            }
        }
        seen
    };
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for &n in &nodes {
        if done.contains(n) {
            continue;
        }
        let component: BTreeSet<&str> = reach(n)
            .into_iter()
            .filter(|&m| reach(m).contains(n))
            .collect();
        done.extend(component.iter().copied());
        if component.len() > 1 {
            out.push(walk_back(graph, &component, n));
        }
    }
    out
}

/// The shortest walk from `start` back to itself inside `component` (breadth first).
fn walk_back<'a>(
    graph: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    component: &BTreeSet<&'a str>,
    start: &'a str,
) -> Vec<&'a str> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &m in graph
            .get(n)
            .into_iter()
            .flatten()
            .filter(|m| component.contains(*m))
        {
            if m == start {
                let mut walk = vec![start, n];
                let mut at = n;
                while at != start {
                    at = came_from[at];
                    walk.push(at);
                }
                walk.reverse();
                return walk;
            }
            if !came_from.contains_key(m) {
                came_from.insert(m, n);
                queue.push_back(m);
            }
        }
    }
    unreachable!("a component of more than one node has a cycle through each node")
}
