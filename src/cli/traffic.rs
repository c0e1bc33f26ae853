//! Traffic and configuration verbs: `switch`, `weights`, `plan`, `apply`, `reload`.

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::json;
use switchyard::split;

use super::show::str_of;
use super::target::Api;
use crate::output::{self, outln};

/// `switch SERVICE GROUP` or `switch SERVICE --back`.
pub(super) async fn switch(
    api: &Api,
    service: &str,
    group: Option<String>,
    back: bool,
    force: bool,
) -> anyhow::Result<()> {
    let body = match (group, back) {
        (Some(g), false) => json!({ "group": g, "force": force }),
        (None, true) => json!({ "back": true, "force": force }),
        _ => bail!("give a GROUP to switch to, or --back"),
    };
    let res = api
        .post(&format!("/api/v1/services/{service}/switch"), body)
        .await?;
    print_traffic_change(service, &res);
    Ok(())
}

/// `weights SERVICE GROUP=PERCENT…`, checked by the same rule as the file and the API
/// before anything is sent.
pub(super) async fn weights(
    api: &Api,
    service: &str,
    weights: &[String],
    force: bool,
) -> anyhow::Result<()> {
    let percents = weights
        .iter()
        .map(|w| parse_weight(w))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let split = split::Split::from_percents(percents.iter().cloned())?;
    let map: serde_json::Map<String, serde_json::Value> = percents
        .into_iter()
        .filter(|(g, _)| split.groups().any(|s| s == g))
        .map(|(g, pct)| (g, json!(pct)))
        .collect();
    let res = api
        .put(
            &format!("/api/v1/services/{service}/weights"),
            json!({ "weights": map, "force": force }),
        )
        .await?;
    print_traffic_change(service, &res);
    Ok(())
}

/// `GROUP=PERCENT` as people type it: `blue=90`, `blue=90%`, `blue = 90 %`.
fn parse_weight(given: &str) -> anyhow::Result<(String, f64)> {
    let (g, pct) = given
        .split_once('=')
        .with_context(|| format!("\"{given}\" is not GROUP=PERCENT"))?;
    let number = pct.trim().trim_end_matches('%').trim_end();
    let pct: f64 = number
        .parse()
        .with_context(|| format!("\"{number}\" in \"{given}\" is not a number"))?;
    Ok((g.trim().to_string(), pct))
}

/// `plan` and `apply`: the file (-c) sent to the running instance.
pub(super) async fn plan(api: &Api, path: &Path, apply: bool, json: bool) -> anyhow::Result<()> {
    let verb = if apply { "apply" } else { "plan" };
    let res = api
        .post(&format!("/api/v1/config/{verb}"), config_body(path)?)
        .await?;
    if json {
        output::json(&res);
        return Ok(());
    }
    let changes = res["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        outln!("no changes");
    }
    for c in changes {
        let detail = str_of(&c["detail"]);
        let sep = if detail.is_empty() { "" } else { ": " };
        outln!(
            "{} {}{sep}{detail}",
            c["op"].as_str().unwrap_or("?"),
            str_of(&c["what"])
        );
    }
    if apply {
        outln!("applied: generation {}", res["generation"]);
    }
    Ok(())
}

fn config_body(path: &Path) -> anyhow::Result<serde_json::Value> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(json!({ "path": abs.display().to_string(), "content": content }))
}

/// What a switch or a weights change did: `shop: blue=100% -> green=100% (generation 4)`.
fn print_traffic_change(service: &str, res: &serde_json::Value) {
    outln!(
        "{service}: {} -> {} (generation {})",
        split_text(&res["from"]),
        split_text(&res["to"]),
        res["generation"]
    );
}

fn split_text(v: &serde_json::Value) -> String {
    let Some(map) = v.as_object() else {
        return "?".into();
    };
    let parts: Vec<String> = map
        .iter()
        .filter_map(|(g, w)| {
            w.as_u64()
                .filter(|w| *w > 0)
                .map(|w| format!("{g}={}", split::format_percent(w as u32)))
        })
        .collect();
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::parse_weight;

    #[test]
    fn weights_are_read_with_or_without_a_percent_sign() {
        assert_eq!(parse_weight("blue=50%").unwrap(), ("blue".into(), 50.0));
        assert_eq!(
            parse_weight("green = 0.5 %").unwrap(),
            ("green".into(), 0.5)
        );
        assert_eq!(parse_weight("blue=90").unwrap(), ("blue".into(), 90.0));
        let err = parse_weight("blue=abc").unwrap_err().to_string();
        assert_eq!(err, "\"abc\" in \"blue=abc\" is not a number");
        assert!(parse_weight("blue").is_err());
    }
}
