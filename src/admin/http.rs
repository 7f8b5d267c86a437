//! The admin API over HTTP: `/v1/hosts/{id}`, `/v1/fingerprints/{sha1}`,
//! `/v1/explain`, `POST /v1/sync` and `/v1/break-glass`. Every route sits
//! behind the bearer-token check when a token is configured. Errors are JSON
//! `{"error": "..."}` with a status that says whose fault it is.

use std::{sync::Arc, time::SystemTime};

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AdminState, ExplainQuery, GrantRequest, GrantSubject, NO_SYNC_SOURCE, grant_json};
use crate::{
    decision::{SyncFailure, Synced},
    duration::{format_duration, parse_duration},
    fingerprint::Fingerprint,
    posture::HostId,
};

/// The `/v1/*` routes, token check included.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/hosts/{id}", get(host))
        .route("/v1/fingerprints/{sha1}", get(fingerprint))
        .route("/v1/explain", get(explain))
        .route("/v1/sync", post(sync))
        .route("/v1/break-glass", post(grant).get(list_grants))
        .route("/v1/break-glass/{id}", delete(revoke))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Largest admin request body: a grant or a sync request is a few hundred
/// bytes. A longer one is answered 413 without being read to the end.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// Refuses a request without the admin bearer token, when one is configured.
pub async fn require_token(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.token {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !token.verify(presented) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin bearer token",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

async fn host(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("host id `{id}` is not a number"),
        );
    };
    match state.authorizer.store.host(HostId(id)) {
        Some(h) => Json(super::host_json(&h)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("host {id} is not known")),
    }
}

async fn fingerprint(State(state): State<AdminState>, Path(sha1): Path<String>) -> Response {
    let fp = match Fingerprint::parse(&sha1) {
        Ok(fp) => fp,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("sha1: {e}")),
    };
    match state.authorizer.store.lookup(&fp) {
        Some(h) => Json(json!({"sha1": fp.to_hex(), "host": super::host_json(&h)})).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no host holds certificate {fp}"),
        ),
    }
}

/// `?sha1=…&host=…&path=…&context.app=payroll` (any number of `context.*`).
async fn explain(
    State(state): State<AdminState>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let mut query = ExplainQuery::default();
    for (key, value) in params {
        match key.as_str() {
            "sha1" => query.sha1 = value,
            "host" => query.host = value,
            "path" => query.path = value,
            other => match other.strip_prefix("context.") {
                Some(k) if !k.is_empty() => {
                    query.context.insert(k.to_owned(), value);
                }
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "unknown query parameter `{other}` (expected sha1, host, path, context.<key>)"
                        ),
                    );
                }
            },
        }
    }
    if query.sha1.is_empty() {
        return error(StatusCode::BAD_REQUEST, "sha1 is required");
    }
    match state.explain(&query) {
        Ok((_, doc)) => Json(doc).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// Optional body of `POST /v1/sync`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    /// Publish this sync even if the shrink guard would hold it back.
    #[serde(default)]
    accept_drop: bool,
}

async fn sync(State(state): State<AdminState>, body: axum::body::Bytes) -> Response {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        SyncRequest::default()
    } else {
        match serde_json::from_slice::<SyncRequest>(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
        }
    };
    let Some(trigger) = &state.sync else {
        return error(StatusCode::NOT_IMPLEMENTED, NO_SYNC_SOURCE);
    };
    match trigger.sync_forced(request.accept_drop).await {
        Ok(Synced { hosts, by: None }) => Json(json!({"ok": true, "hosts": hosts})).into_response(),
        Ok(Synced {
            hosts,
            by: Some(leader),
        }) => Json(json!({"ok": true, "hosts": hosts, "leader": leader})).into_response(),
        Err(SyncFailure::Failed(e)) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"ok": false, "error": e})),
        )
            .into_response(),
        Err(SyncFailure::Unavailable(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ok": false, "error": e})),
        )
            .into_response(),
    }
}

/// Body of `POST /v1/break-glass`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    #[serde(default)]
    host_id: Option<u64>,
    #[serde(default)]
    sha1: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    granted_by: Option<String>,
}

/// Gives a grant. A `duration` above the policy's `break_glass.max_duration`
/// is capped to it (emergency access should not fail on a typo'd length);
/// the answer says `"capped": true` and what was asked for.
async fn grant(
    State(state): State<AdminState>,
    body: Result<Json<GrantBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        // 413 for an oversized body; anything else wrong with it is a 400.
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(e.status(), format!("body: {}", e.body_text()));
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {}", e.body_text())),
    };
    let subject = match (body.host_id, body.sha1.as_deref()) {
        (Some(id), None) => {
            if state.authorizer.store.host(HostId(id)).is_none() {
                return error(StatusCode::NOT_FOUND, format!("host {id} is not known"));
            }
            GrantSubject::Host(HostId(id))
        }
        (None, Some(sha1)) => match Fingerprint::parse(sha1) {
            Ok(fp) => GrantSubject::Certificate(fp),
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("sha1: {e}")),
        },
        _ => {
            return error(StatusCode::BAD_REQUEST, "give exactly one of host_id, sha1");
        }
    };
    let reason = body.reason.trim().to_owned();
    if reason.is_empty() {
        return error(StatusCode::BAD_REQUEST, "reason is required");
    }
    let Some(requested) = body.duration.as_deref() else {
        return error(
            StatusCode::BAD_REQUEST,
            "duration is required (e.g. \"2h\")",
        );
    };
    let requested = match parse_duration(requested) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "duration: must be greater than zero",
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("duration: {e}")),
    };
    let max = state.authorizer.policy.load().break_glass_max;
    let duration = requested.min(max);
    let request = GrantRequest {
        subject,
        reason,
        granted_by: body.granted_by.unwrap_or_else(|| "admin".to_owned()),
        duration,
        bypass_route: None,
    };
    let grants = Arc::clone(&state.grants);
    let now = SystemTime::now();
    let given = tokio::task::spawn_blocking(move || grants.grant(request, now)).await;
    let granted = match given {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    state.update_grant_gauge(now);
    tracing::warn!(
        grant_id = granted.id,
        subject = ?granted.subject,
        reason = %granted.reason,
        granted_by = %granted.granted_by,
        duration = %format_duration(duration),
        "break-glass grant given"
    );
    let mut doc = grant_json(&granted);
    doc["duration"] = json!(format_duration(duration));
    doc["capped"] = json!(duration < requested);
    if duration < requested {
        doc["requested"] = json!(format_duration(requested));
    }
    (StatusCode::CREATED, Json(doc)).into_response()
}

async fn list_grants(State(state): State<AdminState>) -> Response {
    let now = SystemTime::now();
    state.update_grant_gauge(now);
    let grants: Vec<Value> = state.grants.active(now).iter().map(grant_json).collect();
    Json(json!({"grants": grants})).into_response()
}

async fn revoke(State(state): State<AdminState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("grant id `{id}` is not a number"),
        );
    };
    let grants = Arc::clone(&state.grants);
    let now = SystemTime::now();
    match tokio::task::spawn_blocking(move || grants.revoke(id, now)).await {
        Ok(Ok(true)) => {
            state.update_grant_gauge(now);
            tracing::warn!(grant_id = id, "break-glass grant revoked");
            Json(json!({"revoked": id})).into_response()
        }
        Ok(Ok(false)) => error(StatusCode::NOT_FOUND, format!("no grant {id} in force")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Query-string helper shared with the CLI: `context.k=v` pairs.
pub fn explain_params(
    sha1: &str,
    context: &[(String, String)],
    host: &str,
    path: &str,
) -> Vec<(String, String)> {
    let mut params = vec![
        ("sha1".to_owned(), sha1.to_owned()),
        ("host".to_owned(), host.to_owned()),
        ("path".to_owned(), path.to_owned()),
    ];
    params.extend(
        context
            .iter()
            .map(|(k, v)| (format!("context.{k}"), v.clone())),
    );
    params
}
