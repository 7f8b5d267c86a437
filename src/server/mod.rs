//! The running service: [`start`] loads the policy and the posture, builds
//! the `Authorizer`, binds both listeners and serves until
//! [`RunningServer::shutdown`]. `main` and the integration tests both start
//! the service here. The wiring is in `start`; the listeners' socket
//! handling in [`listen`], process signals in [`signal`], and file reloads
//! in [`reload`].

pub mod http_conn;
pub mod listen;
mod parts;
pub mod reload;
pub mod signal;
mod start;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinSet};

pub use self::start::{start, start_with};
use crate::{
    admin::{AdminState, SyncTrigger},
    authz::AuthzService,
    config::GrpcListen,
    decision::{Authorizer, Refresh},
    policy::Policy,
    posture::{PostureFile, PostureStore},
};
use reload::Reloader;

/// Parts a caller (a test, an embedding) plugs into the service in place of
/// what the configuration would build.
#[derive(Default)]
pub struct Extensions {
    /// Live recheck of one host; overrides the Fleet source's.
    pub refresh: Option<Arc<dyn Refresh>>,
    /// Forced sync for `POST /v1/sync` and `Admin.Sync`. Without one, the
    /// Fleet poller syncs, a posture-file source re-reads its file, and
    /// otherwise the answer is "no Fleet source configured".
    pub sync: Option<Arc<dyn SyncTrigger>>,
    /// A store the caller fills. When given, `posture_file` is not loaded at
    /// start, so readiness waits for the caller's first publish.
    pub store: Option<Arc<PostureStore>>,
    /// The policy and posture files, already read (the binary validates them
    /// before it starts, and hands them over rather than reading twice).
    pub preloaded: Option<Preloaded>,
}

/// The files a configuration names, read and checked.
#[derive(Debug)]
pub struct Preloaded {
    /// `policy_file`.
    pub policy: Policy,
    /// `posture_file`, when set.
    pub posture: Option<PostureFile>,
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("refresh", &self.refresh.is_some())
            .field("sync", &self.sync.is_some())
            .field("store", &self.store.is_some())
            .field("preloaded", &self.preloaded.is_some())
            .finish()
    }
}

/// A service that is serving. Drop does not stop it: call [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct RunningServer {
    grpc_at: GrpcListen,
    http_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
    grace: Duration,
    /// Shared state, for tests and the admin API.
    pub authorizer: Arc<Authorizer>,
    pub reloader: Arc<Reloader>,
    /// The Fleet poller's handle (status, `sync_now`), when Fleet is the source.
    pub fleet: Option<crate::fleet::PollerHandle>,
    /// The admin API's state (grants, sync trigger, token).
    pub admin: AdminState,
    health: tonic_health::server::HealthReporter,
    /// Cluster mode's node (role, posture version), when `cluster:` is set.
    pub cluster: Option<Arc<crate::cluster::Node>>,
}

impl RunningServer {
    /// Where the gRPC services listen (a TCP port 0 resolved to the one
    /// picked).
    pub fn grpc_listen(&self) -> &GrpcListen {
        &self.grpc_at
    }

    /// The gRPC services' TCP address.
    ///
    /// # Panics
    /// When they listen on a Unix socket: use [`grpc_listen`](Self::grpc_listen).
    pub fn grpc_addr(&self) -> SocketAddr {
        match &self.grpc_at {
            GrpcListen::Tcp(addr) => *addr,
            GrpcListen::Unix(path) => panic!("gRPC listens on {}, not TCP", path.display()),
        }
    }

    /// Where the HTTP endpoints listen.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Graceful shutdown: health goes NOT_SERVING first, then the listeners
    /// stop accepting, in-flight requests finish, and every task is awaited,
    /// all within the configured grace period.
    pub async fn shutdown(mut self) {
        self.health.set_not_serving::<AuthzService>().await;
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = self.shutdown_tx.send(true);
        let drain = async {
            while let Some(joined) = self.tasks.join_next().await {
                match joined {
                    Ok(Err(error)) => tracing::error!(%error, "task failed during shutdown"),
                    Err(error) => tracing::error!(%error, "task panicked during shutdown"),
                    Ok(Ok(())) => {}
                }
            }
        };
        if tokio::time::timeout(self.grace, drain).await.is_err() {
            tracing::warn!(grace = ?self.grace, "shutdown grace period over; aborting remaining tasks");
            self.tasks.abort_all();
        }
    }

    /// Resolves when a task fails (tasks that finish their job cleanly, such
    /// as the readiness latch, are not failures).
    pub async fn wait_for_failure(&mut self) -> anyhow::Error {
        loop {
            match self.tasks.join_next().await {
                Some(Ok(Ok(()))) => continue,
                Some(Ok(Err(e))) => return e,
                Some(Err(e)) => return anyhow::anyhow!("a service task panicked: {e}"),
                None => return anyhow::anyhow!("every service task stopped"),
            }
        }
    }
}
