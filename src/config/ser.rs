//! How the validated configuration is written out for [`super::diff`]: values whose types
//! are not serde's own (header names, methods, status codes, CIDRs, loaded certificates) as
//! the text a person would write in the file. Nothing here is read back.

use std::fmt::Display;
use std::hash::{Hash, Hasher};

use serde::ser::{SerializeMap, SerializeSeq};
use serde::Serializer;

/// Any value by its `Display` text.
pub(super) fn display<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A list by the `Display` text of each item.
pub(super) fn display_seq<T: Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for item in v {
        seq.serialize_element(&item.to_string())?;
    }
    seq.end()
}

/// `[(name, values)]` as a map by name, as the file writes it (`match.header = { … }`).
pub(super) fn pairs<K: Display, V: serde::Serialize, S: Serializer>(
    v: &[(K, V)],
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(v.len()))?;
    for (k, val) in v {
        map.serialize_entry(&k.to_string(), val)?;
    }
    map.end()
}

pub(super) fn status<S: Serializer>(v: &http::StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(v.as_u16())
}

/// A loaded certificate chain by a fingerprint of its bytes: a certificate file rewritten
/// in place is a change, though its path is not.
pub(super) fn certificate<S: Serializer>(
    k: &crate::tls::LoadedKey,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in &k.0.cert {
        c.as_ref().hash(&mut h);
    }
    k.0.ocsp.hash(&mut h);
    s.serialize_str(&format!("chain {:016x}", h.finish()))
}
