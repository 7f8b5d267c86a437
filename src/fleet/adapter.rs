//! Glue between the Fleet source and the rest of the service: Fleet request
//! metrics, the live recheck as the `decision::Refresh` port, and building the
//! poller and recheck from the configuration.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{
    FleetClient, FleetConfig, Observer, Poller, PollerHandle, Recheck, RecheckOutcome, RetryPolicy,
};
use crate::{
    decision::{BoxFuture, Refresh, SyncTrigger},
    posture::{HostId, HostPosture, PostureStore},
    telemetry::metrics::{FleetRequestLabels, LimitLabels, Metrics, ResultLabels},
};

/// Counts Fleet requests by endpoint and status, and bytes received.
#[derive(Debug)]
pub struct MetricsObserver(pub Arc<Metrics>);

impl Observer for MetricsObserver {
    fn on_request(&self, endpoint: &'static str, status: u16, bytes: usize) {
        let status = if status == 0 {
            "error".to_owned()
        } else {
            status.to_string()
        };
        self.0
            .fleet_requests
            .get_or_create(&FleetRequestLabels { endpoint, status })
            .inc();
        self.0.fleet_bytes.inc_by(bytes as u64);
    }

    fn on_limit(&self, limit: &'static str) {
        self.0
            .limits_hit
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    fn on_sync(&self, duration: Duration, published: bool) {
        self.0.sync_duration.observe(duration.as_secs_f64());
        let result = if published { "success" } else { "failure" };
        self.0.syncs.get_or_create(&ResultLabels { result }).inc();
    }

    fn on_publish(&self, clipped: bool, hosts_without_fingerprint: usize) {
        self.0.fleet_report_clipped.set(i64::from(clipped));
        self.0
            .hosts_without_fingerprint
            .set(hosts_without_fingerprint as i64);
        if clipped {
            self.0.report_clipped.inc();
        }
    }

    fn on_shrink_guard(&self, holding: bool) {
        self.0.shrink_guard_holding.set(i64::from(holding));
    }
}

/// The live recheck seen from the Check path.
pub struct FleetRefresh {
    recheck: Arc<Recheck>,
    budget: Duration,
    metrics: Arc<Metrics>,
}

impl Refresh for FleetRefresh {
    fn needs_refresh(&self, id: HostId, now: SystemTime) -> bool {
        self.recheck.needs_recheck(id, now)
    }

    fn refresh(&self, id: HostId) -> BoxFuture<'_, Option<Arc<HostPosture>>> {
        Box::pin(async move {
            let outcome = self.recheck.recheck(id, self.budget).await;
            let result = match &outcome {
                RecheckOutcome::Fresh(_) => "fresh",
                RecheckOutcome::TimedOut => "timed_out",
                RecheckOutcome::Failed(_) => "failed",
                RecheckOutcome::Skipped(_) => "skipped",
            };
            self.metrics
                .rechecks
                .get_or_create(&ResultLabels { result })
                .inc();
            match outcome {
                RecheckOutcome::Fresh(host) => Some(host),
                _ => None,
            }
        })
    }
}

/// The running parts of a Fleet source.
pub struct FleetSource {
    pub poller: Poller,
    pub handle: PollerHandle,
    pub refresh: Option<Arc<dyn Refresh>>,
}

impl FleetSource {
    /// What `/readyz` says about the source while it cannot publish: the
    /// last Fleet error.
    pub fn readiness_problem(&self) -> Arc<dyn Fn() -> Option<String> + Send + Sync> {
        let handle = self.handle.clone();
        Arc::new(move || {
            handle
                .status()
                .last_error
                .map(|e| format!("fleet sync failed: {e}"))
        })
    }

    /// The `degraded:` lines `/readyz` adds while still ready: a clipped
    /// report, a held-back shrink.
    pub fn degraded_lines(&self) -> Arc<dyn Fn() -> Vec<String> + Send + Sync> {
        let handle = self.handle.clone();
        Arc::new(move || handle.status().degraded())
    }
}

/// Builds the client, the poller (with snapshot writing when `snapshot` is
/// set) and, when enabled, the recheck.
pub fn build(
    config: &FleetConfig,
    store: &Arc<PostureStore>,
    metrics: &Arc<Metrics>,
    snapshot: Option<std::path::PathBuf>,
) -> Result<FleetSource, super::FleetError> {
    let token = config.load_token()?;
    let new_client = || -> Result<Arc<FleetClient>, super::FleetError> {
        Ok(Arc::new(
            FleetClient::new(config, &token, RetryPolicy::default())?
                .with_observer(Arc::new(MetricsObserver(Arc::clone(metrics)))),
        ))
    };
    // Two clients, two connection pools: the poller runs on its own
    // low-priority thread and runtime (`spawn_low_priority`), and a pooled
    // connection is driven by the runtime that opened it, so the recheck,
    // answering a Check, must not borrow the poller's connections.
    let client = new_client()?;
    let mut poller = Poller::new(Arc::clone(&client), Arc::clone(store), config)
        .with_observer(Arc::new(MetricsObserver(Arc::clone(metrics))));
    if let Some(path) = snapshot {
        poller = poller.with_snapshot(path);
    }
    let handle = poller.handle();
    let refresh: Option<Arc<dyn Refresh>> = if config.recheck.enabled {
        let recheck = Recheck::new(new_client()?, Arc::clone(store), &config.recheck)
            .with_watched_cves(handle.clone());
        Some(Arc::new(FleetRefresh {
            recheck: Arc::new(recheck),
            budget: config.recheck.budget,
            metrics: Arc::clone(metrics),
        }))
    } else {
        None
    };
    Ok(FleetSource {
        poller,
        handle,
        refresh,
    })
}

/// `POST /v1/sync` for the Fleet source: one poller cycle, now.
pub struct FleetSync(pub PollerHandle);

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
