//! Long-lived connections at a switch (issue 16, point 6): WebSocket tunnels to the group
//! that lost its traffic keep running until they end or until the service's `drain_timeout`,
//! counted in `status` and `/metrics`, then are cut — unless the traffic comes back first;
//! HTTP/2 client connections get a GOAWAY when a group is emptied (not at a weight step), so
//! clients open a new connection for new streams.

mod common;

use std::time::{Duration, Instant};

use common::release;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `shop` with WebSocket echo groups blue (active) and green, `drain_timeout` as given.
async fn rig(drain: &str) -> Server {
    let (blue, green) = (ws_echo().await, ws_echo().await);
    let cfg = blue_green(blue, green)
        .service(&format!("drain_timeout = \"{drain}\""))
        .build();
    start(&cfg).await
}

async fn open_ws(sy: &Server) -> Ws {
    let url = format!("ws://{}/chat", sy.listener_addr("web").await);
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Sends a message and expects it back.
async fn echoes(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), text);
}

/// The status of group `i` (0 blue, 1 green).
async fn group(sy: &Server, i: usize) -> serde_json::Value {
    let s = admin(sy).get("/api/v1/status").await.unwrap();
    s["services"][0]["groups"][i].clone()
}

async fn switch(sy: &Server, to: &str) {
    admin(sy)
        .post("/api/v1/services/shop/switch", json!({ "group": to }))
        .await
        .unwrap();
}

bounded_test! {
    /// A tunnel to blue outlives the switch to green by `drain_timeout` and no more; while it
    /// drains, new tunnels go to green; status and /metrics count both.
    async fn a_tunnel_to_the_old_group_lives_until_the_drain_timeout_then_is_cut() {
        let sy = rig("1s").await;
        let mut old = open_ws(&sy).await;
        echoes(&mut old, "before").await;
        assert_eq!(group(&sy, 0).await["tunnels"], 1);

        switch(&sy, "green").await;
        let switched = Instant::now();
        let blue = group(&sy, 0).await;
        assert!(blue["tunnels_draining_until"].as_i64().is_some(), "{blue}");
        echoes(&mut old, "still here after the switch").await;
        let mut new = open_ws(&sy).await;
        echoes(&mut new, "to green").await;
        assert_eq!(group(&sy, 1).await["tunnels"], 1);

        let end = tokio::time::timeout(Duration::from_secs(5), old.next())
            .await
            .expect("the old tunnel was cut");
        assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
        fired_between(
            switched.elapsed(),
            Duration::from_millis(900),
            Duration::from_millis(1500),
            "the drain's cut",
        );
        eventually(Duration::from_secs(2), "blue's tunnel counted as cut", || async {
            let b = group(&sy, 0).await;
            b["tunnels"] == 0 && b["tunnels_cut"] == 1 && b["tunnels_draining_until"].is_null()
        })
        .await;
        echoes(&mut new, "green's tunnel stays").await;
        let m = metrics_text(&sy).await;
        assert_eq!(
            metric(&m, "switchyard_tunnels_cut_total", &["group=\"blue\""]),
            Some(1.0),
            "{m}"
        );
        assert_eq!(
            metric(&m, "switchyard_tunnels_open", &["group=\"green\""]),
            Some(1.0)
        );
    }
}

bounded_test! {
    /// A switch back before the drain ends keeps the tunnel: it is cut only if its group
    /// is still without traffic when the drain ends.
    async fn a_tunnel_is_kept_when_its_group_takes_traffic_again_before_the_drain_ends() {
        let sy = rig("600ms").await;
        let mut ws = open_ws(&sy).await;
        switch(&sy, "green").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        switch(&sy, "blue").await;
        assert!(group(&sy, 0).await["tunnels_draining_until"].is_null());
        tokio::time::sleep(Duration::from_millis(900)).await;
        echoes(&mut ws, "kept").await;
        assert_eq!(group(&sy, 0).await["tunnels_cut"], 0);
    }
}

bounded_test! {
    /// Past 50 % a baseline takes stable's last share (stable at 0 %), but stable is still
    /// the rollout's stable group: its tunnels are not drained.
    async fn stable_at_zero_beside_a_baseline_keeps_its_tunnels() {
        let (blue, green, base) = (ws_echo().await, ws_echo().await, ws_echo().await);
        let cfg = blue_green(blue, green)
            .group("base", &[base])
            .service("drain_timeout = \"300ms\"")
            .build();
        let sy = start(&cfg).await;
        let mut ws = open_ws(&sy).await;
        let strategy = json!({ "kind": "canary", "baseline": "base", "steps": [{ "weight": 60 }, { "pause": "until-promoted" }] });
        start_rollout(&admin(&sy), strategy).await;
        release::wait_status(&admin(&sy), 10, release::paused_at(6000)).await;
        assert!(group(&sy, 0).await["tunnels_draining_until"].is_null());
        tokio::time::sleep(Duration::from_millis(600)).await;
        echoes(&mut ws, "stable's tunnel kept").await;
        assert_eq!(group(&sy, 0).await["tunnels_cut"], 0);
    }
}

bounded_test! {
    /// An HTTP/2 client connection is told GOAWAY when a switch empties a group, and not
    /// when weights only shift; its in-flight stream finishes.
    async fn http2_clients_get_a_goaway_when_a_group_is_emptied_not_at_a_weight_step() {
        use http_body_util::{BodyExt, Empty};
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let (blue, green) = TestBackend::pair().await;
        let sy = start(&blue_green(blue.addr, green.addr).build()).await;
        let addr = sy.listener_addr("web").await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let get = |path: &str| {
            http::Request::get(format!("http://{addr}{path}"))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        let r = send.send_request(get("/")).await.unwrap();
        assert_eq!(r.status(), 200);

        // A weight step: both groups keep traffic, the connection stays.
        admin(&sy)
            .put("/api/v1/services/shop/weights", json!({ "weights": { "blue": 50, "green": 50 } }))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!conn.is_finished(), "no GOAWAY at a weight step");
        let r = send.send_request(get("/")).await.unwrap();
        assert_eq!(r.status(), 200);

        // A slow stream in flight, then blue is emptied: the stream finishes, the
        // connection ends after it.
        blue.set_delay(300);
        let slow = send.send_request(get("/sleep/300"));
        let slow = tokio::spawn(slow);
        tokio::time::sleep(Duration::from_millis(50)).await;
        switch(&sy, "green").await;
        let answered = slow.await.unwrap().unwrap();
        assert_eq!(answered.status(), 200);
        let _ = answered.into_body().collect().await;
        tokio::time::timeout(Duration::from_secs(3), conn)
            .await
            .expect("the connection ended after the GOAWAY")
            .unwrap()
            .unwrap();
    }
}
