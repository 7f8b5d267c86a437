//! The decision core: [`Authorizer`] turns a fingerprint (or why there is
//! none) and a request's routing facts into an [`Outcome`], through the
//! posture store, the policy and the grants, with no I/O except the bounded
//! live recheck. The ports it calls through are declared here ([`Refresh`],
//! [`Grants`], [`SyncTrigger`]) and implemented by the adapters (`fleet`,
//! `admin`, `server`), so no adapter needs another to reach the core. The
//! Envoy adapter (`authz`) adds `check`, which builds Envoy's answer.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;

use crate::{
    fingerprint::Fingerprint,
    identity::{FingerprintCache, IdentityConfig, IdentityError},
    policy::{self, Decision, Policy, Reason, RequestFacts, RoutePolicy, Subject},
    posture::{HostId, HostPosture, PostureStore},
    telemetry::metrics::Metrics,
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

/// Grants: emergency break-glass allows for one device, time-limited, and
/// the self-service bypasses a device took for one route (DESIGN.md §9).
pub trait Grants: Send + Sync {
    /// The break-glass grant covering this host or fingerprint at `now`, if
    /// any: its id and reason. Never a bypass.
    fn find(
        &self,
        host: Option<HostId>,
        fingerprint: &Fingerprint,
        now: SystemTime,
    ) -> Option<(u64, String)>;

    /// The bypass in force for `host` on `route` at `now`: its id and expiry.
    /// A store that keeps no bypasses has none (fail closed).
    fn find_bypass(&self, host: HostId, route: &str, now: SystemTime) -> Option<(u64, SystemTime)> {
        let _ = (host, route, now);
        None
    }
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
    pub fingerprints: FingerprintCache,
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
        identity: Result<Fingerprint, IdentityError>,
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
        self.decide_on(identity, policy.route(&facts), &facts, now)
    }

    /// Decides for a certificate on the route named `route` (a bypass names
    /// its route; the request that asks for one is not on it). `None` when
    /// the policy has no such route.
    pub fn decide_named(&self, fp: Fingerprint, route: &str, now: SystemTime) -> Option<Outcome> {
        let context = std::collections::HashMap::new();
        let facts = RequestFacts {
            context: &context,
            authority: "",
            path: "/",
            posture_age: self.store.age(now),
            max_staleness: self.max_staleness,
        };
        let policy = self.policy.load();
        let route = policy.route_named(route)?;
        Some(self.decide_on(Ok(fp), route, &facts, now))
    }

    fn decide_on(
        &self,
        identity: Result<Fingerprint, IdentityError>,
        route: &RoutePolicy,
        facts: &RequestFacts<'_>,
        now: SystemTime,
    ) -> Outcome {
        let (fingerprint, host) = match &identity {
            Ok(fp) => (Some(*fp), self.store.lookup(fp)),
            Err(_) => (None, None),
        };
        let detail = identity.as_ref().err().map(IdentityError::to_string);
        let subject = match (&identity, &host, detail.as_deref()) {
            (Err(e), _, Some(detail)) if e.is_missing() => Subject::NoCertificate(detail),
            (Err(_), _, detail) => Subject::InvalidCertificate(detail.unwrap_or_default()),
            (Ok(_), None, _) => Subject::Unknown,
            (Ok(_), Some(h), _) => Subject::Host(h),
        };
        let mut decision = policy::evaluate(route, facts, subject, now);
        let mut host = host;
        // A certificate that several Fleet hosts report cannot say which
        // device is asking: every holder must pass.
        if decision.allowed
            && let (Some(fp), Some(h)) = (&fingerprint, &host)
        {
            for other in self.store.other_holders(fp, h.id) {
                let d = policy::evaluate(route, facts, Subject::Host(&other), now);
                if !d.allowed {
                    decision = d;
                    host = Some(other);
                    break;
                }
            }
        }
        if !decision.allowed
            && let (Some(grants), Some(fp)) = (&self.grants, &fingerprint)
        {
            let host_id = host.as_ref().map(|h| h.id);
            let granted = match grants.find(host_id, fp, now) {
                Some((grant_id, reason)) => Some(Reason::BreakGlass { grant_id, reason }),
                None => host_id
                    .filter(|_| bypassable(&decision, route, facts))
                    .and_then(|id| grants.find_bypass(id, &route.name, now))
                    .map(|(grant_id, expires_at)| Reason::Bypass {
                        grant_id,
                        expires_at,
                    }),
            };
            if let Some(reason) = granted {
                decision.allowed = true;
                decision.reasons.push(reason);
            }
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
        identity: Result<Fingerprint, IdentityError>,
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
}

/// True when a self-service bypass may lift this deny now: the route offers
/// one, every reason is a failing non-critical policy, and the posture is not
/// stale (whatever the route's `stale_posture` says). Checked on every
/// Check, so a bypass stops helping the moment anything else fails.
pub fn bypassable(decision: &Decision, route: &RoutePolicy, facts: &RequestFacts<'_>) -> bool {
    let stale = matches!(
        (facts.posture_age, facts.max_staleness),
        (Some(age), Some(limit)) if age > limit
    );
    route.bypass.is_some() && !stale && decision.only_minor_failures()
}

/// Forces a posture sync now (Fleet poller, or a posture file reload) and
/// reports how many hosts are held afterwards.
pub trait SyncTrigger: Send + Sync {
    /// Runs one sync to completion; `Err` carries a message for the operator.
    fn sync_now(&self) -> BoxFuture<'_, Result<usize, String>>;

    /// Like `sync_now`, but the sync is published even if the Fleet shrink
    /// guard would hold it back (`{"accept_drop": true}`). Sources without
    /// the guard just sync.
    fn sync_accepting_drop(&self) -> BoxFuture<'_, Result<usize, String>> {
        self.sync_now()
    }

    /// What `POST /v1/sync` and `Admin.Sync` run: `sync_now`, or
    /// `sync_accepting_drop` when `accept_drop`, with who synced and whether
    /// a failure was the sync's or the lack of anyone to run it. Cluster
    /// mode overrides it to have the leader sync.
    fn sync_forced(&self, accept_drop: bool) -> BoxFuture<'_, Result<Synced, SyncFailure>> {
        Box::pin(async move {
            let synced = if accept_drop {
                self.sync_accepting_drop().await
            } else {
                self.sync_now().await
            };
            synced
                .map(|hosts| Synced { hosts, by: None })
                .map_err(SyncFailure::Failed)
        })
    }
}

/// A forced sync that ran to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// Hosts held by the replica that synced, afterwards.
    pub hosts: usize,
    /// The replica that synced, when it is not this one (cluster mode).
    pub by: Option<String>,
}

/// Why a forced sync did not happen or did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncFailure {
    /// The sync ran and failed (Fleet unreachable, shrink guard, ...).
    Failed(String),
    /// Nobody could run it: no leader answered (cluster mode).
    Unavailable(String),
}
