//! Validated configuration. Every value here has been checked once, so the data plane never
//! re-parses or re-validates: an address is a `SocketAddr`, a weight is basis points that sum
//! to 10 000, a route's service is known to exist.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{Method, StatusCode};
use ipnet::IpNet;
use serde::Serialize;

use super::ser;
use crate::group::{Balance, TargetAddr};
use crate::split::Split;
use crate::upstream::UpstreamProtocol;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub admin: super::admin::AdminConfig,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub services: Vec<ServiceConfig>,
    pub store: StoreConfig,
    pub instance: InstanceConfig,
    pub analyses: Vec<crate::analysis::AnalysisConfig>,
    /// Slack-compatible webhook told about rollbacks.
    #[serde(rename = "notifications.webhook")]
    pub notify_webhook: Option<String>,
    pub access_log: Option<crate::access_log::AccessLogConfig>,
    /// How often the listeners' TLS files are looked at for changes (`[certificates] watch`).
    pub certificate_watch: Option<std::time::Duration>,
    /// A certificate expiring within this is reported (`[certificates] warn_before`).
    pub certificate_warn_before: std::time::Duration,
    /// The text this configuration was parsed from: what a fleet shares (see `localize`).
    #[serde(skip)]
    pub source: Option<std::sync::Arc<str>>,
}

/// Where the state lives: one SQLite file for one instance, or etcd for a fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreConfig {
    /// SQLite file; `:memory:` keeps state only for the life of the process.
    Sqlite {
        path: PathBuf,
    },
    Etcd(EtcdConfig),
}

impl StoreConfig {
    /// An in-memory SQLite store (tests, the demo).
    pub fn memory() -> StoreConfig {
        StoreConfig::Sqlite {
            path: ":memory:".into(),
        }
    }
}

/// A fleet's shared state in etcd, under one prefix.
#[derive(Clone, PartialEq, Serialize)]
pub struct EtcdConfig {
    /// `http://host:port` each.
    pub endpoints: Vec<String>,
    /// Starts with `/`, no trailing `/`: one fleet per prefix.
    pub prefix: String,
    pub username: Option<String>,
    /// Serialized for `plan`, which only says that it changed (see `diff::SECRET`).
    pub password: Option<String>,
    /// The leader's lease: a leader that stops renewing it is replaced after this long.
    pub lease_ttl: Duration,
}

impl std::fmt::Debug for EtcdConfig {
    /// Never the password: configurations end up in logs and test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("username", &self.username)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

/// This instance among a fleet's.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InstanceConfig {
    /// Default: the host name and the admin port (`host:9901`).
    pub name: Option<String>,
    /// How peers reach this instance's admin API; default: the admin address it bound.
    pub advertise: Option<String>,
    /// Listener addresses of this instance only, by listener name, in place of the shared
    /// configuration's (several instances on one host, or hosts with different addresses).
    pub listen: BTreeMap<String, SocketAddr>,
}

impl Config {
    /// A fleet's shared configuration as this instance runs it: what is the instance's own —
    /// where its state lives, its name and address, its admin listener, its listener
    /// overrides — comes from `local` (the file it was started with), the rest from `shared`.
    pub fn localize(mut shared: Config, local: &Config) -> Config {
        shared.store = local.store.clone();
        shared.instance = local.instance.clone();
        shared.admin.bind = local.admin.bind;
        for l in &mut shared.listeners {
            if let Some(addr) = local.instance.listen.get(&l.name) {
                l.bind = *addr;
            }
        }
        shared
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn analysis(&self, name: &str) -> Option<&crate::analysis::AnalysisConfig> {
        self.analyses.iter().find(|a| a.name == name)
    }

    pub fn analysis_names(&self) -> Vec<String> {
        self.analyses.iter().map(|a| a.name.clone()).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timeouts {
    pub connect: Duration,
    /// How long a target may keep a request waiting: for its response headers, and to take
    /// the bytes of a request body (not the time a client takes to send its body).
    pub request: Duration,
    /// From a request's first byte to the end of its headers (the gap between requests on
    /// a kept-alive connection is `idle`'s).
    pub header_read: Duration,
    /// How long a client may pause while sending its request body: 408 after that.
    pub client_body: Duration,
    /// A client connection with no bytes in either direction for this long is closed.
    pub idle: Duration,
    /// Bound on finishing in-flight requests at shutdown.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(30),
            header_read: Duration::from_secs(10),
            client_body: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            shutdown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Request bodies larger than this are refused with 413 (`None`: no limit).
    pub max_body_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    /// Empty for plain HTTP. The first certificate answers clients whose SNI matches none.
    pub certificates: Vec<CertificateConfig>,
    /// What a TLS handshake may agree on (`tls = { … }`); safe defaults when absent.
    pub tls: crate::tls::Policy,
    /// Client certificates (mTLS): whom the listener accepts, what it tells targets.
    pub client_auth: Option<crate::tls::client_auth::ClientAuth>,
}

impl ListenerConfig {
    pub fn is_tls(&self) -> bool {
        !self.certificates.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The OCSP response stapled (its bytes are in `loaded`).
    pub ocsp: Option<PathBuf>,
    /// The chain and key as read when the configuration was loaded (off the async runtime),
    /// so that building a snapshot never reads a file.
    #[serde(rename = "chain", serialize_with = "ser::certificate")]
    pub loaded: crate::tls::LoadedKey,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteConfig {
    pub name: String,
    pub priority: i64,
    /// `None` means every listener.
    pub listeners: Option<Vec<String>>,
    pub conditions: Conditions,
    pub action: Action,
    /// Tried in order before the weighted split of a forward action.
    pub overrides: Vec<Override>,
    /// Rewrites of what is forwarded and edits of every answer (see `transform`).
    pub transform: Option<crate::transform::Transform>,
}

/// A rule that sends matching requests of a route to one group, whatever the split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Override {
    pub to: GroupRef,
    pub when: OverrideWhen,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum GroupRef {
    Named(String),
    /// The candidate of the rollout in progress (no rollout: the override does not apply).
    Candidate,
    Stable,
}

impl GroupRef {
    pub fn parse(s: &str) -> GroupRef {
        match s {
            "candidate" => GroupRef::Candidate,
            "stable" => GroupRef::Stable,
            g => GroupRef::Named(g.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum OverrideWhen {
    Header(
        #[serde(serialize_with = "ser::display")] http::HeaderName,
        Vec<Glob>,
    ),
    Cookie(String, Vec<Glob>),
    Source(#[serde(serialize_with = "ser::display_seq")] Vec<IpNet>),
    /// A country code header set by a CDN, e.g. `cloudfront-viewer-country`.
    Country(
        #[serde(serialize_with = "ser::display")] http::HeaderName,
        Vec<String>,
    ),
    /// The header's value is the group (`x-switchyard-group: green`).
    GroupFromHeader(#[serde(serialize_with = "ser::display")] http::HeaderName),
}

/// All present conditions must hold; the values inside one condition are alternatives.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Conditions {
    pub hosts: Vec<HostPattern>,
    pub paths: Vec<PathPattern>,
    #[serde(serialize_with = "ser::display_seq")]
    pub methods: Vec<Method>,
    #[serde(serialize_with = "ser::pairs")]
    pub headers: Vec<(http::HeaderName, Vec<Glob>)>,
    #[serde(serialize_with = "ser::pairs")]
    pub query: Vec<(String, Vec<Glob>)>,
    #[serde(serialize_with = "ser::display_seq")]
    pub sources: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches any name ending in it.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum PathPattern {
    Exact(String),
    Prefix(String),
    Glob(Glob),
}

/// ALB-style wildcard: `*` any run of characters, `?` exactly one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Glob(pub String);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Action {
    Forward { service: String },
    Fixed(FixedResponse),
    Redirect(Redirect),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FixedResponse {
    #[serde(serialize_with = "ser::status")]
    pub status: StatusCode,
    pub content_type: String,
    pub body: String,
}

/// Each `None` keeps that part of the original request URL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Redirect {
    #[serde(serialize_with = "ser::status")]
    pub status: StatusCode,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub query: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceConfig {
    pub name: String,
    pub groups: Vec<GroupConfig>,
    /// How traffic is split between the groups when the service is loaded.
    #[serde(serialize_with = "ser::display")]
    pub split: Split,
    pub balance: Balance,
    pub request_timeout: Option<Duration>,
    pub deregistration_delay: Duration,
    /// How long a group's open tunnels (WebSocket, Upgrade) keep running after a switch or
    /// rollback takes all its traffic away, before they are cut.
    pub drain_timeout: Duration,
    pub passive: PassiveHealth,
    /// The strategy a rollout of this service uses unless its start request names another.
    pub strategy: crate::rollout::Strategy,
    pub stickiness: Option<Stickiness>,
    pub guard: crate::analysis::Guard,
    pub hooks: super::hooks::Hooks,
    /// A hook or analysis step that runs longer than this aborts the rollout.
    pub progress_deadline: Duration,
    /// Within this long after a rollout completed, `undo` moves all traffic straight back
    /// to the group that was stable before it. Later, the old version is no longer known to
    /// work with what changed since (data, dependencies, traffic): `undo` starts a rollout
    /// back to it through the strategy's steps and analyses instead (Argo Rollouts'
    /// `rollbackWindow`), unless asked for `immediate`.
    pub rollback_window: Duration,
    /// A target that joins the group or comes back (healthy again, or back from a passive
    /// ejection) gets a share that grows linearly over this long (zero: at once), under
    /// either balancing rule — ALB's slow start.
    pub slow_start: Duration,
    /// Synthetic requests to the candidate's targets during analysis steps.
    pub synthetic: Option<Synthetic>,
    /// Copies of requests to a group, compared with the real answers (`[service.mirror]`);
    /// `None`: the defaults, for a rollout's mirror steps.
    pub mirror: Option<Mirror>,
}

/// Mirror and compare (`[service.mirror]`): a share of the service's requests is copied to a
/// group — `group` always, or a rollout's candidate from its mirror steps on — and each
/// copy's answer, dropped, is compared with the real one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mirror {
    /// Always mirror `share` to this group (outside a rollout's mirror steps).
    pub group: Option<String>,
    /// Basis points of requests copied to `group`.
    pub share: u32,
    /// Methods copied (upper case): by default the safe ones, which a second service
    /// answering them cannot turn into a second write.
    pub methods: Vec<String>,
    /// A request with a longer body is not copied.
    pub max_body_bytes: u64,
    /// Copies waiting to be sent at most; more are dropped and counted.
    pub queue: usize,
    /// Copies in flight at most.
    pub concurrency: usize,
    pub compare: MirrorCompare,
}

/// What makes a copy's answer differ from the real one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MirrorCompare {
    pub status: bool,
    /// Fields whose values must be the same (lower case).
    pub headers: Vec<String>,
    pub body: BodyCompare,
    /// JSON fields left out: a name matches that key at any depth, `a.b` a path from the
    /// top (array elements are passed through).
    pub ignore: Vec<String>,
    /// The most of each answer's body kept to compare as JSON; a longer one is compared by
    /// its hash.
    pub max_body_bytes: usize,
    /// A copy slower than the real answer by more than this fraction (and by more than
    /// `LATENCY_SLACK` in `crate::mirror::compare`) differs in latency.
    pub allowed_latency_increase: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodyCompare {
    /// The bytes, by hash.
    Hash,
    /// Parsed JSON values, `ignore`d fields left out (order of keys and spacing do not
    /// matter).
    Json,
    /// Only the JSON structure: the same keys and value types.
    JsonShape,
    None,
}

impl Default for Mirror {
    fn default() -> Mirror {
        Mirror {
            group: None,
            share: 0,
            methods: ["GET", "HEAD", "OPTIONS"].map(String::from).to_vec(),
            max_body_bytes: 64 * 1024,
            queue: 256,
            concurrency: 32,
            compare: MirrorCompare {
                status: true,
                headers: Vec::new(),
                body: BodyCompare::Hash,
                ignore: Vec::new(),
                max_body_bytes: 1024 * 1024,
                allowed_latency_increase: None,
            },
        }
    }
}

/// A built-in load generator for quiet services (`[service.synthetic]`): while an analysis
/// step runs, requests at `rate` per second go to the candidate's targets, and no others.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Synthetic {
    pub rate: f64,
    pub requests: Vec<SyntheticRequest>,
    /// Recent idempotent requests from the access log, sent as well.
    pub replay: bool,
    /// Counted with the candidate's traffic (analyses judge them) rather than apart.
    pub together: bool,
}

/// One synthetic request, checked: an idempotent method, a path (with any query) and
/// headers that are valid as written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyntheticRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// How a request keeps its version while weights change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stickiness {
    pub key: Option<StickyKey>,
    /// switchyard's own cookie, set on responses to requests that have no key.
    pub cookie: Option<StickyCookie>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum StickyKey {
    Cookie(String),
    Header(#[serde(serialize_with = "ser::display")] http::HeaderName),
    ClientIp,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StickyCookie {
    pub name: String,
    pub max_age: Duration,
}

impl ServiceConfig {
    pub fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| g.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupConfig {
    pub name: String,
    pub targets: Vec<TargetAddr>,
    pub protocol: UpstreamProtocol,
    pub health_check: Option<HealthCheck>,
    pub tls: Option<TargetTls>,
}

/// TLS to a group's targets, as configured and built (`tls::client`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetTls {
    pub sni: Option<String>,
    /// The CA bundle; none: the system's roots (or nothing, unverified).
    pub ca: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    /// The client certificate presented to targets that ask for one.
    pub cert: Option<PathBuf>,
    /// Built once with the configuration; shown (and compared) by a digest of what it was
    /// built from, so that a changed CA or client certificate is a changed group.
    #[serde(rename = "fingerprint")]
    pub client: crate::tls::client::ClientTls,
}

impl TargetTls {
    /// In words, for `status`: "TLS, trusting ca.pem, SNI api.internal, client certificate
    /// me.pem".
    pub fn describe(&self) -> String {
        let mut s = match (&self.ca, self.insecure_skip_verify) {
            (_, true) => "TLS, certificates NOT verified (insecure_skip_verify)".to_string(),
            (Some(ca), _) => format!("TLS, trusting {}", ca.display()),
            (None, _) => "TLS, trusting the system's roots".to_string(),
        };
        if let Some(sni) = &self.sni {
            s.push_str(&format!(", SNI {sni}"));
        }
        if let Some(c) = &self.cert {
            s.push_str(&format!(", client certificate {}", c.display()));
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub success_codes: StatusRanges,
}

/// ALB's matcher syntax: `200`, `200,202`, `200-299`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct StatusRanges(pub Vec<(u16, u16)>);

impl StatusRanges {
    /// Parses the matcher syntax; the message names the value and shows the forms.
    pub fn parse(s: &str) -> Result<StatusRanges, String> {
        let bad = || {
            format!("\"{s}\" is not a status matcher such as \"200\", \"200,204\" or \"200-299\"")
        };
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let lo: u16 = lo.parse().map_err(|_| bad())?;
            let hi: u16 = hi.parse().map_err(|_| bad())?;
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return Err(bad());
            }
            out.push((lo, hi));
        }
        Ok(StatusRanges(out))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PassiveHealth {
    /// 0 disables passive ejection.
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    pub eject_on_5xx: bool,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            consecutive_failures: 5,
            ejection_time: Duration::from_secs(30),
            eject_on_5xx: false,
        }
    }
}
