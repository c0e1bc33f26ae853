//! The control plane's timers on tokio's paused clock: a controller started in-process with
//! a wall clock that follows tokio's (`Clock::following_tokio`), driven through virtual
//! minutes in milliseconds of real time. Each test checks the moment just before a timer is
//! due (nothing happened yet) and just after (it happened), so a timer that fires early or
//! late fails it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::{Clock, Controller};
use crate::rollout::{Rollout, Status};
use crate::store::EventQuery;

/// The wall clock's reading when a test starts.
const EPOCH_MS: i64 = 1_700_000_000_000;

/// A controller for service `shop` (stable `blue`, candidate `green`, targets nobody
/// connects to), with `service` added to the service's table and `top` at the top level.
async fn controller(service: &str, top: &str) -> Arc<Controller> {
    let toml = format!(
        "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"all\"\npriority = 1\nforward = \"shop\"\n\n\
         {top}\n\
         [[service]]\nname = \"shop\"\nactive = \"blue\"\n{service}\n\
         [[service.group]]\nname = \"blue\"\ntargets = [\"127.0.0.1:9\"]\n\
         [[service.group]]\nname = \"green\"\ntargets = [\"127.0.0.2:9\"]\n"
    );
    let mut config = crate::config::parse(&toml, "test.toml", Path::new("."))
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    config.store = crate::config::StoreConfig::memory();
    Controller::start_with(config, None, Clock::following_tokio(EPOCH_MS))
        .await
        .expect("controller starts")
}

/// A controller (see [`controller`]) with the rollout to `green` started (no health to wait
/// for: `force`), the moment it started, and the rollout.
async fn started(service: &str, top: &str) -> (Arc<Controller>, Instant, Rollout) {
    let control = controller(service, top).await;
    let t0 = Instant::now();
    let r = control
        .start_rollout("shop", "green", None, true, "test")
        .await
        .expect("rollout starts")
        .rollout;
    (control, t0, r)
}

async fn now(control: &Controller) -> Rollout {
    control.rollout("shop").await.expect("a rollout").rollout
}

/// Waits on the paused clock, in 1 ms steps, for `done`; panics after `within`.
async fn eventually(
    control: &Controller,
    within: Duration,
    what: &str,
    done: impl Fn(&Rollout) -> bool,
) -> Rollout {
    let deadline = Instant::now() + within;
    loop {
        let r = now(control).await;
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "not within {within:?}: {what}; {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

const SLACK: Duration = Duration::from_millis(1);

/// The rollout a moment (`SLACK`) before `secs` seconds after `t0`.
async fn just_before(control: &Controller, t0: Instant, secs: u64) -> Rollout {
    sleep_until(t0 + Duration::from_secs(secs) - SLACK).await;
    now(control).await
}

#[tokio::test(start_paused = true)]
async fn a_ten_minute_pause_moves_on_at_ten_minutes_and_not_before() {
    let (control, t0, _) = started(
        "[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }, { pause = \"10m\" }, { weight = 50 }, { pause = \"1h\" }]",
        "",
    )
    .await;
    eventually(&control, SLACK, "at 10 % in the pause", |r| {
        r.weight == 1000 && r.step == 1
    })
    .await;

    let r = just_before(&control, t0, 600).await;
    assert_eq!(
        (r.weight, r.step),
        (1000, 1),
        "moved on before the pause ended"
    );

    let r = eventually(&control, 2 * SLACK, "50 % once the pause ended", |r| {
        r.weight == 5000
    })
    .await;
    assert_eq!(r.status, Status::Progressing);
    // The records are stamped by the controller's clock, which followed the paused one.
    let q = EventQuery {
        service: Some("shop".into()),
        kind: Some("weight".into()),
        ..EventQuery::default()
    };
    let last = control
        .events(q)
        .await
        .unwrap()
        .into_iter()
        .max_by_key(|e| e.id);
    assert_eq!(last.map(|e| e.at), Some(EPOCH_MS + 600_000));
}

#[tokio::test(start_paused = true)]
async fn the_guard_says_judged_only_after_a_full_window() {
    let (control, t0, r) = started(
        "[service.guard]\ninterval = \"1s\"\nwindow = \"30s\"\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }, { pause = \"1h\" }]",
        "",
    )
    .await;
    let (judged, mut judged_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(super::guard::guard(
        control.clone(),
        "shop".into(),
        (r.id, r.attempt),
        Some(judged),
    ));

    // The window is whole seconds from the next one on: judged between 30 s and 31 s (the
    // first tick after), never before 30 s.
    sleep_until(t0 + Duration::from_secs(30) - SLACK).await;
    assert!(judged_rx.try_recv().is_err(), "judged before a full window");
    tokio::time::timeout(Duration::from_secs(2), judged_rx)
        .await
        .expect("judged within a tick of the window's end")
        .expect("the guard said so");
    assert!(
        t0.elapsed() <= Duration::from_secs(32),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(now(&control).await.status, Status::Progressing);
}

/// Three measurements 30 s apart: the analysis step passes at 90 s, not before.
#[tokio::test(start_paused = true)]
async fn an_analysis_step_measures_at_its_interval() {
    let (control, t0, _) = started(
        "[service.guard]\nenabled = false\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }, { analysis = \"slow\" }, { weight = 50 }, { pause = \"1h\" }]",
        // A request rate is judged at any volume: without traffic each measurement passes
        // (a check ending on an inconclusive one would not).
        "[[analysis]]\nname = \"slow\"\ninterval = \"30s\"\ncount = 3\n[[analysis.check]]\nname = \"quiet\"\nmetric = \"request-rate\"\nmax = 1000\n",
    )
    .await;

    let r = just_before(&control, t0, 90).await;
    assert_eq!((r.weight, r.step), (1000, 1), "the analysis ended early");

    let r = eventually(&control, 2 * SLACK, "past the analysis", |r| {
        r.weight == 5000
    })
    .await;
    assert_eq!(r.status, Status::Progressing);
}

/// A check whose last measurement had too little evidence has not passed, whatever its
/// `inconclusive_limit` forgave on the way: the rollout holds for a person (it used to
/// move on, one inconclusive measurement being within the default limit of 1).
#[tokio::test(start_paused = true)]
async fn an_analysis_that_ends_without_evidence_holds_the_rollout() {
    let (control, _, _) = started(
        "[service.guard]\nenabled = false\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }, { analysis = \"once\" }, { weight = 50 }]",
        "[[analysis]]\nname = \"once\"\ninterval = \"10s\"\ncount = 1\ninconclusive_limit = 5\n[[analysis.check]]\nname = \"errors\"\nmetric = \"error-rate\"\nmax = 1\n",
    )
    .await;
    let r = eventually(&control, Duration::from_secs(30), "held", |r| {
        r.status != Status::Progressing
    })
    .await;
    assert_eq!(
        (r.status, r.weight, r.held),
        (Status::Paused, 1000, true),
        "{r:?}"
    );
    let why = r.reason.unwrap_or_default();
    assert!(
        why.contains("analysis inconclusive") && why.contains("ended inconclusive"),
        "{why}"
    );
}

/// A step lengthened for evidence (no traffic: to its 5-minute maximum) under a 3-minute
/// progress deadline: the deadline grows with it, and the step ends at 5 minutes, paused.
#[tokio::test(start_paused = true)]
async fn a_step_lengthened_for_evidence_has_its_deadline_lengthened_too() {
    let (control, t0, _) = started(
        "progress_deadline = \"3m\"\n[service.guard]\nenabled = false\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }, { analysis = \"evidence\" }]",
        "[[analysis]]\nname = \"evidence\"\ninterval = \"1m\"\ncount = 2\nmax_duration = \"5m\"\n[[analysis.check]]\nname = \"errors\"\nmetric = \"error-rate\"\nallowed_increase = \"20%\"\n",
    )
    .await;
    let r = just_before(&control, t0, 300).await;
    assert_eq!((r.status, r.weight), (Status::Progressing, 1000), "{r:?}");
    let r = eventually(
        &control,
        2 * SLACK,
        "paused after the lengthened step",
        |r| r.status == Status::Paused,
    )
    .await;
    let why = r.reason.unwrap_or_default();
    assert!(why.contains("lengthened to 5m (+3m)"), "{why}");
}

/// An analysis that would take an hour, under a 5-minute progress deadline: the rollout
/// rolls back at 5 minutes.
#[tokio::test(start_paused = true)]
async fn the_progress_deadline_rolls_back_at_the_deadline() {
    let (control, t0, _) = started(
        "progress_deadline = \"5m\"\n[service.guard]\nenabled = false\n[service.strategy]\nkind = \"canary\"\nsteps = [{ weight = 10 }, { analysis = \"hour\" }]",
        "[[analysis]]\nname = \"hour\"\ninterval = \"1h\"\ncount = 1\n[[analysis.check]]\nname = \"errors\"\nmetric = \"error-rate\"\nmax = 1\n",
    )
    .await;

    let r = just_before(&control, t0, 300).await;
    assert_eq!(
        (r.status, r.weight),
        (Status::Progressing, 1000),
        "rolled back before the deadline"
    );

    let r = eventually(&control, 2 * SLACK, "aborted at the deadline", |r| {
        r.status == Status::Aborted
    })
    .await;
    assert_eq!(r.weight, 0);
    let why = r.reason.unwrap_or_default();
    assert!(
        why.contains("analysis hour made no progress for 5m"),
        "{why}"
    );
    assert_eq!(
        control
            .counts
            .lock()
            .unwrap()
            .rollbacks
            .get(&("shop".into(), "deadline".into())),
        Some(&1)
    );
}
