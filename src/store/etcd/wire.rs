//! etcd's v3 messages as its JSON gateway writes them: keys and values in base64, int64
//! fields as JSON strings, fields at their zero value omitted (a false `succeeded`, a PUT
//! event's `type`, a lost lease's `TTL`). Requests are built here too, so that the encoding
//! rules live in one place.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

/// Keys and values as the gateway carries them.
pub(super) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The first key after every key that starts with `prefix`: the `range_end` of a prefix.
pub(super) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (never for our prefixes): to the end of the keyspace.
    vec![0]
}

/// An int64 the gateway wrote as a string (or, from other writers, as a number).
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        S(String),
        N(i64),
    }
    match Int::deserialize(d)? {
        Int::N(n) => Ok(n),
        Int::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

fn base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    STANDARD.decode(s).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Header {
    #[serde(default, deserialize_with = "int64")]
    pub(super) revision: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Kv {
    #[serde(deserialize_with = "base64")]
    pub(super) key: Vec<u8>,
    #[serde(default, deserialize_with = "base64")]
    pub(super) value: Vec<u8>,
    #[serde(default, deserialize_with = "int64")]
    pub(super) create_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    pub(super) mod_revision: i64,
}

impl Kv {
    pub(super) fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct RangeResponse {
    #[serde(default)]
    pub(super) header: Header,
    #[serde(default)]
    pub(super) kvs: Vec<Kv>,
    #[serde(default, deserialize_with = "int64")]
    pub(super) count: i64,
    #[serde(default)]
    pub(super) more: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct ResponseOp {
    #[serde(default)]
    pub(super) response_range: Option<RangeResponse>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct TxnResponse {
    #[serde(default)]
    pub(super) header: Header,
    #[serde(default)]
    pub(super) succeeded: bool,
    #[serde(default)]
    pub(super) responses: Vec<ResponseOp>,
}

impl TxnResponse {
    /// The `i`th answer of the branch that ran, when it was a range.
    pub(super) fn range(&self, i: usize) -> Option<&RangeResponse> {
        self.responses.get(i)?.response_range.as_ref()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct LeaseGrant {
    #[serde(rename = "ID", default, deserialize_with = "int64")]
    pub(super) id: i64,
    #[serde(rename = "TTL", default, deserialize_with = "int64")]
    pub(super) ttl: i64,
}

/// One answer of a streamed call (`/v3/watch`, `/v3/lease/keepalive`).
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Streamed<T> {
    pub(super) result: Option<T>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct WatchResponse {
    #[serde(default)]
    pub(super) canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    pub(super) compact_revision: i64,
    #[serde(default)]
    pub(super) cancel_reason: String,
    #[serde(default)]
    pub(super) events: Vec<WatchEvent>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct WatchEvent {
    /// `DELETE`, or absent for a put.
    #[serde(rename = "type", default)]
    pub(super) kind: String,
    pub(super) kv: Kv,
}

impl WatchEvent {
    pub(super) fn is_delete(&self) -> bool {
        self.kind == "DELETE"
    }
}

// Requests.

pub(super) fn range(key: &str) -> Value {
    json!({ "key": b64(key.as_bytes()) })
}

pub(super) fn range_prefix(prefix: &str) -> Value {
    json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)) })
}

pub(super) fn put(key: &str, value: &[u8], lease: i64) -> Value {
    let mut p = json!({ "key": b64(key.as_bytes()), "value": b64(value) });
    if lease != 0 {
        p["lease"] = json!(lease.to_string());
    }
    p
}

/// Txn operations.
pub(super) fn op_put(key: &str, value: &[u8], lease: i64) -> Value {
    json!({ "request_put": put(key, value, lease) })
}

pub(super) fn op_range(key: &str) -> Value {
    json!({ "request_range": range(key) })
}

/// Txn conditions.
pub(super) fn create_revision_is(key: &str, revision: i64) -> Value {
    json!({ "key": b64(key.as_bytes()), "target": "CREATE", "result": "EQUAL",
            "create_revision": revision.to_string() })
}

pub(super) fn value_is(key: &str, value: &str) -> Value {
    json!({ "key": b64(key.as_bytes()), "target": "VALUE", "result": "EQUAL",
            "value": b64(value.as_bytes()) })
}

pub(super) fn value_is_not(key: &str, value: &str) -> Value {
    json!({ "key": b64(key.as_bytes()), "target": "VALUE", "result": "NOT_EQUAL",
            "value": b64(value.as_bytes()) })
}

pub(super) fn mod_revision_is(key: &str, revision: i64) -> Value {
    json!({ "key": b64(key.as_bytes()), "target": "MOD", "result": "EQUAL",
            "mod_revision": revision.to_string() })
}

pub(super) fn mod_revision_below(key: &str, revision: i64) -> Value {
    json!({ "key": b64(key.as_bytes()), "target": "MOD", "result": "LESS",
            "mod_revision": revision.to_string() })
}

pub(super) fn txn(compare: Vec<Value>, success: Vec<Value>, failure: Vec<Value>) -> Value {
    json!({ "compare": compare, "success": success, "failure": failure })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_that_can_be() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn answers_decode_with_int64_strings_and_omitted_zero_fields() {
        let t: TxnResponse = serde_json::from_str(
            r#"{"header":{"revision":"7"},"responses":[{"response_range":{"header":{"revision":"7"},
                "kvs":[{"key":"Zm9v","create_revision":"5","mod_revision":"6","version":"2","value":"YmF6"}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert_eq!(t.header.revision, 7);
        assert!(!t.succeeded);
        let kv = &t.range(0).unwrap().kvs[0];
        assert_eq!(
            (kv.key_str().as_str(), kv.value.as_slice()),
            ("foo", &b"baz"[..])
        );
        assert_eq!((kv.create_revision, kv.mod_revision), (5, 6));
        let w: Streamed<WatchResponse> = serde_json::from_str(
            r#"{"result":{"header":{"revision":"7"},"events":[{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"7"}}]}}"#,
        )
        .unwrap();
        assert!(w.result.unwrap().events[0].is_delete());
    }
}
