//! What `contrib/` ships for running switchyard for real: the systemd unit passes
//! `systemd-analyze verify` without a word, is hardened (systemd's own exposure score), reloads
//! with SIGHUP and waits for the drain; its dedicated user is made by `systemd-sysusers`. No
//! systemd runs here: these are systemd's offline checks of the files as shipped, with the
//! binary's path pointed at the one just built.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = include_str!("../contrib/switchyard.service");

/// The unit as installed, with `/usr/local/bin/switchyard` replaced by the binary under test
/// (verify checks that `ExecStart=` names an executable), in a fresh directory.
fn installed_unit() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.service");
    let unit = UNIT.replace(
        "/usr/local/bin/switchyard",
        env!("CARGO_BIN_EXE_switchyard"),
    );
    std::fs::write(&path, unit).unwrap();
    (dir, path)
}

fn run(cmd: &str, args: &[&str], file: &Path) -> Output {
    Command::new(cmd)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} (from Debian's systemd package): {e}"))
}

/// The `Key=value` lines of `section`.
fn keys(section: &str) -> Vec<(&'static str, &'static str)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in UNIT.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == format!("[{section}]");
        } else if inside && !line.starts_with('#') {
            if let Some(kv) = line.split_once('=') {
                out.push(kv);
            }
        }
    }
    out
}

fn value(section: &str, key: &str) -> &'static str {
    keys(section)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("[{section}] {key}= is missing"))
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify_without_a_warning() {
    let (_dir, unit) = installed_unit();
    let out = run("systemd-analyze", &["verify", "--man=no"], &unit);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // An unknown or misspelt key is only a warning to systemd (exit 0): any output fails.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
}

#[test]
fn the_systemd_unit_is_hardened_to_an_exposure_of_at_most_2() {
    let (_dir, unit) = installed_unit();
    let out = run("systemd-analyze", &["security", "--offline=yes"], &unit);
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for switchyard.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    println!("exposure level: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}

#[test]
fn the_systemd_unit_runs_a_dedicated_user_reloads_with_sighup_and_waits_for_the_drain() {
    assert_eq!(value("Service", "User"), "switchyard");
    assert_eq!(value("Service", "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert!(value("Service", "ExecStart").contains(" run -c /etc/switchyard/switchyard.toml"));
    // The default drain (`timeouts.shutdown`, 30 s) and the pending writes after it fit.
    let stop = humantime::parse_duration(value("Service", "TimeoutStopSec")).unwrap();
    assert!(stop.as_secs() > 30, "TimeoutStopSec={stop:?}");
    assert_eq!(value("Service", "NoNewPrivileges"), "yes");
}

#[test]
fn the_dedicated_user_is_made_by_systemd_sysusers() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/switchyard.sysusers");
    let arg = format!("--root={}", root.path().display());
    let out = run("systemd-sysusers", &[&arg], &conf);
    assert!(
        out.status.success(),
        "systemd-sysusers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("switchyard:"))
        .unwrap_or_else(|| panic!("no switchyard user in:\n{passwd}"));
    assert!(user.contains(":/var/lib/switchyard:"), "{user}");
    assert!(!user.starts_with("switchyard:x:0:"), "{user}");
}

/// `readelf -S -W`'s section names of `file`.
fn sections(file: &Path) -> Vec<String> {
    let out = run("readelf", &["-S", "-W"], file);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("] ")?.1.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_release_split_ships_a_binary_without_debug_info_whose_addresses_still_resolve_to_lines() {
    // The split of scripts/release, on the binary the tests built (line tables, like the
    // release profile): the same objcopy steps, without a 15-minute release build.
    let bin = Path::new(env!("CARGO_BIN_EXE_switchyard"));
    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/release");
    let split = Command::new(script)
        .arg(bin)
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        split.status.success(),
        "scripts/release: {}",
        String::from_utf8_lossy(&split.stderr)
    );
    let (shipped, debug) = (
        out.path().join("switchyard"),
        out.path().join("switchyard.debug"),
    );
    let kept = sections(&shipped);
    assert!(
        // (`.debug_gdb_scripts` is a few bytes loaded with the program, not debug information.)
        !kept
            .iter()
            .any(|s| s.starts_with(".debug_") && s != ".debug_gdb_scripts"),
        "debug sections shipped: {kept:?}"
    );
    assert!(kept.iter().any(|s| s == ".symtab") && kept.iter().any(|s| s == ".gnu_debuglink"));
    assert!(sections(&debug).iter().any(|s| s == ".debug_line"));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    println!(
        "{} MB -> {} MB shipped + {} MB debug",
        size(bin) >> 20,
        size(&shipped) >> 20,
        size(&debug) >> 20
    );
    assert!(size(&shipped) < size(bin) / 2);
    // It runs, and an address in it resolves to a function (its symbol table) and, through
    // the debug link beside it, to a file and line: what a backtrace prints.
    let version = Command::new(&shipped).arg("--version").output().unwrap();
    assert!(version.status.success());
    let nm = run("nm", &["-C", "--defined-only"], &shipped);
    let symbols = String::from_utf8_lossy(&nm.stdout);
    let main = symbols
        .lines()
        .find(|l| l.ends_with(" switchyard::main"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no switchyard::main symbol"));
    let exe = format!("--exe={}", shipped.display());
    let at = Command::new("addr2line")
        .args([exe.as_str(), "-f", "-C"])
        .arg(format!("0x{main}"))
        .output()
        .unwrap();
    let at = String::from_utf8_lossy(&at.stdout);
    assert!(
        at.contains("switchyard::main") && at.contains("src/main.rs:"),
        "{at}"
    );
}
