//! The ext_authz adapter: `Authorizer` turns one `CheckRequest` into a
//! `CheckResponse` (identify → lookup → route → evaluate → maybe recheck →
//! answer), and `AuthzService` exposes it as Envoy's `Authorization` gRPC
//! service. A deny is a successful RPC; the handler never returns an error
//! status for bad input, so Envoy's `failure_mode_allow` applies only when
//! fleet-authz itself is down.

pub mod answer;
pub mod body;
pub mod cache;
pub mod convert;
pub mod service;
pub mod wire;

pub use answer::Answer;
pub use service::AuthzService;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prost::Message as _;
use tracing::Instrument;

use self::{body::BodyContext, convert::CheckFacts};
use crate::{
    fingerprint::Fingerprint,
    identity::IdentityConfig,
    metrics::{DecisionLabels, Metrics, ReasonLabels, RouteLabel},
    policy::{self, Decision, Policy, Reason, RequestFacts, Subject},
    posture::{HostId, HostPosture, PostureStore},
};

/// A boxed future, for the object-safe hooks below.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Fetches one host fresh from the source within a deadline (the live
/// recheck, DESIGN.md §1.5). Implemented by the Fleet adapter.
pub trait Refresh: Send + Sync {
    /// True when `id`'s cached posture is old enough to be worth a recheck
    /// (older than `recheck.min_age`, counting a full sync or this host's
    /// last recheck, whichever is newer).
    fn needs_refresh(&self, id: HostId, now: SystemTime) -> bool;
    /// The fresh posture, or `None` when the source did not answer in time.
    fn refresh(&self, id: HostId) -> BoxFuture<'_, Option<Arc<HostPosture>>>;
}

/// Emergency grants (break-glass): an allow for one device, time-limited.
pub trait Grants: Send + Sync {
    /// The grant covering this host or fingerprint at `now`, if any.
    fn find(
        &self,
        host: Option<HostId>,
        fingerprint: &Fingerprint,
        now: SystemTime,
    ) -> Option<(u64, String)>;
}

/// Everything a decision reads. Shared by the gRPC service and the admin API.
pub struct Authorizer {
    pub store: Arc<PostureStore>,
    pub policy: Arc<ArcSwap<Policy>>,
    pub identity: IdentityConfig,
    pub remediation_url: Option<String>,
    pub max_staleness: Option<Duration>,
    pub metrics: Arc<Metrics>,
    pub refresh: Option<Arc<dyn Refresh>>,
    pub grants: Option<Arc<dyn Grants>>,
    /// Raw certificate value → fingerprint, so repeat requests skip decoding.
    pub fingerprints: cache::FingerprintCache,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

/// A decision with what it was made about.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub decision: Decision,
    pub host: Option<Arc<HostPosture>>,
    pub fingerprint: Option<Fingerprint>,
}

/// Route selection input that does not depend on the request headers.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub context: &'a std::collections::HashMap<String, String>,
    pub authority: &'a str,
    pub path: &'a str,
}

impl Authorizer {
    /// Decides on a fingerprint (or an identity failure) without I/O.
    pub fn decide(
        &self,
        identity: Result<Fingerprint, (bool, String)>,
        target: Target<'_>,
        now: SystemTime,
    ) -> Outcome {
        let facts = RequestFacts {
            context: target.context,
            authority: target.authority,
            path: target.path,
            posture_age: self.store.age(now),
            max_staleness: self.max_staleness,
        };
        let policy = self.policy.load();
        let route = policy.route(&facts);
        let (fingerprint, host) = match &identity {
            Ok(fp) => (Some(*fp), self.store.lookup(fp)),
            Err(_) => (None, None),
        };
        let subject = match (&identity, &host) {
            (Err((true, detail)), _) => Subject::NoCertificate(detail),
            (Err((false, detail)), _) => Subject::InvalidCertificate(detail),
            (Ok(_), None) => Subject::Unknown,
            (Ok(_), Some(h)) => Subject::Host(h),
        };
        let mut decision = policy::evaluate(route, &facts, subject, now);
        if !decision.allowed
            && let (Some(grants), Some(fp)) = (&self.grants, &fingerprint)
            && let Some((grant_id, reason)) = grants.find(host.as_ref().map(|h| h.id), fp, now)
        {
            decision.allowed = true;
            decision
                .reasons
                .push(Reason::BreakGlass { grant_id, reason });
        }
        Outcome {
            decision,
            host,
            fingerprint,
        }
    }

    /// Decides, and when a known device would be denied on posture older than
    /// the recheck's `min_age`, refreshes that host within the budget and
    /// decides again on what came back.
    pub async fn decide_with_recheck(
        &self,
        identity: Result<Fingerprint, (bool, String)>,
        target: Target<'_>,
        now: SystemTime,
    ) -> Outcome {
        let outcome = self.decide(identity.clone(), target, now);
        let (Some(refresh), Some(host)) = (&self.refresh, &outcome.host) else {
            return outcome;
        };
        if outcome.decision.allowed || !refresh.needs_refresh(host.id, now) {
            return outcome;
        }
        match refresh.refresh(host.id).await {
            Some(_) => self.decide(identity, target, SystemTime::now()),
            None => outcome,
        }
    }

    /// Answers one Envoy Check, inside a `check` span that joins the
    /// caller's trace (W3C `traceparent` among the forwarded headers) and
    /// carries the decision, route, reasons and host id.
    pub async fn check(&self, request: &CheckRequest) -> CheckResponse {
        let answer = self.check_facts(CheckFacts::from_request(request), false);
        // Not kept, so never encoded: this cannot fail.
        answer.await.into_response().unwrap_or_default()
    }

    /// [`Self::check`] for the lean request the gRPC service decodes; a
    /// plain allow comes back as the host's kept, encoded answer.
    pub async fn check_lean(&self, request: &wire::CheckRequest) -> Answer {
        self.check_facts(CheckFacts::from_lean(request), true).await
    }

    async fn check_facts(&self, facts: CheckFacts<'_>, keep: bool) -> Answer {
        if !crate::telemetry::spans_enabled() {
            return self.check_in_span(facts, keep).await;
        }
        let span = tracing::info_span!(
            "check",
            otel.kind = "server",
            request_id = &*facts.request_id,
            decision = tracing::field::Empty,
            route = tracing::field::Empty,
            reasons = tracing::field::Empty,
            host.id = tracing::field::Empty,
        );
        crate::telemetry::set_parent_from_headers(&span, &facts.headers);
        self.check_in_span(facts, keep).instrument(span).await
    }

    async fn check_in_span(&self, facts: CheckFacts<'_>, keep: bool) -> Answer {
        let started = tokio::time::Instant::now();
        let identity = self
            .fingerprints
            .fingerprint(&self.identity, facts.peer_certificate, &facts.headers)
            .map_err(|e| (e.is_missing(), e.to_string()));
        let target = Target {
            context: facts.context,
            authority: &facts.authority,
            path: &facts.path,
        };
        let outcome = self
            .decide_with_recheck(identity, target, SystemTime::now())
            .await;
        let ctx = BodyContext {
            host: outcome.host.as_deref(),
            fingerprint: outcome.fingerprint.as_ref(),
            remediation_url: self.remediation_url.as_deref(),
            request_id: &facts.request_id,
        };
        let answer = answer(&outcome, &ctx, facts.header("accept"), keep);
        let elapsed = started.elapsed();
        self.record(&outcome, &facts.request_id, elapsed);
        answer
    }

    fn record(&self, outcome: &Outcome, request_id: &str, elapsed: Duration) {
        let d = &outcome.decision;
        let kinds = d.reason_kinds();
        let decision = match (d.allowed, d.is_dry_run_deny()) {
            (true, _) => "allow",
            (false, true) => "dry_run_deny",
            (false, false) => "deny",
        };
        // An allow by break-glass is labelled as such, not by the deny
        // reason it overrode, so emergency use stands out.
        let label = if kinds.contains(&"break_glass") {
            "break_glass"
        } else {
            kinds.first().copied().unwrap_or("none")
        };
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                decision,
                reason: label,
                route: RouteLabel(Arc::clone(&d.route)),
            })
            .inc();
        for kind in &kinds {
            self.metrics
                .reasons
                .get_or_create(&ReasonLabels {
                    reason: kind,
                    route: RouteLabel(Arc::clone(&d.route)),
                })
                .inc();
        }
        self.metrics.check_duration.observe(elapsed.as_secs_f64());
        self.metrics
            .otel
            .record(decision, label, &d.route, elapsed.as_secs_f64());
        let reasons = kinds.join(",");
        let span = tracing::Span::current();
        span.record("decision", decision);
        span.record("route", &*d.route);
        span.record("reasons", reasons.as_str());
        if let Some(h) = &outcome.host {
            span.record("host.id", h.id.0);
        }
        tracing::info!(
            target: "fleet_authz::decision",
            request_id,
            route = %d.route,
            host_id = outcome.host.as_ref().map(|h| h.id.0),
            fingerprint = outcome.fingerprint.map(|f| f.prefix(12)),
            decision,
            mode = if d.mode == policy::Mode::DryRun { "dry_run" } else { "enforce" },
            reasons = %reasons,
            latency_us = elapsed.as_micros() as u64,
            "decision"
        );
    }
}

/// The answer for `outcome`. With `keep`, a plain allow (no reasons) for a
/// known host is encoded once and kept on that host's posture for the route;
/// later Checks send the kept bytes.
fn answer(outcome: &Outcome, ctx: &BodyContext<'_>, accept: &str, keep: bool) -> Answer {
    let d = &outcome.decision;
    let host = outcome
        .host
        .as_deref()
        .filter(|_| keep && d.allowed && d.reasons.is_empty());
    let Some(host) = host else {
        return Answer::Built(convert::to_response(d, ctx, accept));
    };
    if let Some(kept) = host.allow_answer.get(&d.route) {
        return Answer::Encoded(kept.clone());
    }
    let encoded = bytes::Bytes::from(convert::to_response(d, ctx, accept).encode_to_vec());
    host.allow_answer.keep(&d.route, encoded.clone());
    Answer::Encoded(encoded)
}
