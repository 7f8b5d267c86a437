//! What the policy says about the person at the door (DESIGN.md §9): the
//! self-service bypass a route offers, the support contact on deny pages, and
//! the warnings given while a failing policy is still inside its `grace`.

use std::{sync::Arc, time::Duration, time::SystemTime};

use serde::Deserialize;

use super::{Decision, Reason};
use crate::duration::parse_duration;

/// A route's self-service bypass: `bypass: {duration, max_per_day}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BypassRule {
    /// How long one bypass lets the device in.
    pub duration: Duration,
    /// Bypasses one device may take on this route in any 24 hours.
    pub max_per_day: u32,
}

/// The longest bypass a route may offer: `max_per_day` counts a day, so a
/// longer one would outlast its own budget.
pub const MAX_BYPASS_DURATION: Duration = Duration::from_secs(24 * 3600);

/// `defaults.deny_page`: who to ask for help, shown on every deny page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyPage {
    /// Free text, such as "IT help desk, ext. 4242".
    pub support_text: Option<Arc<str>>,
    /// An `https://`, `http://` or `mailto:` link.
    pub support_url: Option<Arc<str>>,
}

/// A failing policy that does not deny yet because it is inside the route's
/// `grace`; it will from `deadline` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub policy_id: u64,
    pub deadline: SystemTime,
}

impl Warning {
    /// `<policy id>;deadline=<RFC 3339>`, one item of `x-fleet-authz-warning`.
    pub fn to_header_item(&self) -> String {
        format!(
            "{};deadline={}",
            self.policy_id,
            humantime::format_rfc3339_seconds(self.deadline)
        )
    }
}

/// The `x-fleet-authz-warning` value: items joined by `,`; `None` when there
/// is nothing to warn about.
pub fn warning_header(warnings: &[Warning]) -> Option<String> {
    (!warnings.is_empty()).then(|| {
        warnings
            .iter()
            .map(Warning::to_header_item)
            .collect::<Vec<_>>()
            .join(",")
    })
}

impl Decision {
    /// True when a self-service bypass may lift this deny: it is a deny, and
    /// every reason is a failing policy that is not critical. Critical
    /// policies, CVEs, unknown devices, stale posture, unmet requirements and
    /// certificate problems are never bypassable.
    pub fn only_minor_failures(&self) -> bool {
        !self.allowed
            && !self.reasons.is_empty()
            && self.reasons.iter().all(|r| match r {
                Reason::FailingPolicy(p) | Reason::FailingAnyPolicy(p) => !p.critical,
                _ => false,
            })
    }
}

// === loading (policy/load.rs merges these) ===

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBypass {
    duration: Option<String>,
    max_per_day: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDenyPage {
    support_text: Option<String>,
    support_url: Option<String>,
}

/// `bypass:` merged key by key over the inherited one. `max_per_day: 0`
/// turns an inherited bypass off; `max_per_day` alone defaults to 1.
pub(super) fn bypass(
    base: Option<BypassRule>,
    raw: &RawBypass,
    at: &str,
) -> Result<Option<BypassRule>, (String, String)> {
    if raw.duration.is_none() && raw.max_per_day.is_none() {
        return Ok(base);
    }
    let duration = match raw.duration.as_deref().map(parse_duration) {
        Some(Err(m)) => return Err((format!("{at}.bypass.duration"), m)),
        Some(Ok(d)) if d.is_zero() || d > MAX_BYPASS_DURATION => {
            return Err((
                format!("{at}.bypass.duration"),
                "must be greater than zero and at most 24h".to_owned(),
            ));
        }
        Some(Ok(d)) => Some(d),
        None => base.map(|b| b.duration),
    };
    let max_per_day = raw.max_per_day.or(base.map(|b| b.max_per_day)).unwrap_or(1);
    match (duration, max_per_day) {
        (_, 0) => Ok(None),
        (Some(duration), max_per_day) => Ok(Some(BypassRule {
            duration,
            max_per_day,
        })),
        (None, _) => Err((
            format!("{at}.bypass.duration"),
            "is required (for example 1h)".to_owned(),
        )),
    }
}

/// `defaults.deny_page`, checked: no empty text, a link people can follow.
pub(super) fn deny_page(raw: Option<&RawDenyPage>) -> Result<DenyPage, (String, String)> {
    let Some(raw) = raw else {
        return Ok(DenyPage::default());
    };
    let text = |v: &Option<String>, key: &str| match v.as_deref().map(str::trim) {
        Some("") => Err((
            format!("defaults.deny_page.{key}"),
            "must not be empty".to_owned(),
        )),
        other => Ok(other.map(Arc::<str>::from)),
    };
    let support_text = text(&raw.support_text, "support_text")?;
    let support_url = text(&raw.support_url, "support_url")?;
    if let Some(url) = &support_url
        && !["https://", "http://", "mailto:"]
            .iter()
            .any(|p| url.starts_with(p))
    {
        return Err((
            "defaults.deny_page.support_url".to_owned(),
            format!("`{url}` is not an https://, http:// or mailto: link"),
        ));
    }
    Ok(DenyPage {
        support_text,
        support_url,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{PolicyFailure, parse_policy};
    use super::*;

    fn policy(text: &str) -> crate::policy::Policy {
        parse_policy(text, "p.yaml".as_ref()).unwrap()
    }

    #[test]
    fn bypass_inherits_key_by_key_and_max_per_day_zero_turns_it_off() {
        let p = policy(
            "version: 1\ndefaults: {bypass: {duration: 1h, max_per_day: 3}}\nroutes:\n\
  - {name: short, match: {path_prefix: /s}, bypass: {duration: 10m}}\n\
  - {name: off, match: {path_prefix: /o}, bypass: {max_per_day: 0}}\n\
  - {name: same, match: {path_prefix: /x}}\n",
        );
        let rule = |name: &str| p.route_named(name).unwrap().bypass;
        let hour = Duration::from_secs(3600);
        assert_eq!(
            rule("default"),
            Some(BypassRule {
                duration: hour,
                max_per_day: 3
            })
        );
        assert_eq!(
            rule("short"),
            Some(BypassRule {
                duration: Duration::from_secs(600),
                max_per_day: 3
            })
        );
        assert_eq!(rule("off"), None);
        assert_eq!(rule("same"), rule("default"));
    }

    #[test]
    fn only_failing_non_critical_policies_are_bypassable() {
        let failure = |critical| PolicyFailure {
            policy_id: 1,
            name: "p".into(),
            critical,
            resolution: None,
        };
        let decision = |reasons: Vec<Reason>| Decision {
            route: "r".into(),
            mode: crate::policy::Mode::Enforce,
            allowed: false,
            reasons,
            deny_status: 403,
            warnings: Vec::new(),
        };
        assert!(decision(vec![Reason::FailingAnyPolicy(failure(false))]).only_minor_failures());
        assert!(decision(vec![Reason::FailingPolicy(failure(false))]).only_minor_failures());
        for never in [
            vec![Reason::FailingPolicy(failure(true))],
            vec![Reason::FailingCriticalPolicy(failure(true))],
            vec![
                Reason::FailingAnyPolicy(failure(false)),
                Reason::Vulnerability {
                    cve: "CVE-2024-3094".into(),
                },
            ],
            vec![Reason::UnknownDevice],
            vec![Reason::StalePosture {
                age: Duration::ZERO,
                limit: Duration::ZERO,
            }],
            vec![],
        ] {
            assert!(!decision(never.clone()).only_minor_failures(), "{never:?}");
        }
    }

    #[test]
    fn warnings_read_as_the_header_says() {
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let warnings = [
            Warning {
                policy_id: 34,
                deadline: at(1_800_000_000),
            },
            Warning {
                policy_id: 7,
                deadline: at(1_800_003_600),
            },
        ];
        assert_eq!(
            warning_header(&warnings).as_deref(),
            Some("34;deadline=2027-01-15T08:00:00Z,7;deadline=2027-01-15T09:00:00Z")
        );
        assert_eq!(warning_header(&[]), None);
    }
}
