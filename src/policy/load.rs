//! Policy file → validated [`Policy`]: YAML into `deny_unknown_fields` raw
//! structs, then checks serde cannot make (duplicate route names, empty
//! matchers, zero durations, CVE id shape). Errors name the file, the key and
//! the problem.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use super::{
    DenyRules, HostMatch, Mode, Policy, Requirements, RouteMatch, RoutePolicy, StalePosture,
    UnknownDevice,
    door::{RawBypass, RawDenyPage, bypass, deny_page},
};
use crate::duration::parse_duration;

/// A policy file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct PolicyError {
    /// The file, as given.
    pub file: PathBuf,
    /// The key path inside it (`routes[1].deny.last_seen_over`).
    pub key: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: u32,
    #[serde(default)]
    defaults: RawRules,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    break_glass: Option<RawBreakGlass>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreakGlass {
    max_duration: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRules {
    mode: Option<Mode>,
    unknown_device: Option<UnknownDevice>,
    stale_posture: Option<StalePosture>,
    #[serde(default)]
    deny: RawDeny,
    #[serde(default)]
    require: RawRequire,
    grace: Option<String>,
    deny_status: Option<u16>,
    title: Option<String>,
    #[serde(default)]
    bypass: RawBypass,
    /// Only in `defaults`: routes have no such key.
    #[serde(default)]
    deny_page: Option<RawDenyPage>,
}

/// A route: its name and matcher plus the same keys as `defaults`. Spelled
/// out rather than `#[serde(flatten)]`, which would lose the key path in
/// error messages.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    #[serde(rename = "match")]
    matcher: RawMatch,
    mode: Option<Mode>,
    unknown_device: Option<UnknownDevice>,
    stale_posture: Option<StalePosture>,
    #[serde(default)]
    deny: RawDeny,
    #[serde(default)]
    require: RawRequire,
    grace: Option<String>,
    deny_status: Option<u16>,
    title: Option<String>,
    #[serde(default)]
    bypass: RawBypass,
}

impl RawRoute {
    fn rules(&self) -> RawRules {
        RawRules {
            mode: self.mode,
            unknown_device: self.unknown_device,
            stale_posture: self.stale_posture,
            deny: self.deny.clone(),
            require: self.require.clone(),
            grace: self.grace.clone(),
            deny_status: self.deny_status,
            title: self.title.clone(),
            bypass: self.bypass.clone(),
            deny_page: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    context: BTreeMap<String, String>,
    host: Option<String>,
    path_prefix: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawDeny {
    failing_critical_policy: Option<bool>,
    failing_any_policy: Option<bool>,
    failing_policies: Option<Vec<u64>>,
    vulnerabilities: Option<Vec<String>>,
    last_seen_over: Option<String>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawRequire {
    teams: Option<Vec<String>>,
    platforms: Option<Vec<String>>,
}

/// Reads and validates a policy file.
pub fn load_policy(path: &Path) -> Result<Policy, PolicyError> {
    let text =
        crate::input::read_bounded(path, crate::input::MAX_POLICY_BYTES).map_err(|message| {
            PolicyError {
                file: path.to_owned(),
                key: "(file)".to_owned(),
                message,
            }
        })?;
    parse_policy(&text, path)
}

/// Parses and validates policy YAML; `file` is used in errors only.
pub fn parse_policy(text: &str, file: &Path) -> Result<Policy, PolicyError> {
    let err = |key: &str, message: String| PolicyError {
        file: file.to_owned(),
        key: key.to_owned(),
        message,
    };
    crate::input::refuse_aliases(text).map_err(|problem| err("(file)", problem))?;
    let raw: RawPolicy = yaml_serde::from_str(text).map_err(|e| {
        let (key, problem) = crate::duration::split_yaml_error(&e);
        err(&key, problem)
    })?;
    if raw.version != 1 {
        return Err(err(
            "version",
            format!(
                "unsupported version {}; this build reads version 1",
                raw.version
            ),
        ));
    }
    let base = RoutePolicy {
        name: Arc::from("default"),
        mode: Mode::Enforce,
        unknown_device: UnknownDevice::Deny,
        stale_posture: StalePosture::Deny,
        deny: DenyRules::default(),
        require: Requirements::default(),
        grace: None,
        deny_status: 403,
        title: None,
        bypass: None,
    };
    let default =
        merge(&base, "default", &raw.defaults, "defaults").map_err(|(k, m)| err(&k, m))?;
    let mut names = HashSet::new();
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (i, route) in raw.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if route.name.trim().is_empty() {
            return Err(err(&format!("{at}.name"), "must not be empty".to_owned()));
        }
        if route.name == "default" {
            return Err(err(
                &format!("{at}.name"),
                "`default` is reserved for the defaults".to_owned(),
            ));
        }
        if !names.insert(route.name.clone()) {
            return Err(err(
                &format!("{at}.name"),
                format!("route `{}` is defined twice", route.name),
            ));
        }
        let matcher =
            to_match(&route.matcher).map_err(|(k, m)| err(&format!("{at}.match{k}"), m))?;
        let policy =
            merge(&default, &route.name, &route.rules(), &at).map_err(|(k, m)| err(&k, m))?;
        routes.push((matcher, policy));
    }
    let break_glass_max = match raw.break_glass.and_then(|b| b.max_duration) {
        Some(text) => Some(parse_duration(&text).map_err(|m| err("break_glass.max_duration", m))?),
        None => None,
    };
    let break_glass_max = match break_glass_max {
        Some(d) if d.is_zero() => {
            return Err(err(
                "break_glass.max_duration",
                "must be greater than zero".to_owned(),
            ));
        }
        Some(d) => d,
        None => Duration::from_secs(4 * 3600),
    };
    let deny_page = deny_page(raw.defaults.deny_page.as_ref()).map_err(|(k, m)| err(&k, m))?;
    Ok(Policy {
        default,
        routes,
        break_glass_max,
        deny_page,
    })
}

/// Route settings override the defaults key by key; unset keys inherit.
fn merge(
    base: &RoutePolicy,
    name: &str,
    raw: &RawRules,
    at: &str,
) -> Result<RoutePolicy, (String, String)> {
    // Durations are parsed here, not by serde, so errors name the full key.
    let positive = |d: &Option<String>, key: &str| match d.as_deref().map(parse_duration) {
        None => Ok(None),
        Some(Err(m)) => Err((format!("{at}.{key}"), m)),
        Some(Ok(d)) if d.is_zero() => Err((
            format!("{at}.{key}"),
            "must be greater than zero".to_owned(),
        )),
        Some(Ok(d)) => Ok(Some(d)),
    };
    let mut vulnerabilities = base.deny.vulnerabilities.clone();
    if let Some(list) = &raw.deny.vulnerabilities {
        vulnerabilities = list
            .iter()
            .enumerate()
            .map(|(i, cve)| {
                normalise_cve(cve).map_err(|m| (format!("{at}.deny.vulnerabilities[{i}]"), m))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(ids) = &raw.deny.failing_policies
        && let Some(i) = ids.iter().position(|id| *id == 0)
    {
        return Err((
            format!("{at}.deny.failing_policies[{i}]"),
            "policy ids start at 1".to_owned(),
        ));
    }
    let deny_status = raw.deny_status.unwrap_or(base.deny_status);
    if !(400..=599).contains(&deny_status) {
        return Err((
            format!("{at}.deny_status"),
            format!("{deny_status} is not a 4xx or 5xx status"),
        ));
    }
    let pick =
        |raw: &Option<Vec<String>>, base: &Vec<String>| raw.clone().unwrap_or_else(|| base.clone());
    let title = match raw.title.as_deref().map(str::trim) {
        Some("") => return Err((format!("{at}.title"), "must not be empty".to_owned())),
        Some(t) => Some(Arc::from(t)),
        None => base.title.clone(),
    };
    let bypass = bypass(base.bypass, &raw.bypass, at)?;
    Ok(RoutePolicy {
        name: Arc::from(name),
        mode: raw.mode.unwrap_or(base.mode),
        unknown_device: raw.unknown_device.unwrap_or(base.unknown_device),
        stale_posture: raw.stale_posture.unwrap_or(base.stale_posture),
        deny: DenyRules {
            failing_critical_policy: raw
                .deny
                .failing_critical_policy
                .unwrap_or(base.deny.failing_critical_policy),
            failing_any_policy: raw
                .deny
                .failing_any_policy
                .unwrap_or(base.deny.failing_any_policy),
            failing_policies: raw
                .deny
                .failing_policies
                .clone()
                .unwrap_or_else(|| base.deny.failing_policies.clone()),
            vulnerabilities,
            last_seen_over: positive(&raw.deny.last_seen_over, "deny.last_seen_over")?
                .or(base.deny.last_seen_over),
        },
        require: Requirements {
            teams: pick(&raw.require.teams, &base.require.teams),
            platforms: pick(&raw.require.platforms, &base.require.platforms),
        },
        grace: positive(&raw.grace, "grace")?.or(base.grace),
        deny_status,
        title,
        bypass,
    })
}

fn to_match(raw: &RawMatch) -> Result<RouteMatch, (String, String)> {
    if raw.context.is_empty() && raw.host.is_none() && raw.path_prefix.is_none() {
        return Err((
            String::new(),
            "give at least one of context, host, path_prefix".to_owned(),
        ));
    }
    let host = match raw.host.as_deref() {
        None => None,
        Some(h) if h.starts_with("*.") && h.len() > 2 && !h[1..].contains('*') => {
            Some(HostMatch::Suffix(h[1..].to_ascii_lowercase()))
        }
        Some(h) if !h.is_empty() && !h.contains('*') && !h.contains('/') => {
            Some(HostMatch::Exact(h.to_ascii_lowercase()))
        }
        Some(h) => {
            return Err((
                ".host".to_owned(),
                format!("`{h}` is not a host name or `*.suffix` pattern"),
            ));
        }
    };
    if let Some(p) = &raw.path_prefix
        && !p.starts_with('/')
    {
        return Err((
            ".path_prefix".to_owned(),
            format!("`{p}` must start with /"),
        ));
    }
    Ok(RouteMatch {
        context: raw
            .context
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        host,
        path_prefix: raw.path_prefix.clone(),
    })
}

/// `cve-2024-3094` → `CVE-2024-3094`; anything not `CVE-YYYY-NNNN+` is refused.
fn normalise_cve(cve: &str) -> Result<Arc<str>, String> {
    let upper = cve.trim().to_ascii_uppercase();
    let mut parts = upper.splitn(3, '-');
    let ok = parts.next() == Some("CVE")
        && parts
            .next()
            .is_some_and(|y| y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()))
        && parts
            .next()
            .is_some_and(|n| n.len() >= 4 && n.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(Arc::from(upper))
    } else {
        Err(format!("`{cve}` is not a CVE id like CVE-2024-3094"))
    }
}
