//! A whole switchyard instance: the control plane with its listeners plus the admin API.
//! The binary runs one; tests and the demo run them in-process the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::{ControlError, Controller};

pub struct Server {
    pub control: Arc<Controller>,
    pub admin_addr: SocketAddr,
    admin_stop: CancellationToken,
    admin_task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(config: Config, path: Option<PathBuf>) -> Result<Server, ControlError> {
        let admin_bind = config.admin.bind;
        if config.admin.read_only() {
            tracing::warn!("no admin token configured: the admin API is read-only");
        }
        // The store first: it takes the one-instance lock, so a second instance with the
        // same configuration fails naming the holder, not on "address in use".
        let control = Controller::start(config, path).await?;
        let bound = crate::listener::bind(admin_bind).and_then(|s| Ok((s.local_addr()?, s)));
        let (admin_addr, admin_socket) = match bound {
            Ok(b) => b,
            Err(source) => {
                control.shutdown().await;
                return Err(ControlError::Bind {
                    name: "admin".into(),
                    addr: admin_bind,
                    source,
                });
            }
        };
        let admin_stop = CancellationToken::new();
        let router = crate::api::router(control.clone());
        let admin_task = tokio::spawn(crate::api::serve(
            admin_socket,
            router,
            control.clone(),
            admin_stop.clone(),
        ));
        tracing::info!(addr = %admin_addr, "admin API listening");
        // In a fleet: take part in the election now that peers can reach this instance.
        control.join_fleet(admin_addr).await;
        Ok(Server {
            control,
            admin_addr,
            admin_stop,
            admin_task,
        })
    }

    pub async fn listener_addr(&self, name: &str) -> SocketAddr {
        self.control
            .listener_addr(name)
            .await
            .unwrap_or_else(|| panic!("no listener named {name}"))
    }

    /// Graceful stop: no new connections, in-flight requests finish within the bound.
    pub async fn shutdown(self) {
        self.admin_stop.cancel();
        self.control.shutdown().await;
        let _ = self.admin_task.await;
    }
}
