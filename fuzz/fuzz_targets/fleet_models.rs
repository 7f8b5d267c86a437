//! Fleet's JSON answers, read as the client reads them: each endpoint's
//! model through the client's own body reader (`fuzzing::fleet_answer`),
//! the certificate report through a streaming reader, then the mapping of
//! hosts and policies to the domain. The selector byte picks the endpoint.
//!
//! Must hold: every reader returns `Err`, never panics; a host maps to a
//! posture with its id and best name; the streamed report reads exactly as
//! the same bytes in one slice do.

#![no_main]

use std::sync::Arc;

use fleet_authz::{
    fleet::{Catalogue, Interner, ReportFingerprints, model::*},
    fuzzing::fleet_answer,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 7 {
        0 => {
            if let Ok(page) = fleet_answer::<HostsResponse>("hosts", body) {
                hosts_map(&page.hosts);
            }
        }
        1 => {
            let _ = fleet_answer::<HostIdsResponse>("hosts_failing_policy", body);
        }
        2 => {
            if let Ok(detail) = fleet_answer::<HostDetailResponse>("host", body) {
                hosts_map(std::slice::from_ref(&detail.host));
            }
        }
        3 => {
            if let Ok(list) = fleet_answer::<PoliciesResponse>("global_policies", body) {
                let (mut catalogue, mut interner) = (Catalogue::default(), Interner::default());
                for policy in &list.policies {
                    catalogue.add(policy, &mut interner);
                    assert!(catalogue.get(policy.id).is_some());
                }
                assert!(catalogue.len() <= list.policies.len());
            }
        }
        4 => {
            if let Ok(query) = fleet_answer::<QueryResponse>("query", body) {
                let _ = query.into_query();
            }
        }
        5 => {
            if let Ok(teams) = fleet_answer::<TeamsResponse>("teams", body) {
                let _ = teams.into_teams();
            }
        }
        _ => report_reads_alike(body),
    }
});

fn hosts_map(hosts: &[Host]) {
    let (catalogue, mut interner) = (Catalogue::default(), Interner::default());
    let watched: [Arc<str>; 1] = [Arc::from("CVE-2024-3094")];
    for host in hosts {
        let posture = host.to_posture(&catalogue, &mut interner, &watched);
        assert_eq!(posture.id.0, host.id);
        assert_eq!(posture.display_name, host.best_name());
        assert!(posture.cves.len() <= 1, "only watched CVEs, once");
    }
}

/// The report is decoded while it streams in: small reads must not change
/// what a whole slice decodes to.
fn report_reads_alike(body: &[u8]) {
    let whole = ReportFingerprints::decode(body, u64::MAX);
    let streamed = ReportFingerprints::decode(Trickle(body), u64::MAX);
    match (whole, streamed) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.results, b.results);
            assert_eq!(a.report_clipped, b.report_clipped);
            assert_eq!(a.error, b.error);
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "slice {:?} but stream {:?}",
            a.err().map(|e| format!("{e:?}")),
            b.err().map(|e| format!("{e:?}"))
        ),
    }
}

/// A reader handing out at most 7 bytes per read, like a body in chunks.
struct Trickle<'a>(&'a [u8]);

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = out.len().min(7).min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}
