use super::*;
use crate::analysis::Outcome;
use crate::analysis::{Metric, Threshold};

const T0: i64 = 1_764_000_000_000;

/// 30 seconds from `T0` of 100 candidate and 900 stable answers a second; from second 10 on
/// the candidate answers 20 % 5xx. Step 1 (an analysis) began 5.5 s in.
fn recording() -> Recording {
    let side = |n: u64, errors: u64, second: i64| Second {
        second: second as u64 / 1000,
        requests: n,
        classes: [0, n - errors, 0, 0, errors],
        failures: [0; 3],
        client_errors: 0,
        mirror: [0; 2],
        latency: vec![(60, n as u32)],
    };
    Recording {
        seconds: (0..30)
            .map(|i| {
                let at = T0 + i * 1000;
                RecordedSecond {
                    start_ms: at,
                    instances: 1,
                    candidate: side(100, if i >= 10 { 20 } else { 0 }, at),
                    stable: side(900, 0, at),
                }
            })
            .collect(),
        marks: vec![
            StepMark { step: 0, at_ms: T0 },
            StepMark {
                step: 1,
                at_ms: T0 + 5500,
            },
        ],
        dropped: 0,
    }
}

fn check(max: f64, provider: Provider) -> Check {
    Check {
        name: "errors".into(),
        provider,
        threshold: Threshold {
            max: Some(max),
            ..Threshold::default()
        },
        interval: Duration::from_secs(1),
        count: 10,
        failure_limit: 1,
        inconclusive_limit: 1,
        min_requests: 10,
        window: Duration::from_secs(2),
        judging: Default::default(),
    }
}

fn analysis(checks: Vec<Check>) -> AnalysisConfig {
    AnalysisConfig {
        name: "health".into(),
        checks,
        scoring: Default::default(),
    }
}

fn ctx() -> Context {
    Context {
        service: "shop".into(),
        rollout: Some(3),
        stable: "blue".into(),
        candidate: "green".into(),
        baseline: None,
        weight: 1000,
        analysis: String::new(),
        check: String::new(),
        since: 0,
        errors: None,
    }
}

async fn replayed(a: &AnalysisConfig, background: bool) -> Replay {
    replay(a, Arc::new(recording()), T0 + 5500, T0, background, &ctx()).await
}

#[tokio::test]
async fn a_replay_measures_each_interval_from_its_step_and_fails_when_the_limit_is_passed() {
    let a = analysis(vec![check(5.0, Provider::Metric(Metric::ErrorRate))]);
    let r = replayed(&a, false).await;
    assert_eq!(r.verdict, Some(Verdict::Fail), "{r:#?}");
    // At +10.5 s: seconds 8 and 9 and half of 10, 10 errors of 250 (4 %). At +11.5 s: 9, 10
    // and half of 11, 30 of 250 (12 %), the first failure; at +12.5 s 50 of 250, the second,
    // which passes the limit of 1.
    assert_eq!(r.decided_at_ms, Some(T0 + 12_500));
    assert!(
        r.detail.starts_with(
            "health: check errors failed 2 of 7 times (limit 1): error rate of green 20.00%"
        ),
        "{}",
        r.detail
    );
    let c = &r.checks[0];
    let outcomes: Vec<Outcome> = c
        .measurements
        .iter()
        .map(|m| m.measurement.outcome)
        .collect();
    use Outcome::{Fail, Pass};
    assert_eq!(outcomes, [Pass, Pass, Pass, Pass, Pass, Fail, Fail]);
    let values: Vec<f64> = c
        .measurements
        .iter()
        .filter_map(|m| m.measurement.value)
        .collect();
    assert_eq!(values[4..], [4.0, 12.0, 20.0]);
    // The first measurement, 1 s after the step began, sees the second the step began in
    // and half of the current one, none before: 150 requests, not the window's 250.
    let first = &c.measurements[0];
    assert_eq!((first.at_ms, first.offset_ms), (T0 + 6500, 6500));
    assert!(
        first.measurement.detail.contains("(150 requests)"),
        "{}",
        first.measurement.detail
    );
}

#[tokio::test]
async fn a_looser_threshold_over_the_same_seconds_passes_after_its_count() {
    let a = analysis(vec![check(25.0, Provider::Metric(Metric::ErrorRate))]);
    let r = replayed(&a, false).await;
    assert_eq!(r.verdict, Some(Verdict::Pass), "{r:#?}");
    assert_eq!(r.decided_at_ms, Some(T0 + 15_500));
    assert_eq!(r.checks[0].measurements.len(), 10);
    assert!(
        r.detail
            .contains("(10 measurements, 0 failed, 0 inconclusive)"),
        "{}",
        r.detail
    );
}

#[tokio::test]
async fn an_external_check_is_not_replayable_and_leaves_a_pass_undecided_but_not_a_failure() {
    let webhook = Provider::Webhook {
        url: "http://127.0.0.1:9/never-called".into(),
        timeout: Duration::from_secs(1),
    };
    let alone = analysis(vec![check(5.0, webhook.clone())]);
    let r = replayed(&alone, false).await;
    assert_eq!(r.verdict, None, "{r:#?}");
    assert!(!r.checks[0].replayable && r.checks[0].measurements.is_empty());
    assert!(r.detail.contains("not replayable"), "{}", r.detail);

    let mut hook = check(5.0, webhook);
    hook.name = "hook".into();
    let both = analysis(vec![hook, check(5.0, Provider::Metric(Metric::ErrorRate))]);
    let r = replayed(&both, false).await;
    assert_eq!(r.verdict, Some(Verdict::Fail), "{r:#?}");
    let mut loose = both.clone();
    loose.checks[1].threshold.max = Some(25.0);
    assert_eq!(replayed(&loose, false).await.verdict, None);
}

#[tokio::test]
async fn in_the_background_a_check_runs_until_the_recording_ends_and_says_so() {
    let a = analysis(vec![check(25.0, Provider::Metric(Metric::ErrorRate))]);
    let r = replayed(&a, true).await;
    assert_eq!(r.verdict, None, "{r:#?}");
    // From +5.5 s to the end of the last second (+30 s): 24 measurements, count ignored.
    assert_eq!(r.checks[0].measurements.len(), 24);
    assert!(
        r.detail.contains(
            "the recording ended after 24 measurements without a result that is not a pass"
        ),
        "{}",
        r.detail
    );
    let strict = analysis(vec![check(5.0, Provider::Metric(Metric::ErrorRate))]);
    assert_eq!(replayed(&strict, true).await.verdict, Some(Verdict::Fail));
}

#[test]
fn parts_of_a_recording_merge_in_order_each_second_and_step_once() {
    let whole = recording();
    let mut merged = Recording::default();
    let (a, b) = whole.seconds.split_at(12);
    merged.merge(Recording {
        seconds: b.to_vec(),
        marks: whole.marks[1..].to_vec(),
        dropped: 2,
    });
    merged.merge(Recording {
        seconds: a.to_vec(),
        marks: whole.marks.clone(),
        dropped: 1,
    });
    assert_eq!(merged.seconds, whole.seconds);
    // A second stored twice (a batch written again with more in it) keeps its later copy.
    let mut again = whole.seconds[11].clone();
    again.candidate.requests += 1;
    merged.merge(Recording {
        seconds: vec![again.clone()],
        ..Recording::default()
    });
    assert_eq!(merged.seconds.len(), whole.seconds.len());
    assert_eq!(merged.seconds[11], again);
    assert_eq!(merged.marks, whole.marks);
    assert_eq!(merged.dropped, 3);
    assert_eq!(merged.began(), Some(T0));
    assert_eq!(merged.ended(), Some(T0 + 30_000));
    assert_eq!(merged.step_began(1), Some(T0 + 5500));
    assert_eq!(merged.step_began(2), None);
}

/// As live: a check whose last measurement had too little evidence is inconclusive in the
/// replay too, though its one inconclusive measurement is within its limit.
#[tokio::test]
async fn a_replayed_check_that_ends_without_evidence_is_inconclusive() {
    let mut c = check(25.0, Provider::Metric(Metric::ErrorRate));
    (c.count, c.min_requests) = (1, 1_000_000);
    let r = replayed(&analysis(vec![c]), false).await;
    assert_eq!(r.verdict, Some(Verdict::Inconclusive), "{r:#?}");
    assert!(r.detail.contains("ended inconclusive"), "{}", r.detail);
}
