//! Prometheus checks against a real Prometheus server (Debian's package) that scrapes
//! switchyard's own /metrics.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus_binary() -> String {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| p.to_string())
        .expect("prometheus is not installed: ./scripts/test installs Debian's package")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_checks_judge_switchyards_own_metrics() {
    bounded(TEST_LIMIT, async {
        let (blue, green) = TestBackend::pair().await;
        green.set_errors(200);
        let prom_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let url = format!("http://{prom_addr}");
        let analysis = format!(
            r#"
[[analysis]]
name = "prom"
interval = "500ms"
count = 1
[[analysis.check]]
name = "green-5xx"
prometheus = {{ url = "{url}", query = 'sum(switchyard_responses_total{{service="shop",group="green",class="5xx"}})' }}
max = 0
[[analysis.check]]
name = "blue-5xx"
prometheus = {{ url = "{url}", query = 'sum(switchyard_responses_total{{service="shop",group="blue",class="5xx"}})' }}
max = 0
[[analysis.check]]
name = "empty"
prometheus = {{ url = "{url}", query = 'sum(no_such_metric_anywhere)' }}
max = 1
[[analysis.check]]
name = "broken"
prometheus = {{ url = "{url}", query = 'sum(' }}
max = 1
"#
        );
        let toml = config(
            &[("blue", &[blue.addr]), ("green", &[green.addr])],
            "weights = { blue = 50, green = 50 }",
        )
        .replacen("[[service]]", &format!("{analysis}\n[[service]]"), 1);
        let sy = start(&toml).await;

        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: ['{}']\n",
                sy.admin_addr
            ),
        )
        .unwrap();
        let _prom = Prometheus(
            Command::new(prometheus_binary())
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={prom_addr}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );

        let c = client();
        let web = format!("http://{}/", sy.listener_addr("web").await);
        for _ in 0..200 {
            get(&c, &web, &[]).await.unwrap();
        }
        let api = admin(&sy);
        let run = || async {
            api.post(
                "/api/v1/services/shop/analysis/run",
                json!({ "analysis": "prom", "candidate": "green" }),
            )
            .await
            .unwrap()
        };
        // Until Prometheus has started and scraped the traffic.
        let deadline = Instant::now() + Duration::from_secs(30);
        let res = loop {
            let res = run().await;
            if res["results"][0]["measurement"]["outcome"] == "fail" {
                break res;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never reported green's 5xx: {res:#}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let m = |i: usize| res["results"][i]["measurement"].clone();
        assert!(
            m(0)["detail"].as_str().unwrap().contains("> max 0"),
            "{}",
            m(0)
        );
        assert!(m(0)["value"].as_f64().unwrap() > 0.0);
        assert_eq!(m(1)["outcome"], "pass", "{}", m(1));
        assert_eq!(m(2)["outcome"], "error", "{}", m(2));
        assert!(
            m(2)["detail"].as_str().unwrap().contains("no series"),
            "{}",
            m(2)
        );
        assert_eq!(m(3)["outcome"], "error", "{}", m(3));
        assert!(
            m(3)["detail"].as_str().unwrap().contains("parse error"),
            "{}",
            m(3)
        );
    })
    .await;
}
