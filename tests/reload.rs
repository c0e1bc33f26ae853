//! Hot reload: a broken file is rejected with its error and the running config stays; a
//! valid one is swapped in without failing a request.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

fn file_config(active: &str, blue: std::net::SocketAddr, green: std::net::SocketAddr) -> String {
    blue_green(blue, green).active(active).build()
}

async fn start_from_file(path: &std::path::Path) -> Server {
    let cfg = switchyard::config::load(path).unwrap();
    Server::start(cfg, Some(path.to_path_buf())).await.unwrap()
}

/// Backends `blue` and `green`, `switchyard.toml` in a temporary directory with blue
/// active, a server started from it, its admin client and its web URL.
async fn from_file() -> (
    TestBackend,
    TestBackend,
    tempfile::TempDir,
    std::path::PathBuf,
    Server,
    switchyard::client::AdminClient,
    String,
) {
    let (blue, green) = TestBackend::pair().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, file_config("blue", blue.addr, green.addr)).unwrap();
    let sy = start_from_file(&path).await;
    let api = admin(&sy);
    let url = web_url(&sy).await;
    (blue, green, dir, path, sy, api, url)
}

bounded_test! {
    async fn a_broken_file_is_rejected_and_a_valid_one_swapped_in_under_load() {
        let (blue, green, _dir, path, _sy, api, url) = from_file().await;

        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Vec::new();
        for _ in 0..4 {
            let (url, stop) = (url.clone(), stop.clone());
            load.push(tokio::spawn(async move {
                let c = client();
                let mut failed = 0;
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) && n < 50_000 {
                    n += 1;
                    match get(&c, &url, &[]).await {
                        Ok(r) if r.status == 200 => {}
                        _ => failed += 1,
                    }
                }
                failed
            }));
        }

        // Broken: a route to a service that does not exist.
        std::fs::write(
            &path,
            file_config("blue", blue.addr, green.addr)
                .replace("forward = \"shop\"", "forward = \"shoop\""),
        )
        .unwrap();
        let err = post_err(&api, "/api/v1/reload", json!({})).await;
        assert!(err.contains("422"), "{err}");
        assert!(
            err.contains("switchyard.toml:12:11: route[0].forward: no service named \"shoop\""),
            "{err}"
        );
        assert_eq!(
            backend_of(&url).await,
            "blue",
            "old config still serves"
        );

        // Unreadable: also rejected.
        std::fs::remove_file(&path).unwrap();
        let err = post_err(&api, "/api/v1/reload", json!({})).await;
        assert!(err.contains("cannot read"), "{err}");

        // Valid: green becomes active.
        let before = blue.hits();
        std::fs::write(&path, file_config("green", blue.addr, green.addr)).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = api.post("/api/v1/reload", json!({})).await.unwrap();
        assert!(r["generation"].as_u64().unwrap() >= 2);
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::SeqCst);
        let mut failed = 0;
        for l in load {
            failed += l.await.unwrap();
        }
        assert_eq!(failed, 0, "no request failed across the reloads");
        assert!(before > 0 && green.hits() > 0);
        assert_eq!(backend_of(&url).await, "green");
    }
}

bounded_test! {
    current_thread;
    async fn a_runtime_switch_survives_a_reload_that_leaves_the_split_alone() {
        let (blue, green, _dir, path, _sy, api, url) = from_file().await;

        api.post("/api/v1/services/shop/switch", json!({ "group": "green" }))
            .await
            .unwrap();
        // Same split in the file, other changes: the switch stays.
        let other_change = config(
            &[("blue", &[blue.addr]), ("green", &[green.addr])],
            "active = \"blue\"\nbalance = \"round-robin\"",
        );
        std::fs::write(&path, other_change).unwrap();
        api.post("/api/v1/reload", json!({})).await.unwrap();
        assert_eq!(backend_of(&url).await, "green");

        // The file now says something new about the split: the file wins.
        std::fs::write(
            &path,
            file_config("blue", blue.addr, green.addr)
                .replace("active = \"blue\"", "weights = { blue = 100, green = 0 }"),
        )
        .unwrap();
        api.post("/api/v1/reload", json!({})).await.unwrap();
        assert_eq!(backend_of(&url).await, "blue");
    }
}

/// Writes `text` (green active, plus something that cannot be applied) and asks for a
/// reload: the error, once it is checked that blue still serves.
async fn refused_reload(
    path: &std::path::Path,
    text: String,
    api: &switchyard::client::AdminClient,
    url: &str,
) -> String {
    std::fs::write(path, text).unwrap();
    let err = post_err(api, "/api/v1/reload", json!({})).await;
    assert_eq!(backend_of(url).await, "blue", "nothing was applied");
    err
}

bounded_test! {
    current_thread;
    async fn a_reload_whose_new_listener_cannot_bind_changes_nothing() {
        let (blue, green, _dir, path, _sy, api, url) = from_file().await;

        // A second listener on a port that is taken.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let text = file_config("green", blue.addr, green.addr).replace(
            "[[route]]",
            &format!(
                "[[listener]]\nname = \"extra\"\nbind = \"{}\"\n\n[[route]]",
                taken.local_addr().unwrap()
            ),
        );
        let err = refused_reload(&path, text, &api, &url).await;
        assert!(
            err.contains("409") && err.contains("listener \"extra\" cannot bind"),
            "{err}"
        );
        let s = api.get("/api/v1/status").await.unwrap();
        assert_eq!(s["listeners"].as_array().unwrap().len(), 1);
    }
}

bounded_test! {
    current_thread;
    async fn a_reload_whose_access_log_cannot_be_opened_records_and_changes_nothing() {
        let (blue, green, dir, path, _sy, api, url) = from_file().await;
        let before = api.get("/api/v1/events").await.unwrap();

        // Logging to a path that is a directory: the log cannot be opened.
        let log = format!("[access_log]\npath = \"{}\"\n\n[[listener]]", dir.path().display());
        let text = file_config("green", blue.addr, green.addr).replacen("[[listener]]", &log, 1);
        let err = refused_reload(&path, text, &api, &url).await;
        assert!(err.contains("access log"), "{err}");
        assert_eq!(
            api.get("/api/v1/events").await.unwrap(),
            before,
            "nothing was recorded: the store holds what serves"
        );
    }
}

bounded_test! {
    current_thread;
    /// One source of truth: after `apply` of another configuration, a `reload` of the file the
    /// instance started from would silently undo it — it is refused, saying why and what to
    /// do, and the applied configuration keeps serving. Once the file says what runs, reload
    /// works again, and so does a reload after the file itself changed.
    async fn a_reload_that_would_undo_an_apply_is_refused_until_the_file_says_the_same() {
        let (blue, green, _dir, path, _sy, api, url) = from_file().await;
        let applied = file_config("green", blue.addr, green.addr);
        api.post(
            "/api/v1/config/apply",
            json!({ "path": "elsewhere.toml", "content": applied }),
        )
        .await
        .unwrap();
        assert_eq!(backend_of(&url).await, "green");
        let err = post_err(&api, "/api/v1/reload", json!({})).await;
        assert!(err.contains("409") && err.contains("would undo"), "{err}");
        assert!(err.contains("applied through the API by") && err.contains("switchyard apply -c"), "{err}");
        assert_eq!(backend_of(&url).await, "green", "the applied configuration still serves");
        // The file made to say what runs: reload is allowed (and changes nothing).
        std::fs::write(&path, &applied).unwrap();
        api.post("/api/v1/reload", json!({})).await.unwrap();
        assert_eq!(backend_of(&url).await, "green");
        // From now on the file is the source again: a change to it is reloaded.
        std::fs::write(&path, file_config("blue", blue.addr, green.addr)).unwrap();
        api.post("/api/v1/reload", json!({})).await.unwrap();
        assert_eq!(backend_of(&url).await, "blue");
    }
}
