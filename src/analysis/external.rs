//! Measurements from outside: a Prometheus instant query, a webhook, a command. An empty or
//! malformed answer is an `Error` measurement with its reason, never a crash; so is an answer
//! over `bounded::MAX_ANSWER_BYTES` or a command past its timeout (see `bounded`).

use std::time::Duration;

use http::Method;
use serde::Serialize;

use super::{Check, Measurement, Outcome};
use crate::bounded::{self, ReadBody};

/// What a webhook or command is told about the rollout.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub service: String,
    pub rollout: Option<u64>,
    pub stable: String,
    pub candidate: String,
    /// The group running a fresh copy of stable that the candidate is judged against, when
    /// the strategy has one (`Strategy::baseline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Candidate weight in basis points.
    pub weight: u32,
    pub analysis: String,
    pub check: String,
    /// The window second the analysis began: built-in measurements look no further back.
    #[serde(skip)]
    pub since: u64,
    /// Where a `new_errors` check finds the groups' fingerprints (`Controller::errors`).
    #[serde(skip)]
    pub errors: Option<crate::fingerprint::Source>,
}

impl Context {
    /// The group built-in measurements compare the candidate with: the baseline, else stable.
    pub fn reference(&self) -> &str {
        self.baseline.as_deref().unwrap_or(&self.stable)
    }

    /// What analysis `analysis` of rollout `r` is told, starting now.
    pub fn of_rollout(r: &crate::rollout::Rollout, analysis: &str) -> Context {
        Context {
            service: r.service.clone(),
            rollout: Some(r.id),
            stable: r.stable.clone(),
            candidate: r.candidate.clone(),
            baseline: r.strategy.baseline.clone(),
            weight: r.weight,
            analysis: analysis.to_string(),
            check: String::new(),
            since: crate::metrics::now_second(),
            errors: None,
        }
    }

    /// With the fingerprints a `new_errors` check reads.
    pub fn with_errors(self, errors: crate::fingerprint::Source) -> Context {
        Context {
            errors: Some(errors),
            ..self
        }
    }
}

fn result(
    check: &Check,
    outcome: Outcome,
    value: Option<f64>,
    detail: impl Into<String>,
) -> Measurement {
    Measurement {
        check: check.name.clone(),
        outcome,
        value,
        detail: detail.into(),
        requests: None,
    }
}

/// (status, body) of a call through the one bounded client.
async fn http(
    method: Method,
    url: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let answer = bounded::call(method, url, body, timeout, ReadBody::Always)
        .await
        .map_err(|e| e.to_string())?;
    let bytes = match answer.body {
        Some(read) => read.map_err(|e| format!("{url}: {e}"))?,
        None => Default::default(),
    };
    Ok((
        answer.status.as_u16(),
        String::from_utf8_lossy(&bytes).into_owned(),
    ))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn prometheus(check: &Check, base: &str, query: &str, timeout: Duration) -> Measurement {
    let url = format!(
        "{}/api/v1/query?query={}",
        base.trim_end_matches('/'),
        percent_encode(query)
    );
    let (status, body) = match http(Method::GET, &url, None, timeout).await {
        Ok(x) => x,
        Err(e) => return result(check, Outcome::Error, None, e),
    };
    match parse_prometheus(status, &body) {
        Ok(value) => match check.threshold.violation(value, None, "") {
            Some(why) => result(
                check,
                Outcome::Fail,
                Some(value),
                format!("`{query}` = {value}: {why}"),
            ),
            None => result(
                check,
                Outcome::Pass,
                Some(value),
                format!("`{query}` = {value}"),
            ),
        },
        Err(e) => result(check, Outcome::Error, None, format!("`{query}`: {e}")),
    }
}

/// The single number of an instant query's answer. Public for the fuzz harness only.
#[doc(hidden)]
pub fn parse_prometheus(status: u16, body: &str) -> Result<f64, String> {
    let json: serde_json::Value = serde_json::from_str(body).map_err(|_| {
        let shown: String = body.chars().take(120).collect();
        format!("answer is not JSON (status {status}): {shown:?}")
    })?;
    if json["status"] != "success" {
        return Err(format!(
            "query failed (status {status}): {}",
            json["error"].as_str().unwrap_or("no error message")
        ));
    }
    let data = &json["data"];
    let sample = match data["resultType"].as_str() {
        Some("vector") => {
            let series = data["result"]
                .as_array()
                .ok_or("answer has no result list")?;
            match series.len() {
                0 => return Err("the query returned no series".into()),
                1 => &series[0]["value"],
                n => {
                    return Err(format!(
                        "the query returned {n} series; aggregate it to one (e.g. sum(...))"
                    ))
                }
            }
        }
        Some("scalar") => &data["result"],
        other => return Err(format!("unsupported result type {other:?}")),
    };
    let text = sample[1].as_str().ok_or("the sample has no value")?;
    let v: f64 = text
        .parse()
        .map_err(|_| format!("the value {text:?} is not a number"))?;
    if v.is_nan() {
        return Err("the value is NaN (no data for the ratio?)".into());
    }
    Ok(v)
}

pub async fn webhook(check: &Check, url: &str, timeout: Duration, ctx: &Context) -> Measurement {
    let body = serde_json::to_string(ctx).expect("context serialises");
    let (status, text) = match http(Method::POST, url, Some(body), timeout).await {
        Ok(x) => x,
        Err(e) => return result(check, Outcome::Error, None, e),
    };
    webhook_verdict(check, status, &text)
}

/// What a webhook's answer says. Public for the fuzz harness only.
#[doc(hidden)]
pub fn webhook_verdict(check: &Check, status: u16, text: &str) -> Measurement {
    if !(200..300).contains(&status) {
        let shown: String = text.chars().take(200).collect();
        return result(
            check,
            Outcome::Fail,
            None,
            format!("webhook answered {status}: {shown}"),
        );
    }
    if text.trim().is_empty() {
        return result(
            check,
            Outcome::Pass,
            None,
            format!("webhook answered {status}"),
        );
    }
    let Ok(json) = serde_json::from_str::<serde_json::Value>(text) else {
        let shown: String = text.chars().take(120).collect();
        return result(
            check,
            Outcome::Error,
            None,
            format!("webhook answered {status} with a body that is not JSON: {shown:?}"),
        );
    };
    let reason = json["reason"].as_str().unwrap_or("").to_string();
    let value = json["value"].as_f64();
    match json.get("verdict").map(|v| v.as_str()) {
        None => result(
            check,
            Outcome::Pass,
            value,
            format!("webhook answered {status}"),
        ),
        Some(Some("pass")) => result(
            check,
            Outcome::Pass,
            value,
            format!("webhook: pass {reason}"),
        ),
        Some(Some("fail")) => result(
            check,
            Outcome::Fail,
            value,
            format!("webhook: fail {reason}"),
        ),
        Some(Some("inconclusive")) => result(
            check,
            Outcome::Inconclusive,
            value,
            format!("webhook: inconclusive {reason}"),
        ),
        Some(other) => result(
            check,
            Outcome::Error,
            None,
            format!(
                "webhook verdict {:?} is not pass, fail or inconclusive",
                other.unwrap_or("(not a string)")
            ),
        ),
    }
}

/// Exit 0 passes, 3 is inconclusive, 126/127 (cannot run) are errors, anything else fails.
/// A command that times out is an error, and its whole process group is killed.
pub async fn command(check: &Check, cmd: &str, timeout: Duration, ctx: &Context) -> Measurement {
    let env = [
        ("SWITCHYARD_SERVICE", ctx.service.clone()),
        ("SWITCHYARD_STABLE", ctx.stable.clone()),
        ("SWITCHYARD_CANDIDATE", ctx.candidate.clone()),
        ("SWITCHYARD_WEIGHT", ctx.weight.to_string()),
        (
            "SWITCHYARD_ROLLOUT",
            ctx.rollout.map(|r| r.to_string()).unwrap_or_default(),
        ),
    ];
    let out = match crate::bounded::run_shell(cmd, &env, timeout).await {
        Ok(out) => out,
        Err(e) => return result(check, Outcome::Error, None, e.to_string()),
    };
    let said = out.said(200);
    match out.status.code() {
        Some(0) => result(
            check,
            Outcome::Pass,
            None,
            format!("`{cmd}` exited 0 {said}"),
        ),
        Some(3) => result(
            check,
            Outcome::Inconclusive,
            None,
            format!("`{cmd}` exited 3 (inconclusive) {said}"),
        ),
        Some(c @ (126 | 127)) => result(
            check,
            Outcome::Error,
            None,
            format!("`{cmd}` cannot run (exit {c}): {said}"),
        ),
        Some(c) => result(
            check,
            Outcome::Fail,
            None,
            format!("`{cmd}` exited {c}: {said}"),
        ),
        None => result(
            check,
            Outcome::Error,
            None,
            format!("`{cmd}` was killed by a signal"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_prometheus;

    #[test]
    fn prometheus_answers() {
        let ok = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.25"]}]}}"#;
        assert_eq!(parse_prometheus(200, ok), Ok(0.25));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"3"]}}"#;
        assert_eq!(parse_prometheus(200, scalar), Ok(3.0));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(parse_prometheus(200, empty)
            .unwrap_err()
            .contains("no series"));
        assert!(parse_prometheus(502, "<html>")
            .unwrap_err()
            .contains("not JSON"));
        let bad = r#"{"status":"error","error":"parse error at char 3"}"#;
        assert!(parse_prometheus(400, bad)
            .unwrap_err()
            .contains("parse error"));
        let nan = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert!(parse_prometheus(200, nan).unwrap_err().contains("NaN"));
    }
}
