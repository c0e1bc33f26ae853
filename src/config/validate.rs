//! Raw file values to domain types. Each check records the key path of the value it rejects;
//! `mod.rs` turns paths into line and column. All problems are collected, not just the first.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::fields::*;
use super::load::Loaded;
use super::locate::KeyPath;
use super::model::*;
use super::raw::*;
use crate::group::Balance;
use crate::path;
use crate::split::Split;
use crate::upstream::UpstreamProtocol;

/// Pure: everything read from outside the text (tokens from the environment, certificate
/// files) comes in `loaded`, read by the load step before.
pub(super) fn validate(
    raw: RawConfig,
    loaded: &Loaded,
    base_dir: &Path,
) -> Result<Config, Problems> {
    let mut p = Problems::new();
    let admin = super::admin::admin(&raw.admin, loaded, &mut p);
    let timeouts = timeouts(&raw.timeouts, &mut p);
    let limits = limits(&raw.limits, &mut p);
    let listeners = super::listeners::listeners(&raw.listener, loaded, &mut p);
    admin_apart(&admin, &listeners, &mut p);
    let analyses = analyses(&raw.analysis, &mut p);
    let analysis_names: Vec<String> = analyses.iter().map(|a| a.name.clone()).collect();
    let logged = raw.access_log.is_some();
    let services = services(&raw.service, &analysis_names, loaded, logged, &mut p);
    let access_log = raw.access_log.as_ref().and_then(|a| {
        let buffer = count_or(
            a.buffer,
            1..=1_000_000,
            8192,
            "lines",
            path!["access_log", "buffer"],
            &mut p,
        ) as usize;
        a.enabled
            .unwrap_or(true)
            .then(|| crate::access_log::AccessLogConfig {
                path: a
                    .path
                    .as_deref()
                    .filter(|p| *p != "-")
                    .map(|p| base_dir.join(p)),
                buffer,
            })
    });
    let (certificate_watch, certificate_warn_before) =
        super::listeners::certificates(&raw.certificates, &mut p);
    let notify_webhook = raw.notifications.webhook.clone();
    if let Some(u) = &notify_webhook {
        http_url(u, path!["notifications", "webhook"], &mut p);
    }
    let routes = super::routes::routes(&raw.route, &listeners, &services, &mut p);
    let store = super::store::store(&raw.store, loaded, base_dir, &mut p);
    let names: Vec<String> = listeners.iter().map(|l| l.name.clone()).collect();
    let instance = super::store::instance(&raw.instance, &names, &mut p);
    if p.is_empty() {
        Ok(Config {
            admin,
            timeouts,
            limits,
            listeners,
            routes,
            services,
            store,
            instance,
            analyses,
            notify_webhook,
            access_log,
            certificate_watch,
            certificate_warn_before,
            source: None,
        })
    } else {
        Err(p)
    }
}

fn timeouts(raw: &RawTimeouts, p: &mut Problems) -> Timeouts {
    let d = Timeouts::default();
    let mut get = |v: &Option<String>, key: &str, default: Duration| {
        duration_or(v.as_ref(), path!["timeouts", key], default, &TIMEOUT, p)
    };
    Timeouts {
        connect: get(&raw.connect, "connect", d.connect),
        request: get(&raw.request, "request", d.request),
        header_read: get(&raw.header_read, "header_read", d.header_read),
        client_body: get(&raw.client_body, "client_body", d.client_body),
        idle: get(&raw.idle, "idle", d.idle),
        shutdown: get(&raw.shutdown, "shutdown", d.shutdown),
    }
}

fn limits(raw: &RawLimits, p: &mut Problems) -> Limits {
    let d = Limits::default();
    let max_header_bytes = count_or(
        raw.max_header_bytes,
        8192..=1 << 24,
        d.max_header_bytes as u64,
        "",
        path!["limits", "max_header_bytes"],
        p,
    ) as usize;
    let max_headers = count_or(
        raw.max_headers,
        1..=10_000,
        d.max_headers as u64,
        "",
        path!["limits", "max_headers"],
        p,
    ) as usize;
    let max_body_bytes = match raw.max_body_bytes {
        None => d.max_body_bytes,
        Some(n) => in_range(
            n,
            0..=i64::MAX,
            "bytes",
            path!["limits", "max_body_bytes"],
            p,
        )
        .map(|n| n as u64)
        .or(d.max_body_bytes),
    };
    Limits {
        max_header_bytes,
        max_headers,
        max_body_bytes,
    }
}

/// A listener on the admin API's address would fail to bind only when started: refused here,
/// where `validate` sees it. Two addresses clash on one port when either is the wildcard.
fn admin_apart(admin: &super::AdminConfig, listeners: &[ListenerConfig], p: &mut Problems) {
    let a = admin.bind;
    for (i, l) in listeners.iter().enumerate() {
        let b = l.bind;
        let same_ip = a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
        if a.port() != 0 && a.port() == b.port() && same_ip {
            p.add(
                path!["listener", i, "bind"],
                format!(
                    "{b} is the admin API's address ([admin] bind = \"{a}\"): use another port"
                ),
            );
        }
    }
}

fn analyses(raw: &[RawAnalysis], p: &mut Problems) -> Vec<crate::analysis::AnalysisConfig> {
    for (i, a) in raw.iter().enumerate() {
        name(&a.name, path!["analysis", i, "name"], p);
    }
    super::analysis::analyses(raw, p)
}

fn services(
    raw: &[RawService],
    analyses: &[String],
    loaded: &Loaded,
    logged: bool,
    p: &mut Problems,
) -> Vec<ServiceConfig> {
    let mut names = Unique::new("service");
    let mut out = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let at = path!["service", i];
        name(&s.name, at.join("name"), p);
        names.check(&s.name, at.join("name"), p);
        if s.group.is_empty() {
            p.add(
                at.clone(),
                format!(
                    "service \"{}\" has no [[service.group]]: it needs at least one",
                    s.name
                ),
            );
        }
        // The service's health check, checked once where it is written; groups inherit it.
        let default_hc = s
            .health_check
            .as_ref()
            .map(|d| (d, at.join("health_check")));
        let inherited = default_hc
            .as_ref()
            .map(|(d, dat)| health_check(&[(d, dat)], p));
        let mut group_names = Unique::within("group", format!(" in service \"{}\"", s.name));
        let mut groups = Vec::new();
        for (j, g) in s.group.iter().enumerate() {
            let gat = at.join("group").join(j);
            name(&g.name, gat.join("name"), p);
            group_names.check(&g.name, gat.join("name"), p);
            let mut made = group(g, default_hc.as_ref(), inherited.as_ref(), &gat, p);
            made.tls = g.tls.as_ref().and_then(|t| {
                let files = loaded.target_tls(i, j);
                super::target_tls::target_tls(t, files, made.protocol, &gat.join("tls"), p)
            });
            groups.push(made);
        }
        let split = split(s, &at, p);
        let balance = match s.balance.as_deref() {
            None | Some("least-outstanding") => Balance::LeastOutstanding,
            Some("round-robin") => Balance::RoundRobin,
            Some(other) => {
                p.add(
                    at.join("balance"),
                    format!(
                        "unknown balance \"{other}\": use \"least-outstanding\" or \"round-robin\""
                    ),
                );
                Balance::LeastOutstanding
            }
        };
        let request_timeout = s
            .request_timeout
            .as_ref()
            .and_then(|d| duration(d, at.join("request_timeout"), &TIMEOUT, p));
        let drain_timeout = duration_or(
            s.drain_timeout.as_ref(),
            at.join("drain_timeout"),
            Duration::from_secs(300),
            &RELEASE,
            p,
        );
        let deregistration_delay = duration_or(
            s.deregistration_delay.as_ref(),
            at.join("deregistration_delay"),
            Duration::from_secs(30),
            &DELAY,
            p,
        );
        let passive = passive(s.passive.as_ref(), &at.join("passive"), p);
        let strategy = match &s.strategy {
            None => crate::rollout::Strategy::preset("canary-10pct-5m").expect("built-in preset"),
            Some(raw) => super::release::strategy(raw, analyses, &at.join("strategy"), p)
                .unwrap_or_else(crate::rollout::Strategy::all_at_once),
        };
        if let Some(b) = s.strategy.as_ref().and_then(|r| r.baseline.as_ref()) {
            if !s.group.iter().any(|g| &g.name == b) {
                p.add(
                    at.join("strategy").join("baseline"),
                    format!("no group named \"{b}\" in service \"{}\"", s.name),
                );
            }
        }
        let stickiness = s
            .stickiness
            .as_ref()
            .map(|raw| super::release::stickiness(raw, &at.join("stickiness"), p));
        let guard = super::guard::guard(s.guard.as_ref(), &at.join("guard"), p);
        let hooks = super::hooks::hooks(s.hooks.as_ref(), &at.join("hooks"), p);
        let progress_deadline = duration_or(
            s.progress_deadline.as_ref(),
            at.join("progress_deadline"),
            Duration::from_secs(600),
            &DEADLINE,
            p,
        );
        let rollback_window = duration_or(
            s.rollback_window.as_ref(),
            at.join("rollback_window"),
            Duration::from_secs(3600),
            &RELEASE,
            p,
        );
        let slow_start = duration_or(
            s.slow_start.as_ref(),
            at.join("slow_start"),
            Duration::ZERO,
            &SLOW_START,
            p,
        );
        let synthetic = s
            .synthetic
            .as_ref()
            .map(|raw| super::synthetic::synthetic(raw, logged, &at.join("synthetic"), p));
        let mirror = s.mirror.as_ref().map(|raw| {
            let names: Vec<&str> = s.group.iter().map(|g| g.name.as_str()).collect();
            super::mirror::mirror(raw, &names, &at.join("mirror"), p)
        });
        out.push(ServiceConfig {
            name: s.name.clone(),
            groups,
            split,
            balance,
            request_timeout,
            deregistration_delay,
            drain_timeout,
            passive,
            strategy,
            stickiness,
            guard,
            hooks,
            progress_deadline,
            rollback_window,
            slow_start,
            synthetic,
            mirror,
        });
    }
    out
}

fn group(
    g: &RawGroup,
    default_hc: Option<&(&RawHealthCheck, KeyPath)>,
    inherited: Option<&HealthCheck>,
    at: &KeyPath,
    p: &mut Problems,
) -> GroupConfig {
    if g.targets.is_empty() {
        p.add(
            at.join("targets"),
            format!("group \"{}\" is empty: list at least one target", g.name),
        );
    }
    let mut seen = HashSet::new();
    let mut targets = Vec::new();
    for (k, t) in g.targets.iter().enumerate() {
        let tat = at.join("targets").join(k);
        match target_addr(t) {
            Ok(addr) => {
                if !seen.insert(addr.clone()) {
                    p.add(tat, format!("duplicate target {t}"));
                }
                targets.push(addr);
            }
            Err(e) => p.add(tat, e),
        }
    }
    let protocol = match g.protocol.as_deref() {
        None | Some("http1") => UpstreamProtocol::Http1,
        Some("http2") => UpstreamProtocol::Http2,
        Some(other) => {
            p.add(
                at.join("protocol"),
                format!("unknown protocol \"{other}\": use \"http1\" or \"http2\""),
            );
            UpstreamProtocol::Http1
        }
    };
    // A group's own health_check overrides the service's field by field; each field's
    // problem is reported where that field is written (the same one once, by `Problems`).
    let health_check = match (&g.health_check, default_hc) {
        (None, _) => inherited.cloned(),
        (Some(own), d) => {
            let own_at = at.join("health_check");
            let mut layers = vec![(own, &own_at)];
            layers.extend(d.map(|(d, dat)| (*d, dat)));
            Some(health_check(&layers, p))
        }
    };
    GroupConfig {
        name: g.name.clone(),
        targets,
        protocol,
        health_check,
        tls: None,
    }
}

/// A health check from layers (a group's own, then its service's): each field is taken from
/// the first layer that sets it, and checked at the path where it is written.
fn health_check(layers: &[(&RawHealthCheck, &KeyPath)], p: &mut Problems) -> HealthCheck {
    fn pick<'a, T>(
        layers: &[(&'a RawHealthCheck, &KeyPath)],
        field: fn(&'a RawHealthCheck) -> Option<T>,
        key: &str,
    ) -> (Option<T>, KeyPath) {
        for (raw, at) in layers {
            if let Some(v) = field(raw) {
                return (Some(v), at.join(key));
            }
        }
        (None, layers[0].1.join(key))
    }
    let (path, path_at) = pick(layers, |r| r.path.as_ref(), "path");
    let path = path.cloned().unwrap_or_else(|| "/".to_string());
    if !path.starts_with('/') {
        p.add(path_at, format!("\"{path}\" must start with /"));
    }
    let (interval, interval_at) = pick(layers, |r| r.interval.as_ref(), "interval");
    let interval = interval.map(|s| duration(s, interval_at, &TIMEOUT, p));
    let (timeout, timeout_at) = pick(layers, |r| r.timeout.as_ref(), "timeout");
    let timeout = timeout.map(|s| duration(s, timeout_at.clone(), &TIMEOUT, p));
    // Compared only when both are valid: a rejected value is not also "longer" or "shorter"
    // than its neighbour's default (`interval = "0s"` once gave a second, misleading error).
    let interval_ok = interval.unwrap_or(Some(Duration::from_secs(5)));
    let timeout_ok = timeout.unwrap_or(Some(Duration::from_secs(2)));
    if let (Some(timeout), Some(interval)) = (timeout_ok, interval_ok) {
        if timeout > interval {
            p.add(
                timeout_at,
                format!(
                    "timeout {} is longer than interval {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(interval)
                ),
            );
        }
    }
    let interval = interval_ok.unwrap_or(Duration::from_secs(5));
    let timeout = timeout_ok.unwrap_or(Duration::from_secs(2));
    let mut threshold = |field: fn(&RawHealthCheck) -> Option<i64>, key: &str| {
        let (v, at) = pick(layers, field, key);
        count_or(v, 1..=100, 2, "", at, p) as u32
    };
    let healthy_threshold = threshold(|r| r.healthy_threshold, "healthy_threshold");
    let unhealthy_threshold = threshold(|r| r.unhealthy_threshold, "unhealthy_threshold");
    let (codes, codes_at) = pick(layers, |r| r.success_codes.as_deref(), "success_codes");
    let success_codes = match codes {
        None => StatusRanges(vec![(200, 399)]),
        Some(s) => StatusRanges::parse(s).unwrap_or_else(|e| {
            p.add(codes_at, e);
            StatusRanges(vec![(200, 399)])
        }),
    };
    HealthCheck {
        path,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
        success_codes,
    }
}

fn split(s: &RawService, at: &KeyPath, p: &mut Problems) -> Split {
    let fallback = || Split::all_to(s.group.first().map_or("", |g| g.name.as_str()));
    let known = |g: &str| s.group.iter().any(|x| x.name == g);
    match (&s.active, &s.weights) {
        (Some(_), Some(_)) => {
            p.add(at.join("weights"), "set `active` or `weights`, not both");
            fallback()
        }
        (Some(a), None) => {
            if !known(a) && !s.group.is_empty() {
                p.add(
                    at.join("active"),
                    format!("no group named \"{a}\" in service \"{}\"", s.name),
                );
            }
            Split::all_to(a)
        }
        (None, Some(w)) => {
            for g in w.keys().filter(|g| !known(g)) {
                p.add(
                    at.join("weights").join(g.as_str()),
                    format!("no group named \"{g}\" in service \"{}\"", s.name),
                );
            }
            Split::from_percents(w.iter().map(|(g, pct)| (g.clone(), *pct))).unwrap_or_else(|e| {
                let wat = match e.group() {
                    Some(g) => at.join("weights").join(g),
                    None => at.join("weights"),
                };
                p.add(wat, e.to_string());
                fallback()
            })
        }
        (None, None) if s.group.len() == 1 => fallback(),
        (None, None) => {
            p.add(
                at.clone(),
                format!(
                    "service \"{}\" has several groups: set `active = \"GROUP\"` or `weights`",
                    s.name
                ),
            );
            fallback()
        }
    }
}

fn passive(raw: Option<&RawPassive>, at: &KeyPath, p: &mut Problems) -> PassiveHealth {
    let d = PassiveHealth::default();
    let Some(raw) = raw else { return d };
    PassiveHealth {
        consecutive_failures: count_or(
            raw.consecutive_failures,
            0..=1000,
            d.consecutive_failures as u64,
            "0 is off",
            at.join("consecutive_failures"),
            p,
        ) as u32,
        ejection_time: duration_or(
            raw.ejection_time.as_ref(),
            at.join("ejection_time"),
            d.ejection_time,
            &TIMEOUT,
            p,
        ),
        eject_on_5xx: raw.eject_on_5xx.unwrap_or(d.eject_on_5xx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load;

    /// Validation takes a token from the load step's values, not from the environment: a
    /// variable set nowhere but in `Loaded` is accepted, and one missing there is refused.
    #[test]
    fn validation_reads_tokens_from_the_load_step_not_the_environment() {
        const VAR: &str = "SWITCHYARD_TEST_NEVER_SET_7F3A";
        assert!(std::env::var(VAR).is_err(), "test bug: {VAR} is set");
        let text = format!(
            "[admin]\ntoken_env = \"{VAR}\"\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n"
        );
        let raw = || toml::from_str::<RawConfig>(&text).unwrap();
        let loaded = load(&raw(), Path::new("."));
        assert_eq!(loaded.env(VAR), None);
        let refused = validate(raw(), &loaded, Path::new(".")).expect_err("unset is refused");
        assert!(
            refused
                .0
                .iter()
                .any(|(at, m)| at.to_string() == "admin.token_env"
                    && m == &format!("environment variable {VAR} is not set or empty")),
            "{refused:?}"
        );

        let given = load(&raw(), Path::new(".")).with_env(VAR, "from-the-load-step");
        let config = validate(raw(), &given, Path::new(".")).expect("valid with the value");
        assert_eq!(config.admin.token.as_deref(), Some("from-the-load-step"));
    }
}
