//! Wiring of one running service: load the policy and the posture, build the
//! `Authorizer`, bind both listeners and serve until shut down. `main` and the
//! integration tests both start the service through [`start`].

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tonic::transport::server::TcpIncoming;
use tracing::Instrument;

use crate::{
    admin::{self, AdminState, AdminToken, GrantStore, SyncTrigger},
    authz::{Authorizer, AuthzService, BoxFuture, Refresh},
    config::{Config, GrpcListen},
    http::{self, HttpState},
    metrics::Metrics,
    policy::{Policy, load_policy},
    posture::{PostureFile, PostureStore, load_posture_file},
    reload::{FileSync, Reloader},
};

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

/// `POST /v1/sync` for the Fleet source: one poller cycle, now.
struct FleetSync(crate::fleet::PollerHandle);

impl SyncTrigger for FleetSync {
    fn sync_now(&self) -> BoxFuture<'_, Result<usize, String>> {
        Box::pin(async move { self.0.sync_now().await.map(|report| report.hosts) })
    }

    fn sync_accepting_drop(&self) -> BoxFuture<'_, Result<usize, String>> {
        Box::pin(async move {
            let report = self.0.sync_now_accepting_drop().await?;
            Ok(report.hosts)
        })
    }
}

/// The gRPC listener, bound before anything is served.
enum GrpcListener {
    Tcp(TcpListener),
    /// The listener and its socket file, removed once serving stops.
    Unix(tokio::net::UnixListener, std::path::PathBuf),
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
}

/// Loads everything `config` names, binds its listeners and starts serving.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    start_with(config, Extensions::default()).await
}

/// [`start`], with parts supplied by the caller.
pub async fn start_with(config: Config, ext: Extensions) -> anyhow::Result<RunningServer> {
    let metrics = Arc::new(Metrics::new());
    let (policy, posture) = match ext.preloaded {
        Some(p) => (p.policy, p.posture),
        None => (load_policy(&config.policy_file)?, None),
    };
    let policy = Arc::new(ArcSwap::from_pointee(policy));
    let store = match ext.store {
        Some(store) => store,
        None => {
            let store = Arc::new(PostureStore::new());
            if let Some(path) = &config.posture_file {
                let now = SystemTime::now();
                let file = match posture {
                    Some(file) => file,
                    None => load_posture_file(path, now)?,
                };
                store.replace_all(file.hosts, now);
            }
            store
        }
    };
    let admin_config = config.admin.clone().unwrap_or_default();
    let token = match &admin_config.token_file {
        Some(path) => Some(AdminToken::from_file(path)?),
        None => None,
    };
    let grants = Arc::new(match &admin_config.grants_file {
        Some(path) => GrantStore::open(path)?,
        None => GrantStore::in_memory(),
    });
    let fleet = match &config.fleet {
        None => None,
        Some(fleet) => {
            if let Some(snap) = &config.snapshot {
                restore_snapshot(&snap.path, &store);
            }
            let snapshot = config.snapshot.as_ref().map(|s| (s.path.clone(), None));
            let source = crate::fleet::adapter::build(fleet, &store, &metrics, snapshot)?;
            source
                .handle
                .set_cves(policy.load().cves().iter().map(|c| c.to_string()).collect());
            Some(source)
        }
    };
    let authorizer = Arc::new(Authorizer {
        store: Arc::clone(&store),
        policy: Arc::clone(&policy),
        identity: config.identity.clone(),
        remediation_url: config.remediation_url.clone(),
        max_staleness: config.max_staleness(),
        metrics: Arc::clone(&metrics),
        refresh: ext
            .refresh
            .or_else(|| fleet.as_ref().and_then(|f| f.refresh.clone())),
        grants: Some(Arc::clone(&grants) as Arc<dyn crate::authz::Grants>),
        fingerprints: Default::default(),
    });
    let mut reloader = Reloader::new(
        config.policy_file.clone(),
        Arc::clone(&policy),
        config.posture_file.clone(),
        Arc::clone(&store),
        Arc::clone(&metrics),
    );
    if let Some(handle) = fleet.as_ref().map(|f| f.handle.clone()) {
        // The poller asks Fleet about exactly the CVEs the policy names.
        reloader.on_policy = Some(Box::new(move |p| {
            handle.set_cves(p.cves().iter().map(|c| c.to_string()).collect())
        }));
    }
    let reloader = Arc::new(reloader);
    let sync = ext.sync.or_else(|| match (&fleet, &config.posture_file) {
        (Some(f), _) => Some(Arc::new(FleetSync(f.handle.clone())) as Arc<dyn SyncTrigger>),
        (None, Some(_)) => Some(Arc::new(FileSync(Arc::clone(&reloader))) as Arc<dyn SyncTrigger>),
        (None, None) => None,
    });
    let admin = AdminState {
        authorizer: Arc::clone(&authorizer),
        sync,
        token,
        grants,
    };
    admin.update_grant_gauge(SystemTime::now());

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::proto::ENVOY_AUTHZ_DESCRIPTOR_SET)
        .build_v1()?;
    let http_listener = TcpListener::bind(config.listen.http)
        .await
        .with_context(|| format!("listen.http: cannot bind {}", config.listen.http))?;
    let http_addr = http_listener.local_addr()?;
    // Bound last: dropping a Unix listener leaves its socket file behind, so
    // nothing that can fail with `?` comes between this and serving.
    let grpc_listener = match &config.listen.grpc {
        GrpcListen::Tcp(addr) => TcpListener::bind(addr).await.map(GrpcListener::Tcp),
        GrpcListen::Unix(path) => {
            crate::net::bind_unix(path).map(|l| GrpcListener::Unix(l, path.clone()))
        }
    }
    .with_context(|| format!("listen.grpc: cannot bind {}", config.listen.grpc))?;
    let grpc_at = match &grpc_listener {
        GrpcListener::Tcp(l) => GrpcListen::Tcp(l.local_addr()?),
        GrpcListener::Unix(_, path) => GrpcListen::Unix(path.clone()),
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut tasks = JoinSet::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<AuthzService>().await;
    // tonic-health starts the whole-server status ("") as SERVING; probes
    // that ask for "" (Kubernetes' grpc probe does) must wait for readiness.
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    {
        let (health, store) = (health.clone(), Arc::clone(&store));
        let stop = shutdown();
        tasks.spawn(async move {
            tokio::select! {
                _ = store.wait_loaded() => {
                    health.set_serving::<AuthzService>().await;
                    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
                }
                _ = stop => {}
            }
            Ok(())
        });
    }
    let grpc = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(AuthzService::new(Arc::clone(&authorizer)))
        .add_service(admin::grpc::server(admin.clone()));
    // Coalescing: answers under 1 KiB share a write (see `net`).
    match grpc_listener {
        GrpcListener::Tcp(listener) => {
            // TCP_NODELAY: without it, Nagle's algorithm holds back small
            // HTTP/2 writes (a CheckResponse is ~200 bytes) until the peer's
            // delayed ACK, ~40 ms on Linux: Checks then wait on the kernel,
            // not on us. tonic sets it only on listeners it binds itself.
            let incoming =
                crate::net::coalescing(TcpIncoming::from(listener).with_nodelay(Some(true)));
            let serving = grpc.serve_with_incoming_shutdown(incoming, shutdown());
            tasks.spawn(async move { serving.await.context("grpc server failed") });
        }
        GrpcListener::Unix(listener, path) => {
            let incoming = crate::net::coalescing_unix(listener);
            let serving = grpc.serve_with_incoming_shutdown(incoming, shutdown());
            tasks.spawn(async move {
                let served = serving.await.context("grpc server failed");
                // The next start would replace it anyway, but a socket file
                // nobody answers on misleads whoever looks.
                if let Err(error) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), %error, "cannot remove the gRPC socket");
                }
                served
            });
        }
    }

    let source_status: Arc<dyn Fn() -> Option<String> + Send + Sync> = match &fleet {
        None => Arc::new(|| None),
        Some(f) => {
            let handle = f.handle.clone();
            Arc::new(move || {
                let status = handle.status();
                status.last_error.map(|e| format!("fleet sync failed: {e}"))
            })
        }
    };
    let degraded: Arc<dyn Fn() -> Vec<String> + Send + Sync> = match &fleet {
        None => Arc::new(Vec::new),
        Some(f) => {
            let handle = f.handle.clone();
            Arc::new(move || handle.status().degraded())
        }
    };
    let http_state = HttpState {
        store: Arc::clone(&store),
        metrics: Arc::clone(&metrics),
        source_status,
        degraded,
        before_scrape: {
            let admin = admin.clone();
            Arc::new(move || admin.update_grant_gauge(SystemTime::now()))
        },
    };
    let app = http::router(http_state).merge(admin::http::router(admin.clone()));
    let stop = shutdown();
    tasks.spawn(async move {
        axum::serve(http_listener, app)
            .with_graceful_shutdown(stop)
            .await
            .context("http server failed")
    });

    let watcher = Arc::clone(&reloader);
    let stop = shutdown();
    tasks.spawn(async move {
        if let Err(error) = watcher.watch(Duration::from_millis(200), stop).await {
            tracing::error!(%error, "file watch failed; reload on SIGHUP only");
        }
        Ok(())
    });

    let fleet_handle = fleet.as_ref().map(|f| f.handle.clone());
    if let Some(source) = fleet {
        let stop = shutdown();
        let poller = source
            .poller
            .run(stop)
            .instrument(tracing::info_span!("fleet_poller"));
        let done = crate::fleet::spawn_low_priority("fleet-sync", poller)
            .context("starting the Fleet sync thread")?;
        tasks.spawn(async move {
            let _ = done.await;
            Ok(())
        });
    }

    tracing::info!(grpc = %grpc_at, %http_addr, hosts = store.host_count(), "serving");
    Ok(RunningServer {
        grpc_at,
        http_addr,
        shutdown_tx,
        tasks,
        grace: config.shutdown.grace,
        authorizer,
        reloader,
        fleet: fleet_handle,
        admin,
        health,
    })
}

/// Loads a snapshot into `store` so a restart serves at once, also while
/// Fleet is down. A missing, truncated or corrupt snapshot is reported and
/// ignored: the first sync fills the store instead.
fn restore_snapshot(path: &std::path::Path, store: &PostureStore) {
    if !path.exists() {
        tracing::info!(path = %path.display(), "no snapshot yet; waiting for the first Fleet sync");
        return;
    }
    match crate::snapshot::load(path) {
        Ok(loaded) => {
            tracing::info!(path = %path.display(), hosts = loaded.hosts.len(), "posture restored from snapshot");
            store.replace_all(loaded.hosts, loaded.synced_at);
        }
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "snapshot unusable; ignoring it")
        }
    }
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
