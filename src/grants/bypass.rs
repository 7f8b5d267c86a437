//! Self-service bypasses in the grant store: a grant scoped to one route,
//! given to the device itself (DESIGN.md §9), never to an admin's request.
//!
//! Two rules are checked under the store's lock, in the same step that
//! stores the grant, so two concurrent POSTs cannot both pass them:
//! - `max_per_day`: bypasses of this device on this route given in the last
//!   24 hours (a rolling day, not a calendar one), revoked ones included;
//! - replay: a page token is spent once a bypass of this device and route
//!   was given at or after the token was issued. That needs no memory of
//!   tokens, so it holds across restarts and, once grants are shared,
//!   across replicas.

use std::time::{Duration, SystemTime};

use super::{Grant, GrantRequest, GrantStore, GrantSubject, GrantsError, State};
use crate::posture::HostId;

/// How long a bypass stays on file after it was given.
const DAY: Duration = Duration::from_secs(24 * 3600);

/// What a bypass must not exceed.
#[derive(Debug, Clone, Copy)]
pub struct BypassLimits {
    /// The route's `bypass.max_per_day`.
    pub max_per_day: u32,
    /// When the page token presented was issued.
    pub token_issued_at: SystemTime,
}

/// Why a bypass was refused although the request was well-formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BypassRefusal {
    #[error("this device has used its {0} bypasses of the last 24 hours on this route")]
    LimitReached(u32),
    #[error("this page's bypass offer was already used")]
    TokenSpent,
}

// === impl Grant ===

impl Grant {
    /// True while the grant must stay on file: in force, or a bypass given
    /// within the last day.
    pub fn is_kept(&self, now: SystemTime) -> bool {
        self.is_active(now) || (self.bypass_route.is_some() && self.granted_at + DAY > now)
    }

    /// This grant after revoking grant `id`: a revoked break-glass grant is
    /// gone; a revoked bypass stays, expired, so it still counts.
    pub(super) fn revoked(&self, id: u64, now: SystemTime) -> Option<Grant> {
        match (self.id == id, &self.bypass_route) {
            (false, _) => Some(self.clone()),
            (true, None) => None,
            (true, Some(_)) => Some(Grant {
                expires_at: now.min(self.expires_at),
                ..self.clone()
            }),
        }
    }

    fn is_bypass_of(&self, host: HostId, route: &str) -> bool {
        self.subject == GrantSubject::Host(host) && self.bypass_route.as_deref() == Some(route)
    }
}

// === impl GrantStore ===

impl GrantStore {
    /// The bypass in force for `host` on `route`: its id and expiry.
    pub fn find_bypass_grant(
        &self,
        host: HostId,
        route: &str,
        now: SystemTime,
    ) -> Option<(u64, SystemTime)> {
        let state = self.lock();
        state
            .grants
            .iter()
            .find(|g| g.is_bypass_of(host, route) && state.honours(g, now))
            .map(|g| (g.id, g.expires_at))
    }

    /// Bypasses of `host` on `route` given in the 24 hours before `now`.
    pub fn bypasses_in_day(&self, host: HostId, route: &str, now: SystemTime) -> u32 {
        count_in_day(&self.lock(), host, route, now)
    }

    /// Gives a bypass when the limits allow it; persisted before it is
    /// returned. `Ok(Err(_))` is a refusal: nothing was stored.
    pub fn grant_bypass(
        &self,
        host: HostId,
        request: GrantRequest,
        limits: BypassLimits,
        now: SystemTime,
    ) -> Result<Result<Grant, BypassRefusal>, GrantsError> {
        let route = request.bypass_route.clone().unwrap_or_default();
        let mut state = self.lock();
        let spent = state
            .grants
            .iter()
            .any(|g| g.is_bypass_of(host, &route) && g.granted_at >= limits.token_issued_at);
        if spent {
            return Ok(Err(BypassRefusal::TokenSpent));
        }
        if count_in_day(&state, host, &route, now) >= limits.max_per_day {
            return Ok(Err(BypassRefusal::LimitReached(limits.max_per_day)));
        }
        self.grant_locked(&mut state, request, now).map(Ok)
    }
}

fn count_in_day(state: &State, host: HostId, route: &str, now: SystemTime) -> u32 {
    let count = state
        .grants
        .iter()
        .filter(|g| g.is_bypass_of(host, route) && g.granted_at + DAY > now)
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}
