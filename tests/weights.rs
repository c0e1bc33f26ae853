//! One rule for weights: the file, the admin API (`PUT /weights`) and the CLI refuse the same
//! bad weights with the same message (from `Split::from_percents`), each saying where.

mod common;

use std::path::Path;

use common::*;
use serde_json::json;

/// Percent by group.
type Weights = &'static [(&'static str, f64)];

/// (weights, the field at fault, the message every entry point gives).
const BAD: &[(Weights, &str, &str)] = &[
    // Accepted by the API before `Split` (rounded to 1 basis point, summing to 100).
    (
        &[("blue", 99.99), ("green", 0.005)],
        "weights.green",
        "weight 0.005 for green is finer than 0.01 (one basis point)",
    ),
    (
        &[("blue", 90.0), ("green", 10.01)],
        "weights",
        "weights sum to 100.01, not 100",
    ),
    (
        &[("blue", 101.0), ("green", 0.0)],
        "weights.blue",
        "weight 101 for blue is out of range: use 0 to 100 (percent)",
    ),
    (
        &[("blue", 100.0), ("green", -1.0)],
        "weights.green",
        "weight -1 for green is out of range: use 0 to 100 (percent)",
    ),
    (
        &[("blue", 110.0), ("green", 0.0)],
        "weights.blue",
        "weight 110 for blue is out of range: use 0 to 100 (percent)",
    ),
];

fn two_groups(weights: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"t0ken\"\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\n[[route]]\nname = \"all\"\npriority = 1\nforward = \"shop\"\n\n[[service]]\nname = \"shop\"\n{weights}\n[[service.group]]\nname = \"blue\"\ntargets = [\"127.0.0.1:9001\"]\n[[service.group]]\nname = \"green\"\ntargets = [\"127.0.0.1:9002\"]\n"
    )
}

fn toml_weights(w: &[(&str, f64)]) -> String {
    let parts: Vec<String> = w.iter().map(|(g, p)| format!("{g} = {p}")).collect();
    format!("weights = {{ {} }}", parts.join(", "))
}

fn file_error(weights: &str) -> String {
    switchyard::config::parse(&two_groups(weights), "sy.toml", Path::new("."))
        .expect_err("bad weights")
        .to_string()
}

#[test]
fn the_file_refuses_bad_weights_at_their_line_and_column() {
    for (w, field, msg) in BAD {
        let err = file_error(&toml_weights(w));
        // Line 16 is the `weights` line; a group's weight is located at its own key.
        assert!(err.starts_with("sy.toml:16:"), "{err}");
        assert!(
            err.ends_with(&format!("service[0].{field}: {msg}")),
            "{w:?}: {err}"
        );
    }
    assert_eq!(
        file_error("weights = { blue = 100, green = nan }"),
        "sy.toml:16:33: service[0].weights.green: weight NaN for green is not a number"
    );
    assert_eq!(
        file_error("weights = { blue = 100, green = inf }"),
        "sy.toml:16:33: service[0].weights.green: weight inf for green is out of range: use 0 to 100 (percent)"
    );
}

bounded_test! {
    async fn the_api_and_the_cli_refuse_the_same_weights_with_the_same_message() {
        let sy = start(&two_groups("active = \"blue\"")).await;
        let api = admin(&sy);
        let path = "/api/v1/services/shop/weights";
        for (w, field, msg) in BAD {
            let body: serde_json::Map<String, serde_json::Value> =
                w.iter().map(|(g, p)| (g.to_string(), json!(p))).collect();
            let err = api
                .put(path, json!({ "weights": body, "force": true }))
                .await
                .expect_err("bad weights")
                .to_string();
            assert!(
                err.contains("422") && err.contains(&format!("{field}: {msg}")),
                "{w:?}: {err}"
            );

            let mut args = vec!["weights".to_string(), "shop".into()];
            args.extend(w.iter().map(|(g, p)| format!("{g}={p}")));
            let out = cli(&sy.admin_addr.to_string(), &args);
            assert_eq!(out.0, 1, "{w:?}: {out:?}");
            assert!(out.2.contains(msg), "{w:?}: {}", out.2);
        }
        // JSON has no NaN or infinity: such a body is refused before it is a split.
        for raw in ["NaN", "1e999"] {
            let body = format!(r#"{{"weights": {{"blue": 100, "green": {raw}}}, "force": true}}"#);
            let res = raw_put(&sy.admin_addr.to_string(), path, &body).await;
            assert_eq!(res.0, 422, "{raw}: {}", res.1);
        }
        let out = cli(
            &sy.admin_addr.to_string(),
            &[
                "weights".into(),
                "shop".into(),
                "blue=100".into(),
                "green=NaN".into(),
            ],
        );
        assert!(
            out.2.contains("weight NaN for green is not a number"),
            "{}",
            out.2
        );

        // Nothing moved, and good weights still go through every door.
        let status = api.get("/api/v1/status").await.unwrap();
        assert_eq!(status["services"][0]["split_text"], "blue=100%");
        let ok = api
            .put(
                path,
                json!({ "weights": { "blue": 99.99, "green": 0.01 }, "force": true }),
            )
            .await
            .unwrap();
        assert_eq!(ok["to"], json!({ "blue": 9999, "green": 1 }));
        let out = cli(
            &sy.admin_addr.to_string(),
            &[
                "weights".into(),
                "shop".into(),
                "blue=90".into(),
                "green=10".into(),
                "--force".into(),
            ],
        );
        assert_eq!(out.0, 0, "{out:?}");
        assert!(out.1.contains("-> blue=90% green=10%"), "{}", out.1);
    }
}

fn cli(admin: &str, args: &[String]) -> (i32, String, String) {
    let to = ["--admin", admin, "--token", "t0ken"].map(String::from);
    common::bin::switchyard(args.iter().chain(&to))
}

/// A PUT with a body that is not valid JSON for serde (NaN, 1e999): status and body.
async fn raw_put(admin: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let req = format!(
        "PUT {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer t0ken\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}
