//! What applying a configuration would change on the running instance: every difference in
//! the configuration (`config::diff`, over the whole model), and the weights that would be in
//! force (the traffic state, by the rule `apply` uses: `Traffic::after_config`).

use super::{State, Traffic};
use crate::config::diff::{diff, SEP};
use crate::config::Config;

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
