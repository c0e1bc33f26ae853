//! Route transforms, as ALB has them: a route may rewrite the host and the path a request is
//! forwarded with (a regular expression and its replacement, `$1` for groups), and set, add
//! or remove headers of every answer it gives (HSTS, CORS, dropping `Server`).
//!
//! Compiled once with the configuration; the hot path only runs the compiled expressions, and
//! only for routes that have a transform. `regex` runs in linear time, so a pattern cannot be
//! made to backtrack by a crafted path.

use http::header::{HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::HeaderMap;
use regex::Regex;

/// A route's transforms (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Transform {
    pub host: Option<Rewrite>,
    pub path: Option<Rewrite>,
    /// Answer headers replaced (or added when absent), in configured order.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Answer headers appended beside any the answer has.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Answer headers removed.
    pub remove: Vec<HeaderName>,
}

/// A pattern and what a match becomes (`regex` replacement syntax: `$1`, `${name}`).
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub pattern: Regex,
    pub replace: String,
}

impl PartialEq for Rewrite {
    fn eq(&self, other: &Rewrite) -> bool {
        self.pattern.as_str() == other.pattern.as_str() && self.replace == other.replace
    }
}

impl PartialEq for Transform {
    fn eq(&self, other: &Transform) -> bool {
        self.host == other.host
            && self.path == other.path
            && self.set == other.set
            && self.add == other.add
            && self.remove == other.remove
    }
}

impl serde::Serialize for Rewrite {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Rewrite", 2)?;
        st.serialize_field("regex", self.pattern.as_str())?;
        st.serialize_field("replace", &self.replace)?;
        st.end()
    }
}

impl serde::Serialize for Transform {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let pairs = |v: &[(HeaderName, HeaderValue)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect()
        };
        let mut st = s.serialize_struct("Transform", 5)?;
        st.serialize_field("host", &self.host)?;
        st.serialize_field("path", &self.path)?;
        st.serialize_field("set", &pairs(&self.set))?;
        st.serialize_field("add", &pairs(&self.add))?;
        let remove: Vec<&str> = self.remove.iter().map(HeaderName::as_str).collect();
        st.serialize_field("remove", &remove)?;
        st.end()
    }
}

/// Why a request could not be rewritten: the replacement made something that is no path or
/// no host (the configuration cannot know every request's path in advance).
#[derive(Debug, thiserror::Error)]
#[error("the route's {what} rewrite made {made:?}, which is not a valid {what}")]
pub struct RewriteError {
    pub what: &'static str,
    pub made: String,
}

impl Rewrite {
    /// The text rewritten, or `None` when the pattern does not match (nothing to change).
    fn apply(&self, text: &str) -> Option<String> {
        self.pattern.is_match(text).then(|| {
            self.pattern
                .replace(text, self.replace.as_str())
                .into_owned()
        })
    }
}

impl Transform {
    /// Rewrites the host (the `Host` header, and the authority of an absolute-form or h2
    /// URI) and the path (the query kept) a request is forwarded with.
    pub fn request(&self, headers: &mut HeaderMap, uri: &mut Uri) -> Result<(), RewriteError> {
        if let Some(rw) = &self.path {
            if let Some(made) = rw.apply(uri.path()) {
                let with_query = match uri.query() {
                    Some(q) => format!("{made}?{q}"),
                    None => made.clone(),
                };
                let pq = PathAndQuery::try_from(with_query)
                    .ok()
                    .filter(|p| p.path().starts_with('/'))
                    .ok_or(RewriteError { what: "path", made })?;
                let mut parts = std::mem::take(uri).into_parts();
                parts.path_and_query = Some(pq);
                *uri = Uri::from_parts(parts).expect("a URI with a new path is a URI");
            }
        }
        if let Some(rw) = &self.host {
            let host = headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| uri.authority().map(http::uri::Authority::as_str))
                .unwrap_or("");
            if let Some(made) = rw.apply(host) {
                let bad = || RewriteError {
                    what: "host",
                    made: made.clone(),
                };
                let authority: http::uri::Authority = made.parse().map_err(|_| bad())?;
                let value = HeaderValue::from_str(&made).map_err(|_| bad())?;
                if uri.authority().is_some() {
                    let mut parts = std::mem::take(uri).into_parts();
                    parts.authority = Some(authority);
                    *uri = Uri::from_parts(parts).map_err(|_| bad())?;
                }
                headers.insert(http::header::HOST, value);
            }
        }
        Ok(())
    }

    /// Sets, adds and removes the answer's headers.
    pub fn response(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(pattern: &str, replace: &str) -> Option<Rewrite> {
        Some(Rewrite {
            pattern: Regex::new(pattern).unwrap(),
            replace: replace.into(),
        })
    }

    #[test]
    fn a_path_rewrite_keeps_the_query_and_one_that_makes_no_path_is_refused() {
        let t = Transform {
            path: rewrite("^/v1/(.*)$", "/api/$1"),
            ..Transform::default()
        };
        let (mut h, mut uri) = (HeaderMap::new(), "/v1/items?page=2".parse().unwrap());
        t.request(&mut h, &mut uri).unwrap();
        assert_eq!(uri, "/api/items?page=2");
        let mut other: Uri = "/health".parse().unwrap();
        t.request(&mut h, &mut other).unwrap();
        assert_eq!(other, "/health", "no match, no change");
        let bad = Transform {
            path: rewrite("^/(.*)$", "$1"),
            ..Transform::default()
        };
        let mut uri: Uri = "/x".parse().unwrap();
        let e = bad.request(&mut h, &mut uri).unwrap_err();
        assert_eq!(e.made, "x");
    }

    #[test]
    fn a_host_rewrite_sets_the_host_header_and_an_absolute_uris_authority() {
        let t = Transform {
            host: rewrite(r"^(\w+)\.old\.example$", "$1.example"),
            ..Transform::default()
        };
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, "shop.old.example".parse().unwrap());
        let mut uri: Uri = "http://shop.old.example/a".parse().unwrap();
        t.request(&mut h, &mut uri).unwrap();
        assert_eq!(h[http::header::HOST], "shop.example");
        assert_eq!(uri, "http://shop.example/a");
    }

    #[test]
    fn answer_headers_are_removed_then_set_then_added() {
        let t = Transform {
            remove: vec![http::header::SERVER],
            set: vec![(http::header::CACHE_CONTROL, "no-store".parse().unwrap())],
            add: vec![(http::header::VARY, "origin".parse().unwrap())],
            ..Transform::default()
        };
        let mut h = HeaderMap::new();
        h.insert(http::header::SERVER, "nginx".parse().unwrap());
        h.insert(http::header::CACHE_CONTROL, "max-age=60".parse().unwrap());
        h.insert(http::header::VARY, "accept".parse().unwrap());
        t.response(&mut h);
        assert!(h.get(http::header::SERVER).is_none());
        assert_eq!(h[http::header::CACHE_CONTROL], "no-store");
        let vary: Vec<_> = h.get_all(http::header::VARY).iter().collect();
        assert_eq!(vary, ["accept", "origin"]);
    }
}
