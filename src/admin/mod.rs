//! The admin API (DESIGN.md §4): explain a decision, inspect a host or a
//! fingerprint, force a sync, and manage break-glass grants. Served as HTTP
//! `/v1/*` ([`http`]) and as the gRPC service `fleet_authz.v1.Admin`
//! ([`grpc`]). Both need `Authorization: Bearer <token>` when
//! `admin.token_file` is configured; the token is read once at start, compared
//! in constant time and never logged.
//!
//! Explain reuses `Authorizer::decide` without the live recheck, so asking
//! never causes Fleet traffic and never moves the decision metrics.

pub mod grpc;
pub mod http;
pub mod probes;
pub mod token;

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use serde_json::{Value, json};

pub use self::token::{AdminToken, TokenError};
pub use crate::decision::SyncTrigger;
pub use crate::grants::{Grant, GrantRequest, GrantStore, GrantSubject, GrantsError};
use crate::{
    authz::body,
    decision::{Authorizer, Outcome, Target},
    fingerprint::Fingerprint,
    posture::{HostPosture, PolicyResponse},
};

/// What the admin endpoints read and change.
#[derive(Clone)]
pub struct AdminState {
    /// The same authorizer the Checks use (store, policy, grants).
    pub authorizer: Arc<Authorizer>,
    /// Forced sync; `None` answers 501 / `UNIMPLEMENTED`.
    pub sync: Option<Arc<dyn SyncTrigger>>,
    /// Required bearer token; `None` leaves the API open.
    pub token: Option<AdminToken>,
    /// Break-glass grants (also installed in the authorizer).
    pub grants: Arc<GrantStore>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("sync", &self.sync.is_some())
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

/// An explain query: the fingerprint and what routing reads.
#[derive(Debug, Clone, Default)]
pub struct ExplainQuery {
    /// Certificate SHA-1, hex, colons allowed.
    pub sha1: String,
    /// Envoy `context_extensions` to route by.
    pub context: HashMap<String, String>,
    /// `:authority` to route by.
    pub host: String,
    /// Path to route by (`/` when empty).
    pub path: String,
}

/// The message given when no posture source can be synced on demand.
pub const NO_SYNC_SOURCE: &str = "no Fleet source configured: nothing to sync";

impl AdminState {
    /// The decision for `query` now, and its JSON document with every reason.
    pub fn explain(&self, query: &ExplainQuery) -> Result<(Outcome, Value), String> {
        let fp = Fingerprint::parse(&query.sha1).map_err(|e| format!("sha1: {e}"))?;
        let target = Target {
            context: &query.context,
            authority: &query.host,
            path: if query.path.is_empty() {
                "/"
            } else {
                &query.path
            },
        };
        let now = SystemTime::now();
        let outcome = self.authorizer.decide(Ok(fp), target, now);
        let ctx = body::BodyContext {
            host: outcome.host.as_deref(),
            fingerprint: outcome.fingerprint.as_ref(),
            remediation_url: self.authorizer.remediation_url.as_deref(),
            request_id: "explain",
            now,
            page: None,
        };
        let mut doc = body::decision_json(&outcome.decision, &ctx);
        doc["answer"] = json!(if outcome.decision.answer_allows() {
            "allow"
        } else {
            "deny"
        });
        Ok((outcome, doc))
    }

    /// Keeps `fleet_authz_break_glass_grants_active` and
    /// `fleet_authz_bypass_grants_active` equal to the grants in force at `now`.
    pub fn update_grant_gauge(&self, now: SystemTime) {
        let active = self.grants.active(now);
        let bypasses = active.iter().filter(|g| g.bypass_route.is_some()).count();
        let metrics = &self.authorizer.metrics;
        metrics
            .break_glass_active
            .set((active.len() - bypasses) as i64);
        metrics.bypass_active.set(bypasses as i64);
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One host's posture as JSON, for `/v1/hosts/{id}` and `GetHost`.
pub fn host_json(h: &HostPosture) -> Value {
    let policies: Vec<Value> = h
        .policies
        .iter()
        .map(|p| {
            json!({
                "id": p.meta.id,
                "name": &*p.meta.name,
                "response": match p.response {
                    PolicyResponse::Pass => "pass",
                    PolicyResponse::Fail => "fail",
                    PolicyResponse::NotRun => "not_run",
                },
                "critical": p.meta.critical,
                "resolution": p.meta.resolution.as_deref(),
                "failing_since": p.failing_since().map(rfc3339),
            })
        })
        .collect();
    json!({
        "id": h.id.0,
        "uuid": h.uuid,
        "display_name": h.display_name,
        "team": h.team.as_ref().map(|t| json!({"id": t.id, "name": &*t.name})),
        "platform": h.platform,
        "os_version": h.os_version,
        "last_seen": h.last_seen.map(rfc3339),
        "policies": policies,
        "cves": h.cves.iter().map(|c| &**c).collect::<Vec<_>>(),
        "fingerprints": h.fingerprints.iter().map(Fingerprint::to_hex).collect::<Vec<_>>(),
    })
}

/// A grant as JSON, for the break-glass endpoints.
pub fn grant_json(g: &Grant) -> Value {
    let (host_id, sha1) = match g.subject {
        GrantSubject::Host(id) => (Some(id.0), None),
        GrantSubject::Certificate(fp) => (None, Some(fp.to_hex())),
    };
    json!({
        "id": g.id,
        "kind": if g.bypass_route.is_some() { "bypass" } else { "break_glass" },
        "route": g.bypass_route,
        "host_id": host_id,
        "sha1": sha1,
        "reason": g.reason,
        "granted_by": g.granted_by,
        "granted_at": rfc3339(g.granted_at),
        "expires_at": rfc3339(g.expires_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_accepts_only_the_exact_bearer_value() {
        let token = AdminToken::new("s3cret");
        assert!(token.verify(Some("Bearer s3cret")));
        assert!(token.verify(Some("bearer s3cret")));
        assert!(!token.verify(Some("Bearer s3cre")));
        assert!(!token.verify(Some("Basic s3cret")));
        assert!(!token.verify(Some("s3cret")));
        assert!(!token.verify(None));
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
    }

    #[test]
    fn token_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc\n").unwrap();
        assert!(
            AdminToken::from_file(&path)
                .unwrap()
                .verify(Some("Bearer abc"))
        );
        std::fs::write(&path, "\n").unwrap();
        let err = AdminToken::from_file(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("admin.token_file: {}: the file is empty", path.display())
        );
    }
}
