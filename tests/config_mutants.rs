//! A mutation run over `examples/switchyard.toml`: ~400 mutants from a fixed seed (numbers
//! made -1, 0, NaN or huge; durations made zero or enormous; the file cut at byte offsets,
//! inside multi-byte characters too; lines duplicated, deleted; two values swapped), each
//! parsed by the real `config::parse`. For every mutant: no panic; a rejection says where,
//! at a line and column that exist in the mutant, near the mutated line (each kind says
//! where else it may point, and why); and the values no check can meet are rejected.

use std::path::Path;

use switchyard::config::{self, Diagnostic};

const EXAMPLE: &str = include_str!("../examples/switchyard.toml");

/// Keys whose value must be rejected when made negative or NaN: thresholds, ratios, counts.
const NEVER_NEGATIVE: &[&str] = &[
    "max_over_stable",
    "max_ratio_to_stable",
    "confidence",
    "tolerance",
    "count",
    "min_requests",
    "max_error_rate",
    "failure_limit",
    "inconclusive_limit",
    "consecutive_failures",
    "healthy_threshold",
    "unhealthy_threshold",
    "max_connections",
    "max_headers",
    "max_header_bytes",
    "weight",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A number replaced: the problem is at the number's line, and it is the only one.
    Number,
    /// A duration replaced: the problem is at the duration's line, and it is the only one.
    Duration,
    /// The file cut at a byte offset. What is cut away can be referred to anywhere above
    /// (a route forwarding to the service that is gone), so only that the place exists
    /// is asserted, and a cut inside a character is located at the cut.
    Cut,
    /// A line repeated: the problem is at either copy, or the table header that holds
    /// them (a repeated `[[table]]` line leaves an empty table, reported at its header).
    Duplicate,
    /// A line removed: a missing key is reported at the table that should hold it, and
    /// what the line named (a service's name) at the places that refer to it; a removed
    /// table header puts its keys into the table above, reported at any of them.
    Delete,
    /// Two values swapped: at either line, or where a swapped name is referred to.
    Swap,
}

struct Mutant {
    kind: Kind,
    /// The 1-based lines of the mutant the mutation touched.
    lines: Vec<usize>,
    text: String,
    /// What changed, said in a failure.
    what: String,
    /// Must be rejected (a value no check can meet).
    must_reject: bool,
    /// Words of the removed or swapped text: a diagnostic that names one may be where it is used.
    names: Vec<String>,
}

/// `key = value` lines of the example, outside comments: (0-based index, key, value).
fn assignments(lines: &[&str]) -> Vec<(usize, String, String)> {
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let code = l.split(" #").next().unwrap_or("").trim_end();
            if code.trim_start().starts_with('#') || code.trim_start().starts_with('[') {
                return None;
            }
            let (k, v) = code.split_once(" = ")?;
            Some((i, k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Numbers in the example's code (not comments): (line index, byte range in the line, key).
fn numbers(lines: &[&str]) -> Vec<(usize, std::ops::Range<usize>, String)> {
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let code_end = l.find('#').unwrap_or(l.len());
        let code = &l[..code_end];
        let b = code.as_bytes();
        let mut j = 0;
        let mut in_str = false;
        while j < b.len() {
            let c = b[j];
            if c == b'"' {
                in_str = !in_str;
            }
            let starts =
                !in_str && c.is_ascii_digit() && (j == 0 || matches!(b[j - 1], b' ' | b'=' | b'['));
            if starts {
                let end = j + b[j..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit() || **c == b'.')
                    .count();
                let key = code[..j]
                    .rsplit(['{', ',', '\n'])
                    .next()
                    .and_then(|s| s.split('=').next())
                    .map(|s| s.trim().trim_start_matches("match.").to_string())
                    .unwrap_or_default();
                out.push((i, j..end, key));
                j = end;
            } else {
                j += 1;
            }
        }
    }
    out
}

/// Duration strings in the example's code: (line index, byte range of the text in quotes).
fn durations(lines: &[&str]) -> Vec<(usize, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let code = &l[..l.find('#').unwrap_or(l.len())];
        let mut from = 0;
        while let Some(q) = code[from..].find('"') {
            let start = from + q + 1;
            let Some(len) = code[start..].find('"') else {
                break;
            };
            let s = &code[start..start + len];
            if humantime::parse_duration(s).is_ok() {
                out.push((i, start..start + len));
            }
            from = start + len + 1;
        }
    }
    out
}

fn mutants() -> Vec<Mutant> {
    let mut rng = fastrand::Rng::with_seed(0x5717_c4f9);
    let lines: Vec<&str> = EXAMPLE.split('\n').collect();
    let nums = numbers(&lines);
    let durs = durations(&lines);
    let assigns = assignments(&lines);
    let with = |i: usize, new: String| -> String {
        let mut l = owned(&lines);
        l[i] = new;
        l.join("\n")
    };
    let mut out = Vec::new();
    // Every number made each of the values, so each threshold is tried with each.
    for (i, range, key) in &nums {
        for v in ["-1", "0", "nan", "1e300", "99999999999999999999"] {
            let l = lines[*i];
            let new = format!("{}{v}{}", &l[..range.start], &l[range.end..]);
            let negative = v == "-1" || v == "nan";
            out.push(Mutant {
                kind: Kind::Number,
                lines: vec![i + 1],
                what: format!("`{key}` {} → {v}", &l[range.clone()]),
                text: with(*i, new),
                must_reject: negative && NEVER_NEGATIVE.contains(&key.as_str()),
                names: Vec::new(),
            });
        }
    }
    for (i, range) in &durs {
        for v in [
            "0s",
            "99999999999d",
            "99999999999999999999999d",
            "401d",
            "5x",
        ] {
            let l = lines[*i];
            let new = format!("{}{v}{}", &l[..range.start], &l[range.end..]);
            out.push(Mutant {
                kind: Kind::Duration,
                lines: vec![i + 1],
                what: format!("duration {} → {v}", &l[range.clone()]),
                text: with(*i, new),
                // Nothing waits 0s (a cookie age may; a rollback window of 0 sends every
                // undo through the steps; a slow start of 0 is none; a drain of 0 cuts
                // tunnels at the switch) or centuries.
                must_reject: v != "0s"
                    || ![
                        "pause",
                        "delay",
                        "max_age",
                        "rollback_window",
                        "slow_start",
                        "drain_timeout",
                    ]
                    .iter()
                    .any(|k| l.contains(k)),
                names: Vec::new(),
            });
        }
    }
    // Cuts: at random offsets, and inside every multi-byte character's bytes.
    let multibyte: Vec<usize> = EXAMPLE
        .char_indices()
        .flat_map(|(i, c)| i + 1..i + c.len_utf8())
        .collect();
    let cuts: Vec<usize> = (0..70)
        .map(|_| rng.usize(0..EXAMPLE.len()))
        .chain(multibyte.iter().copied())
        .collect();
    for cut in cuts {
        let bytes = &EXAMPLE.as_bytes()[..cut];
        let line = bytes.iter().filter(|b| **b == b'\n').count() + 1;
        out.push(Mutant {
            kind: Kind::Cut,
            lines: vec![line],
            what: format!("cut at byte {cut}"),
            text: String::from_utf8_lossy(bytes).into_owned(),
            must_reject: false,
            names: Vec::new(),
        });
        // The bytes as read from a file, through the same path `config::load` takes.
        if std::str::from_utf8(bytes).is_err() {
            let diags = match config::text(bytes.to_vec(), "m.toml") {
                Ok(_) => panic!("cut at {cut} inside a character read as text"),
                Err(e) => e.diagnostics().to_vec(),
            };
            assert_eq!(diags.len(), 1, "cut at {cut}: {diags:?}");
            assert_eq!(diags[0].line, line, "cut at {cut}: {}", diags[0]);
        }
    }
    for _ in 0..40 {
        let i = rng.usize(0..lines.len());
        let mut l: Vec<&str> = lines.clone();
        l.insert(i, lines[i]);
        out.push(Mutant {
            kind: Kind::Duplicate,
            lines: vec![i + 1, i + 2],
            what: format!("line {} repeated: `{}`", i + 1, lines[i]),
            text: l.join("\n"),
            must_reject: false,
            names: Vec::new(),
        });
    }
    for _ in 0..40 {
        let i = rng.usize(0..lines.len());
        let mut l: Vec<&str> = lines.clone();
        l.remove(i);
        out.push(Mutant {
            kind: Kind::Delete,
            lines: vec![i, i + 1],
            what: format!("line {} removed: `{}`", i + 1, lines[i]),
            text: l.join("\n"),
            must_reject: false,
            names: words(lines[i]),
        });
    }
    for _ in 0..40 {
        let (a, b) = (
            &assigns[rng.usize(0..assigns.len())],
            &assigns[rng.usize(0..assigns.len())],
        );
        let mut l = owned(&lines);
        l[a.0] = format!("{} = {}", a.1, b.2);
        l[b.0] = format!("{} = {}", b.1, a.2);
        out.push(Mutant {
            kind: Kind::Swap,
            lines: vec![a.0 + 1, b.0 + 1],
            what: format!("values of `{}` and `{}` swapped", a.1, b.1),
            text: l.join("\n"),
            must_reject: false,
            // A diagnostic may also sit on what the swapped value now clashes with, naming
            // the table (route, service) the value went to.
            names: words(&a.2)
                .into_iter()
                .chain(words(&b.2))
                .chain(table_name(EXAMPLE, a.0 + 1))
                .chain(table_name(EXAMPLE, b.0 + 1))
                .collect(),
        });
    }
    out
}

fn owned(lines: &[&str]) -> Vec<String> {
    lines.iter().map(ToString::to_string).collect()
}

/// Names in a line (quoted values), which a diagnostic elsewhere may quote.
fn words(line: &str) -> Vec<String> {
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The `name = "…"` of the table that holds 1-based `line`, if it has one.
fn table_name(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.split('\n').collect();
    let (from, to) = (header_of(text, line), next_header(text, line + 1));
    (from..to.min(lines.len() + 1))
        .map(|l| lines[l - 1].trim())
        .find_map(|l| l.strip_prefix("name = ").map(words))
        .and_then(|w| w.into_iter().next())
}

/// The 1-based line of the table header (`[x]`, `[[x]]`) that holds `line`.
fn header_of(text: &str, line: usize) -> usize {
    let lines: Vec<&str> = text.split('\n').collect();
    (1..=line.min(lines.len()))
        .rev()
        .find(|l| lines[l - 1].trim_start().starts_with('['))
        .unwrap_or(1)
}

/// The 1-based line of the first table header at or after `line` (past the end: one more
/// than the lines).
fn next_header(text: &str, line: usize) -> usize {
    let lines: Vec<&str> = text.split('\n').collect();
    (line..=lines.len())
        .find(|l| lines[l - 1].trim_start().starts_with('['))
        .unwrap_or(lines.len() + 1)
}

/// Why `d` is not where mutant `m` may be reported, or `None` when it is.
fn misplaced(m: &Mutant, d: &Diagnostic) -> Option<String> {
    let lines: Vec<&str> = m.text.split('\n').collect();
    let Some(line) = lines.get(d.line.wrapping_sub(1)) else {
        return Some(format!("line {} is not in the mutant", d.line));
    };
    if d.column < 1 || d.column > line.chars().count() + 1 {
        return Some(format!("column {} is not in line {}", d.column, d.line));
    }
    let near = |l: usize| m.lines.iter().any(|&at| l.abs_diff(at) <= 1);
    let at_header = || m.lines.iter().any(|&at| header_of(&m.text, at) == d.line);
    let names_one = || {
        m.names
            .iter()
            .any(|n| !n.is_empty() && d.message.contains(&format!("\"{n}\"")))
    };
    let ok = match m.kind {
        Kind::Number | Kind::Duration => near(d.line),
        Kind::Cut => true,
        Kind::Duplicate => near(d.line) || at_header(),
        Kind::Delete if m.what.contains("removed: `[") => {
            // The header's keys now belong to the table before: the problem shows anywhere
            // up to the next header, or at that header (`[[analysis.check]]` without its
            // `[[analysis]]`).
            let next = next_header(&m.text, m.lines[1]);
            near(d.line) || (m.lines[1]..=next).contains(&d.line)
        }
        // Without its closer a multi-line array goes on over the lines after it (a table
        // header reads as an inline array): the problem is noticed somewhere below.
        Kind::Delete if m.what.ends_with("removed: `]`") => d.line >= m.lines[0],
        Kind::Delete | Kind::Swap => near(d.line) || at_header() || names_one(),
    };
    (!ok).then(|| format!("not within one line of {:?}", m.lines))
}

#[test]
fn four_hundred_mutants_of_the_example_are_rejected_where_they_are_wrong_or_accepted() {
    let started = std::time::Instant::now();
    let all = mutants();
    assert!(all.len() >= 400, "{} mutants", all.len());
    let mut rejected = 0;
    let mut failures = Vec::new();
    for m in &all {
        let result = std::panic::catch_unwind(|| config::parse(&m.text, "m.toml", Path::new(".")));
        let diags = match result {
            Err(_) => {
                failures.push(format!("{}: panicked", m.what));
                continue;
            }
            Ok(Ok(_)) if m.must_reject => {
                failures.push(format!("{}: accepted", m.what));
                continue;
            }
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => e.diagnostics().to_vec(),
        };
        rejected += 1;
        if diags.is_empty() {
            failures.push(format!("{}: rejected without a diagnostic", m.what));
        }
        // One wrong value, one problem: not also a second one about its neighbours.
        if matches!(m.kind, Kind::Number | Kind::Duration) && diags.len() > 1 {
            failures.push(format!(
                "{}: {} diagnostics: {diags:?}",
                m.what,
                diags.len()
            ));
        }
        for d in &diags {
            if let Some(why) = misplaced(m, d) {
                failures.push(format!("{}: {d}: {why}", m.what));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The run means something only if most mutants are caught.
    assert!(rejected * 2 > all.len(), "{rejected} of {}", all.len());
    eprintln!(
        "{} mutants, {rejected} rejected, in {:?}",
        all.len(),
        started.elapsed()
    );
}

#[test]
fn the_mutation_kinds_each_make_mutants_that_must_be_rejected() {
    let all = mutants();
    for kind in [Kind::Number, Kind::Duration] {
        let n = all
            .iter()
            .filter(|m| m.kind == kind && m.must_reject)
            .count();
        assert!(n >= 10, "{kind:?}: {n} must-reject mutants");
    }
    let inside_a_char = all
        .iter()
        .filter(|m| m.kind == Kind::Cut && m.text.ends_with('\u{FFFD}'))
        .count();
    assert!(
        inside_a_char >= 5,
        "{inside_a_char} cuts inside a character"
    );
}
