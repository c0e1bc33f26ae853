use super::*;

/// `as_str` is the name serde writes (the store's and the API's), for every variant.
#[test]
fn names_are_serdes() {
    let serde_name = |v: serde_json::Value| v.as_str().unwrap().to_string();
    for s in [
        Status::Progressing,
        Status::Paused,
        Status::Completed,
        Status::Aborted,
        Status::RolledBack,
    ] {
        assert_eq!(serde_name(serde_json::to_value(s).unwrap()), s.as_str());
    }
    for p in [
        HookPoint::BeforeTraffic,
        HookPoint::BeforePromotion,
        HookPoint::AfterTraffic,
        HookPoint::AfterRollout,
        HookPoint::OnRollback,
    ] {
        assert_eq!(serde_name(serde_json::to_value(p).unwrap()), p.as_str());
    }
    use machine::Verdict;
    for v in [Verdict::Pass, Verdict::Fail, Verdict::Inconclusive] {
        assert_eq!(serde_name(serde_json::to_value(v).unwrap()), v.as_str());
    }
}

#[test]
fn presets_expand_to_steps() {
    let s = Strategy::preset("canary-10pct-5m").unwrap();
    assert_eq!(
        s.steps,
        vec![
            Step::SetWeight { weight: 1000 },
            Step::Pause {
                duration_ms: Some(300_000)
            }
        ]
    );
    let s = Strategy::preset("linear-10pct-every-1m").unwrap();
    assert_eq!(s.steps.len(), 18);
    assert_eq!(s.steps[16], Step::SetWeight { weight: 9000 });
    assert!(Strategy::preset("linear-0pct-every-1m").is_none());
    assert!(Strategy::preset("canary-10pct").is_none());
    assert!(Strategy::preset("bogus").is_none());
    assert_eq!(
        Strategy::preset("canary-0.5pct-30s").unwrap().steps[0],
        Step::SetWeight { weight: 50 }
    );
}

#[test]
fn a_step_keeps_the_time_it_began_until_the_step_or_the_attempt_changes() {
    let mut r = Rollout::new(
        "shop",
        "blue",
        "green",
        Strategy::canary(vec![Step::SetWeight { weight: 1000 }]),
        "test".into(),
        0,
    );
    let began = |r: &Rollout| r.step_began.map(|b| (b.step, b.attempt, b.at));
    r.mark_step_began(10);
    assert_eq!(began(&r), Some((0, 0, 10)));
    r.mark_step_began(20);
    assert_eq!(
        began(&r),
        Some((0, 0, 10)),
        "the same step: a hold or a checkpoint"
    );
    r.step = 1;
    r.mark_step_began(30);
    assert_eq!(began(&r), Some((1, 0, 30)));
    (r.step, r.attempt) = (0, 1);
    r.mark_step_began(40);
    assert_eq!(
        began(&r),
        Some((0, 1, 40)),
        "a retry's first step is a new one"
    );
    let back: Rollout = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
    assert_eq!(back, r, "persisted with the rollout");
}
