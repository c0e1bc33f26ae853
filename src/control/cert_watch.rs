//! Renewed certificates picked up by themselves (`[certificates] watch = "30s"`): a
//! control-plane task looks at the listeners' TLS files — certificates, keys, OCSP
//! responses, client CA bundles — that often (size, modification time and inode, following
//! symlinks, so a renewal by rename or a Kubernetes secret's `..data` swap is seen), and
//! when one changed reads them all again and swaps in a snapshot whose listeners use them:
//! new handshakes get the new certificate, connections open keep theirs. Nothing else of
//! the configuration is re-read (that is `reload`'s, which may be unwanted) and the store
//! is not written: the configuration's text is unchanged. Files that do not read — a key
//! that no longer matches its certificate while a renewal is half written — keep the
//! running ones, counted as `rejected` and logged once, and are read again when they
//! change again.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use super::Controller;
use crate::config::Config;

/// How often a configuration without a watch is looked at again for one.
const OFF: Duration = Duration::from_secs(5);

/// What identifies a file's content without reading it; `None` when it cannot be read.
type Stamp = Option<(u64, u128, u64)>;

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            let modified = m.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
            Some((m.len(), modified.as_nanos(), m.ino()))
        })
        .collect()
}

/// Runs until the controller is gone.
pub(super) async fn watch(control: Weak<Controller>) {
    // The configuration whose files were last looked at, and their stamps then (also when
    // they did not read: they are tried again once they change again).
    let mut seen: Option<(Arc<Config>, Vec<Stamp>)> = None;
    loop {
        let Some(config) = control.upgrade().map(|c| c.snapshot().config.clone()) else {
            return;
        };
        let Some(every) = config.certificate_watch else {
            seen = None;
            tokio::time::sleep(OFF).await;
            continue;
        };
        let files = config.certificate_files();
        let Ok(now) = tokio::task::spawn_blocking(move || stamps(&files)).await else {
            return;
        };
        // A configuration seen for the first time is compared by content (its files may
        // have changed since it read them); after that, by stamps, taken before reading.
        let first_sight = seen.as_ref().is_none_or(|(c, _)| !Arc::ptr_eq(c, &config));
        let changed = seen.as_ref().is_some_and(|(_, before)| *before != now);
        if first_sight || changed {
            let Some(c) = control.upgrade() else { return };
            match c.refresh_certificates(&config).await {
                Ok(true) => {
                    tracing::info!("certificate files changed: read again and swapped in");
                    c.count_certificate_read("swapped");
                }
                Ok(false) if changed => c.count_certificate_read("unchanged"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "certificate files changed but cannot be used; the running ones stay");
                    c.count_certificate_read("rejected");
                }
            }
            seen = Some((c.snapshot().config.clone(), now));
        }
        tokio::time::sleep(every).await;
    }
}

impl Controller {
    /// Reads the TLS files of `from` (the running configuration) again and, if they
    /// changed, publishes a snapshot with them; whether it did. A configuration applied
    /// meanwhile read its files itself and is left alone.
    pub(super) async fn refresh_certificates(&self, from: &Arc<Config>) -> Result<bool, String> {
        let read = from.clone();
        let next = tokio::task::spawn_blocking(move || read.reread_certificates())
            .await
            .map_err(|e| e.to_string())??;
        if next == **from {
            return Ok(false);
        }
        let _writer = self.writer.lock().await;
        let mut state = self.state.lock().await;
        if !Arc::ptr_eq(&state.config, from) {
            return Ok(false);
        }
        state.config = Arc::new(next);
        self.publish(&mut state).map_err(|e| e.to_string())?;
        Ok(true)
    }

    fn count_certificate_read(&self, result: &str) {
        let mut counts = self.counts.lock().expect("counts");
        *counts
            .certificate_reads
            .entry(result.to_string())
            .or_default() += 1;
    }
}
