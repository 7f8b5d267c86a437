//! The probes on `listen.http`: `/livez`, `/readyz` (with a body saying
//! what is missing) and `/metrics`. It reads state and never writes it.

use std::{sync::Arc, time::SystemTime};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::{posture::PostureStore, telemetry::metrics::Metrics};

/// What the HTTP endpoints read.
#[derive(Clone)]
pub struct HttpState {
    pub store: Arc<PostureStore>,
    pub metrics: Arc<Metrics>,
    /// Extra readiness detail from the posture source (e.g. the last Fleet
    /// sync's error), shown as `warning:`.
    pub source_status: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    /// What the posture source serves only in part (e.g. a clipped Fleet
    /// certificate report); each line is shown as `degraded:`, and the
    /// service stays ready.
    pub degraded: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Run before each scrape, to set gauges that mirror state kept elsewhere
    /// (e.g. break-glass grants, whose expiry is a matter of time).
    pub before_scrape: Arc<dyn Fn() + Send + Sync>,
    /// Cluster mode: the line naming this replica's role (and saying when
    /// it is degraded), shown in every `/readyz` body.
    pub cluster_status: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState").finish_non_exhaustive()
    }
}

/// The router; the admin API adds its `/v1/*` routes to it.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let detail = (state.source_status)();
    let cluster = state
        .cluster_status
        .as_ref()
        .map(|line| format!("{}\n", line()));
    if state.store.is_loaded() {
        let mut body = format!(
            "ready: {} hosts, {} fingerprints\n",
            state.store.host_count(),
            state.store.fingerprint_count()
        );
        body.push_str(cluster.as_deref().unwrap_or_default());
        if let Some(d) = detail {
            body.push_str(&format!("warning: {d}\n"));
        }
        for d in (state.degraded)() {
            body.push_str(&format!("degraded: {d}\n"));
        }
        (StatusCode::OK, body)
    } else {
        let mut body = "not ready: no posture in memory yet (waiting for the first Fleet sync, the posture file or a snapshot)\n".to_owned();
        body.push_str(cluster.as_deref().unwrap_or_default());
        if let Some(d) = detail {
            body.push_str(&format!("last error: {d}\n"));
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (state.before_scrape)();
    let m = &state.metrics;
    m.hosts.set(state.store.host_count() as i64);
    m.fingerprints.set(state.store.fingerprint_count() as i64);
    if let Some(age) = state.store.age(SystemTime::now()) {
        m.posture_age_seconds.set(age.as_secs_f64());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}
