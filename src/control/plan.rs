//! What applying a configuration would change on the running instance: every difference in
//! the configuration (`config::diff`, over the whole model), and the weights that would be in
//! force (the traffic state, by the rule `apply` uses: `Traffic::after_config`, here too).

use super::{State, Traffic};
use crate::config::diff::{diff, SEP};
use crate::config::{Config, ServiceConfig};
use crate::split::Split;

pub use crate::config::diff::Change as PlanChange;

impl super::Controller {
    /// What `apply(next)` would change now.
    pub async fn plan(&self, next: &Config) -> Vec<PlanChange> {
        plan(&*self.state.lock().await, next)
    }
}

/// The one computation behind `plan` and `apply`: the configuration's differences, then each
/// service whose weights in force would move. A weight line that only repeats the file's
/// `split` change is left out.
pub(super) fn plan(state: &State, next: &Config) -> Vec<PlanChange> {
    let mut out = diff(&state.config, next);
    for s in &next.services {
        let in_rollout = state
            .rollouts
            .get(&s.name)
            .is_some_and(|r| r.status.is_active());
        let old = state.traffic.get(&s.name);
        let now = old.map(|t| t.current.clone());
        let then = Traffic::after_config(old, s, in_rollout).current;
        if now.as_ref() == Some(&then) {
            continue;
        }
        let from = now.map_or_else(|| "none".into(), |n| n.to_string());
        let detail = format!("{from} → {then}");
        let split_line = format!("service {}{SEP}split", s.name);
        if out
            .iter()
            .any(|c| c.what == split_line && c.detail == detail)
        {
            continue;
        }
        out.push(PlanChange::new(
            "~",
            format!("service {}{SEP}weights in force", s.name),
            detail,
        ));
    }
    out
}

impl Traffic {
    /// The one rule for which split survives a new configuration (reload, apply, and what
    /// `plan` says they will do): a rollout in progress keeps its traffic; so does a service
    /// whose file split is unchanged since it was last loaded (a switch made since stays), as
    /// long as every group of the current split still exists. Otherwise the file's split
    /// takes over, and the one it replaces becomes `previous` (if its groups still exist).
    pub(super) fn after_config(
        old: Option<&Traffic>,
        s: &ServiceConfig,
        in_rollout: bool,
    ) -> Traffic {
        match old {
            Some(old) if in_rollout || keeps_split(&old.from_file, &old.current, s) => old.clone(),
            Some(old) => Traffic {
                current: s.split.clone(),
                previous: Some(old.current.clone()).filter(|p| known_groups(p, s)),
                from_file: s.split.clone(),
                stable: s.split.active().map(str::to_string),
                retired: Vec::new(),
            },
            None => Traffic::from_config(&s.split),
        }
    }
}

/// Whether the traffic a service had (from `from_file`, now `current`) stays when `s` is
/// loaded: see [`Traffic::after_config`]; also what a restart restores from the store.
pub(super) fn keeps_split(from_file: &Split, current: &Split, s: &ServiceConfig) -> bool {
    *from_file == s.split && known_groups(current, s)
}

fn known_groups(split: &Split, s: &ServiceConfig) -> bool {
    split.groups().all(|g| s.group(g).is_some())
}
