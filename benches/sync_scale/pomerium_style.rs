//! The comparison: a client that syncs the way Pomerium's FleetDM data source
//! does (a reimplementation of the approach, not its code). It pages through
//! `GET /api/latest/fleet/hosts?populate_policies=true&populate_software=true`
//! 500 hosts a page, decodes each page into typed rows holding only what it
//! keeps (id, last seen, issue counts, each policy's id/response/critical,
//! every software item's CVEs), folds each row into a compact host (passing
//! and failing policy ids, a deduplicated CVE list), then fetches the policy
//! catalogue and the certificate query report and joins them into one record
//! per certificate. Everything stays in memory, as the data source keeps it.
//!
//! It runs in its own process (the bench re-executes itself), so its peak RSS
//! is its own; it prints one `RESULT` line for the orchestrator.

use std::{
    collections::{BTreeSet, HashMap},
    time::Instant,
};

use serde::Deserialize;

const PER_PAGE: usize = 500;

#[derive(Deserialize)]
struct HostsPage {
    #[serde(default)]
    hosts: Vec<HostRow>,
}

#[derive(Deserialize)]
struct HostRow {
    id: u64,
    #[serde(default)]
    seen_time: String,
    #[serde(default)]
    issues: Issues,
    #[serde(default)]
    policies: Option<Vec<PolicyStatus>>,
    #[serde(default)]
    software: Option<Vec<SoftwareRow>>,
}

#[derive(Deserialize, Default)]
struct Issues {
    #[serde(default)]
    failing_policies_count: u64,
    #[serde(default)]
    critical_vulnerabilities_count: Option<u64>,
}

#[derive(Deserialize)]
struct PolicyStatus {
    id: u32,
    #[serde(default)]
    response: String,
    #[serde(default)]
    critical: bool,
}

#[derive(Deserialize)]
struct SoftwareRow {
    #[serde(default)]
    vulnerabilities: Option<Vec<Cve>>,
}

#[derive(Deserialize)]
struct Cve {
    cve: String,
}

/// What the data source keeps per host.
#[allow(dead_code, reason = "held to measure memory, not read")]
struct Host {
    id: String,
    seen: String,
    failing_policies_count: u64,
    failing_critical_policies_count: u64,
    critical_vulnerabilities_count: Option<u64>,
    policies_passing: Vec<u32>,
    policies_failing: Vec<u32>,
    cves: Vec<String>,
}

#[derive(Deserialize)]
#[allow(dead_code, reason = "held to measure memory, not read")]
struct Policy {
    id: u64,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    resolution: String,
}

#[derive(Deserialize)]
struct PoliciesPage {
    #[serde(default)]
    policies: Vec<Policy>,
}

#[derive(Deserialize)]
struct Report {
    #[serde(default)]
    results: Vec<ReportRow>,
}

#[derive(Deserialize)]
struct ReportRow {
    host_id: u64,
    columns: ReportColumns,
}

#[derive(Deserialize)]
struct ReportColumns {
    #[serde(default)]
    sha1: String,
}

/// One record per certificate, as the data source publishes them.
#[allow(dead_code, reason = "held to measure memory, not read")]
struct Record {
    sha1: String,
    host: usize,
}

fn fold(row: HostRow) -> Host {
    let (mut passing, mut failing, mut critical) = (Vec::new(), Vec::new(), 0);
    for p in row.policies.into_iter().flatten() {
        match p.response.as_str() {
            "pass" => passing.push(p.id),
            "fail" => {
                failing.push(p.id);
                critical += u64::from(p.critical);
            }
            _ => {}
        }
    }
    let cves: BTreeSet<String> = row
        .software
        .into_iter()
        .flatten()
        .flat_map(|s| s.vulnerabilities.into_iter().flatten())
        .map(|v| v.cve)
        .collect();
    Host {
        id: row.id.to_string(),
        seen: row.seen_time,
        failing_policies_count: row.issues.failing_policies_count,
        failing_critical_policies_count: critical,
        critical_vulnerabilities_count: row.issues.critical_vulnerabilities_count,
        policies_passing: passing,
        policies_failing: failing,
        cves: cves.into_iter().collect(),
    }
}

struct Counter {
    requests: u64,
    bytes: u64,
}

async fn get(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    n: &mut Counter,
) -> impl std::ops::Deref<Target = [u8]> + use<> {
    let resp = http.get(url).bearer_auth(token).send().await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let body = resp.bytes().await.unwrap();
    n.requests += 1;
    n.bytes += body.len() as u64;
    body
}

/// Runs one full sync against `base` and prints `RESULT requests bytes wall_ms
/// hosts records hwm_kb rss_kb`, RSS read after holding the data for 3 s.
pub async fn run(base: &str, token: &str, query_id: u64) {
    let http = reqwest::Client::new();
    let mut n = Counter {
        requests: 0,
        bytes: 0,
    };
    // The fake Fleet builds each body once and then serves it from memory
    // (as it does for fleet-authz's measured, second sync): request every
    // URL once first, so the measured pass below is served the same way.
    let pages = super::hosts() as usize / PER_PAGE;
    for page in 0..=pages {
        let url = format!(
            "{base}/api/latest/fleet/hosts?populate_policies=true&populate_software=true&per_page={PER_PAGE}&page={page}"
        );
        get(&http, &url, token, &mut n).await;
    }
    for path in [
        "global/policies".to_owned(),
        format!("queries/{query_id}/report"),
    ] {
        get(
            &http,
            &format!("{base}/api/latest/fleet/{path}"),
            token,
            &mut n,
        )
        .await;
    }
    n = Counter {
        requests: 0,
        bytes: 0,
    };
    let started = Instant::now();
    let mut hosts: Vec<Host> = Vec::new();
    for page in 0.. {
        let url = format!(
            "{base}/api/latest/fleet/hosts?populate_policies=true&populate_software=true&per_page={PER_PAGE}&page={page}"
        );
        let body = get(&http, &url, token, &mut n).await;
        let rows: HostsPage = serde_json::from_slice(&body).unwrap();
        let short = rows.hosts.len() < PER_PAGE;
        hosts.extend(rows.hosts.into_iter().map(fold));
        if short {
            break;
        }
    }
    let body = get(
        &http,
        &format!("{base}/api/latest/fleet/global/policies"),
        token,
        &mut n,
    )
    .await;
    let policies: PoliciesPage = serde_json::from_slice(&body).unwrap();
    let body = get(
        &http,
        &format!("{base}/api/latest/fleet/queries/{query_id}/report"),
        token,
        &mut n,
    )
    .await;
    let report: Report = serde_json::from_slice(&body).unwrap();
    drop(body);
    let index: HashMap<u64, usize> = hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.id.parse().ok().map(|id| (id, i)))
        .collect();
    let records: Vec<Record> = report
        .results
        .into_iter()
        .filter_map(|r| {
            index.get(&r.host_id).map(|&host| Record {
                sha1: r.columns.sha1,
                host,
            })
        })
        .collect();
    let wall = started.elapsed();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let (hwm, rss) = super::proc_status(std::process::id());
    println!(
        "RESULT {} {} {} {} {} {hwm} {rss}",
        n.requests,
        n.bytes,
        wall.as_millis(),
        hosts.len(),
        records.len(),
    );
    std::hint::black_box((hosts, records, policies.policies));
}
