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
