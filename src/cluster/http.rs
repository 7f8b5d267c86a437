//! The cluster's admin endpoints, behind the admin token like every `/v1/*`:
//! `GET /v1/cluster` (role, leader, posture version and age) and
//! `GET /v1/audit?limit=N&before=SEQ` (the audit trail, newest first).
//! Also the `POST /v1/sync` trigger and the recheck port of cluster mode.

use std::{sync::Arc, time::SystemTime};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::json;

use super::{Node, Role, audit};
use crate::{
    admin::AdminState,
    decision::{BoxFuture, SyncFailure, SyncTrigger, Synced},
};

pub use super::recheck::ClusterRefresh;

/// `/v1/cluster` and `/v1/audit`, with the admin token check of `admin`.
pub fn router(node: Arc<Node>, admin: AdminState) -> Router {
    Router::new()
        .route("/v1/cluster", get(cluster))
        .route("/v1/audit", get(list_audit))
        .route_layer(middleware::from_fn_with_state(
            admin,
            crate::admin::http::require_token,
        ))
        .with_state(node)
}

async fn cluster(State(node): State<Arc<Node>>) -> Response {
    let state = node.role();
    let leader = match state.role {
        Role::Leader => Some(node.id().to_owned()),
        _ => state.leader,
    };
    let age = node.store.age(SystemTime::now()).map(|d| d.as_secs_f64());
    Json(json!({
        "role": state.role.as_str(),
        "leader": leader,
        "posture_version": node.posture_version(),
        "posture_age_s": age,
    }))
    .into_response()
}

/// `?limit=` (default 50, at most 500) and `?before=` (a `seq`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    before: Option<u64>,
}

async fn list_audit(
    State(node): State<Arc<Node>>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let error = |status: StatusCode, message: String| {
        (status, Json(json!({"error": message}))).into_response()
    };
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=audit::MAX_PAGE).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit: must be between 1 and {}", audit::MAX_PAGE),
        );
    }
    match audit::page(&node, query.before, limit).await {
        Ok((entries, next)) => {
            Json(json!({"entries": entries, "next_before": next})).into_response()
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("audit trail unavailable: {e}"),
        ),
    }
}

/// `POST /v1/sync` in cluster mode: the leader (or a replica alone) syncs;
/// a follower has the leader sync and answers for it.
pub struct ClusterSync(pub Arc<Node>);

impl SyncTrigger for ClusterSync {
    fn sync_now(&self) -> BoxFuture<'_, Result<usize, String>> {
        Box::pin(async move { settled(super::sync::forced(&self.0, false).await) })
    }

    fn sync_accepting_drop(&self) -> BoxFuture<'_, Result<usize, String>> {
        Box::pin(async move { settled(super::sync::forced(&self.0, true).await) })
    }

    fn sync_forced(&self, accept_drop: bool) -> BoxFuture<'_, Result<Synced, SyncFailure>> {
        Box::pin(super::sync::forced(&self.0, accept_drop))
    }
}

fn settled(synced: Result<Synced, SyncFailure>) -> Result<usize, String> {
    match synced {
        Ok(synced) => Ok(synced.hosts),
        Err(SyncFailure::Failed(e) | SyncFailure::Unavailable(e)) => Err(e),
    }
}
