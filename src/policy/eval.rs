//! `evaluate`: the pure decision function.

use std::time::{Duration, SystemTime};

use super::{
    Decision, PolicyFailure, Reason, RequestFacts, RequirementKind, RoutePolicy, StalePosture,
    Subject, UnknownDevice, Warning,
};
use crate::posture::{HostPosture, PolicyResult};

/// Decides one request. Returns every reason that applies.
///
/// Order of reasons: identity, requirements, failing policies (one reason per
/// failing policy, with the most specific kind that denies it:
/// `failing_policy` when listed by id, else `failing_critical_policy`, else
/// `failing_any_policy`), vulnerabilities, last check-in, staleness.
pub fn evaluate(
    route: &RoutePolicy,
    facts: &RequestFacts<'_>,
    subject: Subject<'_>,
    now: SystemTime,
) -> Decision {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    let allowed = match subject {
        Subject::NoCertificate(detail) => {
            reasons.push(Reason::NoClientCertificate {
                detail: detail.to_owned(),
            });
            false
        }
        Subject::InvalidCertificate(detail) => {
            reasons.push(Reason::InvalidClientCertificate {
                detail: detail.to_owned(),
            });
            false
        }
        Subject::Unknown => {
            reasons.push(Reason::UnknownDevice);
            route.unknown_device == UnknownDevice::Allow
        }
        Subject::Host(host) => {
            let allowed = evaluate_host(route, facts, host, now, &mut reasons);
            warnings = grace_warnings(route, host, now);
            allowed
        }
    };
    Decision {
        route: route.name.clone(),
        mode: route.mode,
        allowed,
        reasons,
        deny_status: route.deny_status,
        warnings,
    }
}

fn evaluate_host(
    route: &RoutePolicy,
    facts: &RequestFacts<'_>,
    host: &HostPosture,
    now: SystemTime,
    reasons: &mut Vec<Reason>,
) -> bool {
    let stale = match (facts.posture_age, facts.max_staleness) {
        (Some(age), Some(limit)) if age > limit => Some((age, limit)),
        _ => None,
    };
    if let Some((age, limit)) = stale {
        match route.stale_posture {
            StalePosture::Allow => {
                reasons.push(Reason::StalePosture { age, limit });
                return true;
            }
            StalePosture::Deny | StalePosture::Ignore => {}
        }
    }
    check_requirements(route, host, reasons);
    check_policies(route, host, now, reasons);
    for cve in &route.deny.vulnerabilities {
        if host.cves.iter().any(|c| c.eq_ignore_ascii_case(cve)) {
            reasons.push(Reason::Vulnerability { cve: cve.clone() });
        }
    }
    if let Some(limit) = route.deny.last_seen_over {
        let over = host
            .last_seen
            .is_none_or(|seen| now.duration_since(seen).unwrap_or(Duration::ZERO) > limit);
        if over {
            reasons.push(Reason::LastSeenOver {
                last_seen: host.last_seen,
                limit,
            });
        }
    }
    if let (Some((age, limit)), StalePosture::Deny) = (stale, route.stale_posture) {
        reasons.push(Reason::StalePosture { age, limit });
    }
    reasons.is_empty()
}

fn check_requirements(route: &RoutePolicy, host: &HostPosture, reasons: &mut Vec<Reason>) {
    let req = &route.require;
    if !req.teams.is_empty() {
        let team = host.team_name();
        if !team.is_some_and(|t| req.teams.iter().any(|want| want == t)) {
            reasons.push(Reason::Requirement {
                requirement: RequirementKind::Team,
                expected: req.teams.clone(),
                actual: team.map(str::to_owned),
            });
        }
    }
    if !req.platforms.is_empty()
        && !req
            .platforms
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&host.platform))
    {
        reasons.push(Reason::Requirement {
            requirement: RequirementKind::Platform,
            expected: req.platforms.clone(),
            actual: Some(host.platform.to_string()).filter(|p| !p.is_empty()),
        });
    }
}

fn check_policies(
    route: &RoutePolicy,
    host: &HostPosture,
    now: SystemTime,
    reasons: &mut Vec<Reason>,
) {
    for policy in host.failing_policies() {
        if grace_deadline(policy, route.grace, now).is_some() {
            continue;
        }
        let Some(kind) = denying_kind(route, policy) else {
            continue;
        };
        let meta = &policy.meta;
        reasons.push(kind(PolicyFailure {
            policy_id: meta.id,
            name: meta.name.clone(),
            critical: meta.critical,
            resolution: meta.resolution.clone(),
        }));
    }
}

/// The reason a failing policy denies with on this route, past any grace:
/// `failing_policy` when listed by id, else `failing_critical_policy`, else
/// `failing_any_policy`; `None` when the route's rules ignore it.
fn denying_kind(route: &RoutePolicy, policy: &PolicyResult) -> Option<fn(PolicyFailure) -> Reason> {
    let deny = &route.deny;
    let meta = &policy.meta;
    if deny.failing_policies.contains(&meta.id) {
        Some(Reason::FailingPolicy)
    } else if deny.failing_critical_policy && meta.critical {
        Some(Reason::FailingCriticalPolicy)
    } else if deny.failing_any_policy {
        Some(Reason::FailingAnyPolicy)
    } else {
        None
    }
}

/// Failing policies that would deny on this route but are still inside its
/// grace, with the instant they start to deny (DESIGN.md §9, warn before
/// block).
fn grace_warnings(route: &RoutePolicy, host: &HostPosture, now: SystemTime) -> Vec<Warning> {
    host.failing_policies()
        .filter(|p| denying_kind(route, p).is_some())
        .filter_map(|p| {
            grace_deadline(p, route.grace, now).map(|deadline| Warning {
                policy_id: p.meta.id,
                deadline,
            })
        })
        .collect()
}

/// While a failing policy is still inside the route's grace period, the
/// instant the grace ends. Without a known start the failure counts at once
/// (fail closed).
fn grace_deadline(
    policy: &PolicyResult,
    grace: Option<Duration>,
    now: SystemTime,
) -> Option<SystemTime> {
    let (grace, since) = (grace?, policy.failing_since()?);
    let deadline = since + grace;
    (now < deadline).then_some(deadline)
}
