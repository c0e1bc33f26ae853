//! The access log: one JSON line per request, to stdout or a file. The request path hands a
//! finished entry to a bounded channel with `try_send` and never waits: when the writer falls
//! behind, lines are counted as dropped (see /metrics) instead of slowing requests.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLogConfig {
    /// `None`: standard output.
    pub path: Option<PathBuf>,
    /// Lines that may wait for the writer before new ones are dropped.
    pub buffer: usize,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub time: String,
    pub request_id: String,
    pub client: String,
    pub listener: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub route: Option<String>,
    pub service: Option<String>,
    pub group: Option<String>,
    pub target: Option<String>,
    pub status: u16,
    /// Until the target's response headers.
    pub upstream_ms: Option<f64>,
    /// Until the last byte of the response body.
    pub total_ms: f64,
    pub bytes: u64,
    /// Set when the request failed through the client's fault (`stalled`, `aborted`,
    /// `too_large`); such requests are not counted against the version.
    pub client_error: Option<&'static str>,
    /// Set when the target's answer broke off after its head went out (`upstream_reset`,
    /// `upstream_protocol_error`): `status` is then 502, though the client got the
    /// target's status before its connection or stream was reset.
    pub upstream_error: Option<&'static str>,
}

#[derive(Debug, Clone)]
pub struct AccessLog {
    pub config: Arc<AccessLogConfig>,
    tx: mpsc::Sender<Entry>,
    pub dropped: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
    /// The latest idempotent requests each service answered, as logged: what synthetic
    /// traffic replays (`[service.synthetic] replay`).
    pub recent: Arc<Recent>,
}

/// Per service, the method and path of the last [`Recent::KEEP`] logged GET and HEAD
/// requests that were answered without a 5xx and without a client's failure. Kept by the
/// writer thread, off the request path.
#[derive(Debug, Default)]
pub struct Recent(
    std::sync::Mutex<
        std::collections::HashMap<String, std::collections::VecDeque<(String, String)>>,
    >,
);

impl Recent {
    pub const KEEP: usize = 64;

    fn note(&self, e: &Entry) {
        let Some(service) = &e.service else { return };
        if !matches!(e.method.as_str(), "GET" | "HEAD")
            || e.status >= 500
            || e.status == 0
            || e.client_error.is_some()
        {
            return;
        }
        let mut all = self.0.lock().expect("recent lock");
        // The service's name is copied once, when it is first seen.
        if !all.contains_key(service) {
            all.insert(service.clone(), Default::default());
        }
        let q = all.get_mut(service).expect("inserted above");
        if q.len() == Self::KEEP {
            q.pop_front();
        }
        q.push_back((e.method.clone(), e.path.clone()));
    }

    /// How many recent requests the service has.
    pub fn len(&self, service: &str) -> usize {
        let all = self.0.lock().expect("recent lock");
        all.get(service).map_or(0, std::collections::VecDeque::len)
    }

    /// The service's `i`-th recent request, oldest first.
    pub fn get(&self, service: &str, i: usize) -> Option<(String, String)> {
        let all = self.0.lock().expect("recent lock");
        all.get(service).and_then(|q| q.get(i)).cloned()
    }
}

impl AccessLog {
    /// Starts the writer task. Fails only if the file cannot be opened.
    pub fn start(config: AccessLogConfig) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = match &config.path {
            None => Box::new(std::io::stdout()),
            Some(p) => Box::new(open_log(p)?),
        };
        let (tx, mut rx) = mpsc::channel::<Entry>(config.buffer.max(1));
        let written = Arc::new(AtomicU64::new(0));
        let w = written.clone();
        let recent = Arc::new(Recent::default());
        let r = recent.clone();
        // Writes happen on a blocking thread; a line is formatted there, not on the request path.
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(64 * 1024);
            while let Some(first) = rx.blocking_recv() {
                let mut n = 0;
                let mut next = Some(first);
                while let Some(e) = next {
                    r.note(&e);
                    let _ = serde_json::to_writer(&mut buf, &e);
                    buf.push(b'\n');
                    n += 1;
                    next = if buf.len() < 60 * 1024 {
                        rx.try_recv().ok()
                    } else {
                        None
                    };
                }
                if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
                    // Nowhere to write; keep draining so the request path never blocks.
                }
                buf.clear();
                w.fetch_add(n, Relaxed);
            }
        });
        Ok(AccessLog {
            config: Arc::new(config),
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            written,
            recent,
        })
    }

    pub fn log(&self, e: Entry) {
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Opens the log file for appending without ever blocking: this runs on the runtime, under
/// the control locks when a configuration is applied, and opening a FIFO for writing waits
/// for a reader (which froze the whole process). `O_NONBLOCK` makes that open fail or
/// return at once; then only a regular file or a character device (`/dev/null`, a
/// terminal) is kept, in blocking mode for the writer thread.
fn open_log(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let not_a_file = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO or socket would block the writer)",
        )
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // A FIFO with no reader.
            Some(libc::ENXIO) => not_a_file(),
            _ => e,
        })?;
    let kind = file.metadata()?.file_type();
    if !(kind.is_file() || kind.is_char_device()) {
        return Err(not_a_file());
    }
    crate::sys::clear_nonblocking(&file)?;
    Ok(file)
}

/// RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A request id: the client's `x-request-id` if it sent a sane one, else 16 random hex digits.
pub fn request_id(given: Option<&http::HeaderValue>) -> http::HeaderValue {
    match given {
        Some(v) if !v.is_empty() && v.len() <= 128 => v.clone(),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let n = fastrand::u64(..);
            let id: [u8; 16] = std::array::from_fn(|i| HEX[(n >> (60 - 4 * i)) as usize & 15]);
            http::HeaderValue::from_bytes(&id).expect("hex is a header value")
        }
    }
}
