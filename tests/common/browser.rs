//! The scripts of tests/browser (playwright-core driving Debian's Chromium, both installed by
//! ./scripts/test), run with node to their end.

/// Runs tests/browser/`script` with node and `args`: all it printed (stdout, then stderr),
/// printed here too; a script that fails fails the test with it.
pub(crate) async fn run(script: &str, args: &[String]) -> String {
    let path = format!("{}/tests/browser/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("node")
        .arg(path)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs (./scripts/test installs node dependencies and chromium)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{said}");
    assert!(out.status.success(), "{script}: {said}");
    said
}
