//! Prometheus checks against a real Prometheus server (Debian's package) that scrapes
//! switchyard's own /metrics.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::release::dry_run;
use common::*;

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
        .map(std::string::ToString::to_string)
        .expect("prometheus is not installed: ./scripts/test installs Debian's package")
}

bounded_test! {
    async fn prometheus_checks_judge_switchyards_own_metrics() {
        let (blue, green) = TestBackend::pair().await;
        green.set_errors(200);
        let prom_addr = common::bin::free_port();
        let url = format!("http://{prom_addr}");
        let errors_of = |group: &str| {
            format!(r#"sum(switchyard_responses_total{{service="shop",group="{group}",class="5xx"}})"#)
        };
        let checks = [
            ("green-5xx", errors_of("green"), 0),
            ("blue-5xx", errors_of("blue"), 0),
            ("empty", "sum(no_such_metric_anywhere)".to_string(), 1),
            ("broken", "sum(".to_string(), 1),
        ];
        let mut analysis =
            String::from("[[analysis]]\nname = \"prom\"\ninterval = \"500ms\"\ncount = 1\n");
        for (name, query, max) in &checks {
            analysis.push_str(&format!(
                "[[analysis.check]]\nname = \"{name}\"\nprometheus = {{ url = \"{url}\", query = '{query}' }}\nmax = {max}\n"
            ));
        }
        let toml = Cfg::new()
            .service("weights = { blue = 50, green = 50 }")
            .group("blue", &[blue.addr])
            .group("green", &[green.addr])
            .top(&analysis)
            .build();
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
        let web = web_url(&sy).await;
        for _ in 0..200 {
            get(&c, &web, &[]).await.unwrap();
        }
        let api = admin(&sy);
        let run = || async {
            dry_run(&api, "prom").await
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
    }
}
