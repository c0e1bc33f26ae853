//! A copy's answer against the real one: what each showed (`Seen`, built by a `Recorder` as
//! the answer passes, without holding it up) and where they differ. Pure: no I/O, no clock.

use std::hash::{DefaultHasher, Hasher};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use serde_json::Value;

use crate::config::{BodyCompare, MirrorCompare};

/// A copy slower than the real answer by less than this never differs in latency: below it
/// the difference is a cold connection or the scheduler, not the version.
pub const LATENCY_SLACK: Duration = Duration::from_millis(5);

/// One answer, as far as the comparison needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub status: u16,
    /// The values of the compared fields, in `MirrorCompare::headers`' order (several
    /// values of one name joined with `, `).
    pub headers: Vec<Option<Vec<u8>>>,
    pub body: BodySeen,
    /// To the answer's head.
    pub took: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BodySeen {
    /// Every byte, hashed (the same keys in both answers: one process compares them).
    pub hash: u64,
    pub len: u64,
    /// The body itself, for a JSON comparison, while it fits `max_body_bytes`.
    pub kept: Option<Vec<u8>>,
}

/// An answer's head as recorded: status, the compared fields' values, time to it.
type Head = (u16, Vec<Option<Vec<u8>>>, Duration);

/// Builds a [`Seen`] as an answer passes: the head once, then each chunk of its body.
#[derive(Debug)]
pub struct Recorder {
    mode: BodyCompare,
    cap: usize,
    hasher: DefaultHasher,
    len: u64,
    kept: Option<Vec<u8>>,
    head: Option<Head>,
}

impl Recorder {
    pub fn new(c: &MirrorCompare) -> Recorder {
        let json = matches!(c.body, BodyCompare::Json | BodyCompare::JsonShape);
        Recorder {
            mode: c.body,
            cap: c.max_body_bytes,
            hasher: DefaultHasher::new(),
            len: 0,
            kept: json.then(Vec::new),
            head: None,
        }
    }

    pub fn head(&mut self, c: &MirrorCompare, status: u16, headers: &HeaderMap, took: Duration) {
        let values = c
            .headers
            .iter()
            .map(|name| joined(headers.get_all(name.as_str()).iter()))
            .collect();
        self.head = Some((status, values, took));
    }

    pub fn data(&mut self, chunk: &[u8]) {
        if self.mode == BodyCompare::None {
            return;
        }
        self.hasher.write(chunk);
        self.len += chunk.len() as u64;
        if let Some(k) = &mut self.kept {
            if k.len() + chunk.len() > self.cap {
                self.kept = None;
            } else {
                k.extend_from_slice(chunk);
            }
        }
    }

    /// Nobody will read it: what was kept is let go and nothing more is.
    pub fn stop(&mut self) {
        self.mode = BodyCompare::None;
        self.kept = None;
    }

    /// What was seen; `None` before a head.
    pub fn finish(self) -> Option<Seen> {
        let (status, headers, took) = self.head?;
        Some(Seen {
            status,
            headers,
            body: BodySeen {
                hash: self.hasher.finish(),
                len: self.len,
                kept: self.kept,
            },
            took,
        })
    }
}

fn joined<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for v in values {
        let o = out.get_or_insert_with(Vec::new);
        if !o.is_empty() {
            o.extend_from_slice(b", ");
        }
        o.extend_from_slice(v.as_bytes());
    }
    out
}

/// Where a copy's answer differed from the real one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Differences {
    pub status: bool,
    pub headers: bool,
    pub body: bool,
    pub latency: bool,
    /// The copy got no answer at all (it could not connect, timed out or broke off).
    pub no_answer: bool,
}

impl Differences {
    pub fn any(&self) -> bool {
        self.status || self.headers || self.body || self.latency || self.no_answer
    }

    /// The kinds that differed, as `/metrics` names them.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> {
        [
            (self.status, "status"),
            (self.headers, "headers"),
            (self.body, "body"),
            (self.latency, "latency"),
            (self.no_answer, "no_answer"),
        ]
        .into_iter()
        .filter_map(|(d, k)| d.then_some(k))
    }
}

/// The one comparison: status, the chosen fields, the body as configured, latency when
/// bounded.
pub fn compare(c: &MirrorCompare, real: &Seen, copy: &Seen) -> Differences {
    let latency = c.allowed_latency_increase.is_some_and(|allowed| {
        copy.took > real.took.mul_f64(1.0 + allowed)
            && copy.took.saturating_sub(real.took) > LATENCY_SLACK
    });
    Differences {
        status: c.status && real.status != copy.status,
        headers: real.headers != copy.headers,
        body: !same_body(c, &real.body, &copy.body),
        latency,
        no_answer: false,
    }
}

fn same_body(c: &MirrorCompare, a: &BodySeen, b: &BodySeen) -> bool {
    let bytes = (a.hash, a.len) == (b.hash, b.len);
    let shape = match c.body {
        BodyCompare::None => return true,
        BodyCompare::Hash => return bytes,
        BodyCompare::Json => false,
        BodyCompare::JsonShape => true,
    };
    // Bodies too long to keep, or not JSON, are compared as bytes.
    let parsed =
        |body: &BodySeen| -> Option<Value> { serde_json::from_slice(body.kept.as_deref()?).ok() };
    let (Some(mut x), Some(mut y)) = (parsed(a), parsed(b)) else {
        return bytes;
    };
    for field in &c.ignore {
        let path: Vec<&str> = field.split('.').collect();
        remove(&mut x, &path, path.len() == 1);
        remove(&mut y, &path, path.len() == 1);
    }
    if shape {
        same_shape(&x, &y)
    } else {
        x == y
    }
}

/// Removes the field at `path` (from this value down; `anywhere`: a bare name, at any
/// depth). Arrays are passed through: a path applies to each element.
fn remove(v: &mut Value, path: &[&str], anywhere: bool) {
    match v {
        Value::Object(map) => {
            if path.len() == 1 {
                map.remove(path[0]);
            } else if let Some(next) = map.get_mut(path[0]) {
                remove(next, &path[1..], false);
            }
            if anywhere {
                map.values_mut().for_each(|x| remove(x, path, true));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| remove(x, path, anywhere)),
        _ => {}
    }
}

/// The same keys and value types all the way down; the elements of two arrays all have the
/// shape of the first one's first element (an empty array matches any).
fn same_shape(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_shape(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => match x.first() {
            None => true,
            Some(first) => x.iter().chain(y).all(|v| same_shape(first, v)),
        },
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mirror;

    fn settings(body: BodyCompare, ignore: &[&str]) -> MirrorCompare {
        let mut c = Mirror::default().compare;
        c.body = body;
        c.ignore = ignore.iter().map(ToString::to_string).collect();
        c.headers = vec!["content-type".into()];
        c
    }

    fn seen(c: &MirrorCompare, status: u16, ctype: &str, body: &str, ms: u64) -> Seen {
        let mut r = Recorder::new(c);
        let mut h = HeaderMap::new();
        h.insert("content-type", ctype.parse().unwrap());
        r.head(c, status, &h, Duration::from_millis(ms));
        // In two chunks, as bodies come.
        let (x, y) = body.split_at(body.len() / 2);
        r.data(x.as_bytes());
        r.data(y.as_bytes());
        r.finish().unwrap()
    }

    #[test]
    fn status_headers_and_bytes() {
        let c = settings(BodyCompare::Hash, &[]);
        let a = seen(&c, 200, "text/plain", "hello", 10);
        assert!(!compare(&c, &a, &seen(&c, 200, "text/plain", "hello", 11)).any());
        let d = compare(&c, &a, &seen(&c, 500, "text/html", "hellO", 10));
        assert_eq!(
            d.kinds().collect::<Vec<_>>(),
            ["status", "headers", "body"],
            "{d:?}"
        );
        let mut no_status = c.clone();
        no_status.status = false;
        assert!(!compare(&no_status, &a, &seen(&c, 404, "text/plain", "hello", 10)).status);
    }

    #[test]
    fn json_ignores_order_spacing_and_named_fields() {
        let c = settings(BodyCompare::Json, &["time", "meta.id"]);
        let real = seen(
            &c,
            200,
            "application/json",
            r#"{"a":1,"b":[{"time":5,"x":"y"}],"meta":{"id":"r1","v":2},"time":1}"#,
            10,
        );
        let copy = seen(
            &c,
            200,
            "application/json",
            r#"{ "meta": {"v": 2, "id": "c9"}, "time": 2, "b": [{"x": "y", "time": 9}], "a": 1 }"#,
            10,
        );
        assert!(!compare(&c, &real, &copy).any());
        let other = seen(
            &c,
            200,
            "application/json",
            r#"{"a":2,"b":[{"x":"y"}],"meta":{"v":2},"time":1}"#,
            10,
        );
        assert!(compare(&c, &real, &other).body, "a value changed");
        // `id` only ignored under `meta`, not at the top.
        let c2 = settings(BodyCompare::Json, &["meta.id"]);
        let a = seen(&c2, 200, "a", r#"{"id":1}"#, 1);
        let b = seen(&c2, 200, "a", r#"{"id":2}"#, 1);
        assert!(compare(&c2, &a, &b).body);
    }

    #[test]
    fn json_shape_compares_keys_and_types_only() {
        let c = settings(BodyCompare::JsonShape, &[]);
        let a = seen(&c, 200, "j", r#"{"n":1,"s":"x","l":[{"k":true}]}"#, 1);
        let b = seen(
            &c,
            200,
            "j",
            r#"{"n":7,"s":"y","l":[{"k":false},{"k":true}]}"#,
            1,
        );
        assert!(!compare(&c, &a, &b).any());
        let renamed = seen(&c, 200, "j", r#"{"n":1,"str":"x","l":[]}"#, 1);
        assert!(compare(&c, &a, &renamed).body);
        let retyped = seen(&c, 200, "j", r#"{"n":"1","s":"x","l":[]}"#, 1);
        assert!(compare(&c, &a, &retyped).body);
    }

    #[test]
    fn a_body_that_is_not_json_or_too_long_is_compared_as_bytes() {
        let mut c = settings(BodyCompare::Json, &["t"]);
        let a = seen(&c, 200, "j", "not json", 1);
        assert!(!compare(&c, &a, &seen(&c, 200, "j", "not json", 1)).any());
        assert!(compare(&c, &a, &seen(&c, 200, "j", "not jsoN", 1)).body);
        c.max_body_bytes = 8;
        let long_a = seen(&c, 200, "j", r#"{"t":1,"v":"long"}"#, 1);
        let long_b = seen(&c, 200, "j", r#"{"t":2,"v":"long"}"#, 1);
        assert!(long_a.body.kept.is_none());
        assert!(
            compare(&c, &long_a, &long_b).body,
            "past the cap the ignored field is not known: bytes differ"
        );
    }

    #[test]
    fn latency_differs_only_beyond_the_allowed_increase_and_the_slack() {
        let mut c = settings(BodyCompare::None, &[]);
        let at = |ms| seen(&c, 200, "t", "", ms);
        let (real, slow) = (at(20), at(45));
        assert!(
            !compare(&c, &real, &slow).latency,
            "not compared unless bounded"
        );
        c.allowed_latency_increase = Some(1.0);
        let at = |ms| seen(&c, 200, "t", "", ms);
        assert!(compare(&c, &at(20), &at(45)).latency, "+125 % > +100 %");
        assert!(!compare(&c, &at(20), &at(39)).latency);
        assert!(!compare(&c, &at(1), &at(5)).latency, "within the slack");
    }
}
