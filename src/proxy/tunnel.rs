//! WebSocket and other Upgrades: the client's upgraded connection joined to the target's.

use std::sync::Arc;

use bytes::Bytes;

/// Joins the client's upgraded connection to the target's (WebSocket and other Upgrades),
/// first passing on what the target sent right behind its 101. The tunnel closes when
/// nothing has moved either way for the listener's idle timeout, as ALB's does, or when its
/// group's drain cuts it (`ticket`: the group lost its traffic `drain_timeout` ago).
pub(super) async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    (mut upstream, early): (crate::upstream::Stream, Bytes),
    idle: std::time::Duration,
    ticket: crate::tunnels::Tunnel,
) {
    use tokio::io::AsyncWriteExt;
    let activity = Arc::new(crate::activity::Activity::default());
    let mut client = match client.await {
        Ok(c) => crate::activity::TrackedIo::new(hyper_util::rt::TokioIo::new(c), activity.clone()),
        Err(e) => return tracing::debug!(error = %e, "upgrade did not complete"),
    };
    if !early.is_empty() {
        if let Err(e) = client.write_all(&early).await {
            return tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    }
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        _ = crate::activity::quiet_for(activity, idle) => {
            tracing::debug!("closing idle upgraded connection");
        }
        _ = ticket.cut() => {
            tracing::debug!("closing upgraded connection: its group's drain_timeout passed");
        }
    }
}
