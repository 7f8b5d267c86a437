//! The posture file source (DESIGN.md §2): the posture model as YAML or JSON,
//! for the demo, air-gapped use and tests. `.json` files are read as JSON,
//! everything else as YAML. Unknown keys are errors.
//!
//! Times are RFC 3339 (`last_seen: 2026-11-20T08:00:00Z`) or, for demos that
//! must stay true whenever they run, relative to when the file is loaded
//! (`last_seen_ago: 3d`).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Deserialize;

use super::{HostId, HostPosture, PolicyMeta, PolicyResponse, PolicyResult, Team};
use crate::{duration::parse_duration, fingerprint::Fingerprint};

/// Why a posture file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PostureFileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A parsed posture file: every host, ready to publish.
#[derive(Debug, Clone)]
pub struct PostureFile {
    pub hosts: Vec<HostPosture>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    policies: Vec<RawPolicy>,
    #[serde(default)]
    hosts: Vec<RawHost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    id: u64,
    name: String,
    #[serde(default)]
    critical: bool,
    #[serde(default)]
    resolution: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    id: u64,
    #[serde(default)]
    uuid: String,
    #[serde(default)]
    hardware_serial: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    team_id: Option<u64>,
    #[serde(default)]
    platform: String,
    #[serde(default)]
    os_version: String,
    #[serde(default)]
    last_seen: Option<String>,
    #[serde(default)]
    last_seen_ago: Option<String>,
    /// Policy id → `pass` | `fail` | `not_run`.
    #[serde(default)]
    policies: BTreeMap<u64, PolicyResponse>,
    #[serde(default)]
    cves: Vec<String>,
    #[serde(default)]
    fingerprints: Vec<Fingerprint>,
}

/// A policy's name, critical flag and resolution.
type CatalogueEntry = Arc<PolicyMeta>;

fn intern(pool: &mut HashMap<String, Arc<str>>, s: String) -> Arc<str> {
    Arc::clone(pool.entry(s.clone()).or_insert_with(|| Arc::from(s)))
}

/// Reads and parses a posture file. `now` anchors `last_seen_ago`.
pub fn load_posture_file(path: &Path, now: SystemTime) -> Result<PostureFile, PostureFileError> {
    let text =
        crate::input::read_bounded(path, crate::input::MAX_POSTURE_BYTES).map_err(|message| {
            PostureFileError::Invalid {
                path: path.to_owned(),
                message,
            }
        })?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    parse_posture_file(&text, json, now).map_err(|message| PostureFileError::Invalid {
        path: path.to_owned(),
        message,
    })
}

/// `last_seen` (RFC 3339) or `last_seen_ago` (a duration before `now`);
/// an error names the key at fault.
fn last_seen(
    at: Option<&str>,
    ago: Option<&str>,
    now: SystemTime,
) -> Result<Option<SystemTime>, (&'static str, String)> {
    match (at, ago) {
        (Some(_), Some(_)) => Err((
            "last_seen",
            "give last_seen or last_seen_ago, not both".into(),
        )),
        (Some(t), None) => humantime::parse_rfc3339_weak(t)
            .map(Some)
            .map_err(|e| ("last_seen", format!("not an RFC 3339 time: {e}"))),
        (None, Some(ago)) => {
            let d = parse_duration(ago).map_err(|e| ("last_seen_ago", e))?;
            Ok(Some(now.checked_sub(d).unwrap_or(now - Duration::ZERO)))
        }
        (None, None) => Ok(None),
    }
}

/// Parses posture file text (JSON when `json`, else YAML).
pub fn parse_posture_file(text: &str, json: bool, now: SystemTime) -> Result<PostureFile, String> {
    let raw: RawFile = if json {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else {
        crate::input::refuse_aliases(text)?;
        yaml_serde::from_str(text).map_err(|e| e.to_string())?
    };
    let mut catalogue: HashMap<u64, CatalogueEntry> = HashMap::new();
    for p in raw.policies {
        let entry = PolicyMeta::new(p.id, p.name, p.critical, p.resolution.map(Arc::from));
        if catalogue.insert(p.id, entry).is_some() {
            return Err(format!("policies: policy id {} is listed twice", p.id));
        }
    }
    let mut teams: HashMap<String, Arc<str>> = HashMap::new();
    let mut cves: HashMap<String, Arc<str>> = HashMap::new();
    let mut seen_ids = std::collections::HashSet::new();
    let mut seen_fps: HashMap<Fingerprint, u64> = HashMap::new();
    let mut hosts = Vec::with_capacity(raw.hosts.len());
    for h in raw.hosts {
        let at = |key: &str| format!("hosts[id={}].{key}", h.id);
        if !seen_ids.insert(h.id) {
            return Err(format!("hosts: host id {} is listed twice", h.id));
        }
        let last_seen = last_seen(h.last_seen.as_deref(), h.last_seen_ago.as_deref(), now)
            .map_err(|(key, problem)| format!("{}: {problem}", at(key)))?;
        let mut policies = Vec::with_capacity(h.policies.len());
        for (id, response) in h.policies {
            let meta = catalogue.get(&id).cloned().ok_or_else(|| {
                format!(
                    "{}: policy {id} is not in the top-level policies list",
                    at("policies")
                )
            })?;
            policies.push(PolicyResult::new(meta, response));
        }
        for fp in &h.fingerprints {
            if let Some(other) = seen_fps.insert(*fp, h.id) {
                return Err(format!(
                    "{}: fingerprint {fp} is also held by host {other}",
                    at("fingerprints")
                ));
            }
        }
        let team = h.team.map(|name| Team {
            id: h.team_id,
            name: Arc::clone(teams.entry(name.clone()).or_insert_with(|| Arc::from(name))),
        });
        let cves = h
            .cves
            .into_iter()
            .map(|c| Arc::clone(cves.entry(c.clone()).or_insert_with(|| Arc::from(c))))
            .collect();
        hosts.push(HostPosture {
            id: HostId(h.id),
            uuid: h.uuid,
            hardware_serial: h.hardware_serial,
            display_name: h.display_name,
            team,
            platform: intern(&mut teams, h.platform),
            os_version: intern(&mut teams, h.os_version),
            last_seen,
            policies,
            cves,
            fingerprints: h.fingerprints,
        });
    }
    Ok(PostureFile { hosts })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(1_800_000_000);

    #[test]
    fn parses_yaml_with_relative_times_and_catalogue() {
        let now = SystemTime::UNIX_EPOCH + NOW;
        let text = r#"
policies:
  - {id: 12, name: Gatekeeper enabled, critical: true, resolution: Turn it on}
hosts:
  - id: 7
    display_name: Anna's MacBook
    team: Workstations
    platform: darwin
    last_seen_ago: 2h
    policies: {12: fail}
    cves: [CVE-2024-3094]
    fingerprints: ["A9:4A:8F:E5:CC:B1:9B:A6:1C:4C:08:73:D3:91:E9:87:98:2F:BB:D3"]
"#;
        let file = parse_posture_file(text, false, now).unwrap();
        let h = &file.hosts[0];
        assert_eq!(h.last_seen, Some(now - Duration::from_secs(7200)));
        assert_eq!(&*h.policies[0].meta.name, "Gatekeeper enabled");
        assert!(h.policies[0].meta.critical && h.policies[0].is_failing());
        assert_eq!(h.team_name(), Some("Workstations"));
        assert_eq!(
            h.fingerprints[0].to_hex(),
            "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"
        );
    }

    #[test]
    fn parses_json_and_names_bad_keys() {
        let now = SystemTime::UNIX_EPOCH + NOW;
        let ok = r#"{"policies":[{"id":1,"name":"p"}],"hosts":[{"id":1,"policies":{"1":"pass"},"last_seen":"2026-11-20T08:00:00Z"}]}"#;
        assert_eq!(parse_posture_file(ok, true, now).unwrap().hosts.len(), 1);
        let unknown_policy = "hosts: [{id: 3, policies: {9: fail}}]";
        let err = parse_posture_file(unknown_policy, false, now).unwrap_err();
        assert!(
            err.contains("hosts[id=3].policies") && err.contains("policy 9"),
            "{err}"
        );
        let typo = "hosts: [{id: 3, platfrom: darwin}]";
        let err = parse_posture_file(typo, false, now).unwrap_err();
        assert!(err.contains("platfrom"), "{err}");
        let bad_fp = "hosts: [{id: 3, fingerprints: [abc]}]";
        assert!(
            parse_posture_file(bad_fp, false, now)
                .unwrap_err()
                .contains("fingerprint")
        );
    }
}
