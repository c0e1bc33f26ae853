//! The persister against a store that does what each test says: hangs, fails, panics.
//! Behaviours a real SQLite file cannot be made to show on demand (a hang instead of a
//! failure, a panic) are tested here; the rest is tested over real sockets in
//! `tests/store_outage.rs`.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::rollout::Rollout;
use crate::store::{Event, EventQuery, Persisted, StoreError};

#[derive(Default)]
struct Fake {
    /// While set, commits block (a store that hangs instead of failing).
    hang: Mutex<bool>,
    released: Condvar,
    /// Commits that panic, counted down.
    panics: Mutex<u32>,
    /// The labels of the commits that landed, in order.
    landed: Mutex<Vec<String>>,
}

impl Fake {
    fn hang(&self, on: bool) {
        *self.hang.lock().unwrap() = on;
        self.released.notify_all();
    }

    fn landed(&self) -> Vec<String> {
        self.landed.lock().unwrap().clone()
    }
}

impl Store for Fake {
    fn load(&self) -> Result<Persisted, StoreError> {
        Ok(Persisted::default())
    }
    fn commit(&self, c: &Commit) -> Result<(), StoreError> {
        let mut hang = self.hang.lock().unwrap();
        while *hang {
            hang = self.released.wait(hang).unwrap();
        }
        drop(hang);
        {
            let mut p = self.panics.lock().unwrap();
            if *p > 0 {
                *p -= 1;
                drop(p);
                panic!("a bug in the store");
            }
        }
        self.landed.lock().unwrap().push(c.events[0].reason.clone());
        Ok(())
    }
    fn create_rollout(&self, _: &NewRollout) -> Result<u64, StoreError> {
        unreachable!()
    }
    fn events(&self, _: &EventQuery) -> Result<Vec<Event>, StoreError> {
        Ok(Vec::new())
    }
    fn rollouts(&self, _: Option<&str>, _: usize) -> Result<Vec<Rollout>, StoreError> {
        Ok(Vec::new())
    }
    fn export(&self) -> Result<crate::store::Dump, StoreError> {
        unreachable!()
    }
    fn import(&self, _: &crate::store::Dump) -> Result<(), StoreError> {
        unreachable!()
    }
}

fn commit(label: &str) -> Commit {
    Commit {
        events: vec![super::super::event(
            0,
            "shop",
            None,
            &"test".into(),
            crate::audit::EventKind::Config,
            (None, None),
            label.into(),
        )],
        ..Commit::default()
    }
}

fn svc(s: &str) -> Vec<String> {
    vec![s.to_string()]
}

fn fwd(p: &Persister, service: &str, label: &str) -> oneshot::Receiver<Reply> {
    p.forward(svc(service), Write::Commit(Box::new(commit(label))))
        .expect("queued")
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_hangs_refuses_forward_writes_instead_of_holding_them() {
    let store = Arc::new(Fake::default());
    let p = Persister::spawn(store.clone());
    store.hang(true);
    p.durable(Kind::Rollback, svc("shop"), commit("rollback"));
    until("the rollback is being written", || {
        lock(&p.queue).durable_since.is_some()
    })
    .await;
    // Behind a durable write that is only being written, a forward write waits its turn,
    // but not forever.
    let asked = Instant::now();
    let e = wait(fwd(&p, "other", "step"), FORWARD_WAIT)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("did not answer"), "{e}");
    assert!(asked.elapsed() < FORWARD_WAIT + Duration::from_secs(1));
    // Past FORWARD_WAIT the running write counts as failing: refused up front, by kind.
    let e = p
        .forward(svc("other"), Write::Commit(Box::new(commit("step 2"))))
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("1 rollback") && text.contains("running"),
        "{text}"
    );
    store.hang(false);
    until("the rollback recorded", || p.health().pending_writes == 0).await;
    // The forward write whose caller gave up was never written.
    let next = wait(fwd(&p, "other", "step 3"), FORWARD_WAIT).await;
    assert!(next.is_ok(), "{next:?}");
    assert_eq!(store.landed(), ["rollback", "step 3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_state_carrying_writes_supersede_a_forward_write_queued_before_them() {
    let store = Arc::new(Fake::default());
    let p = Persister::spawn(store.clone());
    store.hang(true);
    p.durable(Kind::Hold, svc("other"), commit("hold other"));
    let step = fwd(&p, "shop", "step");
    p.durable(Kind::Event, svc("shop"), commit("hook event"));
    assert_eq!(p.pending_kind("shop"), Some(Kind::Event));
    store.hang(false);
    assert!(wait(step, FORWARD_WAIT).await.is_ok());
    until("all recorded", || p.health().pending_writes == 0).await;
    assert_eq!(store.landed(), ["hold other", "step", "hook event"]);

    store.hang(true);
    p.durable(Kind::Hold, svc("other"), commit("hold other 2"));
    let step = fwd(&p, "shop", "step 2");
    p.durable(Kind::Rollback, svc("shop"), commit("rollback"));
    assert_eq!(p.pending_kind("shop"), Some(Kind::Rollback));
    store.hang(false);
    assert!(matches!(
        wait(step, FORWARD_WAIT).await,
        Err(WriteError::Superseded)
    ));
    until("all recorded", || p.health().pending_writes == 0).await;
    assert_eq!(
        store.landed()[3..],
        ["hold other 2".to_string(), "rollback".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_store_fails_that_write_and_the_writer_goes_on() {
    let store = Arc::new(Fake::default());
    *store.panics.lock().unwrap() = 1;
    let p = Persister::spawn(store.clone());
    let e = wait(fwd(&p, "shop", "boom"), FORWARD_WAIT)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("failed"), "{e}");
    assert!(wait(fwd(&p, "shop", "after"), FORWARD_WAIT).await.is_ok());
    assert_eq!(store.landed(), ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_answers_every_waiting_caller_and_refuses_new_forward_writes() {
    let store = Arc::new(Fake::default());
    let p = Persister::spawn(store.clone());
    store.hang(true);
    p.durable(Kind::Rollback, svc("shop"), commit("rollback"));
    let queued = fwd(&p, "other", "step");
    let left = p.close(Duration::from_millis(100)).await;
    assert_eq!(left, 1, "the rollback could not land");
    let e = wait(queued, Duration::from_secs(1)).await.unwrap_err();
    assert!(e.to_string().contains("shutting down"), "{e}");
    let e = p
        .forward(svc("other"), Write::Commit(Box::new(commit("late"))))
        .unwrap_err();
    assert!(e.to_string().contains("shutting down"), "{e}");
    store.hang(false);
}
