//! Every class of configuration error names the file, line, column and field.

use std::path::Path;

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
        "sy.toml:8:1: route[0].proirity: unknown field `proirity`, expected one of `name`, `priority`, `listeners`, `match`, `forward`, `override`, `fixed_response`, `redirect`"
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
