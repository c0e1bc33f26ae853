//! The configuration file, read by the real `config::parse`. Any text parses or fails with
//! diagnostics, never a panic, and a syntax error points at the line the TOML parser names.
//! Where one line of the example configuration has its value replaced, every diagnostic
//! points at the line of the field it names: the mutated line for the mutated field and
//! anything inside it; elsewhere the line where the example has that field, or the nearest
//! table that holds it (a missing field is reported at its table) — looked up in an index
//! of the example built here line by line, not through `config::locate`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use crate::config::{parse, raw::RawConfig, ConfigError, Diagnostic};

const EXAMPLE: &str = include_str!("../../examples/switchyard.toml");

/// Any text: no panic; an invalid one says why, at the syntax error's line if it has one.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Err(diagnostics) = diagnose(text) else {
        return;
    };
    assert!(!diagnostics.is_empty(), "an invalid config says why");
    let lines = text.split('\n').count();
    let syntax = syntax_line(text);
    for d in diagnostics {
        match syntax {
            Some(line) => assert_eq!(d.line, line, "{d}"),
            None => assert!((1..=lines).contains(&d.line) && d.column >= 1, "{d}"),
        }
    }
}

/// The first two bytes choose a `key = value` line of the example (or an element of its
/// multi-line array), the rest (newlines made spaces) replaces its value.
pub fn config_line(data: &[u8]) {
    let [a, b, rest @ ..] = data else {
        return;
    };
    let index = index();
    let edit = &index.editable[usize::from(u16::from_le_bytes([*a, *b])) % index.editable.len()];
    let value: String = String::from_utf8_lossy(rest)
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    let text: Vec<String> = EXAMPLE
        .split('\n')
        .enumerate()
        .map(|(i, l)| match i + 1 == edit.line {
            true if edit.key.is_empty() => format!("{value},"),
            true => format!("{} = {value}", edit.key),
            false => l.to_string(),
        })
        .collect();
    let at = edit.line;
    let said = |d: &Diagnostic| format!("{d} — line {at} made `{}`", text[at - 1]);
    let text = text.join("\n");
    let Err(diagnostics) = diagnose(&text) else {
        return;
    };
    if let Some(line) = syntax_line(&text) {
        let d = &diagnostics[0];
        assert_eq!(d.line, line, "{}", said(d));
        // Syntax and type errors are on the mutated line, but for a value that opens a
        // string, array or table the parser reads on past its line (and inside a multi-line
        // array it names the next element for a broken one: "missing comma"), and an error
        // with no place of its own the deserialiser gives at the table holding the field.
        let opens = edit.key.is_empty()
            || ["\"\"\"", "'''", "[", "{"]
                .iter()
                .any(|o| value.contains(o));
        let table = index.enclosing(&edit.path);
        assert!(
            line == at || (line > at && opens) || line == table,
            "{}",
            said(d)
        );
        return;
    }
    for d in &diagnostics {
        let expected = index.line_of(&d.field, &edit.path, at);
        assert_eq!(d.line, expected, "{}", said(d));
    }
}

fn diagnose(text: &str) -> Result<(), Vec<Diagnostic>> {
    match parse(text, "fuzz.toml", Path::new(".")) {
        Err(ConfigError::Invalid(d)) => Err(d),
        _ => Ok(()),
    }
}

/// The line of the TOML parser's error, if the text does not deserialise.
fn syntax_line(text: &str) -> Option<usize> {
    let e = toml::from_str::<RawConfig>(text).err()?;
    let start = e.span().map_or(0, |s| s.start);
    Some(text[..start].matches('\n').count() + 1)
}

/// The example's fields and tables by key path (as diagnostics name them) and line.
struct Index {
    lines: HashMap<String, usize>,
    editable: Vec<Edit>,
}

/// A `key = value` line whose value the fuzzer may replace, or an element of a multi-line
/// array (no key: the line becomes `value,`).
struct Edit {
    line: usize,
    key: String,
    path: String,
}

impl Index {
    /// The line of the deepest table or array the example has around `path`.
    fn enclosing(&self, path: &str) -> usize {
        self.deepest(path, |p| p != path)
    }

    /// The line a diagnostic about `field` belongs on: `at` for `mutated` and what is inside
    /// it, else the line of the deepest part of `field` the example has (1 for none).
    fn line_of(&self, field: &str, mutated: &str, at: usize) -> usize {
        if inside(field, mutated) {
            return at;
        }
        self.deepest(field, |_| true)
    }

    fn deepest(&self, field: &str, keep: impl Fn(&str) -> bool) -> usize {
        self.lines
            .iter()
            .filter(|(path, _)| inside(field, path) && keep(path))
            .max_by_key(|(path, _)| path.len())
            .map_or(1, |(_, line)| *line)
    }
}

/// Whether `field` is `path` or inside it.
fn inside(field: &str, path: &str) -> bool {
    field
        .strip_prefix(path)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| build(EXAMPLE))
}

/// Reads the example's layout: `[table]` and `[[array]]` headers (an array's elements
/// numbered in order, under the latest element of their parent), `key = value` and dotted
/// `a.b = value` lines, and the elements of a multi-line array one per line.
fn build(src: &str) -> Index {
    let mut lines = HashMap::new();
    let mut editable = Vec::new();
    let mut arrays: HashMap<String, usize> = HashMap::new();
    let mut table = String::new();
    let mut open_array: Option<(String, usize)> = None;
    let mut add = |path: String, line: usize| {
        lines.entry(path).or_insert(line);
    };
    for (i, l) in src.split('\n').enumerate() {
        let (line, l) = (i + 1, l.trim());
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some((array, next)) = open_array.as_mut() {
            if l.starts_with(']') {
                open_array = None;
            } else {
                let path = format!("{array}[{next}]");
                add(path.clone(), line);
                editable.push(Edit {
                    line,
                    key: String::new(),
                    path,
                });
                *next += 1;
            }
            continue;
        }
        if let Some(h) = l.strip_prefix("[[") {
            let name = h.split("]]").next().unwrap_or_default().trim();
            let array = match name.rsplit_once('.') {
                Some((parent, last)) => format!("{}.{}", resolve(&arrays, parent), last.trim()),
                None => name.to_string(),
            };
            let n = arrays.entry(array.clone()).or_insert(0);
            table = format!("{array}[{n}]");
            *n += 1;
            add(array, line);
            add(table.clone(), line);
            continue;
        }
        if let Some(h) = l.strip_prefix('[') {
            table = resolve(&arrays, h.split(']').next().unwrap_or_default());
            add(table.clone(), line);
            continue;
        }
        let Some((key, value)) = l.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let mut path = table.clone();
        for seg in key.split('.') {
            path = if path.is_empty() {
                seg.to_string()
            } else {
                format!("{path}.{seg}")
            };
            add(path.clone(), line);
        }
        if value.trim() == "[" {
            open_array = Some((path, 0));
        } else {
            editable.push(Edit {
                line,
                key: key.to_string(),
                path,
            });
        }
    }
    Index { lines, editable }
}

/// A header's dotted name as a key path: each part that is an array of tables stands for
/// its latest element.
fn resolve(arrays: &HashMap<String, usize>, name: &str) -> String {
    let mut path = String::new();
    for seg in name.trim().split('.') {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(seg.trim());
        if let Some(n) = arrays.get(&path) {
            path = format!("{path}[{}]", n - 1);
        }
    }
    path
}
