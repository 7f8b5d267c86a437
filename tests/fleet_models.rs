//! Fleet's DTOs against the real response examples in `tests/fixtures/fleet-api/`,
//! one test per file, each asserting parsed values and Fleet's quirks.

use std::time::{Duration, UNIX_EPOCH};

use fleet_authz::fleet::model::*;
use fleet_authz::fleet::{Catalogue, Interner};
use fleet_authz::posture::{HostId, PolicyResponse};

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!(
        "{}/tests/fixtures/fleet-api/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn rfc3339(s: &str) -> std::time::SystemTime {
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn hosts_list() {
    let r: HostsResponse = fixture("hosts-list.json");
    assert_eq!(r.hosts.len(), 1);
    let h = &r.hosts[0];
    assert_eq!(
        (h.id, h.hostname.as_str(), h.platform.as_str()),
        (1, "2ceca32fe484", "centos")
    );
    assert_eq!(h.uuid, "392547dc-0000-0000-a87a-d701ff75bc65");
    assert_eq!((h.team_id, h.team_name.as_deref()), (None, None));
    assert_eq!(h.seen_time, Some(rfc3339("2020-11-05T06:03:39Z")));
    assert_eq!(h.detail_updated_at, Some(rfc3339("2020-11-05T05:09:45Z")));
    let policies = h.policies.as_ref().unwrap();
    assert_eq!(policies.len(), 1);
    assert_eq!((policies[0].id, policies[0].response), (1, Response::Fail));
    let software = h.software.as_ref().unwrap();
    assert_eq!(software[0].vulnerabilities[0].cve, "CVE-2009-5155");
    assert_eq!(
        h.issues.as_ref().unwrap().critical_vulnerabilities_count,
        Some(2)
    );

    let p = h.to_posture(
        &Catalogue::default(),
        &mut Interner::default(),
        &["CVE-2009-5155".into()],
    );
    assert_eq!(p.id, HostId(1));
    assert_eq!(p.display_name, "2ceca32fe484");
    assert_eq!(p.team, None);
    assert_eq!(p.policies[0].response, PolicyResponse::Fail);
    assert_eq!(
        p.policies[0].meta.resolution.as_deref(),
        Some("Fix with these steps...")
    );
    assert_eq!(p.cves.len(), 1);
}

#[test]
fn host_detail() {
    let r: HostDetailResponse = fixture("host-detail.json");
    let h = &r.host;
    assert_eq!(
        (h.id, h.display_name.as_str(), h.os_version.as_str()),
        (1, "23cfc9caacf0", "CentOS Linux 8.3.2011")
    );
    assert_eq!((h.team_id, h.team_name.as_deref()), (None, None));
    // The doc's Unicode minus (U+2212) is kept verbatim, not parsed.
    let window = h.maintenance_window.as_ref().unwrap();
    assert_eq!(
        window.starts_at.as_deref(),
        Some("2024-06-18T13:27:18\u{2212}04:00")
    );
    let responses: Vec<_> = h
        .policies
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.id, p.response))
        .collect();
    assert_eq!(
        responses,
        [
            (2, Response::Fail),
            (3, Response::NotRun),
            (1, Response::Pass)
        ]
    );
    let software = h.software.as_ref().unwrap();
    assert_eq!(software.len(), 3);
    assert!(
        software.iter().all(|s| s.vulnerabilities.is_empty()),
        "null vulnerabilities read as empty"
    );

    let p = h.to_posture(&Catalogue::default(), &mut Interner::default(), &[]);
    assert_eq!(
        p.policies
            .iter()
            .map(|p| (p.id(), p.response))
            .collect::<Vec<_>>(),
        [
            (1, PolicyResponse::Pass),
            (2, PolicyResponse::Fail),
            (3, PolicyResponse::NotRun)
        ]
    );
    assert_eq!(
        p.policies[2].meta.resolution, None,
        "empty resolution is none"
    );
    assert_eq!(p.last_seen, Some(rfc3339("2021-08-19T21:14:58Z")));
}

#[test]
fn host_by_identifier() {
    let r: HostDetailResponse = fixture("host-by-identifier.json");
    let h = &r.host;
    assert_eq!(
        (h.id, h.team_id, h.team_name.as_deref()),
        (33, Some(2), None)
    );
    assert_eq!(h.display_name, "dogfood-ubuntu-box");
    let p = &h.policies.as_ref().unwrap()[0];
    assert_eq!((p.id, p.response, p.critical), (142, Response::Fail, false));
    let posture = h.to_posture(&Catalogue::default(), &mut Interner::default(), &[]);
    // A team id without a name still records the team.
    assert_eq!(
        posture.team.as_ref().map(|t| (t.id, t.name.to_string())),
        Some((Some(2), String::new()))
    );
}

#[test]
fn device_host() {
    let r: DeviceHostResponse = fixture("device-host.json");
    assert_eq!((r.host.id, r.host.platform.as_str()), (1, "rhel"));
    assert!(r.self_service);
    assert_eq!(r.license.unwrap().tier, "free");
    assert!(
        r.host.policies.is_none(),
        "no policies key means not populated"
    );
    assert_eq!(r.host.software.as_ref().unwrap().len(), 3);
}

#[test]
fn device_mapping() {
    let r: DeviceMappingResponse = fixture("device-mapping.json");
    assert_eq!(r.host_id, 1);
    let sources: Vec<_> = r.device_mapping.iter().map(|m| m.source.as_str()).collect();
    assert_eq!(
        sources,
        ["identity_provider", "google_chrome_profiles", "custom"]
    );
    assert_eq!(r.device_mapping[0].email, "user@example.com");
}

#[test]
fn host_health() {
    let r: HostHealthResponse = fixture("host-health.json");
    assert_eq!(r.host_id, 1);
    assert_eq!(r.health.updated_at, Some(rfc3339("2023-09-16T18:52:19Z")));
    assert_eq!(
        (
            r.health.failing_policies_count,
            r.health.failing_critical_policies_count
        ),
        (1, Some(1))
    );
    let p = &r.health.failing_policies[0];
    assert_eq!(
        (p.id, p.name.as_str(), p.critical),
        (123, "Google Chrome is up to date", true)
    );
    assert_eq!(r.health.vulnerable_software[0].name, "Firefox.app");
}

#[test]
fn global_policies() {
    let r: PoliciesResponse = fixture("global-policies.json");
    let ids: Vec<_> = r
        .policies
        .iter()
        .map(|p| (p.id, p.critical, p.team_id))
        .collect();
    assert_eq!(ids, [(1, false, None), (2, true, None)]);
    assert!(r.inherited_policies.is_empty());
    assert_eq!(r.policies[0].failing_host_count, Some(300));
    let mut interner = Interner::default();
    let mut catalogue = Catalogue::default();
    for p in &r.policies {
        catalogue.add(p, &mut interner);
    }
    assert_eq!(catalogue.ids(), [1, 2]);
    assert_eq!(
        catalogue.get(2).unwrap().resolution.as_deref(),
        Some("Resolution steps")
    );
    // Both resolutions are the same text: one shared copy.
    assert!(std::sync::Arc::ptr_eq(
        catalogue.get(1).unwrap().resolution.as_ref().unwrap(),
        catalogue.get(2).unwrap().resolution.as_ref().unwrap()
    ));
}

#[test]
fn team_policies() {
    let r: PoliciesResponse = fixture("team-policies.json");
    assert_eq!(
        r.policies.iter().map(|p| p.id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(r.policies.iter().all(|p| p.team_id == Some(1)));
    assert_eq!(r.inherited_policies.len(), 1);
    assert_eq!(
        (r.inherited_policies[0].id, r.inherited_policies[0].team_id),
        (136, None)
    );
    assert!(r.inherited_policies[0].critical);
}

#[test]
fn team_policies_merged() {
    let r: PoliciesResponse = fixture("team-policies-merged.json");
    let ids: Vec<_> = r.policies.iter().map(|p| (p.id, p.team_id)).collect();
    assert_eq!(ids, [(1, Some(1)), (2, Some(1)), (136, None)]);
    assert!(
        r.inherited_policies.is_empty(),
        "absent inherited_policies reads as empty"
    );
}

#[test]
fn policy_without_premium_fields_is_not_critical() {
    let p: Policy =
        serde_json::from_str(r#"{"id":5,"name":"Free tier","resolution":null}"#).unwrap();
    assert_eq!((p.id, p.critical, p.resolution.as_str()), (5, false, ""));
}

#[test]
fn query_report() {
    let r: QueryReport = fixture("query-report.json");
    assert_eq!(
        (r.query_id, r.report_clipped, r.results.len()),
        (31, false, 5)
    );
    let hosts: Vec<_> = r.results.iter().map(|row| row.host_id).collect();
    assert_eq!(hosts, [1, 1, 2, 2, 2]);
    assert_eq!(r.results[2].host_name, "bar");
    assert_eq!(
        r.results[0].last_fetched,
        Some(rfc3339("2021-01-19T17:08:31Z"))
    );
    // A usb_devices report has no sha1 column.
    assert!(r.results.iter().all(|row| row.columns.sha1.is_none()));
}

#[test]
fn query_report_empty() {
    let r: QueryReport = fixture("query-report-empty.json");
    assert_eq!(r.query_id, 32);
    assert!(!r.report_clipped, "absent report_clipped is false");
    assert!(r.results.is_empty());
}

#[test]
fn query_report_certificate_rows() {
    let json = r#"{"query_id":42,"report_clipped":true,"results":[
        {"host_id":7,"host_name":"m","last_fetched":"0001-01-01T00:00:00Z",
         "columns":{"sha1":"A9:4A:8F:E5:CC:B1:9B:A6:1C:4C:08:73:D3:91:E9:87:98:2F:BB:D3","common_name":"x"}}]}"#;
    let r: QueryReport = serde_json::from_str(json).unwrap();
    assert!(r.report_clipped);
    assert_eq!(
        r.results[0].last_fetched, None,
        "fleet's zero time reads as none"
    );
    let fp =
        fleet_authz::fingerprint::Fingerprint::parse(r.results[0].columns.sha1.as_deref().unwrap())
            .unwrap();
    assert_eq!(fp.to_hex(), "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3");
}

#[test]
fn host_query_report() {
    let r: HostQueryReport = fixture("host-query-report.json");
    assert_eq!(
        (r.query_id, r.host_id, r.report_clipped, r.results.len()),
        (31, 1, false, 3)
    );
}

#[test]
fn teams_list() {
    let r: TeamsResponse = fixture("teams-list.json");
    let teams: Vec<_> = r.teams.iter().map(|t| (t.id, t.name.as_str())).collect();
    assert_eq!(teams, [(1, "workstations"), (2, "servers")]);
}

#[test]
fn vulnerabilities_list() {
    let r: VulnerabilitiesResponse = fixture("vulnerabilities-list.json");
    assert_eq!(r.count, 123);
    let v = &r.vulnerabilities[0];
    assert_eq!(
        (v.cve.as_str(), v.hosts_count, v.cvss_score),
        ("CVE-2022-30190", 1234, Some(7.8))
    );
    assert!(!r.meta.unwrap().has_next_results);
}

#[test]
fn vulnerability() {
    let r: VulnerabilityResponse = fixture("vulnerability.json");
    let v = &r.vulnerability;
    assert_eq!(
        (v.cve.as_str(), v.hosts_count, v.cisa_known_exploit),
        ("CVE-2022-30190", 1234, Some(false))
    );
    assert_eq!(v.software.len(), 1);
    assert_eq!(
        (v.software[0].name.as_str(), v.software[0].hosts_count),
        ("Docker Desktop", Some(50))
    );
}

#[test]
fn vulnerability_without_premium_fields() {
    let v: Vulnerability = serde_json::from_str(r#"{"cve":"CVE-1","hosts_count":3}"#).unwrap();
    assert_eq!((v.cvss_score, v.cisa_known_exploit), (None, None));
}

#[test]
fn software_versions() {
    let r: SoftwareVersionsResponse = fixture("software-versions.json");
    assert_eq!((r.count, r.software.len()), (1, 2));
    assert_eq!(
        r.software[0].vulnerabilities[0]
            .resolved_in_version
            .as_deref(),
        Some("2.28")
    );
    assert_eq!(r.software[1].name, "1Password \u{2013} Password Manager");
    assert!(
        r.software[1].vulnerabilities.is_empty(),
        "null vulnerabilities read as empty"
    );
    assert_eq!(r.software[1].hosts_count, Some(345));
}

#[test]
fn error_bodies() {
    for (file, message, reason, uuid) in [
        ("error.json", "Bad request", "Expected JSON Body", true),
        (
            "error-401.json",
            "Authentication failed",
            "Authentication failed",
            true,
        ),
        (
            "error-404.json",
            "Resource Not Found",
            "Invite with token <token> was not found in the datastore",
            false,
        ),
        (
            "error-429.json",
            "limit exceeded, retry after: Ns",
            "limit exceeded, retry after: Ns",
            false,
        ),
    ] {
        let r: ErrorResponse = fixture(file);
        assert_eq!(r.message, message, "{file}");
        assert_eq!(
            (r.errors[0].name.as_str(), r.errors[0].reason.as_str()),
            ("base", reason),
            "{file}"
        );
        assert_eq!(r.uuid.is_some(), uuid, "{file}");
    }
}

#[test]
fn host_certificates() {
    let r: HostCertificatesResponse = fixture("host-certificates.json");
    let c = &r.certificates[0];
    assert_eq!(
        (c.id, c.common_name.as_str(), c.certificate_authority),
        (1, "Test Cert", true)
    );
    assert_eq!(
        c.not_valid_after,
        Some(UNIX_EPOCH + Duration::from_secs(1_629_338_537))
    );
    assert_eq!(c.source, "system");
}
