//! Turns a key path such as `service[0].group[1].targets[2]` into a line and column of the
//! file, so that semantic errors found after deserialising point at the offending text just
//! like syntax errors do.

use std::fmt;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(k: &str) -> Self {
        Seg::Key(k.to_string())
    }
}

impl From<&String> for Seg {
    fn from(k: &String) -> Self {
        Seg::Key(k.clone())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn join(&self, seg: impl Into<Seg>) -> KeyPath {
        let mut segs = self.0.clone();
        segs.push(seg.into());
        KeyPath(segs)
    }
}

/// `path![a, 0, "b"]` builds a `KeyPath`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => {
        $crate::config::locate::KeyPath(vec![$($crate::config::locate::Seg::from($seg)),*])
    };
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) if is_bare(k) => write!(f, ".{k}")?,
                Seg::Key(k) => write!(f, ".\"{k}\"")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

fn is_bare(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Span lookups in the parsed document.
pub struct Locator<'a> {
    src: &'a str,
    doc: Option<toml_edit::Document<&'a str>>,
}

impl<'a> Locator<'a> {
    pub fn new(src: &'a str) -> Self {
        Locator {
            src,
            doc: toml_edit::Document::parse(src).ok(),
        }
    }

    /// The byte offset of the deepest part of `path` that exists in the file. A missing field
    /// is reported at the table that should have held it.
    pub fn offset_of(&self, path: &KeyPath) -> usize {
        let Some(doc) = &self.doc else { return 0 };
        let mut item = doc.as_item();
        let mut best = 0;
        for seg in &path.0 {
            let next = match seg {
                Seg::Key(k) => item.get(k.as_str()),
                Seg::Index(i) => item.get(*i),
            };
            match next {
                Some(n) => {
                    item = n;
                    if let Some(span) = n.span() {
                        best = span.start;
                    } else if let Some(t) = n.as_table().and_then(toml_edit::Table::span) {
                        best = t.start;
                    }
                }
                None => break,
            }
        }
        best
    }

    /// The innermost key path whose value contains `offset` (for errors that come with a span
    /// but no field name).
    pub fn path_at(&self, offset: usize) -> KeyPath {
        let mut path = KeyPath::default();
        let Some(doc) = &self.doc else { return path };
        let mut item = doc.as_item();
        loop {
            let mut next = None;
            if let Some(t) = item.as_table_like() {
                next = t
                    .iter()
                    .find(|(k, v)| {
                        let key_span = t.key(k).and_then(toml_edit::Key::span);
                        key_span.is_some_and(|s| s.contains(&offset)) || contains(v, offset)
                    })
                    .map(|(k, v)| (Seg::from(k), v));
            } else {
                let mut i = 0;
                while let Some(v) = item.get(i) {
                    if contains(v, offset) {
                        next = Some((Seg::Index(i), v));
                        break;
                    }
                    i += 1;
                }
            }
            match next {
                Some((seg, v)) => {
                    path.0.push(seg);
                    item = v;
                }
                None => return path,
            }
        }
    }

    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(before.chars().count(), |nl| {
            before[nl + 1..].chars().count()
        }) + 1;
        (line, col)
    }
}

fn contains(item: &toml_edit::Item, offset: usize) -> bool {
    if item.span().is_some_and(|s| s.contains(&offset)) {
        return true;
    }
    // A `[table]`'s span covers its header only; its body is in its keys and entries.
    let in_table = |t: &dyn toml_edit::TableLike| {
        t.iter().any(|(k, v)| {
            t.key(k)
                .and_then(toml_edit::Key::span)
                .is_some_and(|s| s.contains(&offset))
                || contains(v, offset)
        })
    };
    if let Some(t) = item.as_table_like() {
        return in_table(t);
    }
    if let Some(arr) = item.as_array_of_tables() {
        return arr.iter().any(|t| in_table(t));
    }
    false
}
