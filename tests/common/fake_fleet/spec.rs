//! What the fake generates and holds: the spec, hosts, policies, faults.

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
    /// `report_clipped: true` on the query report.
    Clipped,
    /// What Fleet does when a streamed list fails part-way: 200, the rows
    /// sent so far (about half), then `],"error":"…"}`.
    ErrorInBody,
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
    pub(super) hosts: BTreeMap<u64, FakeHost>,
    pub(super) policies: Vec<FakePolicy>,
    pub(super) teams: Vec<(u64, String)>,
    pub(super) faults: HashMap<String, (Fault, Option<u32>)>,
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
    let mut hosts = BTreeMap::new();
    for id in 1..=spec.hosts {
        let team_id = match id % (spec.teams + 1) {
            0 => None,
            t => Some(t),
        };
        let responses = policies
            .iter()
            .filter(|p| p.team_id.is_none() || p.team_id == team_id)
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
        hosts,
        policies,
        teams,
        faults: HashMap::new(),
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
