//! The file's shape, exactly as written. Every table rejects unknown keys so a typo is an
//! error at its line, not a silently ignored setting. Nothing here is trusted by the proxy:
//! `validate` turns it into the domain types in `model`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    #[serde(default)]
    pub service: Vec<RawService>,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub instance: RawInstance,
    #[serde(default)]
    pub analysis: Vec<RawAnalysis>,
    #[serde(default)]
    pub notifications: RawNotifications,
    pub access_log: Option<RawAccessLog>,
    #[serde(default)]
    pub certificates: RawCertificates,
}

/// `[certificates]`: how switchyard notices renewed certificate files by itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificates {
    /// Look at the listeners' certificate, key, OCSP and client CA files this often and
    /// read them again when one changed; off by default.
    pub watch: Option<String>,
    /// Report a certificate that expires within this (`status`); default 30 days.
    pub warn_before: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub enabled: Option<bool>,
    /// A file, or "-" for standard output (the default).
    pub path: Option<String>,
    pub buffer: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// "sqlite" (the default) or "etcd".
    pub kind: Option<String>,
    /// SQLite only.
    pub path: Option<String>,
    /// etcd only, as all the rest.
    pub endpoints: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub lease_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInstance {
    pub name: Option<String>,
    pub advertise: Option<String>,
    #[serde(default)]
    pub listen: BTreeMap<String, String>,
}

/// A named analysis: defaults for its checks, and the checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalysis {
    pub name: String,
    #[serde(default)]
    pub check: Vec<RawCheck>,
    pub interval: Option<String>,
    pub count: Option<i64>,
    pub failure_limit: Option<i64>,
    pub inconclusive_limit: Option<i64>,
    pub min_requests: Option<i64>,
    pub window: Option<String>,
    /// The score (0–100) at or above which the analysis passes, and at or above which it is
    /// inconclusive rather than failed; without them every check must pass.
    pub pass_score: Option<f64>,
    pub marginal_score: Option<f64>,
    /// How sure an effect beyond `allowed_increase` / `allowed_decrease` must be to fail.
    pub confidence: Option<f64>,
    /// The chance a planned comparison sees its effect (plans the checks' evidence).
    pub power: Option<f64>,
    /// How long a step's checks may be lengthened to, to gather the requests they need.
    pub max_duration: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: String,
    /// `success-rate`, `error-rate`, `request-rate`, `latency-p99` (any `latency-pNN`).
    pub metric: Option<String>,
    pub mann_whitney: Option<RawMannWhitney>,
    /// `{ min_count = 5 }`: fails on a failed answer only the candidate gives.
    pub new_errors: Option<RawNewErrors>,
    pub prometheus: Option<RawPrometheus>,
    pub webhook: Option<RawEndpoint>,
    pub command: Option<String>,
    pub timeout: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub max_over_stable: Option<f64>,
    pub max_ratio_to_stable: Option<f64>,
    pub interval: Option<String>,
    pub count: Option<i64>,
    pub failure_limit: Option<i64>,
    pub inconclusive_limit: Option<i64>,
    pub min_requests: Option<i64>,
    pub window: Option<String>,
    /// Its failure fails the analysis whatever the score.
    pub critical: Option<bool>,
    /// Its share of the score (1 by default).
    pub weight: Option<f64>,
    /// Effect sizes relative to stable, e.g. `"20%"`.
    pub allowed_increase: Option<String>,
    pub allowed_decrease: Option<String>,
    /// This check's own `max_duration` (plans its evidence).
    pub max_duration: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMannWhitney {
    pub confidence: Option<f64>,
    pub tolerance: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNewErrors {
    pub min_count: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheus {
    pub url: String,
    pub query: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifications {
    /// Slack-compatible incoming webhook: `{"text": …}` on rollbacks.
    pub webhook: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub enabled: Option<bool>,
    pub interval: Option<String>,
    pub window: Option<String>,
    pub max_error_rate: Option<f64>,
    pub min_requests: Option<i64>,
    pub alpha: Option<f64>,
    pub max_latency_ratio: Option<f64>,
    pub min_latency_increase: Option<String>,
    pub sample_ratio: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    pub before_traffic: Option<RawHook>,
    pub after_traffic: Option<RawHook>,
    pub before_promotion: Option<RawHook>,
    pub after_rollout: Option<RawHook>,
    pub on_rollback: Option<RawHook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    pub url: Option<String>,
    pub command: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<i64>,
    /// before_promotion: after the hook, wait for `rollout promote`.
    pub confirm: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: Option<String>,
    pub token: Option<String>,
    pub token_env: Option<String>,
    /// Named tokens: the name is who acted in the audit history.
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: String,
    pub token: Option<String>,
    pub token_env: Option<String>,
    /// `read`, `release`, `config`; default `["read", "release"]`.
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub request: Option<String>,
    pub header_read: Option<String>,
    pub client_body: Option<String>,
    pub idle: Option<String>,
    pub shutdown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<i64>,
    pub max_headers: Option<i64>,
    pub max_body_bytes: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub bind: String,
    #[serde(default)]
    pub certificate: Vec<RawCertificate>,
    /// The TLS policy: versions, cipher suites, key exchange groups, ALPN.
    pub tls: Option<RawTlsPolicy>,
    /// Client certificates (mTLS).
    pub client_auth: Option<RawClientAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    /// The PEM bundle of the CAs a client certificate must chain to.
    pub ca: String,
    /// `"required"` (default) or `"optional"`.
    pub mode: Option<String>,
    /// The fields sent upstream are this and the fact's name; default `x-client-cert-`.
    pub header_prefix: Option<String>,
    /// Which facts are sent: `verified`, `subject`, `issuer`, `serial-number`, `san`,
    /// `fingerprint`, `validity`, `leaf`.
    pub fields: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsPolicy {
    /// `"1.2"` (default) or `"1.3"`.
    pub min_version: Option<String>,
    /// rustls's names, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher_suites: Option<Vec<String>>,
    /// `x25519`, `secp256r1`, `secp384r1`.
    pub groups: Option<Vec<String>>,
    /// `h2`, `http/1.1`, in order of preference.
    pub alpn: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
    /// A DER OCSP response to staple, read with the certificate.
    pub ocsp: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub priority: i64,
    pub listeners: Option<Vec<String>>,
    #[serde(default, rename = "match")]
    pub conditions: RawMatch,
    pub forward: Option<String>,
    /// Rules that force a group before the weighted split (preview routes, internal users).
    #[serde(default, rename = "override")]
    pub overrides: Vec<RawOverride>,
    pub fixed_response: Option<RawFixedResponse>,
    pub redirect: Option<RawRedirect>,
    /// Host and path rewrites and answer header edits.
    pub transform: Option<RawTransform>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransform {
    pub host: Option<RawRewrite>,
    pub path: Option<RawRewrite>,
    pub response_headers: Option<RawHeaderEdits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    pub regex: String,
    pub replace: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderEdits {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub host: Vec<String>,
    #[serde(default)]
    pub path: Vec<String>,
    #[serde(default)]
    pub path_prefix: Vec<String>,
    #[serde(default)]
    pub path_glob: Vec<String>,
    #[serde(default)]
    pub method: Vec<String>,
    #[serde(default)]
    pub header: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub query: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub source: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFixedResponse {
    pub status: i64,
    pub content_type: Option<String>,
    #[serde(default)]
    pub body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub status: Option<i64>,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub path: Option<String>,
    pub query: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub active: Option<String>,
    pub weights: Option<BTreeMap<String, f64>>,
    pub balance: Option<String>,
    pub request_timeout: Option<String>,
    pub deregistration_delay: Option<String>,
    pub drain_timeout: Option<String>,
    pub health_check: Option<RawHealthCheck>,
    pub passive: Option<RawPassive>,
    pub strategy: Option<RawStrategy>,
    pub stickiness: Option<RawStickiness>,
    pub guard: Option<RawGuard>,
    pub hooks: Option<RawHooks>,
    /// A hook or analysis step that takes longer than this aborts the rollout.
    pub progress_deadline: Option<String>,
    /// How long after a rollout completed `undo` goes straight back (see `ServiceConfig`).
    pub rollback_window: Option<String>,
    /// How long a target that joins or comes back takes to reach its full share.
    pub slow_start: Option<String>,
    /// Synthetic requests to the candidate during analysis steps, for quiet services.
    pub synthetic: Option<RawSynthetic>,
    /// Copies of requests to a group, their answers compared with the real ones.
    pub mirror: Option<RawMirror>,
    #[serde(default)]
    pub group: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    /// Always mirror to this group; without it only a rollout's mirror steps do (to the
    /// candidate).
    pub group: Option<String>,
    /// Percent of requests copied (with `group`), 0.01 resolution.
    pub percent: Option<f64>,
    pub methods: Option<Vec<String>>,
    pub max_body_bytes: Option<i64>,
    pub queue: Option<i64>,
    pub concurrency: Option<i64>,
    pub compare: Option<RawMirrorCompare>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirrorCompare {
    pub status: Option<bool>,
    pub headers: Option<Vec<String>>,
    /// `hash`, `json`, `json-shape` or `none`.
    pub body: Option<String>,
    /// JSON fields left out of the comparison.
    pub ignore: Option<Vec<String>>,
    pub max_body_bytes: Option<i64>,
    /// How much slower than the real answer a copy may be, as a percentage.
    pub allowed_latency_increase: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSynthetic {
    /// Requests per second.
    pub rate: Option<f64>,
    pub requests: Option<Vec<RawSyntheticRequest>>,
    /// Also replay recent idempotent requests from the access log.
    pub replay: Option<bool>,
    /// `together` (counted with the candidate's traffic, which analyses judge) or `apart`.
    pub count: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSyntheticRequest {
    pub method: Option<String>,
    pub path: String,
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub group: Option<String>,
    pub header: Option<RawNameValues>,
    pub cookie: Option<RawNameValues>,
    pub source: Option<Vec<String>>,
    pub country: Option<Vec<String>>,
    pub country_header: Option<String>,
    /// The header's value names the group (or `candidate` / `stable`).
    pub group_from_header: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNameValues {
    pub name: String,
    pub values: Vec<String>,
}

/// A rollout strategy, in the config file or in a rollout start request.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawStrategy {
    /// `canary`, `blue-green`, `all-at-once`, or a preset such as `canary-10pct-5m`.
    pub kind: String,
    pub steps: Option<Vec<RawStep>>,
    pub auto_promote_after: Option<String>,
    pub scale_down_delay: Option<String>,
    pub teardown: Option<String>,
    /// An analysis run in the background for the whole rollout.
    pub background_analysis: Option<String>,
    /// Blue-green: analyses before and after the switch.
    pub pre_promotion_analysis: Option<String>,
    pub post_promotion_analysis: Option<String>,
    /// Canary: a group running a fresh copy of stable, given the candidate's weight and
    /// judged against it instead of stable.
    pub baseline: Option<String>,
    /// A/B test (`kind = "ab"`): the requests that go to the candidate, the rounds, how long
    /// each waits and the analysis each runs.
    #[serde(rename = "match")]
    pub ab_match: Option<Vec<RawAbMatch>>,
    pub iterations: Option<i64>,
    pub interval: Option<String>,
    pub analysis: Option<String>,
}

/// One rule of an A/B test: a header or a cookie with one of the values.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAbMatch {
    pub header: Option<RawNameValues>,
    pub cookie: Option<RawNameValues>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// Percent of traffic for the candidate, 0.01 resolution.
    pub weight: Option<f64>,
    /// A duration, or `until-promoted`.
    pub pause: Option<String>,
    pub analysis: Option<String>,
    /// Percent of requests copied to the candidate from this step on (0.01 resolution).
    pub mirror: Option<f64>,
    /// With `mirror`: how long the step waits before the next one.
    pub duration: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStickiness {
    /// `cookie:NAME`, `header:NAME` or `client-ip`.
    pub key: Option<String>,
    /// switchyard's own cookie, set when the request has no key.
    pub cookie: Option<String>,
    pub cookie_max_age: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: String,
    pub targets: Vec<String>,
    pub protocol: Option<String>,
    pub health_check: Option<RawHealthCheck>,
    /// TLS to the targets; absent: plain TCP.
    pub tls: Option<RawTargetTls>,
}

/// TLS to a group's targets: `tls = {}` trusts the system's roots and sends the target's
/// host as SNI.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTargetTls {
    /// The name sent as SNI and verified (default: the target's host).
    pub sni: Option<String>,
    /// A PEM bundle of the CAs to trust instead of the system's roots.
    pub ca: Option<String>,
    /// Accept any certificate: named so on purpose.
    pub insecure_skip_verify: Option<bool>,
    /// A client certificate chain and its key, for targets that ask for one (mTLS).
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
    pub success_codes: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub consecutive_failures: Option<i64>,
    pub ejection_time: Option<String>,
    pub eject_on_5xx: Option<bool>,
}
