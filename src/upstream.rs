//! Pooled, kept-alive connections to targets: one client (and so one pool) per group, reused
//! across snapshots so a reload or a switch does not drop warm connections.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamProtocol;

/// A request body going upstream: the client's stream, or nothing (which makes the request
/// safe to send again on another target).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

#[derive(Debug, Clone)]
pub struct Upstream {
    pub client: Client<HttpConnector, UpstreamBody>,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
}

impl Upstream {
    pub fn new(protocol: UpstreamProtocol, connect_timeout: Duration) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_only(protocol == UpstreamProtocol::Http2)
            .http2_keep_alive_interval(Some(Duration::from_secs(30)))
            .build(connector);
        Upstream {
            client,
            protocol,
            connect_timeout,
        }
    }
}
