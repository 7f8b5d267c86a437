//! DTO → domain mapping. The strings that repeat across thousands of hosts
//! (policy names, resolutions, CVE ids, team names) are interned for one sync,
//! so the store holds one copy of each, not one per host.

use std::{collections::HashMap, sync::Arc};

use super::model::{Host, HostPolicy, Policy, Response};
use crate::posture::{HostId, HostPosture, PolicyMeta, PolicyResponse, PolicyResult, Team};

/// Hands out one shared `Arc<str>` per distinct string, and one shared
/// [`PolicyMeta`] per policy.
#[derive(Debug, Default)]
pub struct Interner {
    map: HashMap<Box<str>, Arc<str>>,
    policies: HashMap<u64, Arc<PolicyMeta>>,
}

impl Interner {
    /// The shared catalogue entry for a policy seen only on a host row.
    pub fn policy(
        &mut self,
        id: u64,
        name: &str,
        critical: bool,
        resolution: &str,
    ) -> Arc<PolicyMeta> {
        if let Some(meta) = self.policies.get(&id) {
            return Arc::clone(meta);
        }
        let name = self.intern(name);
        let resolution = non_empty(resolution).map(|r| self.intern(r));
        let meta = PolicyMeta::new(id, name, critical, resolution);
        self.policies.insert(id, Arc::clone(&meta));
        meta
    }

    /// Seeds a policy entry already held (so a recheck reuses it).
    pub fn seed_policy(&mut self, meta: &Arc<PolicyMeta>) {
        self.policies
            .entry(meta.id)
            .or_insert_with(|| Arc::clone(meta));
    }

    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.map.get(s) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(s);
        self.map.insert(Box::from(s), Arc::clone(&shared));
        shared
    }

    /// Seeds the interner with strings already held (so a recheck reuses them).
    pub fn seed(&mut self, s: &Arc<str>) {
        self.map
            .entry(Box::from(&**s))
            .or_insert_with(|| Arc::clone(s));
    }

    /// Distinct strings held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is interned yet.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What the catalogue knows about one policy: one shared entry that every
/// host's result points at.
pub type CatalogueEntry = Arc<PolicyMeta>;

/// Every policy (global and each team's) by id.
#[derive(Debug, Default)]
pub struct Catalogue {
    entries: HashMap<u64, CatalogueEntry>,
}

impl Catalogue {
    /// Adds (or replaces) a policy from Fleet's list.
    pub fn add(&mut self, policy: &Policy, interner: &mut Interner) {
        let entry = PolicyMeta::new(
            policy.id,
            interner.intern(&policy.name),
            policy.critical,
            non_empty(&policy.resolution).map(|r| interner.intern(r)),
        );
        self.entries.insert(policy.id, entry);
    }

    /// The policy with `id`.
    pub fn get(&self, id: u64) -> Option<&CatalogueEntry> {
        self.entries.get(&id)
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no policies.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Policy ids, ascending.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.entries.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

/// Fleet's response → the domain's.
pub fn to_response(r: Response) -> PolicyResponse {
    match r {
        Response::Pass => PolicyResponse::Pass,
        Response::Fail => PolicyResponse::Fail,
        Response::NotRun => PolicyResponse::NotRun,
    }
}

/// A failing result for catalogue policy `entry` (per-policy membership).
pub fn failing_result(entry: &CatalogueEntry) -> PolicyResult {
    PolicyResult::new(Arc::clone(entry), PolicyResponse::Fail)
}

fn to_policy_result(
    p: &HostPolicy,
    catalogue: &Catalogue,
    interner: &mut Interner,
) -> PolicyResult {
    // The catalogue is authoritative for names and criticality (it is what the
    // deny page shows); the host row's copy is a fallback for policies created
    // between the catalogue fetch and the host fetch.
    let meta = match catalogue.get(p.id) {
        Some(e) => Arc::clone(e),
        None => interner.policy(p.id, &p.name, p.critical, &p.resolution),
    };
    PolicyResult::new(meta, to_response(p.response))
}

impl Host {
    /// The name people recognise: `display_name`, else computer name, else hostname.
    pub fn best_name(&self) -> &str {
        [&self.display_name, &self.computer_name, &self.hostname]
            .into_iter()
            .find(|s| !s.is_empty())
            .map_or("", |s| s.as_str())
    }

    /// Maps the host to the domain posture. Policies come from the row's
    /// `policies` when present; CVEs are those in `software` that `watched`
    /// names; fingerprints are left empty for the caller to fill.
    pub fn to_posture(
        &self,
        catalogue: &Catalogue,
        interner: &mut Interner,
        watched: &[Arc<str>],
    ) -> HostPosture {
        let team = match (self.team_id, self.team_name.as_deref()) {
            (None, None) => None,
            (id, name) => Some(Team {
                id,
                name: interner.intern(name.unwrap_or_default()),
            }),
        };
        let mut policies: Vec<PolicyResult> = self
            .policies
            .iter()
            .flatten()
            .map(|p| to_policy_result(p, catalogue, interner))
            .collect();
        policies.sort_by_key(PolicyResult::id);
        let mut cves: Vec<Arc<str>> = Vec::new();
        for sw in self.software.iter().flatten() {
            for v in &sw.vulnerabilities {
                if let Some(w) = watched.iter().find(|w| w.eq_ignore_ascii_case(&v.cve))
                    && !cves.contains(w)
                {
                    cves.push(Arc::clone(w));
                }
            }
        }
        HostPosture {
            id: HostId(self.id),
            uuid: self.uuid.clone(),
            hardware_serial: self.hardware_serial.clone(),
            display_name: self.best_name().to_owned(),
            team,
            platform: interner.intern(&self.platform),
            os_version: interner.intern(&self.os_version),
            last_seen: self.seen_time,
            policies,
            cves,
            fingerprints: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::model::HostDetailResponse;

    #[test]
    fn interner_returns_one_shared_copy() {
        let mut i = Interner::default();
        let a = i.intern("Gatekeeper enabled");
        let b = i.intern("Gatekeeper enabled");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn host_detail_maps_policies_team_and_cves() {
        let json = r#"{"host":{"id":7,"uuid":"u-7","hostname":"h","display_name":"","computer_name":"Anna's Mac",
            "platform":"darwin","os_version":"macOS 14","seen_time":"2024-01-02T03:04:05Z",
            "team_id":3,"team_name":"Workstations",
            "policies":[{"id":9,"name":"row name","response":"fail","critical":false,"resolution":""},
                        {"id":2,"name":"Disk","response":"","resolution":"Turn on FileVault"}],
            "software":[{"id":1,"name":"xz","version":"5.6.0","vulnerabilities":[{"cve":"cve-2024-3094"}]},
                        {"id":2,"name":"tar","version":"1","vulnerabilities":null}]}}"#;
        let host = serde_json::from_str::<HostDetailResponse>(json)
            .unwrap()
            .host;
        let mut interner = Interner::default();
        let mut catalogue = Catalogue::default();
        let policy: Policy = serde_json::from_str(
            r#"{"id":9,"name":"Gatekeeper","critical":true,"resolution":"Enable it"}"#,
        )
        .unwrap();
        catalogue.add(&policy, &mut interner);
        let watched: Vec<Arc<str>> = vec!["CVE-2024-3094".into(), "CVE-2000-0001".into()];
        let p = host.to_posture(&catalogue, &mut interner, &watched);
        assert_eq!(p.display_name, "Anna's Mac");
        assert_eq!(
            p.team,
            Some(Team {
                id: Some(3),
                name: "Workstations".into()
            })
        );
        assert_eq!(
            p.policies.iter().map(PolicyResult::id).collect::<Vec<_>>(),
            [2, 9]
        );
        assert_eq!(p.policies[0].response, PolicyResponse::NotRun);
        assert_eq!(
            p.policies[0].meta.resolution.as_deref(),
            Some("Turn on FileVault")
        );
        assert_eq!(&*p.policies[1].meta.name, "Gatekeeper");
        assert!(p.policies[1].meta.critical && p.policies[1].is_failing());
        assert!(Arc::ptr_eq(&p.policies[1].meta, catalogue.get(9).unwrap()));
        assert_eq!(p.cves, vec![Arc::<str>::from("CVE-2024-3094")]);
        assert_eq!(
            p.last_seen,
            Some(humantime::parse_rfc3339("2024-01-02T03:04:05Z").unwrap())
        );
    }
}
