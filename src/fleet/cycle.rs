//! The reads of one sync cycle (DESIGN.md §2, §7): the certificate query's
//! settings → teams → policy catalogue (global, each team's, unassigned) →
//! hosts → failing membership → watched CVEs → certificate fingerprints.
//! Nothing here publishes; the poller does, past the shrink guard.
//!
//! ## Membership: `populate_policies` or per-policy queries
//! With `populate_policies=true` every host row carries every policy that
//! applies to it, so the hosts walk costs bytes ∝ hosts × policies but no extra
//! requests. Per-policy membership (`hosts?policy_id=X&policy_response=failing`)
//! returns only failing hosts as thin rows, but costs one paged walk per
//! policy. Up to [`POPULATE_POLICIES_MAX`] policies the single walk is cheaper
//! in requests and still modest in bytes; past it the per-host rows grow large
//! while failing sets usually stay small, so `auto` switches to per-policy. In
//! per-policy mode a host lists only its failing policies (passing and not-run
//! results are not fetched), which is all a decision uses, so the catalogue
//! must hold every policy a host can fail: the unassigned ones (team id 0,
//! for hosts in no team) included, or such a host failing one is never seen.
//!
//! The threshold is low on purpose. Measured at 100,000 hosts with 23
//! policies (BENCHMARKS.md), `populate_policies` received 3.3× the bytes of
//! per-policy membership and held about twice the memory, for 107 rather than
//! 236 requests; a few dozen extra requests are cheaper than gigabytes.
//!
//! ## A clipped certificate report
//! Fleet keeps at most `report_cap` rows per query; past it, hosts are left
//! out of the report and `report_clipped` is true. Hosts in the report take
//! exactly the fingerprints it gives them. Hosts left out keep the ones the
//! published posture holds for them (except any that a host in the report
//! now claims), so a clip neither locks people out nor fails the cycle; it
//! is surfaced instead (warning, gauges, `/readyz`). An unclipped report is
//! complete: a host missing from it has no fingerprint.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use super::{
    Catalogue, FleetClient, FleetError, Interner, MembershipMode,
    map::failing_result,
    model::{SavedQuery, TeamDto},
};
use crate::posture::{HostId, HostPosture, PolicyResult, PostureStore, Team};

/// `auto` membership uses `populate_policies` up to this many policies.
pub const POPULATE_POLICIES_MAX: usize = 10;

/// One cycle's inputs.
pub(super) struct Cycle<'a> {
    pub client: &'a FleetClient,
    /// The published posture: where hosts left out of a clipped report
    /// take their fingerprints from.
    pub store: &'a PostureStore,
    pub query_id: u64,
    pub membership: MembershipMode,
    /// CVE ids that policy rules name.
    pub watched: Arc<[Arc<str>]>,
}

/// What a cycle learnt besides the hosts.
#[derive(Debug, Clone, Copy)]
pub(super) struct CycleFacts {
    pub policies: usize,
    pub membership: MembershipMode,
    pub skipped_rows: u64,
    pub clipped: bool,
    pub kept_fingerprints: usize,
    pub hosts_without_fingerprint: usize,
}

/// What the certificate report gave.
struct ReportFacts {
    skipped_rows: u64,
    clipped: bool,
    kept_fingerprints: usize,
}

/// Runs CPU-heavy sync work (mapping a page of a thousand hosts) without
/// holding up the Checks queued on this async worker: on a multi-threaded
/// runtime, `block_in_place` hands them to another worker first.
fn off_the_workers<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Fails when a setting of the certificate query keeps its report from
/// holding the hosts' current certificates.
fn check_query(query_id: u64, query: &SavedQuery) -> Result<(), FleetError> {
    if query.discard_data {
        return Err(FleetError::QuerySetting {
            query_id,
            setting: "discard_data",
            value: "true".into(),
            fix: "Fleet then stores no report for it; set discard_data: false",
        });
    }
    // Absent means Fleet's default, snapshot.
    let logging = query.logging.trim();
    if !logging.is_empty() && logging != "snapshot" {
        return Err(FleetError::QuerySetting {
            query_id,
            setting: "logging",
            value: logging.to_owned(),
            fix: "Fleet keeps a report of current results only with logging: snapshot",
        });
    }
    Ok(())
}

impl Cycle<'_> {
    /// Reads everything; the hosts come out in id order.
    pub async fn collect(&self) -> Result<(Vec<HostPosture>, CycleFacts), FleetError> {
        self.client.begin_cycle();
        let query = self.client.saved_query(self.query_id).await?;
        check_query(self.query_id, &query)?;
        let mut interner = Interner::default();
        let (teams, catalogue) = self.catalogue(&mut interner).await?;
        let membership = match self.membership {
            MembershipMode::Auto if catalogue.len() <= POPULATE_POLICIES_MAX => {
                MembershipMode::PopulatePolicies
            }
            MembershipMode::Auto => MembershipMode::PerPolicy,
            chosen => chosen,
        };
        let populate = membership == MembershipMode::PopulatePolicies;
        let mut hosts = self
            .hosts(populate, &teams, &catalogue, &mut interner)
            .await?;
        if !populate {
            self.failing_membership(&catalogue, &mut hosts).await?;
        }
        self.cves(&mut hosts).await?;
        let report = self.fingerprints(&mut hosts).await?;
        let hosts: Vec<HostPosture> = hosts.into_values().collect();
        let facts = CycleFacts {
            policies: catalogue.len(),
            membership,
            skipped_rows: report.skipped_rows,
            clipped: report.clipped,
            kept_fingerprints: report.kept_fingerprints,
            hosts_without_fingerprint: hosts.iter().filter(|h| h.fingerprints.is_empty()).count(),
        };
        Ok((hosts, facts))
    }

    /// The teams and every policy: global, each team's, and (on Premium)
    /// the unassigned ones of hosts in no team.
    async fn catalogue(
        &self,
        interner: &mut Interner,
    ) -> Result<(Vec<TeamDto>, Catalogue), FleetError> {
        let client = self.client;
        let mut catalogue = Catalogue::default();
        let teams = client.teams().await?;
        for p in client.global_policies().await? {
            catalogue.add(&p, interner);
        }
        // Fleet Free: no teams, and no unassigned policies either.
        let Some(teams) = teams else {
            return Ok((Vec::new(), catalogue));
        };
        for team in &teams {
            for p in client.team_policies(team.id).await?.policies {
                catalogue.add(&p, interner);
            }
        }
        for p in client.unassigned_policies().await? {
            catalogue.add(&p, interner);
        }
        Ok((teams, catalogue))
    }

    /// Every host, mapped page by page: at 100,000 hosts with
    /// `populate_policies` the rows of every page together are several
    /// times the postures made from them.
    async fn hosts(
        &self,
        populate: bool,
        teams: &[TeamDto],
        catalogue: &Catalogue,
        interner: &mut Interner,
    ) -> Result<BTreeMap<HostId, HostPosture>, FleetError> {
        let mut hosts = BTreeMap::new();
        self.client
            .hosts_by_page(populate, |rows| {
                off_the_workers(|| {
                    for row in &rows {
                        let mut posture = row.to_posture(catalogue, interner, &[]);
                        if posture.team.as_ref().is_some_and(|t| t.name.is_empty()) {
                            // Host rows may name the team only by id; the teams list knows its name.
                            if let Some(team) = teams.iter().find(|t| Some(t.id) == row.team_id) {
                                posture.team = posture.team.map(|t| Team {
                                    name: interner.intern(&team.name),
                                    ..t
                                });
                            }
                        }
                        hosts.insert(posture.id, posture);
                    }
                });
            })
            .await?;
        Ok(hosts)
    }

    /// Per-policy membership: each policy's failing hosts.
    async fn failing_membership(
        &self,
        catalogue: &Catalogue,
        hosts: &mut BTreeMap<HostId, HostPosture>,
    ) -> Result<(), FleetError> {
        for policy_id in catalogue.ids() {
            let Some(entry) = catalogue.get(policy_id) else {
                continue;
            };
            for id in self.client.hosts_failing_policy(policy_id).await? {
                if let Some(h) = hosts.get_mut(&HostId(id)) {
                    h.policies.push(failing_result(entry));
                }
            }
        }
        for h in hosts.values_mut() {
            h.policies.sort_by_key(PolicyResult::id);
        }
        Ok(())
    }

    /// The hosts affected by each watched CVE.
    async fn cves(&self, hosts: &mut BTreeMap<HostId, HostPosture>) -> Result<(), FleetError> {
        for cve in self.watched.iter() {
            for id in self.client.hosts_with_vulnerability(cve).await? {
                if let Some(h) = hosts.get_mut(&HostId(id)) {
                    h.cves.push(Arc::clone(cve));
                }
            }
        }
        Ok(())
    }

    /// Fills in fingerprints from the certificate report (see the module docs).
    async fn fingerprints(
        &self,
        hosts: &mut BTreeMap<HostId, HostPosture>,
    ) -> Result<ReportFacts, FleetError> {
        let report = self.client.query_report_fingerprints(self.query_id).await?;
        let rows = report.results.len();
        let mut reported: HashSet<HostId> = HashSet::with_capacity(hosts.len());
        let mut skipped_rows = 0u64;
        for row in report.results {
            skipped_rows += u64::from(row.sha1.malformed);
            // A host deleted since the hosts walk has no posture to fill.
            let Some(h) = hosts.get_mut(&HostId(row.host_id)) else {
                continue;
            };
            reported.insert(h.id);
            for fp in row.sha1.fingerprints {
                if !h.fingerprints.contains(&fp) {
                    h.fingerprints.push(fp);
                }
            }
        }
        if skipped_rows > 0 {
            tracing::warn!(
                skipped_rows,
                query_id = self.query_id,
                "certificate report rows without a valid sha1 skipped"
            );
        }
        let kept_fingerprints = if report.report_clipped {
            let kept = self.keep_fingerprints_of_the_left_out(hosts, &reported);
            tracing::warn!(
                query_id = self.query_id,
                rows,
                hosts_in_report = reported.len(),
                hosts_left_out = hosts.len() - reported.len(),
                kept_fingerprints = kept,
                "certificate report clipped (report_clipped: true): hosts left out keep their \
                 last known fingerprints; raise Fleet's report_cap or use the one-row-per-host query"
            );
            kept
        } else {
            0
        };
        Ok(ReportFacts {
            skipped_rows,
            clipped: report.report_clipped,
            kept_fingerprints,
        })
    }

    /// Hosts not in `reported` take the fingerprints the store holds for
    /// them, except those a reported host now claims; returns how many
    /// hosts kept any.
    fn keep_fingerprints_of_the_left_out(
        &self,
        hosts: &mut BTreeMap<HostId, HostPosture>,
        reported: &HashSet<HostId>,
    ) -> usize {
        let claimed: HashSet<_> = hosts
            .values()
            .filter(|h| reported.contains(&h.id))
            .flat_map(|h| h.fingerprints.iter().copied())
            .collect();
        let mut kept = 0;
        for h in hosts.values_mut().filter(|h| !reported.contains(&h.id)) {
            let Some(before) = self.store.host(h.id) else {
                continue;
            };
            h.fingerprints.extend(
                before
                    .fingerprints
                    .iter()
                    .filter(|fp| !claimed.contains(*fp)),
            );
            kept += usize::from(!h.fingerprints.is_empty());
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(discard_data: bool, logging: &str) -> SavedQuery {
        SavedQuery {
            id: 42,
            name: "certificates".into(),
            discard_data,
            logging: logging.into(),
            interval: 3600,
        }
    }

    #[test]
    fn the_query_check_names_the_setting_that_is_wrong() {
        assert_eq!(check_query(42, &query(false, "snapshot")), Ok(()));
        assert_eq!(check_query(42, &query(false, "")), Ok(()));
        assert_eq!(
            check_query(42, &query(true, "snapshot"))
                .unwrap_err()
                .to_string(),
            "certificate query 42: discard_data is true; Fleet then stores no report for it; \
             set discard_data: false"
        );
        assert_eq!(
            check_query(42, &query(false, "differential"))
                .unwrap_err()
                .to_string(),
            "certificate query 42: logging is differential; Fleet keeps a report of current \
             results only with logging: snapshot"
        );
    }
}
