//! Waiting in tests: on a state (`eventually`), with a bound on the whole test (`bounded`),
//! the one wrapper that declares such a test (`bounded_test!`), and the one rule for
//! asserting when a timer fired (`fired_between`).

use std::future::Future;
use std::time::Duration;

/// How long a network test may run before it fails instead of hanging the suite: ten
/// times what the slowest test here takes on a loaded 2-core machine.
pub(crate) const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Runs a test's body with a bound: a framing regression that leaves a read waiting forever
/// fails the test after `limit` (wall time; not for tests on tokio's paused clock, where
/// the bound would run out while real sockets are awaited).
pub(crate) async fn bounded<F: Future>(limit: Duration, body: F) -> F::Output {
    match tokio::time::timeout(limit, body).await {
        Ok(out) => out,
        Err(_) => panic!("the test did not finish within {limit:?}"),
    }
}

/// A network test on tokio's multi-thread runtime (two workers), its body bounded by
/// `TEST_LIMIT` with `bounded`: one wrapper, so that no test repeats it. Options before the
/// function: `current_thread;` for tokio's default runtime, `limit = EXPR;` for another bound.
///
/// ```ignore
/// bounded_test! {
///     /// What it checks.
///     async fn a_name_that_says_what_it_checks() { /* body */ }
/// }
/// ```
#[allow(unused_macros)]
macro_rules! bounded_test {
    (current_thread; limit = $limit:expr; $(#[$m:meta])* async fn $name:ident() { $($body:tt)* }) => {
        $(#[$m])*
        #[tokio::test]
        async fn $name() {
            $crate::common::bounded($limit, async { $($body)* }).await
        }
    };
    (current_thread; $(#[$m:meta])* async fn $name:ident() { $($body:tt)* }) => {
        bounded_test! {
            current_thread; limit = $crate::common::TEST_LIMIT;
            $(#[$m])* async fn $name() { $($body)* }
        }
    };
    (limit = $limit:expr; $(#[$m:meta])* async fn $name:ident() { $($body:tt)* }) => {
        $(#[$m])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $crate::common::bounded($limit, async { $($body)* }).await
        }
    };
    ($(#[$m:meta])* async fn $name:ident() { $($body:tt)* }) => {
        bounded_test! {
            limit = $crate::common::TEST_LIMIT;
            $(#[$m])* async fn $name() { $($body)* }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use bounded_test;

/// Polls `check` every 10 ms until it returns true; panics with `what` after `limit`.
pub(crate) async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("not true within {limit:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How early a timer may seem to fire when the test measures from a moment slightly after
/// the event that armed it (a byte that left switchyard before the test read it).
pub(crate) const MEASURE_SLACK: Duration = Duration::from_millis(25);

/// How late a timer may fire on a loaded 2-core machine beyond what is promised: scheduling
/// delays of the timer's task and of the test's own reads.
pub(crate) const LOAD_SLACK: Duration = Duration::from_millis(700);

/// Asserts that a timer promised to fire between `from` and `to` after its start did not
/// fire early (`took` ≥ `from` less the measuring slack) and was not late beyond what a
/// loaded machine explains (`took` < `to` plus the load slack).
pub(crate) fn fired_between(took: Duration, from: Duration, to: Duration, what: &str) {
    assert!(
        took + MEASURE_SLACK >= from,
        "{what}: fired after {took:?}, before its {from:?}"
    );
    assert!(
        took < to + LOAD_SLACK,
        "{what}: fired after {took:?}, promised by {to:?} (+{LOAD_SLACK:?} for load)"
    );
}
