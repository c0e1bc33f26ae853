//! The fields the proxy sets on a forwarded request (`X-Forwarded-*`, `X-Request-Id`).
//!
//! They are kept out of the request's field map until the request is written: inserting
//! five fields into the map hyper parsed grows and rehashes it on every request, while an
//! HTTP/1 target can get them written straight after the client's fields. An HTTP/2 target
//! gets them inserted, since hyper's client encodes from the map.

use http::header::{HeaderMap, HeaderName, HeaderValue};

const MAX: usize = 6;

/// What the slots past `len` hold; never read.
static UNSET: HeaderName = HeaderName::from_static("x-unset");

/// Up to six fields that replace any the client sent by the same names.
#[derive(Debug)]
pub struct SetFields {
    len: usize,
    fields: [(&'static HeaderName, HeaderValue); MAX],
}

impl Default for SetFields {
    fn default() -> Self {
        SetFields {
            len: 0,
            fields: std::array::from_fn(|_| (&UNSET, HeaderValue::from_static(""))),
        }
    }
}

impl SetFields {
    /// Sets `name`, which must not be set already (each is written once per request).
    ///
    /// # Panics
    /// With more than six fields: the proxy's own list is fixed, so that is a bug.
    pub fn set(&mut self, name: &'static HeaderName, value: HeaderValue) {
        assert!(self.len < MAX, "more fields than SetFields holds");
        debug_assert!(!self.replaces(name), "{name} set twice");
        self.fields[self.len] = (name, value);
        self.len += 1;
    }

    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.fields[..self.len].iter().map(|(n, v)| (*n, v))
    }

    /// Whether the client's field `name` is replaced (and so not passed on).
    pub fn replaces(&self, name: &HeaderName) -> bool {
        self.fields[..self.len].iter().any(|(n, _)| *n == name)
    }

    pub fn insert_into(&self, map: &mut HeaderMap) {
        for (name, value) in self.iter() {
            map.insert(name, value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static A: HeaderName = HeaderName::from_static("x-a");
    static B: HeaderName = HeaderName::from_static("x-b");

    #[test]
    fn set_fields_replace_the_clients_by_name() {
        let mut set = SetFields::default();
        set.set(&A, HeaderValue::from_static("1"));
        set.set(&B, HeaderValue::from_static("2"));
        assert!(set.replaces(&A) && set.replaces(&B));
        assert!(!set.replaces(&http::header::HOST));
        let mut map = HeaderMap::new();
        map.append(&A, HeaderValue::from_static("client"));
        map.append(&A, HeaderValue::from_static("client again"));
        map.insert(http::header::HOST, HeaderValue::from_static("h"));
        set.insert_into(&mut map);
        assert_eq!(map.get_all(&A).iter().collect::<Vec<_>>(), ["1"]);
        assert_eq!(map[&B], "2");
        assert_eq!(map[http::header::HOST], "h");
    }
}
