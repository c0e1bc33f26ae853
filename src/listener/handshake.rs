//! TLS handshakes that fail, per listener: counted by reason for `/metrics`
//! (`switchyard_tls_handshake_failures_total`) and logged at most once per [`LOG_EVERY_MS`]
//! with the count since the last line. Any client can fail a handshake — a scanner, a TCP
//! health check, a client that sends an IP address as its SNI (wrk does), an old client
//! with no cipher in common — so a line per failure would let anyone fill the log. (rustls's
//! own log lines, such as its warning for an IP-address SNI, are off: its `logging` feature
//! is not built.)

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::metrics::now_ms;

/// Why handshakes fail, as `/metrics` names them.
const REASONS: [&str; 7] = [
    // The client sent nothing complete within `timeouts.header_read`.
    "timeout",
    // The client closed or reset the connection mid-handshake.
    "closed",
    // Not TLS, or TLS broken: bad records, unexpected messages, a failed decryption.
    "protocol",
    // Nothing in common: versions, cipher suites, key exchange groups, a required extension.
    "incompatible",
    // The client's certificate was missing or not valid (client authentication).
    "certificate",
    // The client ended it with an alert.
    "alert",
    "other",
];

const TIMEOUT: usize = 0;
const CLOSED: usize = 1;
const PROTOCOL: usize = 2;
const INCOMPATIBLE: usize = 3;
const CERTIFICATE: usize = 4;
const ALERT: usize = 5;
const OTHER: usize = 6;

/// At most one log line about failed handshakes per listener this often.
const LOG_EVERY_MS: u64 = 10_000;

#[derive(Debug, Default)]
pub struct Handshakes {
    failed: [AtomicU64; REASONS.len()],
    /// Failures reported in a log line so far, and when the last line was written
    /// (`now_ms`, plus one so that 0 means never).
    logged: AtomicU64,
    last_line: AtomicU64,
}

impl Handshakes {
    /// A handshake on `listener` timed out.
    pub fn timed_out(&self, listener: &str) {
        self.failed(
            listener,
            TIMEOUT,
            "no complete handshake within timeouts.header_read",
        );
    }

    /// A handshake on `listener` failed with `e`.
    pub fn failed_with(&self, listener: &str, e: &io::Error) {
        self.failed(listener, reason(e), e);
    }

    fn failed(&self, listener: &str, reason: usize, error: impl std::fmt::Display) {
        self.failed[reason].fetch_add(1, Relaxed);
        let now = now_ms() + 1;
        let last = self.last_line.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < LOG_EVERY_MS {
            return;
        }
        // One caller among those racing here writes the line.
        if self
            .last_line
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        let total = self.total();
        let since = total - self.logged.swap(total, Relaxed);
        tracing::info!(
            listener,
            failed = since,
            last_reason = REASONS[reason],
            last_error = %error,
            "TLS handshakes failed (at most one line per 10 s; switchyard_tls_handshake_failures_total counts each)"
        );
    }

    fn total(&self) -> u64 {
        self.failed.iter().map(|n| n.load(Relaxed)).sum()
    }

    /// Failures so far by reason.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        REASONS
            .iter()
            .zip(&self.failed)
            .map(|(r, n)| (*r, n.load(Relaxed)))
    }
}

/// The reason of a failed handshake: rustls's error when there is one (tokio-rustls carries
/// it inside the I/O error), else what the socket said.
fn reason(e: &io::Error) -> usize {
    use rustls::Error as T;
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<T>()) {
        return match tls {
            T::PeerIncompatible(_) => INCOMPATIBLE,
            T::InvalidCertificate(_) | T::NoCertificatesPresented => CERTIFICATE,
            T::AlertReceived(_) => ALERT,
            T::InappropriateMessage { .. }
            | T::InappropriateHandshakeMessage { .. }
            | T::InvalidMessage(_)
            | T::PeerMisbehaved(_)
            | T::DecryptError => PROTOCOL,
            _ => OTHER,
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => CLOSED,
        io::ErrorKind::InvalidData => PROTOCOL,
        _ => OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_reason() {
        let h = Handshakes::default();
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        h.failed_with(
            "web",
            &tls(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::NoCipherSuitesInCommon,
            )),
        );
        h.failed_with("web", &tls(rustls::Error::NoCertificatesPresented));
        h.failed_with("web", &io::ErrorKind::UnexpectedEof.into());
        h.failed_with("web", &tls(rustls::Error::DecryptError));
        h.timed_out("web");
        let counts: Vec<_> = h.counts().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            counts,
            [
                ("timeout", 1),
                ("closed", 1),
                ("protocol", 1),
                ("incompatible", 1),
                ("certificate", 1)
            ]
        );
        assert_eq!(h.logged.load(Relaxed), 1, "one line, for the first failure");
    }
}
