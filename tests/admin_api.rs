//! The admin API's README promises end to end: read-only mode without a token, a token read
//! from the environment (`token_env`), the CLI's `SWITCHYARD_ADMIN` / `SWITCHYARD_TOKEN`,
//! `/api/v1/series` in its documented shape, and `/openapi.json` describing every route.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::bin::*;
use common::*;
use serde_json::{json, Value};
use switchyard::client::AdminClient;

bounded_test! {
    async fn without_a_token_configured_the_api_is_read_only_and_a_write_gets_403() {
        let (blue, green) = TestBackend::pair().await;
        let toml = blue_green(blue.addr, green.addr)
            .build()
            .replace("token = \"t0ken\"\n", "");
        assert!(!toml.contains("token"), "{toml}");
        let sy = start(&toml).await;
        let anyone = AdminClient::new(&sy.admin_addr.to_string(), None);
        let status = anyone.get("/api/v1/status").await.unwrap();
        assert_eq!(status["services"][0]["name"], "shop");
        let e = post_err(&anyone, "/api/v1/services/shop/switch", json!({ "group": "green" })).await;
        assert!(e.contains("403"), "{e}");
        let e = post_err(&as_client(&sy, "t0ken"), "/api/v1/services/shop/switch", json!({ "group": "green" })).await;
        assert!(e.contains("403") || e.contains("401"), "{e}");
        let web = web_url(&sy).await;
        assert_eq!(backend_of(&web).await, "blue");
    }
}

bounded_test! {
    async fn a_token_from_the_environment_and_the_clis_environment_variables_work() {
        let bin = Binary::setup().await;
        let (path, web, admin) = (bin.path.clone(), bin.web, bin.admin);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("token = \"t0ken\"", "token_env = \"SY_TEST_ADMIN_SECRET\"");
        std::fs::write(&path, text).unwrap();
        let _sy =
            run_binary_with_env(&path, admin, &[("SY_TEST_ADMIN_SECRET", "s3cret-from-env")]).await;

        // The API takes the secret from the environment, and not the file's old token.
        let ok = AdminClient::new(&admin.to_string(), Some("s3cret-from-env".into()));
        assert_eq!(
            ok.get("/api/v1/status").await.unwrap()["services"][0]["name"],
            "shop"
        );
        let e = AdminClient::new(&admin.to_string(), Some("t0ken".into()))
            .get("/api/v1/status")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("401"), "{e}");

        // The CLI takes address and token from its environment: the file it is pointed at
        // does not exist.
        let cli_env = |token: &str, args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .args(args)
                .args(["-c", "/nonexistent/sy.toml"])
                .env("SWITCHYARD_ADMIN", admin.to_string())
                .env("SWITCHYARD_TOKEN", token)
                .output()
                .unwrap()
        };
        let out = cli_env("s3cret-from-env", &["switch", "shop", "green"]);
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        assert_eq!(backend_of(&format!("http://{web}/")).await, "green");
        let out = cli_env("wrong", &["status"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("401"),
            "{out:?}"
        );
    }
}

bounded_test! {
    async fn series_answers_one_point_a_second_per_group_in_the_documented_columns() {
        let (_blue, _green, sy) = serve_pair(|b, g| blue_green(b, g).build()).await;
        let web = web_url(&sy).await;
        let c = client();
        for _ in 0..20 {
            get(&c, &web, &[]).await.unwrap();
        }
        let api = admin(&sy);
        let s = api.get("/api/v1/series?seconds=30").await.unwrap();
        assert_eq!(s["seconds"], 30);
        assert_eq!(
            s["columns"],
            json!(["age_s", "requests", "success_rate", "p99_ms"])
        );
        let blue_points = s["services"]["shop"]["blue"].as_array().unwrap();
        // One point per second since the process began, at most `seconds`, oldest first.
        let n = blue_points.len() as u64;
        assert!((1..=30).contains(&n), "{s}");
        let ages: Vec<u64> = blue_points.iter().map(|p| p[0].as_u64().unwrap()).collect();
        assert_eq!(ages, (0..n).rev().collect::<Vec<_>>(), "{s}");
        let requests: u64 = blue_points.iter().map(|p| p[1].as_u64().unwrap()).sum();
        assert_eq!(requests, 20, "{s}");
        let busy = blue_points
            .iter()
            .find(|p| p[1].as_u64() > Some(0))
            .unwrap();
        assert_eq!(busy[2], 100.0, "success rate in %: {busy}");
        assert!(
            busy[3].as_f64().is_some_and(|ms| ms > 0.0),
            "p99 in ms: {busy}"
        );
        let idle = &s["services"]["shop"]["green"][0];
        assert_eq!(
            (idle[1].as_u64(), idle[3].is_null()),
            (Some(0), true),
            "{idle}"
        );

        let s = api.get("/api/v1/series?seconds=1").await.unwrap();
        assert_eq!(s["seconds"], 10, "at least 10 s");
        let e = api
            .get("/api/v1/series?seconds=abc")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("422"), "{e}");
    }
}

/// The routes the admin API's router serves, as (method, path): asked of the table the
/// router is made from (`api::routes`), not read from its source.
fn router_routes() -> BTreeSet<(String, String)> {
    switchyard::api::routes()
        .into_iter()
        .map(|(method, path)| (method.as_str().to_ascii_lowercase(), path))
        .collect()
}

async fn served_openapi(sy: &Server) -> Value {
    let r = get(
        &client(),
        &format!("http://{}/openapi.json", sy.admin_addr),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    r.json()
}

bounded_test! {
    async fn the_served_openapi_document_is_openapi_3_json_whose_paths_are_all_served() {
        let (_blue, _green, sy) = serve_pair(|b, g| blue_green(b, g).build()).await;
        let doc = served_openapi(&sy).await;
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
        let served = router_routes();
        assert!(
            served.len() >= 15,
            "the router's routes were not read: {served:?}"
        );
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                assert!(
                    served.contains(&(method.clone(), path.clone())),
                    "documented but not served: {method} {path}"
                );
            }
        }
    }
}

bounded_test! {
    async fn the_served_openapi_document_lists_every_route_the_admin_api_serves() {
        let (_blue, _green, sy) = serve_pair(|b, g| blue_green(b, g).build()).await;
        let doc = served_openapi(&sy).await;
        let missing: Vec<String> = router_routes()
            .into_iter()
            .filter(|(method, path)| doc["paths"][path][method].is_null())
            .map(|(method, path)| format!("{method} {path}"))
            .collect();
        assert!(missing.is_empty(), "served but not documented: {missing:?}");
    }
}

/// One request over a fresh loopback connection with the test token: the answer's status,
/// head (lower case) and body. The body is written beside the read, so that an answer given
/// before a large body is all sent is still read.
async fn raw_call(
    sy: &Server,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, String, String) {
    use tokio::io::AsyncWriteExt;
    let s = tokio::net::TcpStream::connect(sy.admin_addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer t0ken\r\n\
         content-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&body).await;
        wr
    });
    let mut got = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut got);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
    drop(writer);
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head: {text:?}"));
    (
        raw::status_of(head),
        head.to_ascii_lowercase(),
        body.to_string(),
    )
}

/// The answer is `status` in the error shape with `code`; its message.
fn error_shape(answer: &(u16, String, String), status: u16, code: &str) -> String {
    let (got, head, body) = answer;
    assert_eq!(*got, status, "{answer:?}");
    assert!(
        head.contains("\r\ncontent-type: application/json\r\n"),
        "{answer:?}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["error"]["code"], code, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{v}");
    message.to_string()
}

bounded_test! {
    async fn malformed_json_on_a_rollout_verb_and_an_analysis_run_is_a_422_in_the_error_shape() {
        let (_blue, _green, sy) = serve_pair(|b, g| blue_green(b, g).build()).await;
        for path in [
            "/api/v1/services/shop/rollout/pause",
            "/api/v1/services/shop/analysis/run",
            "/api/v1/services/shop/switch",
        ] {
            let a = raw_call(&sy, "POST", path, "application/json", b"{not json".to_vec()).await;
            let msg = error_shape(&a, 422, "bad_request");
            assert!(msg.contains("JSON"), "{path}: {msg}");
        }
    }
}

bounded_test! {
    async fn a_body_too_large_is_a_413_in_the_error_shape_on_every_endpoint() {
        let (_blue, _green, sy) = serve_pair(|b, g| blue_green(b, g).build()).await;
        let big = vec![b' '; 10 << 20];
        for path in [
            "/api/v1/services/shop/rollout/pause",
            "/api/v1/services/shop/switch",
            "/api/v1/config/plan",
        ] {
            let a = raw_call(&sy, "POST", path, "application/json", big.clone()).await;
            let msg = error_shape(&a, 413, "body_too_large");
            assert!(msg.contains("2097152 bytes"), "{path}: {msg}");
        }
    }
}

bounded_test! {
    async fn a_wrong_method_is_a_405_in_the_error_shape_with_its_allow_header() {
        let (_blue, _green, sy) = serve_pair(|b, g| blue_green(b, g).build()).await;
        for (method, path) in [
            ("DELETE", "/api/v1/status"),
            ("GET", "/api/v1/services/shop/switch"),
            ("POST", "/metrics"),
        ] {
            let a = raw_call(&sy, method, path, "application/json", Vec::new()).await;
            let msg = error_shape(&a, 405, "method_not_allowed");
            assert!(msg.contains(method) && msg.contains(path), "{msg}");
            // The Allow header survives the rewrite.
            assert!(a.1.contains("\r\nallow: "), "{a:?}");
        }
    }
}

bounded_test! {
    async fn an_unknown_path_and_a_wrong_content_type_are_in_the_error_shape() {
        let (_blue, _green, sy) = serve_pair(|b, g| blue_green(b, g).build()).await;
        for path in ["/nope", "/api/v1/nope", "/api/v2/status"] {
            let a = raw_call(&sy, "GET", path, "application/json", Vec::new()).await;
            error_shape(&a, 404, "not_found");
        }
        let a = raw_call(
            &sy,
            "POST",
            "/api/v1/services/shop/switch",
            "text/plain",
            br#"{"group":"green"}"#.to_vec(),
        )
        .await;
        error_shape(&a, 422, "bad_request");
    }
}

bounded_test! {
    async fn every_route_of_the_table_is_answered_by_the_router_not_its_fallback() {
        let (_blue, _green, sy) = serve_pair(|b, g| blue_green(b, g).build()).await;
        let routes = router_routes();
        assert!(routes.len() >= 18, "{routes:?}");
        for (method, path) in routes {
            let concrete = path.replace("{service}", "shop").replace("{verb}", "pause");
            let method = method.to_ascii_uppercase();
            let (status, head, body) =
                raw_call(&sy, &method, &concrete, "application/json", Vec::new()).await;
            assert_ne!(status, 405, "{method} {path}: {head}{body}");
            let code = serde_json::from_str::<Value>(&body)
                .map(|v| v["error"]["code"].clone())
                .unwrap_or(Value::Null);
            assert_ne!(code, "not_found", "{method} {path}: {body}");
        }
    }
}

/// `value`, with a `$ref` into the document's components followed.
fn resolved<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(r) => {
            let path = r.strip_prefix("#/").expect("a local $ref");
            path.split('/').fold(doc, |v, part| &v[part])
        }
        None => value,
    }
}

/// The message of a 400 or 422 in the error shape (an answer that is no refusal says so).
fn refusal(answer: &(u16, String, String)) -> String {
    if !matches!(answer.0, 400 | 422) {
        return format!("not refused: {} {}", answer.0, answer.2);
    }
    let v: Value = serde_json::from_str(&answer.2).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    v["error"]["message"].as_str().unwrap().to_string()
}

/// The field names serde lists in an unknown-field refusal ("expected one of `a`, `b`"):
/// what the handler's request type really accepts.
fn accepted_fields(message: &str) -> Option<BTreeSet<String>> {
    let list = message
        .split_once("expected one of ")
        .map(|(_, rest)| rest)
        .or_else(|| message.split_once("expected ").map(|(_, rest)| rest))?;
    Some(
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

bounded_test! {
    /// The document cannot drift from the handlers: for every request body and every query
    /// the document describes, a field no handler knows is refused (422), and the refusal —
    /// serde's own list of the fields the handler's type accepts — names exactly the
    /// documented properties or parameters.
    async fn every_documented_body_and_query_names_exactly_the_fields_its_handler_accepts() {
        let (_blue, _green, sy) = serve_pair(|b, g| blue_green(b, g).build()).await;
        let doc = served_openapi(&sy).await;
        let mut checked = Vec::new();
        let mut drift = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                // A path parameter with an `enum` (the rollout verbs): each value in turn.
                let verbs: Vec<String> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"] == "verb")
                    .and_then(|p| p["schema"]["enum"].as_array())
                    .map(|e| e.iter().map(|v| v.as_str().unwrap().to_string()).collect())
                    .unwrap_or_else(|| vec![String::new()]);
                for verb in verbs {
                let concrete = path
                    .replace("{service}", "shop")
                    .replace("{verb}", &verb);
                let body_props = op["requestBody"]["content"]["application/json"]["schema"]
                    .as_object()
                    .map(|_| {
                        resolved(&doc, &op["requestBody"]["content"]["application/json"]["schema"])
                    })
                    .and_then(|s| s["properties"].as_object());
                if let Some(props) = body_props {
                    let documented: BTreeSet<String> = props.keys().cloned().collect();
                    let answer = raw_call(
                        &sy,
                        &method.to_ascii_uppercase(),
                        &concrete,
                        "application/json",
                        br#"{"no_such_field_anywhere": 1}"#.to_vec(),
                    )
                    .await;
                    let message = refusal(&answer);
                    let accepted = accepted_fields(&message);
                    if accepted.as_ref() != Some(&documented) {
                        drift.push(format!(
                            "{method} {concrete} body: documented {documented:?}, handler says {message:?}"
                        ));
                    }
                    checked.push(format!("{method} {concrete} body"));
                }
                let query: BTreeSet<String> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| resolved(&doc, p))
                    .filter(|p| p["in"] == "query")
                    .map(|p| p["name"].as_str().unwrap().to_string())
                    .collect();
                if !query.is_empty() {
                    let answer = raw_call(
                        &sy,
                        &method.to_ascii_uppercase(),
                        &format!("{concrete}?no_such_field_anywhere=1"),
                        "application/json",
                        Vec::new(),
                    )
                    .await;
                    let message = refusal(&answer);
                    if accepted_fields(&message).as_ref() != Some(&query) {
                        drift.push(format!(
                            "{method} {path} query: documented {query:?}, handler says {message:?}"
                        ));
                    }
                    checked.push(format!("{method} {concrete} query"));
                }
                }
            }
        }
        println!("checked: {checked:?}");
        assert!(checked.len() >= 8, "too few bodies and queries found: {checked:?}");
        assert!(drift.is_empty(), "{drift:#?}");
    }
}

/// Where `value` has what `schema` (of `doc`) does not describe: a field of an object whose
/// schema lists its properties and allows no others, or a value of another type. Follows
/// `$ref`, `items`, `properties`, `additionalProperties` and `allOf`/`oneOf`/`anyOf`.
fn undocumented(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolved(doc, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(alts) = schema[key].as_array() {
            let fits = alts.iter().any(|alt| {
                let mut found = Vec::new();
                undocumented(doc, alt, value, at, &mut found);
                found.is_empty()
            });
            if !fits {
                out.push(format!("{at}: fits none of its {key}: {value}"));
            }
            return;
        }
    }
    if value.is_null() {
        if schema["nullable"] != true && schema.get("type").is_some() {
            out.push(format!("{at}: null, not documented as nullable"));
        }
        return;
    }
    let kind = match value {
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => unreachable!(),
    };
    if let Some(t) = schema["type"].as_str() {
        if t != kind && !(t == "number" && kind == "integer") {
            out.push(format!("{at}: a {kind}, documented as {t}"));
            return;
        }
    }
    match value {
        Value::Array(items) if schema.get("items").is_some() => {
            for (i, item) in items.iter().enumerate() {
                undocumented(doc, &schema["items"], item, &format!("{at}[{i}]"), out);
            }
        }
        Value::Object(fields) => {
            let mut props = serde_json::Map::new();
            for part in std::iter::once(schema).chain(
                schema["allOf"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| resolved(doc, s)),
            ) {
                if let Some(p) = part["properties"].as_object() {
                    props.extend(p.clone());
                }
            }
            let extra = &schema["additionalProperties"];
            for (k, v) in fields {
                match props.get(k) {
                    Some(s) => undocumented(doc, s, v, &format!("{at}.{k}"), out),
                    None if extra.is_object() => {
                        undocumented(doc, extra, v, &format!("{at}.{k}"), out);
                    }
                    None if props.is_empty() || *extra == true => {}
                    None => out.push(format!("{at}.{k}: not documented")),
                }
            }
        }
        _ => {}
    }
}

bounded_test! {
    /// The document holds the answers too: through a blue-green switch, weights, a rollout
    /// started, paused, resumed, aborted and retried, a plan and an apply, every JSON answer
    /// of every route has only fields (and types) that its documented schema describes.
    async fn every_answer_has_only_the_fields_its_documented_schema_describes() {
        let (blue, green) = TestBackend::pair().await;
        let conf = blue_green(blue.addr, green.addr)
            .service("[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }, { pause = \"until-promoted\" }]")
            .build();
        let sy = start(&conf).await;
        let doc = served_openapi(&sy).await;
        let calls: Vec<(&str, &str, &str, Value)> = vec![
            ("get", "/api/v1/status", "/api/v1/status", Value::Null),
            ("post", "/api/v1/services/{service}/switch", "/api/v1/services/shop/switch", json!({ "group": "green" })),
            ("put", "/api/v1/services/{service}/weights", "/api/v1/services/shop/weights", json!({ "weights": { "blue": 100 } })),
            ("post", "/api/v1/config/plan", "/api/v1/config/plan", json!({ "path": "t.toml", "content": conf })),
            ("post", "/api/v1/config/apply", "/api/v1/config/apply", json!({ "path": "t.toml", "content": conf })),
            ("post", "/api/v1/rollouts", "/api/v1/rollouts", json!({ "service": "shop", "candidate": "green" })),
            ("get", "/api/v1/services/{service}/rollout", "/api/v1/services/shop/rollout", Value::Null),
            ("post", "/api/v1/services/{service}/rollout/{verb}", "/api/v1/services/shop/rollout/pause", json!({})),
            ("post", "/api/v1/services/{service}/rollout/{verb}", "/api/v1/services/shop/rollout/resume", json!({})),
            ("post", "/api/v1/services/{service}/rollout/{verb}", "/api/v1/services/shop/rollout/abort", json!({ "reason": "test" })),
            ("post", "/api/v1/services/{service}/rollout/{verb}", "/api/v1/services/shop/rollout/retry", json!({ "force": true })),
            ("get", "/api/v1/rollouts", "/api/v1/rollouts", Value::Null),
            ("get", "/api/v1/events", "/api/v1/events", Value::Null),
            ("get", "/api/v1/series", "/api/v1/series?seconds=10", Value::Null),
            ("get", "/api/v1/fleet/seconds", "/api/v1/fleet/seconds?from=0", Value::Null),
        ];
        let mut problems = Vec::new();
        for (method, documented, path, body) in calls {
            let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
            let (status, _, answer) =
                raw_call(&sy, &method.to_ascii_uppercase(), path, "application/json", body).await;
            assert!((200..300).contains(&status), "{method} {path}: {status} {answer}");
            let responses = &doc["paths"][documented][method]["responses"];
            let schema = &responses[status.to_string()]["content"]["application/json"]["schema"];
            assert!(!schema.is_null(), "{method} {documented}: no schema for {status}");
            let value: Value = serde_json::from_str(&answer).unwrap();
            undocumented(&doc, schema, &value, &format!("{method} {path}"), &mut problems);
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
