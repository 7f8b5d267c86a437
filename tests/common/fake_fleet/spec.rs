//! What the fake generates and holds: the spec, hosts, policies, faults,
//! and the Fleet settings a test can switch (version, license, report cap,
//! the certificate query's settings, a team-scoped token).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use axum::body::Bytes;
use serde_json::Value;

use super::{
    fingerprint,
    render::{policy_json, software_catalogue},
};

/// The CVE every fourth host has.
pub const CVE: &str = "CVE-2024-3094";

/// What to generate.
#[derive(Debug, Clone)]
pub struct FakeSpec {
    pub hosts: u64,
    pub fingerprints_per_host: usize,
    /// Global policies, ids 1..=policies. Each team adds one policy, id 1000 + team id.
    pub policies: u64,
    pub failing_percent: u64,
    pub teams: u64,
    pub token: String,
    pub query_id: u64,
    /// With `populate_software=true` (and on host detail) a host lists between
    /// half this and this many software items besides `xz`; 0 lists only `xz`.
    pub software_per_host: usize,
    /// Which path set it serves.
    pub version: FleetVersion,
    /// Fleet Premium; Fleet Free answers teams and team policies with 402.
    pub premium: bool,
    /// Policies of hosts in no team (team id 0, ids 2001..), each critical;
    /// `None`: a Fleet that predates them (404 for team 0).
    pub unassigned_policies: Option<u64>,
    /// Fleet's `report_cap`: rows kept per saved query.
    pub report_cap: usize,
    /// As newer Fleets: the cap is the larger of `report_cap` and the host count.
    pub cap_at_least_hosts: bool,
    /// What a certificate query row holds.
    pub report_rows: ReportRows,
    /// As newer Fleets: the report is paged when asked (`page`, `per_page`)
    /// and the answer carries `meta`; otherwise it comes whole.
    pub report_pages: bool,
}

/// The path sets a Fleet serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetVersion {
    /// Fleet 4.82 and later: `/fleets`, `/reports`, and the old paths as aliases.
    Renamed,
    /// Before 4.82: only `/teams` and `/queries`; `/fleets`, `/reports` are 404.
    Legacy,
}

/// The shape of the certificate query's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportRows {
    /// `SELECT sha1 FROM certificates …`: one row per certificate.
    PerCertificate,
    /// `SELECT group_concat(sha1, ',') AS sha1 …`: one row per host.
    PerHost,
}

/// Fleet keeps no rows from a host that sends more than this many at once.
pub const HOST_ROW_LIMIT: usize = 1000;

/// The certificate query's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeQuery {
    pub discard_data: bool,
    pub logging: String,
}

impl Default for FakeQuery {
    fn default() -> Self {
        Self {
            discard_data: false,
            logging: "snapshot".into(),
        }
    }
}

impl Default for FakeSpec {
    fn default() -> Self {
        Self {
            hosts: 10,
            fingerprints_per_host: 2,
            policies: 3,
            failing_percent: 30,
            teams: 2,
            token: "fake-fleet-token".into(),
            query_id: 42,
            software_per_host: 0,
            version: FleetVersion::Renamed,
            premium: true,
            unassigned_policies: Some(0),
            report_cap: 1000,
            cap_at_least_hosts: true,
            report_rows: ReportRows::PerCertificate,
            report_pages: false,
        }
    }
}

/// A fault injected on one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and Fleet's error body.
    Status(u16),
    /// 429 with `retry-after: N`.
    RateLimited { retry_after_secs: u64 },
    /// Never answer.
    Hang,
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with the first half of the real body.
    Truncated,
    /// 401 as if the token were wrong.
    Unauthorized,
    /// What Fleet does when a streamed list fails part-way: 200, the rows
    /// sent so far (about half), then `],"error":"…"}`.
    ErrorInBody,
    /// 200 with the whole answer and a top-level `"error":"…"` after it
    /// (an answer that is not a list, or whose list was complete).
    ErrorField,
    /// 200 with a body that opens as the real answer and never ends (gzip
    /// when [`super::FakeFleet::serve_gzip`] is on and the client asks).
    Endless,
}

/// The message a streamed answer ends with under [`Fault::ErrorInBody`].
pub const STREAM_ERROR: &str = "context deadline exceeded";

/// One fake host; tests may change any field between syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeHost {
    pub id: u64,
    pub uuid: String,
    pub name: String,
    pub platform: String,
    pub team_id: Option<u64>,
    pub seen_time: String,
    /// Policy id → `"pass"`, `"fail"` or `""`.
    pub responses: BTreeMap<u64, String>,
    /// CVEs of the host's software: in `hosts?vulnerability=` and in host
    /// detail's software list.
    pub cves: Vec<String>,
    /// CVEs of the operating system: in `hosts?vulnerability=` only, as in
    /// Fleet, whose host detail lists software CVEs but not the OS's.
    pub os_cves: Vec<String>,
    /// `columns.sha1` as Fleet reports them (upper case, some with colons).
    pub certs: Vec<String>,
    /// `hardware_serial`.
    pub serial: String,
    /// Whether Fleet holds this host's rows of the certificate query (false
    /// once the query's SQL was edited, until the host reports again).
    pub in_report: bool,
}

impl FakeHost {
    /// Policy ids this host fails.
    pub fn failing(&self) -> Vec<u64> {
        self.responses
            .iter()
            .filter(|(_, r)| *r == "fail")
            .map(|(id, _)| *id)
            .collect()
    }
}

pub(super) struct FakePolicy {
    pub(super) id: u64,
    pub(super) name: String,
    pub(super) critical: bool,
    pub(super) team_id: Option<u64>,
}

pub(super) struct State_ {
    pub(super) token: String,
    pub(super) query_id: u64,
    /// `None`: the query was deleted.
    pub(super) query: Option<FakeQuery>,
    pub(super) version: FleetVersion,
    pub(super) premium: bool,
    pub(super) unassigned: bool,
    pub(super) report_cap: usize,
    pub(super) cap_at_least_hosts: bool,
    pub(super) report_rows: ReportRows,
    pub(super) report_pages: bool,
    /// The token's user sees only this team's hosts.
    pub(super) scope: Option<u64>,
    /// Requests by path set: `renamed`, `legacy`, `unknown`.
    pub(super) path_counts: HashMap<&'static str, usize>,
    pub(super) hosts: BTreeMap<u64, FakeHost>,
    pub(super) policies: Vec<FakePolicy>,
    pub(super) teams: Vec<(u64, String)>,
    pub(super) faults: HashMap<String, (Fault, Option<u32>)>,
    /// Requests per endpoint still answered without its fault.
    pub(super) spared: HashMap<String, u32>,
    pub(super) counts: HashMap<String, usize>,
    pub(super) bytes: HashMap<String, usize>,
    pub(super) extra_rows: Vec<Value>,
    /// Each policy's JSON without its closing brace, so a host row appends `response`.
    pub(super) policy_prefix: HashMap<u64, String>,
    /// The software catalogue, each item rendered once.
    pub(super) software: Vec<String>,
    pub(super) software_per_host: usize,
    pub(super) holds: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// Bodies by request URI, once [`FakeFleet::cache_bodies`] is called;
    /// cleared whenever the data changes.
    pub(super) cache: Option<HashMap<String, Bytes>>,
    /// Fleet's `server_gzip_responses`: gzip the body when the client asks.
    pub(super) gzip: bool,
}

impl State_ {
    /// Whether the token's user may see host `h` (a team-scoped user sees
    /// only its team's hosts).
    pub(super) fn visible(&self, h: &FakeHost) -> bool {
        self.scope.is_none_or(|team| h.team_id == Some(team))
    }

    /// The data changed: cached bodies are stale.
    pub(super) fn changed(&mut self) {
        if let Some(cache) = &mut self.cache {
            cache.clear();
        }
    }
}

pub(super) type Shared = Arc<Mutex<State_>>;

fn policy_name(id: u64) -> String {
    format!("Policy {id}")
}

pub(super) fn generate(spec: &FakeSpec) -> State_ {
    let teams: Vec<(u64, String)> = (1..=spec.teams).map(|t| (t, format!("Team {t}"))).collect();
    let mut policies: Vec<FakePolicy> = (1..=spec.policies)
        .map(|id| FakePolicy {
            id,
            name: policy_name(id),
            critical: id % 3 == 0,
            team_id: None,
        })
        .collect();
    for (t, _) in &teams {
        policies.push(FakePolicy {
            id: 1000 + t,
            name: policy_name(1000 + t),
            critical: true,
            team_id: Some(*t),
        });
    }
    for k in 1..=spec.unassigned_policies.unwrap_or(0) {
        policies.push(FakePolicy {
            id: 2000 + k,
            name: policy_name(2000 + k),
            critical: true,
            team_id: Some(0),
        });
    }
    let mut hosts = BTreeMap::new();
    for id in 1..=spec.hosts {
        let team_id = match id % (spec.teams + 1) {
            0 => None,
            t => Some(t),
        };
        let responses = policies
            .iter()
            .filter(|p| p.team_id.is_none() || p.team_id == Some(team_id.unwrap_or(0)))
            .map(|p| {
                let r = if (id * 7 + p.id * 13) % 100 < spec.failing_percent {
                    "fail"
                } else if (id + p.id) % 11 == 0 {
                    ""
                } else {
                    "pass"
                };
                (p.id, r.to_owned())
            })
            .collect();
        let certs = (0..spec.fingerprints_per_host)
            .map(|k| {
                let hex = fingerprint(id, k).to_hex().to_uppercase();
                if id % 2 == 0 {
                    hex.as_bytes()
                        .chunks(2)
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .collect::<Vec<_>>()
                        .join(":")
                } else {
                    hex
                }
            })
            .collect();
        hosts.insert(
            id,
            FakeHost {
                id,
                uuid: format!("00000000-0000-0000-0000-{id:012}"),
                name: format!("host-{id}"),
                platform: if id % 2 == 0 {
                    "darwin".into()
                } else {
                    "windows".into()
                },
                team_id,
                seen_time: "2026-11-20T08:00:00Z".into(),
                responses,
                cves: if id % 4 == 0 {
                    vec![CVE.to_owned()]
                } else {
                    Vec::new()
                },
                os_cves: Vec::new(),
                certs,
                serial: format!("C02{id:08}"),
                in_report: true,
            },
        );
    }
    let policy_prefix = policies
        .iter()
        .map(|p| {
            let mut text = policy_json(p).to_string();
            text.pop();
            (p.id, text)
        })
        .collect();
    State_ {
        token: spec.token.clone(),
        query_id: spec.query_id,
        query: Some(FakeQuery::default()),
        version: spec.version,
        premium: spec.premium,
        unassigned: spec.unassigned_policies.is_some(),
        report_cap: spec.report_cap,
        cap_at_least_hosts: spec.cap_at_least_hosts,
        report_rows: spec.report_rows,
        report_pages: spec.report_pages,
        scope: None,
        path_counts: HashMap::new(),
        hosts,
        policies,
        teams,
        faults: HashMap::new(),
        spared: HashMap::new(),
        counts: HashMap::new(),
        bytes: HashMap::new(),
        extra_rows: Vec::new(),
        holds: HashMap::new(),
        cache: None,
        gzip: false,
        policy_prefix,
        software: software_catalogue(),
        software_per_host: spec.software_per_host,
    }
}
