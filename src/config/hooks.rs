//! `[service.hooks]`: lifecycle hooks — an HTTP call or a command each, with its timeout,
//! retries and (before promotion only) a confirmation.

use std::time::Duration;

use super::analysis::count;
use super::fields::*;
use super::locate::KeyPath;
use super::raw::{RawHook, RawHooks};

/// A lifecycle hook: an HTTP call or a command, with timeout and retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Hook {
    pub url: Option<String>,
    pub command: Option<String>,
    pub timeout_ms: u64,
    pub retries: u32,
    pub confirm: bool,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Hooks {
    pub before_traffic: Option<Hook>,
    pub after_traffic: Option<Hook>,
    pub before_promotion: Option<Hook>,
    pub after_rollout: Option<Hook>,
    pub on_rollback: Option<Hook>,
}

pub fn hooks(raw: Option<&RawHooks>, at: &KeyPath, p: &mut Problems) -> Hooks {
    let Some(raw) = raw else {
        return Hooks::default();
    };
    let one = |h: &Option<RawHook>, key: &str, p: &mut Problems| {
        let h = h.as_ref()?;
        let hat = at.join(key);
        if h.url.is_some() == h.command.is_some() {
            p.add(
                hat.clone(),
                "a hook needs exactly one of `url` or `command`",
            );
        }
        if let Some(u) = &h.url {
            http_url(u, hat.join("url"), p);
        }
        if h.confirm == Some(true) && key != "before_promotion" {
            p.add(
                hat.join("confirm"),
                "only before_promotion can wait for a confirmation",
            );
        }
        Some(Hook {
            url: h.url.clone(),
            command: h.command.clone(),
            timeout_ms: duration_or(
                h.timeout.as_ref(),
                hat.join("timeout"),
                Duration::from_secs(30),
                &TIMEOUT,
                p,
            )
            .as_millis() as u64,
            retries: count(h.retries, hat.join("retries"), 0, 10, p),
            confirm: h.confirm.unwrap_or(false),
        })
    };
    Hooks {
        before_traffic: one(&raw.before_traffic, "before_traffic", p),
        after_traffic: one(&raw.after_traffic, "after_traffic", p),
        before_promotion: one(&raw.before_promotion, "before_promotion", p),
        after_rollout: one(&raw.after_rollout, "after_rollout", p),
        on_rollback: one(&raw.on_rollback, "on_rollback", p),
    }
}
