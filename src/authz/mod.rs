//! The ext_authz adapter: `Authorizer` turns one `CheckRequest` into a
//! `CheckResponse` (identify → lookup → route → evaluate → maybe recheck →
//! answer), and `AuthzService` exposes it as Envoy's `Authorization` gRPC
//! service. A deny is a successful RPC; the handler never returns an error
//! status for bad input, so Envoy's `failure_mode_allow` applies only when
//! fleet-authz itself is down.

pub mod answer;
pub mod body;
pub mod page;

pub mod convert;
pub mod request;
pub mod service;
pub mod wire;

pub use answer::{AllowMemo, Answer};
pub use service::AuthzService;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use prost::Message as _;
use tracing::Instrument;

use self::{body::BodyContext, convert::CheckFacts, page::PageFacts};
use crate::decision::{Authorizer, Outcome, Target};
use crate::{
    bypass::Door,
    policy,
    telemetry::metrics::{DecisionLabels, ReasonLabels, RouteLabel},
};

impl Authorizer {
    /// Answers one Envoy Check, inside a `check` span that joins the
    /// caller's trace (W3C `traceparent` among the forwarded headers) and
    /// carries the decision, route, reasons and host id.
    pub async fn check(&self, request: &CheckRequest) -> CheckResponse {
        let answer = self.check_facts(CheckFacts::from_request(request), None, None);
        // Not kept, so never encoded: this cannot fail.
        answer.await.into_response().unwrap_or_default()
    }

    /// [`Self::check`] for the lean request the gRPC service decodes; a
    /// plain allow comes back as the host's answer kept in `memo`. With a
    /// `door`, deny pages offer the self-service bypass where one applies.
    pub async fn check_lean(
        &self,
        request: &wire::CheckRequest,
        memo: &AllowMemo,
        door: Option<&Door>,
    ) -> Answer {
        self.check_facts(CheckFacts::from_lean(request), Some(memo), door)
            .await
    }

    async fn check_facts(
        &self,
        facts: CheckFacts<'_>,
        keep: Option<&AllowMemo>,
        door: Option<&Door>,
    ) -> Answer {
        if !crate::telemetry::spans_enabled() {
            return self.check_in_span(facts, keep, door).await;
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
        self.check_in_span(facts, keep, door).instrument(span).await
    }

    async fn check_in_span(
        &self,
        facts: CheckFacts<'_>,
        keep: Option<&AllowMemo>,
        door: Option<&Door>,
    ) -> Answer {
        let started = tokio::time::Instant::now();
        let identity =
            self.fingerprints
                .fingerprint(&self.identity, facts.peer_certificate, &facts.headers);
        let target = Target {
            context: facts.context,
            authority: &facts.authority,
            path: &facts.path,
        };
        let outcome = self
            .decide_with_recheck(identity, target, SystemTime::now())
            .await;
        let now = SystemTime::now();
        let page = (!outcome.decision.answer_allows())
            .then(|| self.page_facts(&outcome, &facts, door, now));
        let ctx = BodyContext {
            host: outcome.host.as_deref(),
            fingerprint: outcome.fingerprint.as_ref(),
            remediation_url: self.remediation_url.as_deref(),
            request_id: &facts.request_id,
            now,
            page: page.as_ref(),
        };
        let answer = answer(&outcome, &ctx, facts.header("accept"), keep);
        let elapsed = started.elapsed();
        self.record(&outcome, &facts.request_id, elapsed);
        answer
    }

    /// What a deny page adds to the decision: the route's title (else the
    /// request's host), the support contact, the bypass offer.
    fn page_facts(
        &self,
        outcome: &Outcome,
        facts: &CheckFacts<'_>,
        door: Option<&Door>,
        now: SystemTime,
    ) -> PageFacts {
        let policy = self.policy.load();
        let route = &outcome.decision.route;
        let title = policy
            .route_named(route)
            .and_then(|r| r.title.as_deref())
            .unwrap_or_else(|| policy::strip_port(&facts.authority));
        PageFacts {
            title: title.to_owned(),
            return_to: facts.path.to_string(),
            support: policy.deny_page.clone(),
            offer: door.and_then(|d| d.offer(outcome, now)),
            route: route.to_string(),
        }
    }

    fn record(&self, outcome: &Outcome, request_id: &str, elapsed: Duration) {
        let d = &outcome.decision;
        let kinds = d.reason_kinds();
        let decision = match (d.allowed, d.is_dry_run_deny()) {
            (true, _) => "allow",
            (false, true) => "dry_run_deny",
            (false, false) => "deny",
        };
        // An allow by break-glass or a bypass is labelled as such, not by
        // the deny reason it overrode, so that use stands out.
        let label = ["break_glass", "bypass"]
            .into_iter()
            .find(|k| kinds.contains(k))
            .unwrap_or_else(|| kinds.first().copied().unwrap_or("none"));
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

/// The answer for `outcome`. With a memo, a plain allow (no reasons) for a
/// known host is encoded once and kept for the host's posture and route;
/// later Checks send the kept bytes.
fn answer(
    outcome: &Outcome,
    ctx: &BodyContext<'_>,
    accept: &str,
    memo: Option<&AllowMemo>,
) -> Answer {
    let d = &outcome.decision;
    let kept = match (memo, &outcome.host) {
        // Warnings carry deadlines from the route's grace, which a policy
        // reload may change: never kept.
        (Some(memo), Some(host)) if d.allowed && d.reasons.is_empty() && d.warnings.is_empty() => {
            Some((memo, host))
        }
        _ => None,
    };
    let Some((memo, host)) = kept else {
        return Answer::Built(convert::to_response(d, ctx, accept));
    };
    if let Some(kept) = memo.get(host, &d.route) {
        return Answer::Encoded(kept);
    }
    let encoded = bytes::Bytes::from(convert::to_response(d, ctx, accept).encode_to_vec());
    memo.keep(host, &d.route, encoded.clone());
    Answer::Encoded(encoded)
}
