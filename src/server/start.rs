//! Wiring, in short steps: [`build_parts`] loads and builds everything the
//! service decides with, [`bind`] takes both listeners, and the `spawn_*`
//! functions start the readiness latch, the gRPC and HTTP servers, the file
//! watcher and the Fleet sync thread, each stopping on one shutdown signal.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tonic::transport::server::TcpIncoming;
use tonic_health::{
    pb::health_server::{Health, HealthServer},
    server::HealthReporter,
};
use tracing::Instrument;

use super::{
    Extensions, RunningServer, listen,
    reload::{FileSync, Reloader},
};
use crate::{
    admin::{
        self, AdminState, AdminToken, GrantStore, SyncTrigger,
        probes::{self, HttpState},
    },
    authz::AuthzService,
    bypass::{self, Door, TokenKey},
    cluster::{
        Node,
        http::{ClusterRefresh, ClusterSync},
    },
    config::{Config, GrpcListen},
    decision::{Authorizer, Grants},
    fleet::adapter::{FleetSource, FleetSync},
    policy::{Policy, load_policy},
    posture::{PostureFile, PostureStore, load_posture_file},
    telemetry::metrics::Metrics,
};

/// HTTP/2 streams one gRPC connection may have open.
pub const GRPC_MAX_STREAMS: u32 = 1024;
/// Largest header block of a gRPC request.
pub const GRPC_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Tasks of one service, each returning `Err` only when it failed.
type Tasks = JoinSet<anyhow::Result<()>>;

/// The gRPC listener, bound before anything is served.
enum GrpcListener {
    Tcp(TcpListener),
    /// The listener and its socket file, removed once serving stops.
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

/// Everything the service decides with, built before anything is bound.
struct Parts {
    store: Arc<PostureStore>,
    metrics: Arc<Metrics>,
    authorizer: Arc<Authorizer>,
    reloader: Arc<Reloader>,
    admin: AdminState,
    fleet: Option<FleetSource>,
    /// The self-service bypass: offers on deny pages, the endpoint.
    door: Arc<Door>,
    /// Cluster mode: the node that replaces the poller's own schedule.
    cluster: Option<Arc<Node>>,
}

/// Both listeners, bound.
struct Bound {
    http: TcpListener,
    http_addr: std::net::SocketAddr,
    grpc: GrpcListener,
    grpc_at: GrpcListen,
}

/// The one shutdown signal every task waits on.
#[derive(Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    fn signalled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Loads everything `config` names, binds its listeners and starts serving.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    start_with(config, Extensions::default()).await
}

/// [`start`], with parts supplied by the caller.
pub async fn start_with(config: Config, ext: Extensions) -> anyhow::Result<RunningServer> {
    let parts = build_parts(&config, ext)?;
    let bound = bind(&config).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let stop = Stop(shutdown_rx);
    let mut tasks = Tasks::new();
    let (health, health_service) = spawn_health(&mut tasks, &parts.store, &stop).await;
    spawn_grpc(&mut tasks, bound.grpc, &parts, health_service, &stop)?;
    spawn_http(&mut tasks, bound.http, &parts, &stop);
    spawn_watcher(&mut tasks, &parts.reloader, &stop);
    let fleet = parts.fleet.as_ref().map(|f| f.handle.clone());
    match (&parts.cluster, parts.fleet) {
        // The cluster starts a poller while this replica leads (or is alone).
        (Some(node), _) => {
            crate::cluster::spawn(node, &parts.admin.grants, &mut tasks, &stop.0).await?
        }
        (None, Some(source)) => spawn_poller(&mut tasks, source, &stop)?,
        (None, None) => {}
    }
    let fleet = fleet.filter(|_| parts.cluster.is_none());
    tracing::info!(
        grpc = %bound.grpc_at,
        http_addr = %bound.http_addr,
        hosts = parts.store.host_count(),
        "serving"
    );
    Ok(RunningServer {
        grpc_at: bound.grpc_at,
        http_addr: bound.http_addr,
        shutdown_tx,
        tasks,
        grace: config.shutdown.grace,
        authorizer: parts.authorizer,
        reloader: parts.reloader,
        fleet,
        admin: parts.admin,
        health,
        cluster: parts.cluster,
    })
}

/// Policy, posture store, grants, Fleet source, authorizer, reloader and
/// admin state: everything but the listeners and tasks.
fn build_parts(config: &Config, ext: Extensions) -> anyhow::Result<Parts> {
    let metrics = Arc::new(Metrics::new());
    let (policy, posture) = match ext.preloaded {
        Some(p) => (p.policy, p.posture),
        None => (load_policy(&config.policy_file)?, None),
    };
    let policy = Arc::new(ArcSwap::from_pointee(policy));
    let store = match ext.store {
        Some(store) => store,
        None => file_store(config, posture)?,
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
    let fleet = fleet_source(config, &store, &metrics, &policy)?;
    let cluster = cluster_node(config, &store, &metrics, fleet.as_ref())?;
    let cluster_refresh = cluster
        .as_ref()
        .filter(|_| config.fleet.as_ref().is_some_and(|f| f.recheck.enabled))
        .map(|node| {
            Arc::new(ClusterRefresh(Arc::clone(node))) as Arc<dyn crate::decision::Refresh>
        });
    if let Some(node) = &cluster {
        grants.set_replica(node.grant_replica());
    }
    let authorizer = Arc::new(Authorizer {
        store: Arc::clone(&store),
        policy: Arc::clone(&policy),
        identity: config.identity.clone(),
        remediation_url: config.remediation_url.clone(),
        max_staleness: config.max_staleness(),
        metrics: Arc::clone(&metrics),
        refresh: ext.refresh.or(cluster_refresh).or_else(|| {
            (cluster.is_none())
                .then(|| fleet.as_ref().and_then(|f| f.refresh.clone()))
                .flatten()
        }),
        grants: Some(Arc::clone(&grants) as Arc<dyn Grants>),
        fingerprints: Default::default(),
    });
    let reloader = Arc::new(reloader(
        config,
        &policy,
        &store,
        &metrics,
        fleet.as_ref(),
        cluster.as_ref(),
    ));
    let sync = ext.sync.or_else(|| match (&fleet, &config.posture_file) {
        _ if cluster.is_some() => cluster
            .as_ref()
            .map(|node| Arc::new(ClusterSync(Arc::clone(node))) as Arc<dyn SyncTrigger>),
        (Some(f), _) => Some(Arc::new(FleetSync(f.handle.clone())) as Arc<dyn SyncTrigger>),
        (None, Some(_)) => Some(Arc::new(FileSync(Arc::clone(&reloader))) as Arc<dyn SyncTrigger>),
        (None, None) => None,
    });
    let key = match &config.bypass.key_file {
        Some(path) => TokenKey::from_file(path)?,
        None => TokenKey::random(),
    };
    let door = Arc::new(Door::new(
        Arc::clone(&authorizer),
        Arc::clone(&grants),
        key,
        config.identity.xfcc_element,
    ));
    let admin = AdminState {
        authorizer: Arc::clone(&authorizer),
        sync,
        token,
        grants,
    };
    admin.update_grant_gauge(SystemTime::now());
    Ok(Parts {
        store,
        metrics,
        authorizer,
        reloader,
        admin,
        fleet,
        door,
        cluster,
    })
}

/// Cluster mode's node, when `cluster:` is set (config.rs makes sure
/// `fleet:` is too).
fn cluster_node(
    config: &Config,
    store: &Arc<PostureStore>,
    metrics: &Arc<Metrics>,
    fleet: Option<&FleetSource>,
) -> anyhow::Result<Option<Arc<Node>>> {
    let (Some(cluster), Some(fleet_config), Some(source)) = (&config.cluster, &config.fleet, fleet)
    else {
        return Ok(None);
    };
    Node::build(crate::cluster::Parts {
        config: cluster.clone(),
        fleet: fleet_config.clone(),
        snapshot: config.snapshot.as_ref().map(|s| s.path.clone()),
        store: Arc::clone(store),
        metrics: Arc::clone(metrics),
        cves: source.handle.clone(),
    })
    .map(Some)
}

/// A store holding `posture_file`'s hosts (read now unless preloaded), or
/// an empty one for a Fleet source to fill.
fn file_store(config: &Config, posture: Option<PostureFile>) -> anyhow::Result<Arc<PostureStore>> {
    let store = Arc::new(PostureStore::new());
    if let Some(path) = &config.posture_file {
        let now = SystemTime::now();
        let file = match posture {
            Some(file) => file,
            None => load_posture_file(path, now)?,
        };
        store.replace_all(file.hosts, now);
    }
    Ok(store)
}

/// The Fleet source, after restoring the snapshot into `store`, asking
/// Fleet about the CVEs the policy names.
fn fleet_source(
    config: &Config,
    store: &Arc<PostureStore>,
    metrics: &Arc<Metrics>,
    policy: &ArcSwap<Policy>,
) -> anyhow::Result<Option<FleetSource>> {
    let Some(fleet) = &config.fleet else {
        return Ok(None);
    };
    if let Some(snap) = &config.snapshot {
        crate::fleet::snapshot::restore(&snap.path, store);
    }
    let snapshot = config.snapshot.as_ref().map(|s| s.path.clone());
    let source = crate::fleet::adapter::build(fleet, store, metrics, snapshot)?;
    source
        .handle
        .set_cves(policy.load().cves().iter().map(|c| c.to_string()).collect());
    Ok(Some(source))
}

/// The policy and posture file reloader; with Fleet, a policy reload also
/// tells the poller which CVEs to ask about.
fn reloader(
    config: &Config,
    policy: &Arc<ArcSwap<Policy>>,
    store: &Arc<PostureStore>,
    metrics: &Arc<Metrics>,
    fleet: Option<&FleetSource>,
    cluster: Option<&Arc<Node>>,
) -> Reloader {
    let mut reloader = Reloader::new(
        config.policy_file.clone(),
        Arc::clone(policy),
        config.posture_file.clone(),
        Arc::clone(store),
        Arc::clone(metrics),
    );
    if let Some(node) = cluster.cloned() {
        // Through the node: it also tells the poller of the current term.
        reloader.on_policy = Some(Box::new(move |p| {
            node.set_cves(p.cves().iter().map(|c| c.to_string()).collect())
        }));
    } else if let Some(handle) = fleet.map(|f| f.handle.clone()) {
        // The poller asks Fleet about exactly the CVEs the policy names.
        reloader.on_policy = Some(Box::new(move |p| {
            handle.set_cves(p.cves().iter().map(|c| c.to_string()).collect())
        }));
    }
    reloader
}

/// Binds HTTP, then gRPC. The gRPC listener is bound last: dropping a Unix
/// listener leaves its socket file behind, so nothing that can fail comes
/// between it and serving.
async fn bind(config: &Config) -> anyhow::Result<Bound> {
    let http = TcpListener::bind(config.listen.http)
        .await
        .with_context(|| format!("listen.http: cannot bind {}", config.listen.http))?;
    let http_addr = http.local_addr()?;
    let grpc = match &config.listen.grpc {
        GrpcListen::Tcp(addr) => TcpListener::bind(addr).await.map(GrpcListener::Tcp),
        GrpcListen::Unix(path) => {
            listen::bind_unix(path).map(|l| GrpcListener::Unix(l, path.clone()))
        }
    }
    .with_context(|| format!("listen.grpc: cannot bind {}", config.listen.grpc))?;
    let grpc_at = match &grpc {
        GrpcListener::Tcp(l) => GrpcListen::Tcp(l.local_addr()?),
        GrpcListener::Unix(_, path) => GrpcListen::Unix(path.clone()),
    };
    Ok(Bound {
        http,
        http_addr,
        grpc,
        grpc_at,
    })
}

/// gRPC health starts NOT_SERVING, also for "" (Kubernetes' grpc probe asks
/// about it; tonic-health starts it SERVING), and turns SERVING once the
/// store holds a first posture.
async fn spawn_health(
    tasks: &mut Tasks,
    store: &Arc<PostureStore>,
    stop: &Stop,
) -> (HealthReporter, HealthServer<impl Health>) {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<AuthzService>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let (reporter, store, stop) = (health.clone(), Arc::clone(store), stop.signalled());
    tasks.spawn(async move {
        tokio::select! {
            _ = store.wait_loaded() => {
                reporter.set_serving::<AuthzService>().await;
                reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
            }
            _ = stop => {}
        }
        Ok(())
    });
    (health, health_service)
}

/// Envoy's Authorization, health, reflection and the admin service on the
/// gRPC listener.
fn spawn_grpc(
    tasks: &mut Tasks,
    listener: GrpcListener,
    parts: &Parts,
    health_service: HealthServer<impl Health>,
    stop: &Stop,
) -> anyhow::Result<()> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::proto::ENVOY_AUTHZ_DESCRIPTOR_SET)
        .build_v1()?;
    // Bounds (README, "Limits"): a client that opens streams and never
    // reads (a zero flow-control window) holds at most this many answers per
    // connection; tonic's default is no limit at all.
    let grpc = tonic::transport::Server::builder()
        .max_concurrent_streams(GRPC_MAX_STREAMS)
        .http2_max_header_list_size(GRPC_MAX_HEADER_LIST_BYTES)
        .http2_max_pending_accept_reset_streams(Some(GRPC_MAX_STREAMS as usize))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            AuthzService::new(Arc::clone(&parts.authorizer)).with_door(Arc::clone(&parts.door)),
        )
        .add_service(admin::grpc::server(parts.admin.clone()));
    // Coalescing: answers under 1 KiB share a write (see `listen`).
    match listener {
        GrpcListener::Tcp(listener) => {
            // TCP_NODELAY: without it, Nagle's algorithm holds back small
            // HTTP/2 writes (a CheckResponse is ~200 bytes) until the peer's
            // delayed ACK, ~40 ms on Linux: Checks then wait on the kernel,
            // not on us. tonic sets it only on listeners it binds itself.
            let incoming = listen::coalescing(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                Arc::clone(&parts.metrics),
            );
            let serving = grpc.serve_with_incoming_shutdown(incoming, stop.signalled());
            tasks.spawn(async move { serving.await.context("grpc server failed") });
        }
        GrpcListener::Unix(listener, path) => {
            let incoming = listen::coalescing_unix(listener, Arc::clone(&parts.metrics));
            let serving = grpc.serve_with_incoming_shutdown(incoming, stop.signalled());
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
    Ok(())
}

/// The probes and the admin API on the HTTP listener.
fn spawn_http(tasks: &mut Tasks, listener: TcpListener, parts: &Parts, stop: &Stop) {
    let http_state = HttpState {
        store: Arc::clone(&parts.store),
        metrics: Arc::clone(&parts.metrics),
        source_status: match (&parts.cluster, &parts.fleet) {
            (Some(node), _) => {
                let node = Arc::clone(node);
                Arc::new(move || node.sync_error().map(|e| format!("fleet sync failed: {e}")))
            }
            (None, Some(fleet)) => fleet.readiness_problem(),
            (None, None) => Arc::new(|| None),
        },
        degraded: match &parts.fleet {
            Some(fleet) => fleet.degraded_lines(),
            None => Arc::new(Vec::new),
        },
        cluster_status: parts.cluster.as_ref().map(|node| {
            let node = Arc::clone(node);
            Arc::new(move || node.readiness_line()) as Arc<dyn Fn() -> String + Send + Sync>
        }),
        before_scrape: {
            let admin = parts.admin.clone();
            Arc::new(move || admin.update_grant_gauge(SystemTime::now()))
        },
    };
    let mut app = probes::router(http_state)
        .merge(admin::http::router(parts.admin.clone()))
        .merge(bypass::http::router(Arc::clone(&parts.door)));
    if let Some(node) = &parts.cluster {
        app = app.merge(crate::cluster::http::router(
            Arc::clone(node),
            parts.admin.clone(),
        ));
    }
    let stop = stop.signalled();
    tasks.spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .context("http server failed")
    });
}

/// Watches the policy and posture files.
fn spawn_watcher(tasks: &mut Tasks, reloader: &Arc<Reloader>, stop: &Stop) {
    let (watcher, stop) = (Arc::clone(reloader), stop.signalled());
    tasks.spawn(async move {
        if let Err(error) = watcher.watch(Duration::from_millis(200), stop).await {
            tracing::error!(%error, "file watch failed; reload on SIGHUP only");
        }
        Ok(())
    });
}

/// Runs the Fleet poller on its own low-priority thread.
fn spawn_poller(tasks: &mut Tasks, source: FleetSource, stop: &Stop) -> anyhow::Result<()> {
    let poller = source
        .poller
        .run(stop.signalled())
        .instrument(tracing::info_span!("fleet_poller"));
    let done = crate::fleet::spawn_low_priority("fleet-sync", poller)
        .context("starting the Fleet sync thread")?;
    tasks.spawn(async move {
        let _ = done.await;
        Ok(())
    });
    Ok(())
}
