//! Self-service bypass (DESIGN.md §9): when every reason for a deny is a
//! failing non-critical policy and the route sets `bypass`, the deny page
//! offers "Continue for <duration>" with a required reason. The offer
//! carries a page token ([`token`]); the form POSTs to
//! `/.fleet-authz/bypass` ([`http`]), which Envoy routes to the HTTP listener
//! with ext_authz off and XFCC set by Envoy itself. A bypass taken is a grant
//! in the break-glass store, scoped to the route; the Check path honours it
//! only while the deny stays bypassable (`decision::bypassable`).
//!
//! What a bypass never lifts: critical policies, CVEs, unknown devices, stale
//! posture, unmet requirements, certificate problems. A refused request
//! stores nothing.

pub mod http;
pub mod token;

use std::{sync::Arc, time::Duration, time::SystemTime};

use crate::{
    decision::{Authorizer, Outcome, bypassable},
    grants::GrantStore,
    identity::XfccElement,
    policy::RequestFacts,
};

pub use self::token::{TokenError, TokenKey};

/// Where the form posts to, on the host the page was served for.
pub const BYPASS_PATH: &str = "/.fleet-authz/bypass";

/// A bypass offered on a deny page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// How long the device may continue.
    pub duration: Duration,
    /// The route's `max_per_day`.
    pub max_per_day: u32,
    /// Bypasses left to this device on this route in the last 24 hours.
    pub remaining: u32,
    /// The page token; `None` when none are left.
    pub token: Option<String>,
}

/// What the offer and the bypass endpoint share: the decision core, the
/// grant store and the token key.
#[derive(Debug, Clone)]
pub struct Door {
    authorizer: Arc<Authorizer>,
    grants: Arc<GrantStore>,
    key: TokenKey,
    /// How the endpoint reads Envoy's `x-forwarded-client-cert`.
    xfcc_element: XfccElement,
}

impl Door {
    /// A door over the service's authorizer and grant store.
    pub fn new(
        authorizer: Arc<Authorizer>,
        grants: Arc<GrantStore>,
        key: TokenKey,
        xfcc_element: XfccElement,
    ) -> Self {
        Self {
            authorizer,
            grants,
            key,
            xfcc_element,
        }
    }

    /// The bypass to offer on the deny page for `outcome`, if its route has
    /// one and every reason is a failing non-critical policy.
    pub fn offer(&self, outcome: &Outcome, now: SystemTime) -> Option<Offer> {
        let (host, fingerprint) = (outcome.host.as_ref()?, outcome.fingerprint.as_ref()?);
        let policy = self.authorizer.policy.load();
        let route = policy.route_named(&outcome.decision.route)?;
        let rule = route.bypass?;
        if !bypassable(&outcome.decision, route, &self.staleness(now)) {
            return None;
        }
        let used = self.grants.bypasses_in_day(host.id, &route.name, now);
        let remaining = rule.max_per_day.saturating_sub(used);
        Some(Offer {
            duration: rule.duration,
            max_per_day: rule.max_per_day,
            remaining,
            token: (remaining > 0).then(|| self.key.issue(fingerprint, &route.name, now)),
        })
    }

    /// Facts with only what staleness needs.
    fn staleness(&self, now: SystemTime) -> RequestFacts<'static> {
        static NO_CONTEXT: std::sync::LazyLock<std::collections::HashMap<String, String>> =
            std::sync::LazyLock::new(Default::default);
        RequestFacts {
            context: &NO_CONTEXT,
            authority: "",
            path: "/",
            posture_age: self.authorizer.store.age(now),
            max_staleness: self.authorizer.max_staleness,
        }
    }
}
