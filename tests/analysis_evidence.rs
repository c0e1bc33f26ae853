//! Enough evidence, or say so: the sample sizes against known values, a step's measuring
//! lengthened on tokio's paused clock (a `Windows` that serves a steady rate, so the
//! lengthened step's end is exact), and end to end a quiet candidate whose analysis comes
//! out "insufficient evidence" over real sockets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::release::*;
use common::*;
use switchyard::analysis::builtin;
use switchyard::analysis::evidence::{self, Plan};
use switchyard::analysis::external::Context;
use switchyard::analysis::run::{self, Judged, Windows};
use switchyard::analysis::AnalysisConfig;
use switchyard::metrics::{Summary, BUCKETS};
use switchyard::rollout::machine::Verdict;

/// One analysis named `a` from TOML (the analysis table's own lines, then its checks').
fn analysis(toml: &str) -> AnalysisConfig {
    analysis_of(&format!("[[analysis]]\nname = \"a\"\n{toml}"), "a")
}

/// `requests` answers, `per_mille` of them 5xx, all in one latency bucket.
fn summary(seconds: u64, requests: u64, per_mille: u64) -> Summary {
    let errors = requests * per_mille / 1000;
    let mut latency = vec![0; BUCKETS];
    latency[100] = requests;
    Summary {
        seconds,
        requests,
        classes: [0, requests - errors, 0, 0, errors],
        latency,
        ..Summary::default()
    }
}

/// Traffic at `candidate` and `stable` req/s with 1 % 5xx each, flowing for 10 s before the
/// test's start: a measurement (`since` > 0) sees what came since the start, the plan's
/// look before it (`since` = 0) the last 10 s. Read on tokio's clock.
fn steady(candidate: f64, stable: f64) -> Windows {
    let t0 = tokio::time::Instant::now();
    Arc::new(move |window: Duration, since: u64| {
        let elapsed = t0.elapsed();
        let span = if since > 0 {
            window.min(elapsed)
        } else {
            window.min(elapsed + Duration::from_secs(10))
        };
        let secs = span.as_secs_f64();
        Some(Judged {
            candidate: summary(span.as_secs(), (candidate * secs) as u64, 10),
            stable: summary(span.as_secs(), (stable * secs) as u64, 10),
            instances: 1,
        })
    })
}

fn ctx() -> Context {
    Context {
        service: "shop".into(),
        rollout: Some(1),
        stable: "blue".into(),
        candidate: "green".into(),
        baseline: None,
        weight: 0,
        analysis: "a".into(),
        check: String::new(),
        since: 1,
        errors: None,
    }
}

/// Five measurements a minute apart, lengthened up to 10 minutes, judging the error rate
/// with +100 % allowed over stable's 1 %.
const ERRORS: &str = "interval = \"1m\"\ncount = 5\nmax_duration = \"10m\"\n[[analysis.check]]\nname = \"errors\"\nmetric = \"error-rate\"\nallowed_increase = \"100%\"\n";

#[test]
fn the_two_proportion_sample_size_matches_the_textbook_value() {
    // Fleiss: 1 % → 1.2 %, one-sided α = 0.05, power 0.8, equal groups: 33,634 per group.
    let n = evidence::rates_needed(0.01, 0.012, 1.0, 0.05, 0.8);
    assert!((n - 33_634.0).abs() < 100.0, "{n}");
    // With a stable group 100 times larger, the candidate needs about half as many.
    let unequal = evidence::rates_needed(0.01, 0.012, 100.0, 0.05, 0.8);
    assert!(unequal < 0.55 * n && unequal > 0.45 * n, "{unequal}");
    assert!((builtin::z(0.95) - 1.6449).abs() < 1e-3);
    assert!((builtin::z(0.8) - 0.8416).abs() < 1e-3);
}

#[test]
fn noethers_sample_size_follows_the_chance_that_a_candidate_answer_is_slower() {
    let mut one_bucket = vec![0; BUCKETS];
    one_bucket[100] = 1000;
    // Slowed by more than a bucket, every candidate answer is slower: P = 1, and with
    // equal groups N = (z_α + z_β)² / (12 · ½ · ½ · ¼) of which half are the candidate's.
    let n = evidence::latency_needed(&one_bucket, 0.06, 1.0, 0.05, 0.8).unwrap();
    let expected = (1.6449_f64 + 0.8416).powi(2) / (12.0 * 0.5 * 0.25);
    assert!((n - expected).abs() < 0.05, "{n} vs {expected}");
    // A wide distribution needs more requests for the same +20 % than a narrow one.
    let mut wide = vec![0; BUCKETS];
    for b in wide.iter_mut().take(160).skip(40) {
        *b = 10;
    }
    let narrow = evidence::latency_needed(&one_bucket, 0.2, 1.0, 0.05, 0.8).unwrap();
    let spread = evidence::latency_needed(&wide, 0.2, 1.0, 0.05, 0.8).unwrap();
    assert!(spread > 10.0 * narrow, "{spread} vs {narrow}");
    assert_eq!(
        evidence::latency_needed(&vec![0; BUCKETS], 0.2, 1.0, 0.05, 0.8),
        None
    );
}

#[test]
fn the_plan_says_what_is_needed_and_what_the_step_and_its_maximum_give() {
    let a = analysis(ERRORS);
    // 1 % at 200 req/s of stable against 2 req/s of candidate (k = 100): ≈ 803 needed.
    let recent = Judged {
        candidate: summary(10, 20, 10),
        stable: summary(10, 2000, 10),
        instances: 1,
    };
    let [Plan::Need(need)] = &evidence::plan(&a, &recent, 0)[..] else {
        panic!("one planned check");
    };
    assert!((790..=815).contains(&need.requests), "{need:?}");
    assert_eq!(need.planned, Duration::from_secs(300));
    assert!(need.reached(), "{need:?}");
    let wanted = need.requests as f64 / 2.0;
    let stretched = need.stretched.as_secs_f64();
    assert!(stretched >= wanted && stretched <= wanted + 1.0, "{need:?}");
    let said = need.sentence();
    assert!(
        said.starts_with(&format!(
            "check errors needs ≈ {} candidate requests to see +100.0 % at 95 % confidence and 80 % power; at 2.0 req/s its 5m gives ≈ 600: lengthened to ",
            need.requests
        )),
        "{said}"
    );

    // At 1 req/s even 10 minutes give ≈ 600: lengthened to the maximum, and said so.
    let quiet = Judged {
        candidate: summary(10, 10, 10),
        ..recent
    };
    let [Plan::Need(need)] = &evidence::plan(&a, &quiet, 0)[..] else {
        panic!("one planned check");
    };
    assert!(!need.reached());
    assert_eq!(need.stretched, Duration::from_secs(600));
    let said = need.sentence();
    assert!(
        said.ends_with(
            "at 1.0 req/s its 5m gives ≈ 300, and the maximum 10m ≈ 600: lengthened to 10m (+5m)"
        ),
        "{said}"
    );
}

#[test]
fn a_check_without_evidence_settings_or_effect_size_is_not_planned() {
    let a = analysis(
        "[[analysis.check]]\nname = \"errors\"\nmetric = \"error-rate\"\nmax_over_stable = 1.0\n",
    );
    let recent = Judged {
        candidate: summary(10, 10, 10),
        stable: summary(10, 2000, 10),
        instances: 1,
    };
    assert_eq!(evidence::plan(&a, &recent, 0), vec![Plan::None]);
    assert_eq!(
        a.checks[0].window, a.checks[0].interval,
        "its window as before"
    );
}

/// `ERRORS` run against a candidate at `rate` req/s (stable at 200): how long it took on
/// the paused clock, its verdict and its sentence.
async fn timed(rate: f64) -> (Duration, Verdict, String) {
    let t0 = tokio::time::Instant::now();
    let report = run::run(&analysis(ERRORS), steady(rate, 200.0), ctx(), false).await;
    eprintln!("{}", report.detail);
    (t0.elapsed(), report.verdict, report.detail)
}

#[tokio::test(start_paused = true)]
async fn a_quiet_candidate_is_measured_up_to_the_maximum_and_comes_out_insufficient_never_a_pass() {
    let (took, verdict, detail) = timed(1.0).await;
    assert_eq!(took, Duration::from_secs(600), "lengthened to max_duration");
    assert_eq!(verdict, Verdict::Inconclusive, "{detail}");
    assert!(
        detail.starts_with("a: insufficient evidence: check errors needs ≈ "),
        "{detail}"
    );
    assert!(
        detail.contains("lengthened to 10m (+5m); it judged 600"),
        "{detail}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_is_lengthened_only_as_far_as_its_evidence_needs_and_then_passes() {
    let (took, verdict, detail) = timed(2.0).await;
    let secs = took.as_secs();
    assert!(
        (390..410).contains(&secs),
        "≈ 803 requests at 2 req/s: {took:?}"
    );
    assert_eq!(verdict, Verdict::Pass, "{detail}");
    assert!(
        detail.contains(&format!(
            ": lengthened to 6m {}s (+1m {}s)",
            secs - 360,
            secs - 360
        )),
        "{detail}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_candidate_is_not_lengthened() {
    let (took, verdict, detail) = timed(50.0).await;
    assert_eq!(took, Duration::from_secs(300));
    assert_eq!(verdict, Verdict::Pass, "{detail}");
    assert!(!detail.contains("lengthened"), "{detail}");
    assert!(
        detail.ends_with("score 100 of 100 (every check must pass): 1 of 1 checks passed"),
        "{detail}"
    );
}

bounded_test! {
    /// A candidate at about 2 req/s cannot show +20 % of stable's error rate in a few
    /// seconds: the step is lengthened to its maximum, and the rollout pauses with the
    /// sentence instead of passing.
    async fn a_quiet_candidates_analysis_step_pauses_with_insufficient_evidence() {
        let (blue, green) = TestBackend::pair().await;
        let top = "[[analysis]]\nname = \"quiet\"\ninterval = \"1s\"\ncount = 2\nmin_requests = 1\nmax_duration = \"3s\"\n[[analysis.check]]\nname = \"errors\"\nmetric = \"error-rate\"\nallowed_increase = \"20%\"\n";
        let sy = start(
            &blue_green(blue.addr, green.addr)
                .top(top)
                .service("[service.guard]\nenabled = false\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 50 }, { analysis = \"quiet\" }]")
                .build(),
        )
        .await;
        let api = admin(&sy);
        let url = web_url(&sy).await;
        // About 4 req/s to the service: 2 to the candidate at 50 %.
        let trickle = tokio::spawn(async move {
            let c = client();
            loop {
                let _ = get(&c, &url, &[]).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        start_green(&api).await;
        let r = wait_status(&api, 15, |r| r["status"] != "progressing").await;
        trickle.abort();
        assert_eq!(r["status"], "paused", "{r:#}");
        assert_eq!(r["weight"], 5000, "neither promoted nor rolled back");
        let why = reason(&r);
        eprintln!("{why}");
        assert!(
            why.contains("analysis inconclusive: quiet: insufficient evidence: check errors needs ≈ "),
            "{why}"
        );
        assert!(why.contains("candidate requests to see +20.0 % at 95 % confidence and 80 % power; at "), "{why}");
        assert!(why.contains("lengthened to 3s (+1s); it judged "), "{why}");
        let paused = events(&api, "service=shop&kind=paused").await;
        assert!(reason(&paused[0]).contains("insufficient evidence"), "{paused:?}");
    }
}

#[test]
fn the_readmes_worked_example_holds() {
    let a = analysis("interval = \"1m\"\ncount = 5\nmax_duration = \"10m\"\n[[analysis.check]]\nname = \"errors\"\nmetric = \"error-rate\"\nallowed_increase = \"50%\"\n");
    // Canary at 10 %: stable 9× the candidate, both at 1 % 5xx (over 100 s, so that 1 % is
    // whole answers).
    let at = |candidate: u64| Judged {
        candidate: summary(100, candidate * 100, 10),
        stable: summary(100, candidate * 900, 10),
        instances: 1,
    };
    let said = |candidate| match &evidence::plan(&a, &at(candidate), 0)[..] {
        [Plan::Need(need)] => need.sentence(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        said(6),
        "check errors needs ≈ 3,199 candidate requests to see +50.0 % at 95 % confidence and 80 % power; at 6.0 req/s its 5m gives ≈ 1,800: lengthened to 8m 54s (+3m 54s), ≈ 3,204"
    );
    assert_eq!(
        said(5),
        "check errors needs ≈ 3,199 candidate requests to see +50.0 % at 95 % confidence and 80 % power; at 5.0 req/s its 5m gives ≈ 1,500, and the maximum 10m ≈ 3,000: lengthened to 10m (+5m)"
    );
}
