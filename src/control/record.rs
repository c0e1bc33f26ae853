//! How the control plane records a change through the persister: a forward write queued
//! under the state lock and awaited without it, what it was decided on (the fleet's
//! revision, the leadership), and whether the service is still as it was once it landed.

use std::sync::Arc;

use tokio::sync::MutexGuard;

use super::persist::{wait, Write, WriteError, FORWARD_WAIT};
use super::{ControlError, Controller, State, StoreHealth};
use crate::store::Commit;

/// What became of a forward write of one service that the store took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Landed {
    /// The service is as it was before the write (or as the write recorded it, come back
    /// through the watch): the caller applies what it wrote.
    Kept,
    /// A rollback was decided here while the write waited: it is newer (its record lands
    /// after this one), so what was written is not applied.
    RolledBack,
    /// In a fleet, the watch brought this write and then another instance's later change
    /// of the service (a write on an older state would have been refused as stale): the
    /// change took effect and the fleet has moved on from it; the state stays as it is.
    Overtaken,
}

impl Controller {
    /// [`Controller::write_forward`] of one service's commit: the state again, and what
    /// became of the write (see [`Landed`]).
    pub(super) async fn write_service<'a>(
        &'a self,
        state: MutexGuard<'a, State>,
        service: &str,
        commit: Commit,
    ) -> Result<(MutexGuard<'a, State>, Landed), ControlError> {
        let epoch = state.epoch(service);
        let before = Seen::of(&state, service);
        let written = Seen {
            rollout: commit.rollout.clone(),
            traffic: commit
                .traffic
                .iter()
                .find(|(s, _)| s == service)
                .map(|(_, r)| super::Traffic::from_record(r.clone())),
        };
        let (state, _) = self
            .write_forward(
                state,
                vec![service.to_string()],
                Write::Commit(Box::new(commit)),
            )
            .await?;
        let landed = Self::landed(&state, service, epoch, &before, &written);
        Ok((state, landed))
    }

    /// What became of a forward write of `service` that landed, seen from the state taken
    /// again: `epoch` and `before` as they were when it was decided, `written` what it
    /// recorded. Every forward write is judged by this one rule before the caller applies
    /// what it wrote: applied over a state the fleet has moved past, it would leave this
    /// instance behind etcd with nothing to correct it — the watch brought the later change
    /// already, and a new leader reading the fleet at that revision finds nothing newer.
    pub(super) fn landed(
        state: &State,
        service: &str,
        epoch: u64,
        before: &Seen,
        written: &Seen,
    ) -> Landed {
        if state.epoch(service) != epoch {
            return Landed::RolledBack;
        }
        let now = Seen::of(state, service);
        if kept(&now.rollout, &before.rollout, &written.rollout)
            && kept(&now.traffic, &before.traffic, &written.traffic)
        {
            Landed::Kept
        } else {
            Landed::Overtaken
        }
    }

    /// Writes a forward change: queued under the control lock (so the store sees changes in
    /// the order they were decided), awaited without it (so a rollback never waits behind a
    /// store write) for at most `FORWARD_WAIT`, then the lock is taken again. The caller
    /// holds `writer`, so only a rollback can have changed the state meanwhile: it compares
    /// the service's epoch.
    pub(super) async fn write_forward<'a>(
        &'a self,
        state: MutexGuard<'a, State>,
        services: Vec<String>,
        write: Write,
    ) -> Result<(MutexGuard<'a, State>, Option<u64>), ControlError> {
        // What this instance has seen of these services: the fleet's changes it applied, and
        // its own last writes of them (which the watch may not have brought back yet).
        let own = self.fleet.as_ref().map_or(0, |f| {
            let written = services.iter().map(|s| f.etcd.written_at(s));
            written.min().unwrap_or(0)
        });
        let (based_on, fence) = (state.revision.max(own), self.store.fence());
        let decided = move |c: &mut Commit| {
            c.forward = true;
            c.based_on = based_on;
            c.fence = fence;
        };
        let write = match write {
            Write::Commit(mut c) => {
                decided(&mut c);
                Write::Commit(c)
            }
            Write::NewRollout(make) => Write::NewRollout(Arc::new(move |id| {
                let mut c = make(id);
                decided(&mut c);
                c
            })),
            seconds @ Write::Seconds(_) => seconds,
        };
        let wrote = self
            .persist
            .forward(services.clone(), write)
            .map_err(|e| write_error(&services, e))?;
        drop(state);
        let id = wait(wrote, FORWARD_WAIT)
            .await
            .map_err(|e| write_error(&services, e))?;
        Ok((self.state.lock().await, id))
    }

    /// The store's state for `status` and `/metrics`: writes published but not yet recorded.
    pub fn store_health(&self) -> StoreHealth {
        self.persist.health()
    }
}

fn write_error(services: &[String], e: WriteError) -> ControlError {
    match e {
        WriteError::Unavailable(why) => ControlError::StoreUnavailable(why),
        WriteError::Superseded => superseded(&services.join(", ")),
        WriteError::Stale(what) => ControlError::Conflict(format!(
            "the state of {what} was changed by another instance at the same moment; look again and retry"
        )),
    }
}

pub(super) fn superseded(service: &str) -> ControlError {
    ControlError::Conflict(format!(
        "a rollback of {service} was decided while this change waited for the state database; the change was not applied"
    ))
}

/// A service's rollout and traffic, as the state holds them or as a write records them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Seen {
    pub(super) rollout: Option<crate::rollout::Rollout>,
    pub(super) traffic: Option<super::Traffic>,
}

impl Seen {
    pub(super) fn of(state: &State, service: &str) -> Seen {
        Seen {
            rollout: state.rollouts.get(service).cloned(),
            traffic: state.traffic.get(service).cloned(),
        }
    }
}

/// Whether a service's value `now` is the one from before a write, or the one the write
/// itself recorded.
fn kept<T: PartialEq>(now: &Option<T>, before: &Option<T>, written: &Option<T>) -> bool {
    now == before || (written.is_some() && now == written)
}
