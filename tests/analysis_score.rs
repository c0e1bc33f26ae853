//! Scoring like Kayenta, explained unlike it: the one rule (`score::judge`) on tallies, the
//! effect-size sentence of a latency check on real histograms, the new keys' validation at
//! their line and column, and end to end a scored analysis that pauses at a marginal score,
//! a critical check that rolls back whatever the score, and the dry run's verdicts.

mod common;

use std::time::Duration;

use common::release::*;
use common::*;
use serde_json::json;
use switchyard::analysis::external::Context;
use switchyard::analysis::run::{self, Judged, Windows};
use switchyard::analysis::score::{judge, CheckTally, Tallied};
use switchyard::analysis::{AnalysisConfig, Outcome};
use switchyard::rollout::machine::Verdict;

/// Three checks of analysis `a`, with the analysis's own lines (`pass_score`, …) first.
fn three(head: &str, errors: &str) -> AnalysisConfig {
    analysis_of(
        &format!(
            "[[analysis]]\nname = \"a\"\n{head}\n[[analysis.check]]\nname = \"errors\"\nmetric = \"error-rate\"\nmax_over_stable = 1.0\n{errors}\n[[analysis.check]]\nname = \"p99\"\nmetric = \"latency-p99\"\nmax_over_stable = 50.0\n[[analysis.check]]\nname = \"smoke\"\ncommand = \"exit 0\"\n"
        ),
        "a",
    )
}

fn tally(check: &str, result: Tallied) -> CheckTally {
    CheckTally {
        check: check.into(),
        result,
        sentence: format!("check {check} {result:?}"),
        short_of: None,
    }
}

/// The tallies of errors, p99 and smoke, in that order.
fn tallies(results: [Tallied; 3]) -> Vec<CheckTally> {
    ["errors", "p99", "smoke"]
        .into_iter()
        .zip(results)
        .map(|(c, r)| tally(c, r))
        .collect()
}

use Tallied::{Failed, Inconclusive, Passed};

/// Each row's tallies of errors, p99 and smoke give `a` that verdict and score.
fn assert_scores(a: &AnalysisConfig, rows: &[([Tallied; 3], Verdict, u32)]) {
    for (results, verdict, score) in rows {
        let r = judge(a, &tallies(*results));
        assert_eq!(
            (r.verdict, r.score),
            (*verdict, *score),
            "{results:?}: {r:?}"
        );
    }
}

#[test]
fn without_scores_every_check_must_pass_as_before() {
    let a = three("", "");
    assert_scores(
        &a,
        &[
            ([Passed, Passed, Passed], Verdict::Pass, 100),
            ([Failed, Passed, Passed], Verdict::Fail, 66),
            ([Passed, Inconclusive, Passed], Verdict::Inconclusive, 66),
        ],
    );
    assert_eq!(
        judge(&a, &tallies([Failed, Passed, Passed])).detail,
        "a: check errors Failed; score 66 of 100 (every check must pass): 2 of 3 checks passed"
    );
    let r = judge(&a, &tallies([Passed, Inconclusive, Passed]));
    assert!(
        r.detail.starts_with("a: check p99 Inconclusive; score 66"),
        "{r:?}"
    );
    // A failure decides even while another check is still measuring.
    let r = judge(&a, &[tally("errors", Failed)]);
    assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
}

#[test]
fn a_score_at_or_above_pass_passes_above_marginal_pauses_and_below_fails() {
    let a = three("pass_score = 90\nmarginal_score = 60", "");
    assert_scores(
        &a,
        &[
            ([Passed, Failed, Passed], Verdict::Inconclusive, 66),
            ([Failed, Failed, Passed], Verdict::Fail, 33),
            ([Passed, Passed, Passed], Verdict::Pass, 100),
        ],
    );
    assert_eq!(
        judge(&a, &tallies([Passed, Failed, Passed])).detail,
        "a: score 66 of 100 (pass ≥ 90, marginal ≥ 60): 2 of 3 checks passed; check p99 Failed"
    );
    // 2 of 3 pass when the pass score is 66.
    let lenient = three("pass_score = 66", "");
    assert_scores(&lenient, &[([Passed, Failed, Passed], Verdict::Pass, 66)]);
}

#[test]
fn a_failed_critical_check_fails_whatever_the_score() {
    let a = three("pass_score = 50\nmarginal_score = 10", "critical = true");
    // Not critical, the same failure leaves 66: a pass.
    assert_scores(
        &a,
        &[
            ([Failed, Passed, Passed], Verdict::Fail, 0),
            ([Passed, Failed, Passed], Verdict::Pass, 66),
        ],
    );
    assert_eq!(
        judge(&a, &tallies([Failed, Passed, Passed])).detail,
        "a: check errors Failed (critical); score 0 of 100 (pass ≥ 50, marginal ≥ 10): critical check errors failed"
    );
}

#[test]
fn weights_set_each_checks_share_of_the_score() {
    let a = three("pass_score = 90\nmarginal_score = 30", "weight = 3");
    assert_scores(
        &a,
        &[
            ([Failed, Passed, Passed], Verdict::Inconclusive, 40),
            ([Passed, Failed, Failed], Verdict::Inconclusive, 60),
        ],
    );
}

#[test]
fn an_unknown_check_counts_whichever_way_could_change_the_verdict() {
    let a = three("pass_score = 60\nmarginal_score = 40", "");
    // 33 known, 66 at best: neither a pass nor surely below the marginal score; 33 at
    // best: below 40 whatever the unknown check would have said; 66 at worst: a pass.
    assert_scores(
        &a,
        &[
            ([Failed, Inconclusive, Passed], Verdict::Inconclusive, 33),
            ([Failed, Failed, Inconclusive], Verdict::Fail, 0),
            ([Passed, Passed, Inconclusive], Verdict::Pass, 66),
        ],
    );
    let r = judge(&a, &tallies([Failed, Inconclusive, Passed]));
    assert!(
        r.detail.contains("1 of 3 checks passed, 1 not known"),
        "{r:?}"
    );
}

#[test]
fn a_check_short_of_evidence_never_lets_the_analysis_pass() {
    let a = three("pass_score = 60", "");
    let mut t = tallies([Passed, Passed, Passed]);
    t[0].short_of = Some("insufficient evidence: check errors needs ≈ 1,840".into());
    let r = judge(&a, &t);
    assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
    assert!(
        r.detail
            .ends_with("; insufficient evidence: check errors needs ≈ 1,840"),
        "{r:?}"
    );
    let unscored = three("", "");
    let r = judge(&unscored, &t);
    assert!(
        r.detail
            .starts_with("a: insufficient evidence: check errors needs ≈ 1,840; score 66"),
        "{r:?}"
    );
}

/// A latency summary of `n` answers around `ms`, spread ±10 %.
fn latencies(n: u64, ms: f64) -> switchyard::metrics::Summary {
    let w = switchyard::metrics::Window::default();
    let second = switchyard::metrics::now_second();
    for i in 0..n {
        let spread = 0.9 + 0.2 * (i % 10) as f64 / 10.0;
        w.record(
            second,
            200,
            Duration::from_secs_f64(ms * spread / 1000.0),
            None,
        );
    }
    w.last(Duration::from_secs(1))
}

#[tokio::test]
async fn a_latency_bound_says_both_groups_p99_the_change_and_its_significance() {
    let a = analysis_of(
        "[[analysis]]\nname = \"a\"\n[[analysis.check]]\nname = \"latency-p99\"\nmetric = \"latency-p99\"\nallowed_increase = \"20%\"\n",
        "a",
    );
    let ctx = Context {
        service: "shop".into(),
        rollout: None,
        stable: "blue".into(),
        candidate: "green".into(),
        baseline: None,
        weight: 1000,
        analysis: "a".into(),
        check: "latency-p99".into(),
        since: 0,
        errors: None,
    };
    let judged = |candidate_ms: f64| -> Windows {
        let j = Judged {
            candidate: latencies(300, candidate_ms),
            stable: latencies(3000, 120.0),
            instances: 1,
        };
        std::sync::Arc::new(move |_, _| Some(j.clone()))
    };
    let m = run::measure(&a.checks[0], &judged(165.0), &ctx).await;
    assert_eq!(m.outcome, Outcome::Fail, "{m:?}");
    assert!(
        m.detail.starts_with("p99 of green 17")
            && m.detail.contains(" ms vs blue 12")
            && m.detail.contains(" ms (300 vs 3000 requests): +")
            && m.detail
                .ends_with(" % > allowed +20.0 % (Mann-Whitney p < 0.0001)"),
        "{}",
        m.detail
    );
    let m = run::measure(&a.checks[0], &judged(125.0), &ctx).await;
    assert_eq!(m.outcome, Outcome::Pass, "{m:?}");
    assert!(
        m.detail.ends_with(" within allowed +20.0 %"),
        "{}",
        m.detail
    );
}

/// The problems of `top` in the testkit's configuration, their lines counted from `top`'s
/// first (where the testkit puts it is its business).
fn problems(top: &str) -> String {
    let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let text = blue_green(at(9001), at(9002)).top(top).build();
    let before = text[..text.find(top).unwrap()].lines().count();
    let Err(e) = switchyard::config::parse(&text, "sy.toml", std::path::Path::new(".")) else {
        return String::new();
    };
    e.to_string()
        .lines()
        .map(
            |l| match l.strip_prefix("sy.toml:").and_then(|r| r.split_once(':')) {
                Some((line, rest)) => match line.parse::<usize>() {
                    Ok(n) => format!("sy.toml:{}:{rest}", n - before),
                    Err(_) => l.to_string(),
                },
                None => l.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

const CHECK: &str =
    "[[analysis]]\nname = \"a\"\n[[analysis.check]]\nname = \"c\"\nmetric = \"error-rate\"\n";

#[test]
fn the_new_keys_are_validated_at_their_line_and_column() {
    let e = problems(&format!("{CHECK}allowed_increase = \"20\"\n"));
    assert!(
        e.contains("sy.toml:6:20: analysis[0].check[0].allowed_increase: \"20\" is not a percentage: use e.g. \"20%\""),
        "{e}"
    );
    let e = problems(&format!("{CHECK}allowed_decrease = \"100%\"\n"));
    assert!(e.contains("sy.toml:6:20: analysis[0].check[0].allowed_decrease: 100 is out of range: use 0 to 99.9"), "{e}");
    let e = problems(&format!(
        "{CHECK}max_over_stable = 1.0\nweight = 0\ncritical = true\n"
    ));
    assert!(
        e.contains(
            "sy.toml:7:10: analysis[0].check[0].weight: 0 is out of range: use 0.01 to 1000"
        ),
        "{e}"
    );
    let e = problems(
        "[[analysis]]\nname = \"a\"\npass_score = 80\nmarginal_score = 90\n[[analysis.check]]\nname = \"c\"\ncommand = \"true\"\n",
    );
    assert!(
        e.contains("sy.toml:4:18: analysis[0].marginal_score: marginal_score 90 is above pass_score 80: use at most 80"),
        "{e}"
    );
    let e = problems("[[analysis]]\nname = \"a\"\npass_score = 101\n[[analysis.check]]\nname = \"c\"\ncommand = \"true\"\n");
    assert!(
        e.contains("sy.toml:3:14: analysis[0].pass_score: 101 is out of range: use 0 to 100"),
        "{e}"
    );
    let e = problems("[[analysis]]\nname = \"a\"\n[[analysis.check]]\nname = \"c\"\ncommand = \"true\"\nallowed_increase = \"20%\"\n");
    assert!(
        e.contains("sy.toml:6:20: analysis[0].check[0].allowed_increase: only a metric check"),
        "{e}"
    );
    let e = problems("[[analysis]]\nname = \"a\"\n[[analysis.check]]\nname = \"c\"\nmetric = \"request-rate\"\nallowed_increase = \"20%\"\n");
    assert!(e.contains("sy.toml:6:20: analysis[0].check[0].allowed_increase: a request rate follows the weight"), "{e}");
}

#[test]
fn max_duration_is_bounded_by_what_the_metrics_keep_and_by_the_checks_own_measuring() {
    let e = problems("[[analysis]]\nname = \"a\"\nmax_duration = \"20m\"\n[[analysis.check]]\nname = \"c\"\nmann_whitney = {}\n");
    assert!(
        e.contains(
            "sy.toml:3:16: analysis[0].max_duration: \"20m\" is out of range: use 1ms to 10m"
        ),
        "{e}"
    );
    let e = problems("[[analysis]]\nname = \"a\"\ninterval = \"1m\"\ncount = 5\nmax_duration = \"2m\"\n[[analysis.check]]\nname = \"c\"\nmann_whitney = {}\n");
    assert!(
        e.contains("sy.toml:5:16: analysis[0].max_duration: max_duration 2m is shorter than check \"c\"'s own measuring (5m = count × interval)"),
        "{e}"
    );
    let e = problems(&format!(
        "{CHECK}allowed_increase = \"20%\"\nwindow = \"10s\"\n"
    ));
    assert!(
        e.contains("sy.toml:7:10: analysis[0].check[0].window: a check whose evidence is planned"),
        "{e}"
    );
    let e = problems("[[analysis]]\nname = \"a\"\n[[analysis.check]]\nname = \"c\"\ncommand = \"true\"\nmax_duration = \"1m\"\n");
    assert!(
        e.contains(
            "sy.toml:6:16: analysis[0].check[0].max_duration: max_duration lengthens a comparison"
        ),
        "{e}"
    );
    let e = problems("[[analysis]]\nname = \"a\"\nconfidence = 0.99\npower = 0.9\nmax_duration = \"10m\"\n[[analysis.check]]\nname = \"c\"\nmetric = \"error-rate\"\nallowed_increase = \"20%\"\n");
    assert_eq!(e, "", "{e}");
}

/// Two analyses of three checks over the same traffic: `scored` (pass 90, marginal 60) and
/// `critical` (its error check critical).
const SCORED: &str = r#"
[[analysis]]
name = "scored"
interval = "300ms"
count = 2
min_requests = 20
pass_score = 90
marginal_score = 60
[[analysis.check]]
name = "errors"
metric = "error-rate"
max_over_stable = 5.0
[[analysis.check]]
name = "p99"
metric = "latency-p99"
max_over_stable = 200.0
[[analysis.check]]
name = "smoke"
command = "exit 0"

[[analysis]]
name = "critical"
interval = "300ms"
count = 2
min_requests = 20
pass_score = 60
[[analysis.check]]
name = "errors"
metric = "error-rate"
max_over_stable = 5.0
critical = true
[[analysis.check]]
name = "p99"
metric = "latency-p99"
max_over_stable = 200.0
[[analysis.check]]
name = "smoke"
command = "exit 0"
"#;

bounded_test! {
    /// A candidate answering 30 % 5xx: 2 of 3 checks pass, 66 is marginal and the rollout
    /// pauses for a person; with the error check critical the same traffic rolls back.
    async fn a_marginal_score_pauses_and_a_failed_critical_check_rolls_back() {
        let (blue, green) = TestBackend::pair().await;
        green.set_errors(300);
        let sy = start(
            &blue_green(blue.addr, green.addr)
                .top(SCORED)
                .service("[service.guard]\nenabled = false")
                .build(),
        )
        .await;
        let api = admin(&sy);
        let load = Load::start(web_url(&sy).await, 4, &[]);
        start_rollout(&api, json!({ "kind": "canary", "steps": [{ "weight": 30 }, { "analysis": "scored" }] })).await;
        let r = wait_status(&api, 10, |r| r["status"] != "progressing").await;
        assert_eq!(r["status"], "paused", "{r:#}");
        let why = reason(&r);
        eprintln!("{why}");
        assert!(
            why.contains("analysis inconclusive: scored: score 66 of 100 (pass ≥ 90, marginal ≥ 60): 2 of 3 checks passed; check errors failed 1 of 1 times (limit 0): error rate of green "),
            "{why}"
        );
        assert!(why.contains("% vs blue "), "{why}");

        // The dry run judges the same way, each analysis with its verdict and score.
        let res = api
            .post("/api/v1/services/shop/analysis/run", json!({ "candidate": "green", "analysis": "critical" }))
            .await
            .unwrap();
        let verdict = &res["analyses"][0];
        assert_eq!((&verdict["verdict"], &verdict["score"]), (&json!("fail"), &json!(0)), "{res:#}");
        assert!(verdict["detail"].as_str().unwrap().contains("(critical); score 0 of 100 (pass ≥ 60, marginal ≥ 60): critical check errors failed"), "{res:#}");

        verb(&api, "abort", json!({})).await;
        wait_status(&api, 5, |r| r["status"] == "aborted").await;
        start_rollout(&api, json!({ "kind": "canary", "steps": [{ "weight": 30 }, { "analysis": "critical" }] })).await;
        let r = wait_status(&api, 10, |r| r["status"] == "aborted" && r["id"] == 2).await;
        load.stop().await;
        let why = reason(&r);
        eprintln!("{why}");
        assert!(
            why.contains("analysis failed: critical: check errors failed 1 of 1 times (limit 0): error rate of green"),
            "{why}"
        );
        assert!(why.contains("(critical); score 0 of 100 (pass ≥ 60, marginal ≥ 60): critical check errors failed"), "{why}");
    }
}

/// Three command checks, one failing, under `head` (the analysis's scoring lines).
fn commands(name: &str, head: &str, bad: &str) -> String {
    format!(
        "[[analysis]]\nname = \"{name}\"\n{head}\n[[analysis.check]]\nname = \"ok\"\ncommand = \"exit 0\"\n[[analysis.check]]\nname = \"also-ok\"\ncommand = \"exit 0\"\n[[analysis.check]]\nname = \"bad\"\ncommand = \"exit 1\"\n{bad}\n"
    )
}

bounded_test! {
    /// `analysis run` exits by each analysis's verdict, not by its worst measurement: 2 of 3
    /// passing is marginal (4) under pass 90 / marginal 60, a pass (0) under pass 60, and a
    /// failure (3) when the failing check is critical.
    async fn analysis_run_exits_by_the_verdict_of_the_score() {
        use common::bin::*;
        let bin = Binary::setup().await;
        let analyses = [
            commands("marginal", "pass_score = 90\nmarginal_score = 60", ""),
            commands("lenient", "pass_score = 60", ""),
            commands("critical", "pass_score = 60", "critical = true"),
        ]
        .concat();
        let text = std::fs::read_to_string(&bin.path)
            .unwrap()
            .replacen("[[service]]", &format!("{analyses}[[service]]"), 1);
        std::fs::write(&bin.path, text).unwrap();
        let _sy = run_binary(&bin.path, bin.admin).await;
        let run = |analysis: &str| {
            cli(&bin.path, &["analysis", "run", "shop", "--analysis", analysis, "--candidate", "green"])
        };
        let (code, out, err) = run("marginal");
        assert_eq!(code, 4, "{out}{err}");
        assert!(
            out.contains("marginal: inconclusive (score 66) — marginal: score 66 of 100 (pass ≥ 90, marginal ≥ 60): 2 of 3 checks passed; check bad "),
            "{out}"
        );
        let (code, out, err) = run("lenient");
        assert_eq!(code, 0, "{out}{err}");
        let (code, out, err) = run("critical");
        assert_eq!(code, 3, "{out}{err}");
        assert!(out.contains("critical: fail (score 0) — critical: check bad "), "{out}");
    }
}
