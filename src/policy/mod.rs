//! Route policies and the pure decision function.
//!
//! `evaluate` takes the route's policy, the request facts, what identity
//! resolution found and the time, and returns a [`Decision`] carrying every
//! reason, not only the first. It does no I/O, reads no clock and knows no
//! Envoy or Fleet types, so it is tested table-driven from fixture files.

mod door;
mod eval;
mod load;

pub use door::{BypassRule, DenyPage, MAX_BYPASS_DURATION, Warning, warning_header};
pub use eval::evaluate;
pub use load::{PolicyError, load_policy, parse_policy};

use std::{collections::HashMap, sync::Arc, time::Duration, time::SystemTime};

/// `enforce` answers what the policy decides; `dry_run` logs and counts a deny
/// but answers allow (with `x-fleet-authz-dry-run: deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    DryRun,
}

/// What to do with a certificate that matches no Fleet host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownDevice {
    Deny,
    Allow,
}

/// What to do when the posture is older than `fleet.max_staleness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StalePosture {
    /// Deny, with reason `stale_posture` (the default: fail closed).
    Deny,
    /// Allow every known device while the posture is stale (fail open).
    Allow,
    /// Decide on the stale posture as if it were fresh.
    Ignore,
}

/// Pomerium's five FleetDM deny operators, same names and meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyRules {
    /// Deny when any policy marked critical fails.
    pub failing_critical_policy: bool,
    /// Deny when any policy fails.
    pub failing_any_policy: bool,
    /// Deny when any of these policy ids fails.
    pub failing_policies: Vec<u64>,
    /// Deny when the host is affected by any of these CVEs.
    pub vulnerabilities: Vec<Arc<str>>,
    /// Deny when the host last checked in longer ago than this.
    pub last_seen_over: Option<Duration>,
}

/// Conditions a host must meet to be allowed (beyond the deny operators).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// The host's team must be one of these (exact names).
    pub teams: Vec<String>,
    /// The host's platform must be one of these (case-insensitive).
    pub platforms: Vec<String>,
}

/// The effective policy of one route, defaults already merged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    pub name: Arc<str>,
    pub mode: Mode,
    pub unknown_device: UnknownDevice,
    pub stale_posture: StalePosture,
    pub deny: DenyRules,
    pub require: Requirements,
    /// A policy must have been failing this long before it denies.
    pub grace: Option<Duration>,
    /// HTTP status of a deny (403 unless configured).
    pub deny_status: u16,
    /// What deny pages call this route; the request's host when unset.
    pub title: Option<Arc<str>>,
    /// The self-service bypass this route offers, if any.
    pub bypass: Option<BypassRule>,
}

/// How a request selects a route. All given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMatch {
    /// Envoy per-route `context_extensions` that must all be present and equal.
    pub context: Vec<(String, String)>,
    pub host: Option<HostMatch>,
    pub path_prefix: Option<String>,
}

/// An `:authority` matcher: exact, or `*.suffix` (one or more labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// Stored with the leading dot: `*.corp.example` → `.corp.example`.
    Suffix(String),
}

/// A whole policy file, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Used when no route matches; named `default`.
    pub default: RoutePolicy,
    /// In file order.
    pub routes: Vec<(RouteMatch, RoutePolicy)>,
    /// Longest emergency grant an admin may give.
    pub break_glass_max: Duration,
    /// Support contact shown on deny pages.
    pub deny_page: DenyPage,
}

/// The facts of one request that routing and evaluation need.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub context: &'a HashMap<String, String>,
    /// `:authority` / `host`, possibly with a port.
    pub authority: &'a str,
    pub path: &'a str,
    /// `now - last good sync`; `None` when the source has no staleness (file).
    pub posture_age: Option<Duration>,
    /// `fleet.max_staleness`; `None` when staleness does not apply.
    pub max_staleness: Option<Duration>,
}

/// What identity resolution and the posture lookup found.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    NoCertificate(&'a str),
    InvalidCertificate(&'a str),
    Unknown,
    Host(&'a crate::posture::HostPosture),
}

/// One failed policy, as shown to the person denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFailure {
    pub policy_id: u64,
    pub name: Arc<str>,
    pub critical: bool,
    pub resolution: Option<Arc<str>>,
}

/// Why a request is denied (or, for `unknown_device: allow` and break-glass,
/// what was notable about an allow). Kinds are stable: they are header
/// values, metric labels and JSON `kind`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    NoClientCertificate {
        detail: String,
    },
    InvalidClientCertificate {
        detail: String,
    },
    UnknownDevice,
    FailingPolicy(PolicyFailure),
    FailingCriticalPolicy(PolicyFailure),
    FailingAnyPolicy(PolicyFailure),
    Vulnerability {
        cve: Arc<str>,
    },
    LastSeenOver {
        last_seen: Option<SystemTime>,
        limit: Duration,
    },
    StalePosture {
        age: Duration,
        limit: Duration,
    },
    Requirement {
        requirement: RequirementKind,
        expected: Vec<String>,
        actual: Option<String>,
    },
    BreakGlass {
        grant_id: u64,
        reason: String,
    },
    /// Allowed by the device's own self-service bypass on this route.
    Bypass {
        grant_id: u64,
        expires_at: SystemTime,
    },
}

/// Which `require` clause was unmet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequirementKind {
    Team,
    Platform,
}

impl RequirementKind {
    /// `team` or `platform`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Team => "team",
            Self::Platform => "platform",
        }
    }
}

impl Reason {
    /// The stable kind string (DESIGN.md §1.6).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoClientCertificate { .. } => "no_client_certificate",
            Self::InvalidClientCertificate { .. } => "invalid_client_certificate",
            Self::UnknownDevice => "unknown_device",
            Self::FailingPolicy(_) => "failing_policy",
            Self::FailingCriticalPolicy(_) => "failing_critical_policy",
            Self::FailingAnyPolicy(_) => "failing_any_policy",
            Self::Vulnerability { .. } => "vulnerability",
            Self::LastSeenOver { .. } => "last_seen_over",
            Self::StalePosture { .. } => "stale_posture",
            Self::Requirement { .. } => "requirement",
            Self::BreakGlass { .. } => "break_glass",
            Self::Bypass { .. } => "bypass",
        }
    }

    /// The failed Fleet policy, for the policy-based kinds.
    pub fn policy(&self) -> Option<&PolicyFailure> {
        match self {
            Self::FailingPolicy(p) | Self::FailingCriticalPolicy(p) | Self::FailingAnyPolicy(p) => {
                Some(p)
            }
            _ => None,
        }
    }
}

/// The outcome of `evaluate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The route whose policy decided.
    pub route: Arc<str>,
    pub mode: Mode,
    /// What the policy decided, before `dry_run` is applied.
    pub allowed: bool,
    /// Every reason; empty for a plain allow.
    pub reasons: Vec<Reason>,
    /// HTTP status to deny with.
    pub deny_status: u16,
    /// Failing policies still inside the route's `grace`.
    pub warnings: Vec<Warning>,
}

impl Decision {
    /// True when the answer to Envoy is allow (policy allowed, or dry run).
    pub fn answer_allows(&self) -> bool {
        self.allowed || self.mode == Mode::DryRun
    }

    /// True when a dry-run route would have denied.
    pub fn is_dry_run_deny(&self) -> bool {
        !self.allowed && self.mode == Mode::DryRun
    }

    /// `allow` or `deny`: what the policy decided.
    pub fn verdict(&self) -> &'static str {
        if self.allowed { "allow" } else { "deny" }
    }

    /// Distinct reason kinds, in first-seen order.
    pub fn reason_kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> = Vec::with_capacity(self.reasons.len());
        for r in &self.reasons {
            if !kinds.contains(&r.kind()) {
                kinds.push(r.kind());
            }
        }
        kinds
    }
}

impl Policy {
    /// The route for a request: first the routes that match on `context`
    /// (Envoy's per-route `context_extensions`, the most explicit signal), in
    /// file order; then the others (host / path matchers) in file order; else
    /// the defaults.
    pub fn route(&self, facts: &RequestFacts<'_>) -> &RoutePolicy {
        let with_context = self.routes.iter().filter(|(m, _)| !m.context.is_empty());
        let without = self.routes.iter().filter(|(m, _)| m.context.is_empty());
        with_context
            .chain(without)
            .find(|(m, _)| m.matches(facts))
            .map(|(_, r)| r)
            .unwrap_or(&self.default)
    }

    /// A route by name (`default` for the defaults).
    pub fn route_named(&self, name: &str) -> Option<&RoutePolicy> {
        if name == "default" {
            return Some(&self.default);
        }
        self.routes
            .iter()
            .map(|(_, r)| r)
            .find(|r| &*r.name == name)
    }

    /// Every CVE id that any route denies on (what the Fleet poller must ask
    /// about).
    pub fn cves(&self) -> Vec<Arc<str>> {
        let mut all: Vec<Arc<str>> = std::iter::once(&self.default)
            .chain(self.routes.iter().map(|(_, r)| r))
            .flat_map(|r| r.deny.vulnerabilities.iter().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

impl RouteMatch {
    /// True when every given condition holds.
    pub fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        let context_ok = self
            .context
            .iter()
            .all(|(k, v)| facts.context.get(k).is_some_and(|got| got == v));
        let host_ok = self
            .host
            .as_ref()
            .is_none_or(|h| h.matches(facts.authority));
        let path_ok = self
            .path_prefix
            .as_ref()
            .is_none_or(|p| facts.path.starts_with(p.as_str()));
        context_ok && host_ok && path_ok
    }
}

impl HostMatch {
    /// Case-insensitive match on the authority without its port.
    pub fn matches(&self, authority: &str) -> bool {
        let host = strip_port(authority);
        match self {
            Self::Exact(want) => host.eq_ignore_ascii_case(want),
            Self::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }
}

/// The host of an `:authority`, without its port.
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // IPv6 literal: keep up to and including the closing bracket.
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}
