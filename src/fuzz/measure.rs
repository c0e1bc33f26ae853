//! Answers from outside analysis providers, read by the real parsers of
//! `analysis::external`: a Prometheus instant query's answer and a webhook's verdict. Any
//! answer becomes a measurement or an error with its reason — never a panic — and the
//! reading keeps the rules the README gives for each.

use std::time::Duration;

use crate::analysis::external::{parse_prometheus, webhook_verdict};
use crate::analysis::{Check, Outcome, Provider, Threshold};

/// Bit 0 of the first byte: the rest is the text of the sample's value inside a well-formed
/// answer (bit 1: a scalar rather than a one-series vector), read as that number exactly;
/// else the rest is the whole answer, which reads as a number that is never NaN, or fails.
pub fn prometheus(data: &[u8]) {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if first & 1 == 0 {
        if let Ok(v) = parse_prometheus(200, &text) {
            assert!(!v.is_nan(), "NaN read from {text:?}");
        }
        return;
    }
    let value = serde_json::to_string(&*text).expect("a string serialises");
    let body = if first & 2 == 0 {
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1,{value}]}}]}}}}"#
        )
    } else {
        format!(r#"{{"status":"success","data":{{"resultType":"scalar","result":[1,{value}]}}}}"#)
    };
    let expected = text.parse::<f64>().ok().filter(|v| !v.is_nan());
    let got = parse_prometheus(200, &body);
    match (expected, got) {
        (Some(e), Ok(g)) => assert_eq!(e.to_bits(), g.to_bits(), "{text:?}"),
        (None, Err(_)) => {}
        (e, g) => panic!("value {text:?}: expected {e:?}, read {g:?}"),
    }
}

/// The first two bytes are the status (100–599), the rest the body. A status outside 2xx
/// fails; a 2xx with an empty body passes; a body that is not JSON is an error; a JSON
/// `verdict` decides, and anything but pass, fail or inconclusive there is an error.
pub fn webhook(data: &[u8]) {
    let [a, b, rest @ ..] = data else {
        return;
    };
    let status = 100 + u16::from_le_bytes([*a, *b]) % 500;
    let text = String::from_utf8_lossy(rest);
    let check = Check {
        name: "fuzz".into(),
        provider: Provider::Webhook {
            url: "http://127.0.0.1:1/".into(),
            timeout: Duration::from_secs(1),
        },
        threshold: Threshold::default(),
        interval: Duration::from_secs(1),
        count: 1,
        failure_limit: 0,
        inconclusive_limit: 0,
        min_requests: 0,
        window: Duration::from_secs(1),
        judging: Default::default(),
    };
    let m = webhook_verdict(&check, status, &text);
    assert_eq!(m.check, "fuzz");
    let said = |m: &crate::analysis::Measurement| format!("{status} {text:?} → {m:?}");
    if !(200..300).contains(&status) {
        assert_eq!(m.outcome, Outcome::Fail, "{}", said(&m));
        return;
    }
    if text.trim().is_empty() {
        assert_eq!(m.outcome, Outcome::Pass, "{}", said(&m));
        return;
    }
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        assert_eq!(m.outcome, Outcome::Error, "{}", said(&m));
        return;
    };
    let expected = match json.get("verdict") {
        None => Outcome::Pass,
        Some(v) => match v.as_str() {
            Some("pass") => Outcome::Pass,
            Some("fail") => Outcome::Fail,
            Some("inconclusive") => Outcome::Inconclusive,
            _ => Outcome::Error,
        },
    };
    assert_eq!(m.outcome, expected, "{}", said(&m));
    if m.outcome != Outcome::Error {
        assert_eq!(
            m.value,
            json.get("value").and_then(serde_json::Value::as_f64)
        );
    }
}
