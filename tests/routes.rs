//! Route conditions, priorities, fixed responses, redirects and header rewriting.

mod common;

use common::*;

async fn setup() -> (TestBackend, TestBackend, Server, String) {
    let a = TestBackend::start("api").await;
    let w = TestBackend::start("web").await;
    let toml = format!(
        r#"{head}[limits]
max_headers = 20

[[route]]
name = "health"
priority = 1
match.path = ["/lb-health"]
fixed_response = {{ status = 200, content_type = "text/plain", body = "fine\n" }}

[[route]]
name = "moved"
priority = 2
match.host = ["old.test"]
redirect = {{ status = 308, host = "new.test", path = "/v2#{{path}}" }}

[[route]]
name = "https-only"
priority = 3
match.host = ["secure.test"]
redirect = {{ scheme = "https" }}

[[route]]
name = "api-beta"
priority = 10
match.host = ["*.api.test"]
match.path_prefix = ["/v1/"]
match.method = ["GET"]
match.header = {{ "x-beta" = ["y*"] }}
match.query = {{ "tier" = ["gold", "plat*"] }}
forward = "api"

[[route]]
name = "internal"
priority = 20
match.path_glob = ["/internal/*.json"]
match.source = ["127.0.0.0/8"]
forward = "api"

[[route]]
name = "outside"
priority = 21
match.path_glob = ["/outside/*"]
match.source = ["10.0.0.0/8"]
forward = "api"

[[route]]
name = "rest"
priority = 100
forward = "web"

[[service]]
name = "api"
[[service.group]]
name = "g"
targets = ["{a}"]

[[service]]
name = "web"
[[service.group]]
name = "g"
targets = ["{w}"]
"#,
        head = Cfg::new().head(),
        a = a.addr,
        w = w.addr
    );
    let sy = start(&toml).await;
    let base = format!("http://{}", sy.listener_addr("web").await);
    (a, w, sy, base)
}

bounded_test! {
    current_thread;
    async fn conditions_and_priorities_pick_the_route() {
        let (_a, _w, _sy, base) = setup().await;
        let c = client();
        let beta = [("host", "eu.api.test"), ("x-beta", "YES")];
        type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            (format!("{base}/v1/items?tier=gold"), beta.to_vec(), "api"),
            (
                format!("{base}/v1/items?a=1&tier=platinum"),
                beta.to_vec(),
                "api",
            ),
            (format!("{base}/v1/items?tier=silver"), beta.to_vec(), "web"),
            (format!("{base}/v1/items"), beta.to_vec(), "web"),
            (
                format!("{base}/v1/items?tier=gold"),
                vec![("host", "api.test"), ("x-beta", "yes")],
                "web",
            ),
            (
                format!("{base}/v1/items?tier=gold"),
                vec![("host", "eu.api.test")],
                "web",
            ),
            (format!("{base}/v2/items?tier=gold"), beta.to_vec(), "web"),
            (format!("{base}/internal/a/b.json"), vec![], "api"),
            (format!("{base}/internal/a/b.xml"), vec![], "web"),
            (format!("{base}/outside/x"), vec![], "web"),
        ];
        for (url, headers, want) in cases {
            let r = get(&c, &url, &headers).await.unwrap();
            assert_eq!(r.backend(), want, "{url} {headers:?}");
        }
    }
}

bounded_test! {
    current_thread;
    async fn fixed_responses_and_redirects() {
        let (_a, _w, _sy, base) = setup().await;
        let c = client();
        let r = get(&c, &format!("{base}/lb-health"), &[]).await.unwrap();
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "fine\n"));
        assert_eq!(r.headers["content-type"], "text/plain");

        let r = get(
            &c,
            &format!("{base}/shop/cart?id=7"),
            &[("host", "old.test:8080")],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 308);
        assert_eq!(r.headers["location"], "http://new.test/v2/shop/cart?id=7");

        let r = get(&c, &format!("{base}/login"), &[("host", "secure.test")])
            .await
            .unwrap();
        assert_eq!(r.status, 301);
        assert_eq!(r.headers["location"], "https://secure.test/login");
    }
}

bounded_test! {
    current_thread;
    async fn forwarded_headers_are_set_and_hop_by_hop_headers_removed() {
        let (_a, _w, _sy, base) = setup().await;
        let r = get(
            &client(),
            &format!("{base}/echo"),
            &[
                ("host", "shop.test"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-for", "198.51.100.1, 198.51.100.2"),
                ("x-forwarded-port", "1"),
                ("x-request-id", "client-chosen-id"),
                ("connection", "x-private"),
                ("x-private", "secret"),
                ("proxy-connection", "keep-alive"),
                ("x-kept", "1"),
            ],
        )
        .await
        .unwrap();
        let h = &r.json()["headers"];
        // Every line the client sent, in order, then the client; the proxy's own fields
        // replace the client's rather than adding to them.
        assert_eq!(
            h["x-forwarded-for"],
            "203.0.113.9, 198.51.100.1, 198.51.100.2, 127.0.0.1"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_ne!(h["x-forwarded-port"], "1");
        assert!(
            h["x-forwarded-port"]
                .as_str()
                .unwrap()
                .parse::<u16>()
                .is_ok(),
            "{h}"
        );
        assert_eq!(h["x-request-id"], "client-chosen-id");
        assert_eq!(r.headers["x-request-id"], "client-chosen-id");
        assert_eq!(h["x-forwarded-host"], "shop.test");
        assert_eq!(h["host"], "shop.test");
        assert_eq!(h["x-kept"], "1");
        assert!(
            h.get("x-private").is_none(),
            "a header named in Connection leaked: {h}"
        );
        assert!(h.get("proxy-connection").is_none(), "{h}");
    }
}

bounded_test! {
    current_thread;
    async fn too_many_headers_are_refused() {
        let (_a, _w, _sy, base) = setup().await;
        let names: Vec<String> = (0..30).map(|i| format!("x-h{i}")).collect();
        let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let r = get(&client(), &format!("{base}/"), &headers).await;
        // hyper answers 431 and closes the connection.
        match r {
            Ok(r) => assert_eq!(r.status, 431),
            Err(e) => panic!("expected 431, got {e}"),
        }
        let r = get(&client(), &format!("{base}/"), &headers[..10])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
}
