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
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tonic::transport::server::TcpIncoming;
use tonic_health::{
    pb::health_server::{Health, HealthServer},
    server::HealthReporter,
};
use tracing::Instrument;

use super::{
    Extensions, RunningServer,
    http_conn::{self, HttpTimeouts},
    listen,
    parts::{Parts, build_parts},
    reload::Reloader,
};
use crate::{
    admin::{
        self,
        probes::{self, HttpState},
    },
    authz::AuthzService,
    bypass::{self},
    config::{Config, GrpcListen},
    fleet::adapter::FleetSource,
    posture::PostureStore,
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
    spawn_http(&mut tasks, bound.http, &config.listen, &parts, &stop);
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
fn spawn_http(
    tasks: &mut Tasks,
    listener: TcpListener,
    listen: &crate::config::Listen,
    parts: &Parts,
    stop: &Stop,
) {
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
    let timeouts = HttpTimeouts {
        header: listen.http_header_timeout,
        idle: listen.http_idle_timeout,
    };
    let (metrics, stop) = (Arc::clone(&parts.metrics), stop.signalled());
    tasks.spawn(async move {
        http_conn::serve(listener, app, timeouts, metrics, stop)
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
