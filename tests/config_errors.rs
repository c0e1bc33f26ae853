//! Every class of configuration error names the file, line, column and field.

mod common;

use std::path::Path;

use common::bin::{free_port, switchyard};

const BASE: &str = r#"[[listener]]
name = "web"
bind = "127.0.0.1:8080"

[[route]]
name = "all"
priority = 1
forward = "shop"

[[service]]
name = "shop"
active = "blue"

[[service.group]]
name = "blue"
targets = ["127.0.0.1:9001"]
"#;

/// Replaces `from` by `to` in the base config and returns the one diagnostic line.
fn error_of(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "test bug: {from:?} not in base");
    let src = BASE.replacen(from, to, 1);
    let err =
        switchyard::config::parse(&src, "sy.toml", Path::new(".")).expect_err("should be invalid");
    err.to_string()
}

#[test]
fn the_base_config_is_valid() {
    switchyard::config::parse(BASE, "sy.toml", Path::new(".")).unwrap();
}

#[test]
fn syntax_error() {
    assert_eq!(
        error_of("bind = \"127.0.0.1:8080\"", "bind = \"127.0.0.1:8080"),
        "sy.toml:3:23: syntax: invalid basic string, expected `\"`"
    );
}

#[test]
fn unknown_key() {
    assert_eq!(
        error_of("priority = 1", "priority = 1\nproirity = 2"),
        "sy.toml:8:1: route[0].proirity: unknown field `proirity`, expected one of `name`, `priority`, `listeners`, `match`, `forward`, `override`, `fixed_response`, `redirect`, `transform`"
    );
}

#[test]
fn wrong_type() {
    assert_eq!(
        error_of("priority = 1", "priority = \"one\""),
        "sy.toml:7:12: route[0].priority: invalid type: string \"one\", expected i64"
    );
}

#[test]
fn duplicate_names() {
    let e = error_of("[[service.group]]\nname = \"blue\"", "[[service.group]]\nname = \"blue\"\ntargets = [\"127.0.0.1:1\"]\n[[service.group]]\nname = \"blue\"");
    assert_eq!(
        e,
        "sy.toml:18:8: service[0].group[1].name: duplicate group name \"blue\" in service \"shop\""
    );
    let e = error_of(
        "name = \"all\"",
        "name = \"all\"\npriority = 2\nforward = \"shop\"\n[[route]]\nname = \"all\"",
    );
    assert!(
        e.contains("sy.toml:10:8: route[1].name: duplicate route name \"all\""),
        "{e}"
    );
}

#[test]
fn route_to_a_missing_service() {
    assert_eq!(
        error_of("forward = \"shop\"", "forward = \"shoop\""),
        "sy.toml:8:11: route[0].forward: no service named \"shoop\""
    );
}

#[test]
fn bad_address() {
    assert_eq!(
        error_of("127.0.0.1:8080", "localhost:http"),
        "sy.toml:3:8: listener[0].bind: \"localhost:http\" is not an address: use IP:PORT such as 127.0.0.1:8080 or [::1]:8080"
    );
    assert_eq!(
        error_of("127.0.0.1:9001", "10.0.0.1"),
        "sy.toml:16:12: service[0].group[0].targets[0]: \"10.0.0.1\" is not a target: use HOST:PORT such as 10.0.0.5:8080"
    );
}

#[test]
fn bad_cidr() {
    assert_eq!(
        error_of("priority = 1", "priority = 1\nmatch.source = [\"10.0.0.0/8\", \"10.0.0.0/40\"]"),
        "sy.toml:8:31: route[0].match.source[1]: \"10.0.0.0/40\" is not an IP address or CIDR such as 10.0.0.0/8"
    );
}

#[test]
fn weights_that_do_not_sum_to_100() {
    let src = BASE.replacen("active = \"blue\"", "weights = { blue = 90, green = 5 }", 1)
        + "[[service.group]]\nname = \"green\"\ntargets = [\"127.0.0.1:9002\"]\n";
    let e = switchyard::config::parse(&src, "sy.toml", Path::new("."))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "sy.toml:12:11: service[0].weights: weights sum to 95, not 100"
    );
}

#[test]
fn empty_group() {
    assert_eq!(
        error_of("targets = [\"127.0.0.1:9001\"]", "targets = []"),
        "sy.toml:16:11: service[0].group[0].targets: group \"blue\" is empty: list at least one target"
    );
}

#[test]
fn all_problems_are_reported_at_once_in_file_order() {
    let src = BASE
        .replacen("forward = \"shop\"", "forward = \"nope\"", 1)
        .replacen("targets = [\"127.0.0.1:9001\"]", "targets = []", 1)
        .replacen("127.0.0.1:8080", "nowhere", 1);
    let e = switchyard::config::parse(&src, "sy.toml", Path::new(".")).unwrap_err();
    let lines: Vec<usize> = e.diagnostics().iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![3, 8, 16], "{e}");
}

#[test]
fn a_missing_certificate_file_is_reported_at_the_cert_key() {
    let e = error_of(
        "bind = \"127.0.0.1:8080\"",
        "bind = \"127.0.0.1:8080\"\n[[listener.certificate]]\ncert = \"missing.pem\"\nkey = \"missing.key\"",
    );
    assert!(
        e.starts_with("sy.toml:5:8: listener[0].certificate[0].cert: certificate ./missing.pem:"),
        "{e}"
    );
}

#[test]
fn a_missing_key_file_is_reported_at_the_key_key() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["shop.test".to_string()]).unwrap();
    std::fs::write(dir.path().join("shop.pem"), made.cert.pem()).unwrap();
    let src = BASE.replacen(
        "bind = \"127.0.0.1:8080\"",
        "bind = \"127.0.0.1:8080\"\n[[listener.certificate]]\ncert = \"shop.pem\"\nkey = \"missing.key\"",
        1,
    );
    let e = switchyard::config::parse(&src, "sy.toml", dir.path())
        .unwrap_err()
        .to_string();
    let shown = dir.path().join("missing.key").display().to_string();
    assert!(
        e.starts_with(&format!(
            "sy.toml:6:7: listener[0].certificate[0].key: key {shown}:"
        )),
        "{e}"
    );
}

#[test]
fn an_unset_token_env_is_reported_at_the_token_env_key() {
    let var = "SWITCHYARD_TEST_CONFIG_ERRORS_UNSET";
    assert!(std::env::var(var).is_err(), "test bug: {var} is set");
    let e = error_of(
        "[[route]]",
        &format!("[admin]\ntoken_env = \"{var}\"\n[[admin.tokens]]\nname = \"bot\"\ntoken_env = \"{var}\"\n\n[[route]]"),
    );
    assert_eq!(
        e,
        format!(
            "sy.toml:6:13: admin.token_env: environment variable {var} is not set or empty\n\
             sy.toml:9:13: admin.tokens[0].token_env: environment variable {var} is not set or empty"
        )
    );
}

#[test]
fn validate_command_prints_errors_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        BASE.replacen("forward = \"shop\"", "forward = \"nope\"", 1),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:8:11: route[0].forward: no service named \"nope\""),
        "{stderr}"
    );

    std::fs::write(&path, BASE).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 listeners, 1 routes, 1 services)"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["validate", "-c", "examples/switchyard.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the shipped example is valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_duration_reads_the_same_everywhere() {
    let e = error_of(
        "targets = [\"127.0.0.1:9001\"]",
        "targets = [\"127.0.0.1:9001\"]\n[timeouts]\nconnect = \"5x\"",
    );
    assert_eq!(
        e,
        "sy.toml:18:11: timeouts.connect: \"5x\" is not a duration: use e.g. 500ms, 30s, 5m"
    );
    let e = error_of(
        "active = \"blue\"",
        "active = \"blue\"\nrequest_timeout = \"0s\"",
    );
    assert_eq!(
        e,
        "sy.toml:13:19: service[0].request_timeout: \"0s\" is out of range: use 1ms to 1h"
    );
}

#[test]
fn a_number_out_of_range_reads_the_same_everywhere() {
    let e = error_of(
        "targets = [\"127.0.0.1:9001\"]",
        "targets = [\"127.0.0.1:9001\"]\n[limits]\nmax_headers = 0",
    );
    assert_eq!(
        e,
        "sy.toml:18:15: limits.max_headers: 0 is out of range: use 1 to 10000"
    );
}

#[test]
fn a_service_health_check_problem_is_reported_once_where_it_is_written() {
    let src = BASE.to_string()
        + "[[service.group]]\nname = \"green\"\ntargets = [\"127.0.0.1:9002\"]\n"
        + "[service.health_check]\ninterval = \"5x\"\n";
    let e = switchyard::config::parse(&src, "sy.toml", Path::new("."))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "sy.toml:21:12: service[0].health_check.interval: \"5x\" is not a duration: use e.g. 500ms, 30s, 5m"
    );
    // A group's own value is reported at the group; the service's once, at the service.
    let src = BASE.to_string()
        + "[service.group.health_check]\ntimeout = \"1x\"\n"
        + "[[service.group]]\nname = \"green\"\ntargets = [\"127.0.0.1:9002\"]\n"
        + "[service.health_check]\nhealthy_threshold = 0\n";
    let e = switchyard::config::parse(&src, "sy.toml", Path::new(".")).unwrap_err();
    let lines: Vec<String> = e.diagnostics().iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "sy.toml:18:11: service[0].group[0].health_check.timeout: \"1x\" is not a duration: use e.g. 500ms, 30s, 5m",
            "sy.toml:23:21: service[0].health_check.healthy_threshold: 0 is out of range: use 1 to 100",
        ],
        "{e}"
    );
}

/// The store and instance tables of a fleet: each mistake at its key.
#[test]
fn store_and_instance_mistakes_are_reported_at_their_keys() {
    let cases = [
        (
            "[store]\nkind = \"etcd\"\n",
            "sy.toml:18:1: store.endpoints: an etcd store needs endpoints",
        ),
        (
            "[store]\nkind = \"zookeeper\"\n",
            "sy.toml:19:8: store.kind: unknown store kind \"zookeeper\"",
        ),
        (
            "[store]\nkind = \"etcd\"\nendpoints = [\"https://127.0.0.1:2379\"]\n",
            "sy.toml:20:14: store.endpoints[0]: \"https://127.0.0.1:2379\": TLS to etcd is not supported yet",
        ),
        (
            "[store]\nkind = \"etcd\"\nendpoints = [\"127.0.0.1:2379\"]\n",
            "sy.toml:20:14: store.endpoints[0]: \"127.0.0.1:2379\" is not an etcd endpoint",
        ),
        (
            "[store]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\npath = \"x.db\"\n",
            "sy.toml:21:8: store.path: \"path\" is for kind = \"sqlite\"",
        ),
        (
            "[store]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
            "sy.toml:19:13: store.endpoints: \"endpoints\" is for kind = \"etcd\"",
        ),
        (
            "[store]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"fleet\"\n",
            "sy.toml:21:10: store.prefix: \"fleet\" is not a key prefix",
        ),
        (
            "[store]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl = \"1s\"\n",
            "sy.toml:21:13: store.lease_ttl: \"1s\" is out of range",
        ),
        (
            "[instance]\nlisten = { api = \"127.0.0.1:1\" }\n",
            "sy.toml:19:18: instance.listen.api: no listener named \"api\" (listeners: web)",
        ),
    ];
    for (extra, want) in cases {
        let src = format!("{BASE}\n{extra}");
        let err = switchyard::config::parse(&src, "sy.toml", Path::new("."))
            .expect_err("should be invalid")
            .to_string();
        assert!(
            err.contains(want),
            "for\n{extra}\nwant {want:?}\ngot  {err}"
        );
    }
    let fleet = format!(
        "{BASE}\n[store]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/sy/prod/\"\n\n[instance]\nname = \"lb-1\"\nlisten = {{ web = \"127.0.0.1:8081\" }}\n"
    );
    let c = switchyard::config::parse(&fleet, "sy.toml", Path::new(".")).unwrap();
    match &c.store {
        switchyard::config::StoreConfig::Etcd(e) => {
            assert_eq!((e.prefix.as_str(), e.lease_ttl.as_secs()), ("/sy/prod", 5));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.instance.listen["web"].port(), 8081);
}

/// An analysis after the base, with `CHECK` lines in its one check.
const ANALYSIS: &str = "[[analysis]]\nname = \"smoke\"\nCOUNT\n[[analysis.check]]\nname = \"c\"\nmetric = \"error-rate\"\nCHECK\n";

/// The diagnostics of the base plus an analysis whose check has `check` and whose analysis
/// has `count` (line 19 is the analysis's count, line 23 the check's line).
fn analysis_errors(count: &str, check: &str) -> Vec<String> {
    let src = format!(
        "{BASE}{}",
        ANALYSIS.replace("COUNT", count).replace("CHECK", check)
    );
    match switchyard::config::parse(&src, "sy.toml", Path::new(".")) {
        Ok(_) => Vec::new(),
        Err(e) => e.diagnostics().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn negative_and_nan_thresholds_are_rejected_at_their_key() {
    let at = "sy.toml:23";
    for (check, want) in [
        (
            "max_over_stable = -1",
            "sy.toml:23:19: analysis[0].check[0].max_over_stable: -1 is out of range: use 0 or more",
        ),
        (
            "max_over_stable = nan",
            "sy.toml:23:19: analysis[0].check[0].max_over_stable: NaN is not a number: use a finite bound",
        ),
        (
            "max_ratio_to_stable = -1",
            "sy.toml:23:23: analysis[0].check[0].max_ratio_to_stable: -1 is out of range: use 0.01 or more (a ratio to stable)",
        ),
        (
            "max_ratio_to_stable = 0.0",
            "sy.toml:23:23: analysis[0].check[0].max_ratio_to_stable: 0 is out of range: use 0.01 or more (a ratio to stable)",
        ),
        (
            "max = -0.5",
            "sy.toml:23:7: analysis[0].check[0].max: -0.5 is out of range: use 0 or more",
        ),
        (
            "min = inf",
            "sy.toml:23:7: analysis[0].check[0].min: inf is not a number: use a finite bound",
        ),
    ] {
        assert_eq!(analysis_errors("", check), [want], "{check}");
        assert!(want.starts_with(at));
    }
    // Mann-Whitney's confidence and tolerance, and the guard's rate, by the same range check.
    let e = analysis_errors(
        "",
        "max = 1\n[[analysis.check]]\nname = \"mw\"\nmann_whitney = { confidence = nan, tolerance = -1 }",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains("mann_whitney.confidence: NaN is out of range"),
        "{e:?}"
    );
    assert!(
        e[1].contains("mann_whitney.tolerance: -1 is out of range"),
        "{e:?}"
    );
    let e = error_of(
        "targets = [\"127.0.0.1:9001\"]",
        "targets = [\"127.0.0.1:9001\"]\n[service.guard]\nmax_error_rate = nan",
    );
    assert_eq!(
        e,
        "sy.toml:18:18: service[0].guard.max_error_rate: NaN is out of range: use 0 to 100 (points)"
    );
}

#[test]
fn a_prometheus_bound_may_be_negative_but_not_nan() {
    let prom = "prometheus = { url = \"http://127.0.0.1:9090\", query = \"q\" }";
    let src = |bound: &str| {
        ANALYSIS.replace("COUNT", "").replace(
            "metric = \"error-rate\"\nCHECK",
            &format!("{prom}\n{bound}"),
        )
    };
    let parse = |b: &str| {
        switchyard::config::parse(&format!("{BASE}{}", src(b)), "sy.toml", Path::new("."))
    };
    assert!(parse("min = -5").is_ok());
    let e = parse("min = nan").unwrap_err().to_string();
    assert_eq!(
        e,
        "sy.toml:23:7: analysis[0].check[0].min: NaN is not a number: use a finite bound"
    );
}

#[test]
fn an_analysis_count_of_zero_is_rejected_for_the_analysis_and_a_check() {
    assert_eq!(
        analysis_errors("count = 0", "max = 1"),
        ["sy.toml:19:9: analysis[0].count: 0 is out of range: use 1 to 10000 (measurements)"]
    );
    assert_eq!(
        analysis_errors("", "max = 1\ncount = 0"),
        ["sy.toml:24:9: analysis[0].check[0].count: 0 is out of range: use 1 to 10000 (measurements)"]
    );
}

#[test]
fn a_duration_too_large_for_any_clock_is_out_of_range_and_says_the_bound() {
    for huge in ["99999999999d", "99999999999999999999999d"] {
        let e = error_of(
            "active = \"blue\"",
            &format!("active = \"blue\"\nprogress_deadline = \"{huge}\""),
        );
        assert_eq!(
            e,
            format!("sy.toml:13:21: service[0].progress_deadline: \"{huge}\" is out of range: use 1ms to 7d")
        );
    }
}

#[test]
fn a_zero_health_check_interval_is_one_error_not_also_a_timeout_longer_than_it() {
    let e = error_of(
        "targets = [\"127.0.0.1:9001\"]",
        "targets = [\"127.0.0.1:9001\"]\n[service.health_check]\ninterval = \"0s\"\ntimeout = \"10s\"",
    );
    assert_eq!(
        e,
        "sy.toml:18:12: service[0].health_check.interval: \"0s\" is out of range: use 1ms to 1h"
    );
    // Both valid: the relation is still checked.
    let e = error_of(
        "targets = [\"127.0.0.1:9001\"]",
        "targets = [\"127.0.0.1:9001\"]\n[service.health_check]\ninterval = \"1s\"\ntimeout = \"10s\"",
    );
    assert_eq!(
        e,
        "sy.toml:19:11: service[0].health_check.timeout: timeout 10s is longer than interval 1s"
    );
}

#[test]
fn a_file_cut_inside_a_multi_byte_character_is_rejected_at_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.toml");
    let text = BASE.replacen("name = \"web\"", "name = \"web\" # ≤ 2", 1);
    let cut = text.find('≤').unwrap() + 1;
    std::fs::write(&path, &text.as_bytes()[..cut]).unwrap();
    let e = switchyard::config::load(&path).unwrap_err();
    let shown = path.display();
    assert_eq!(
        e.to_string(),
        format!("{shown}:2:16: syntax: the file ends inside a multi-byte character: it is cut short or not UTF-8")
    );
    // A byte that is not UTF-8 in the middle: located too.
    let mut bytes = BASE.as_bytes().to_vec();
    bytes[BASE.find("shop").unwrap()] = 0xE9;
    std::fs::write(&path, bytes).unwrap();
    let e = switchyard::config::load(&path).unwrap_err().to_string();
    assert_eq!(
        e,
        format!("{shown}:8:12: syntax: invalid UTF-8 here: the file must be UTF-8 text")
    );
}

#[test]
fn a_listener_on_the_admin_address_is_refused_by_validate() {
    for (admin, listener) in [
        ("127.0.0.1:9901", "127.0.0.1:9901"),
        ("0.0.0.0:9901", "127.0.0.1:9901"),
        ("127.0.0.1:9901", "0.0.0.0:9901"),
    ] {
        let e = error_of(
            "bind = \"127.0.0.1:8080\"",
            &format!("bind = \"{listener}\"\n[admin]\nbind = \"{admin}\""),
        );
        assert_eq!(
            e,
            format!("sy.toml:3:8: listener[0].bind: {listener} is the admin API's address ([admin] bind = \"{admin}\"): use another port")
        );
    }
    // Another address on the same port is another socket.
    let src = BASE.replacen(
        "bind = \"127.0.0.1:8080\"",
        "bind = \"127.0.0.2:9901\"\n[admin]\nbind = \"127.0.0.1:9901\"",
        1,
    );
    assert!(switchyard::config::parse(&src, "sy.toml", Path::new(".")).is_ok());
}

/// `switchyard run` of the usual config with `top` added, with `web` as the listener's
/// address: its exit code and stderr (it is expected to fail at once).
fn run_fails(top: &str, web: std::net::SocketAddr) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sy.toml");
    std::fs::write(dir.path().join("corrupt.db"), [0x5a_u8; 4096]).unwrap();
    let cfg = common::blue_green(free_port(), free_port())
        .bound_to(web, free_port())
        .top(top);
    std::fs::write(&path, cfg.build()).unwrap();
    let (code, _, err) = switchyard([std::ffi::OsStr::new("run"), "-c".as_ref(), path.as_os_str()]);
    assert_eq!(code, 1, "{err}");
    err
}

#[test]
fn a_corrupt_state_database_is_named_with_its_cause_once() {
    let err = run_fails("[store]\npath = \"corrupt.db\"", free_port());
    assert_eq!(err.matches("file is not a database").count(), 1, "{err}");
    assert_eq!(err.matches("state database").count(), 1, "{err}");
}

#[test]
fn a_listener_port_in_use_is_named_with_its_cause_once() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = run_fails("", held.local_addr().unwrap());
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert!(err.contains("cannot bind"), "{err}");
}
