//! The access log: JSON lines with the request's route, group, target and timings; request ids
//! passed upstream; a writer that falls behind drops lines (counted) rather than slow requests.

mod common;

use std::time::Duration;

use common::*;

fn logged(path: &std::path::Path, backend: std::net::SocketAddr, buffer: usize) -> String {
    config(&[("blue", &[backend])], "").replacen(
        "[[listener]]",
        &format!(
            "[access_log]\npath = \"{}\"\nbuffer = {buffer}\n\n[[listener]]",
            path.display()
        ),
        1,
    )
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}")))
        .collect()
}

bounded_test! {
    async fn requests_are_logged_as_json_lines_with_their_request_id() {
        let b = TestBackend::start("blue").await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let sy = start(&logged(&log, b.addr, 1024)).await;
        let base = format!("http://{}", sy.listener_addr("web").await);
        let c = client();

        let r = get(
            &c,
            &format!("{base}/echo"),
            &[("x-request-id", "req-42"), ("host", "shop.test")],
        )
        .await
        .unwrap();
        assert_eq!(r.headers["x-request-id"], "req-42");
        assert_eq!(
            r.json()["headers"]["x-request-id"],
            "req-42",
            "passed upstream"
        );
        let r = get(&c, &format!("{base}/"), &[]).await.unwrap();
        let generated = r.headers["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(generated.len(), 16, "a generated id: {generated}");

        eventually(Duration::from_secs(5), "two lines written", || async {
            lines(&log).len() >= 2
        })
        .await;
        let l = lines(&log);
        let first = &l[0];
        assert_eq!(first["request_id"], "req-42");
        assert_eq!(first["method"], "GET");
        assert_eq!(first["host"], "shop.test");
        assert_eq!(first["path"], "/echo");
        assert_eq!(first["route"], "all");
        assert_eq!(first["service"], "shop");
        assert_eq!(first["group"], "blue");
        assert_eq!(first["target"], b.addr.to_string());
        assert_eq!(first["status"], 200);
        assert!(
            first["bytes"].as_u64().unwrap() > 50,
            "the echo body's size: {first}"
        );
        assert!(first["upstream_ms"].as_f64().unwrap() <= first["total_ms"].as_f64().unwrap());
        assert!(first["time"].as_str().unwrap().ends_with('Z'));
        assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert_eq!(l[1]["request_id"], generated.as_str());

        // Switchyard's own answers are logged too: with the target gone, the 502 it makes.
        b.down().await;
        let r = get(&c, &format!("{base}/gone"), &[("x-request-id", "own-1")])
            .await
            .unwrap();
        assert_eq!(r.status, 502);
        assert_eq!(r.headers["x-switchyard-error"], "upstream_connect_failed");
        eventually(Duration::from_secs(5), "the 502's line", || async {
            lines(&log).len() >= 3
        })
        .await;
        let own = &lines(&log)[2];
        assert_eq!(own["request_id"], "own-1", "{own}");
        assert_eq!(own["status"], 502, "{own}");
        assert_eq!(own["path"], "/gone", "{own}");
        assert_eq!(own["route"], "all", "{own}");
        assert_eq!(own["group"], "blue", "{own}");
    }
}

/// A pseudo-terminal whose other end nobody reads: a character device that switchyard
/// accepts as its log, on which the writer thread blocks once the terminal's buffer fills.
/// Reading it (`drain`) lets the writer go on.
struct StalledTerminal {
    master: std::fs::File,
    path: std::path::PathBuf,
}

impl StalledTerminal {
    // The one `unsafe` outside `src/sys.rs`: std has no pseudo-terminal, and this test needs
    // a log that blocks its writer.
    #[allow(unsafe_code)]
    fn open() -> StalledTerminal {
        use std::os::fd::FromRawFd;
        // SAFETY: plain libc calls on a descriptor we own; ptsname's buffer is copied at once.
        unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(fd >= 0, "posix_openpt");
            assert_eq!(libc::grantpt(fd), 0);
            assert_eq!(libc::unlockpt(fd), 0);
            let name = std::ffi::CStr::from_ptr(libc::ptsname(fd));
            StalledTerminal {
                path: name.to_str().unwrap().into(),
                master: std::fs::File::from_raw_fd(fd),
            }
        }
    }

    /// Reads what the writer wrote, in the background, until the file closes.
    fn drain(self) {
        use std::io::Read;
        let mut master = self.master;
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while matches!(master.read(&mut buf), Ok(n) if n > 0) {}
        });
    }
}

fn counted(text: &str, outcome: &str) -> u64 {
    metric(
        text,
        "switchyard_access_log_lines_total",
        &[&format!("outcome=\"{outcome}\"")],
    )
    .unwrap_or(0.0) as u64
}

bounded_test! {
    async fn a_full_buffer_drops_lines_and_counts_them_instead_of_waiting() {
        let b = TestBackend::start("blue").await;
        let tty = StalledTerminal::open();
        let sy = start(&logged(&tty.path, b.addr, 1)).await;
        let url = web_url(&sy).await;
        const N: u64 = 2000;
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let c = client();
                for _ in 0..N / 20 {
                    assert_eq!(get(&c, &url, &[]).await.unwrap().status, 200);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Every request has its answer while the writer is still stuck on the terminal: the
        // lines it holds are neither written nor dropped, so the requests did not wait for it.
        let text = metrics_text(&sy).await;
        let (written, dropped) = (counted(&text, "written"), counted(&text, "dropped"));
        eprintln!("with the writer blocked: {written} written, {dropped} dropped of {N}");
        assert!(dropped > 0, "nothing dropped: {written} written");
        assert!(
            written + dropped < N,
            "the writer was never blocked ({written} written, {dropped} dropped)"
        );

        // Once the terminal is read, the held lines go out: every line is accounted for.
        tty.drain();
        eventually(
            Duration::from_secs(10),
            "written + dropped == N",
            || async {
                let text = metrics_text(&sy).await;
                counted(&text, "written") + counted(&text, "dropped") == N
            },
        )
        .await;
    }
}
