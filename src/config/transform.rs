//! `[route.transform]`: host and path rewrites and answer header edits, validated into a
//! `transform::Transform` (compiled expressions, parsed header names and values).

use http::header::{HeaderName, HeaderValue};
use regex::Regex;

use super::fields::Problems;
use super::locate::KeyPath;
use super::raw::{RawRewrite, RawTransform};
use crate::transform::{Rewrite, Transform};

/// Headers that carry the message's framing or the connection's state: switchyard sets them
/// itself, and a route must not change them.
const MANAGED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

pub(super) fn transform(raw: &RawTransform, at: &KeyPath, p: &mut Problems) -> Transform {
    let headers = raw.response_headers.as_ref();
    let hat = at.join("response_headers");
    let pairs = |which: &str, p: &mut Problems| -> Vec<(HeaderName, HeaderValue)> {
        let map = headers.map(|h| if which == "set" { &h.set } else { &h.add });
        map.into_iter()
            .flatten()
            .filter_map(|(name, value)| {
                let kat = hat.join(which).join(name.as_str());
                let name = header_name(name, &kat, p)?;
                match HeaderValue::from_str(value) {
                    Ok(v) => Some((name, v)),
                    Err(_) => {
                        p.add(kat, format!("{value:?} is not a valid header value"));
                        None
                    }
                }
            })
            .collect()
    };
    let set = pairs("set", p);
    let add = pairs("add", p);
    let remove = headers
        .map(|h| h.remove.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, name)| header_name(name, &hat.join("remove").join(i), p))
        .collect();
    Transform {
        host: raw
            .host
            .as_ref()
            .and_then(|r| rewrite(r, &at.join("host"), p)),
        path: raw
            .path
            .as_ref()
            .and_then(|r| rewrite(r, &at.join("path"), p)),
        set,
        add,
        remove,
    }
}

fn header_name(name: &str, at: &KeyPath, p: &mut Problems) -> Option<HeaderName> {
    let Ok(h) = HeaderName::from_bytes(name.as_bytes()) else {
        p.add(at.clone(), format!("{name:?} is not a valid header name"));
        return None;
    };
    if MANAGED.contains(&h.as_str()) {
        p.add(
            at.clone(),
            format!("{name:?} frames the message or the connection: switchyard sets it"),
        );
        return None;
    }
    Some(h)
}

/// A pattern that compiles, and a replacement that names only groups the pattern has.
fn rewrite(raw: &RawRewrite, at: &KeyPath, p: &mut Problems) -> Option<Rewrite> {
    let pattern = match Regex::new(&raw.regex) {
        Ok(r) => r,
        Err(e) => {
            // The library's message spans lines (the pattern with a caret under the fault).
            let why = e.to_string().lines().last().unwrap_or_default().to_string();
            p.add(at.join("regex"), format!("not a regular expression: {why}"));
            return None;
        }
    };
    for name in groups_named(&raw.replace) {
        let known = match name.parse::<usize>() {
            Ok(n) => n < pattern.captures_len(),
            Err(_) => pattern.capture_names().flatten().any(|c| c == name),
        };
        if !known {
            p.add(
                at.join("replace"),
                format!(
                    "${name} names no group of the pattern (it has {})",
                    pattern.captures_len() - 1
                ),
            );
            return None;
        }
    }
    Some(Rewrite {
        pattern,
        replace: raw.replace.clone(),
    })
}

/// The groups a replacement refers to: `$1`, `$name`, `${1}`, `${name}` (`$$` is a `$`).
fn groups_named(replace: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = replace;
    while let Some(i) = rest.find('$') {
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            rest = r;
            continue;
        }
        let (name, after) = match rest.strip_prefix('{') {
            Some(r) => match r.find('}') {
                Some(end) => (&r[..end], &r[end + 1..]),
                None => break,
            },
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        if !name.is_empty() {
            out.push(name);
        }
        rest = after;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::groups_named;

    #[test]
    fn replacement_groups_are_read_as_regex_reads_them() {
        assert_eq!(
            groups_named("/api/$1/${name}x$$2$rest"),
            ["1", "name", "rest"]
        );
    }
}
