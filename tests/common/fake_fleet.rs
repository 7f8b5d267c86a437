//! A fake Fleet REST API (axum on 127.0.0.1:0) speaking the real response
//! shapes of `shared/fleet-api/` for the endpoints fleet-authz calls.
//!
//! It generates `hosts` hosts with `fingerprints_per_host` certificates and a
//! policy catalogue, lets a test change a host between syncs, counts requests
//! per endpoint (labels match `FleetClient`'s: `teams`, `global_policies`,
//! `team_policies`, `hosts`, `hosts_failing_policy`, `hosts_vulnerability`,
//! `host`, `query_report`), checks the bearer token and injects faults.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use fleet_authz::{
    fingerprint::Fingerprint,
    fleet::{FleetClient, FleetConfig, RetryPolicy, Token},
};
use serde_json::{Value, json};

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
}

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
    pub cves: Vec<String>,
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

struct FakePolicy {
    id: u64,
    name: String,
    critical: bool,
    team_id: Option<u64>,
}

struct State_ {
    token: String,
    query_id: u64,
    hosts: BTreeMap<u64, FakeHost>,
    policies: Vec<FakePolicy>,
    teams: Vec<(u64, String)>,
    faults: HashMap<String, (Fault, Option<u32>)>,
    counts: HashMap<String, usize>,
    extra_rows: Vec<Value>,
    holds: HashMap<String, Arc<tokio::sync::Semaphore>>,
}

type Shared = Arc<Mutex<State_>>;

/// A running fake Fleet.
pub struct FakeFleet {
    addr: SocketAddr,
    state: Shared,
}

/// Retries that keep tests fast: 3 attempts, 5–20ms backoff, retry-after ≤ 1s.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(1),
    }
}

/// The fingerprint of host `host`'s certificate number `k`.
pub fn fingerprint(host: u64, k: usize) -> Fingerprint {
    Fingerprint::of_der(format!("host-{host}-cert-{k}").as_bytes())
}

fn policy_name(id: u64) -> String {
    format!("Policy {id}")
}

fn generate(spec: &FakeSpec) -> State_ {
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
                certs,
            },
        );
    }
    State_ {
        token: spec.token.clone(),
        query_id: spec.query_id,
        hosts,
        policies,
        teams,
        faults: HashMap::new(),
        counts: HashMap::new(),
        extra_rows: Vec::new(),
        holds: HashMap::new(),
    }
}

impl FakeFleet {
    /// Generates the data and serves it on 127.0.0.1:0.
    pub async fn start(spec: FakeSpec) -> Self {
        let state: Shared = Arc::new(Mutex::new(generate(&spec)));
        let app = Router::new()
            .route("/api/v1/fleet/teams", get(teams))
            .route("/api/v1/fleet/teams/{id}/policies", get(team_policies))
            .route("/api/v1/fleet/global/policies", get(global_policies))
            .route("/api/v1/fleet/hosts", get(hosts))
            .route("/api/v1/fleet/hosts/{id}", get(host))
            .route("/api/v1/fleet/queries/{id}/report", get(report))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    fn lock(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap()
    }

    /// Base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token it accepts.
    pub fn token(&self) -> String {
        self.lock().token.clone()
    }

    /// A copy of host `id`.
    pub fn host(&self, id: u64) -> FakeHost {
        self.lock().hosts[&id].clone()
    }

    /// Every host id.
    pub fn host_ids(&self) -> Vec<u64> {
        self.lock().hosts.keys().copied().collect()
    }

    /// Changes host `id` in place.
    pub fn update_host(&self, id: u64, f: impl FnOnce(&mut FakeHost)) {
        f(self.lock().hosts.get_mut(&id).unwrap());
    }

    /// Deletes host `id` from Fleet.
    pub fn remove_host(&self, id: u64) {
        self.lock().hosts.remove(&id);
    }

    /// Injects `fault` on `endpoint` until cleared.
    pub fn set_fault(&self, endpoint: &str, fault: Fault) {
        self.lock()
            .faults
            .insert(endpoint.to_owned(), (fault, None));
    }

    /// Injects `fault` on the next `times` requests to `endpoint`.
    pub fn set_fault_times(&self, endpoint: &str, fault: Fault, times: u32) {
        self.lock()
            .faults
            .insert(endpoint.to_owned(), (fault, Some(times)));
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Holds every request to `endpoint` (after counting it) until [`Self::release`].
    pub fn hold(&self, endpoint: &str) {
        self.lock().holds.insert(
            endpoint.to_owned(),
            Arc::new(tokio::sync::Semaphore::new(0)),
        );
    }

    /// Lets held requests to `endpoint` (and later ones) through.
    pub fn release(&self, endpoint: &str) {
        if let Some(gate) = self.lock().holds.remove(endpoint) {
            gate.close();
        }
    }

    /// Requests received on `endpoint` (faulted ones included).
    pub fn count(&self, endpoint: &str) -> usize {
        self.lock().counts.get(endpoint).copied().unwrap_or(0)
    }

    /// Zeroes the request counts.
    pub fn reset_counts(&self) {
        self.lock().counts.clear();
    }

    /// A `fleet:` config for this fake: query 42, 10 per page, 250ms timeout.
    pub fn config(&self) -> FleetConfig {
        let mut c = FleetConfig::new(self.url(), 42);
        c.page_size = 10;
        c.request_timeout = Duration::from_millis(250);
        c
    }

    /// A client with the right token and [`fast_retry`].
    pub fn client(&self, config: &FleetConfig) -> FleetClient {
        FleetClient::new(config, &Token::new(self.token()), fast_retry()).unwrap()
    }

    /// Adds a certificate report row with an arbitrary `sha1` value.
    pub fn add_report_row(&self, host_id: u64, sha1: &str) {
        let row = json!({"host_id": host_id, "host_name": format!("host-{host_id}"),
            "last_fetched": "2026-11-20T08:00:00Z", "columns": {"sha1": sha1, "common_name": "odd"}});
        self.lock().extra_rows.push(row);
    }
}

// === request handling ===

enum Gate {
    Respond(Response),
    Hang,
    Pass(Option<Fault>),
}

fn error_body(status: StatusCode, message: &str, reason: &str) -> Response {
    let body = json!({"message": message, "errors": [{"name": "base", "reason": reason}],
        "uuid": "1272014b-902b-4b36-bcdb-75fde5eac1fc"});
    (status, axum::Json(body)).into_response()
}

fn gate(state: &Shared, label: &str, headers: &HeaderMap) -> Gate {
    let mut st = state.lock().unwrap();
    *st.counts.entry(label.to_owned()).or_default() += 1;
    let expected = format!("Bearer {}", st.token);
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return Gate::Respond(error_body(
            StatusCode::UNAUTHORIZED,
            "Authentication failed",
            "Authentication failed",
        ));
    }
    let fault = match st.faults.get_mut(label) {
        None => return Gate::Pass(None),
        Some((fault, remaining)) => {
            let fault = fault.clone();
            if let Some(n) = remaining {
                *n -= 1;
                if *n == 0 {
                    st.faults.remove(label);
                }
            }
            fault
        }
    };
    match fault {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            Gate::Respond(error_body(
                status,
                status.canonical_reason().unwrap_or("error"),
                "injected fault",
            ))
        }
        Fault::Unauthorized => Gate::Respond(error_body(
            StatusCode::UNAUTHORIZED,
            "Authentication failed",
            "Authentication failed",
        )),
        Fault::RateLimited {
            retry_after_secs: n,
        } => {
            let msg = format!("limit exceeded, retry after: {n}s");
            let mut resp = error_body(StatusCode::TOO_MANY_REQUESTS, &msg, &msg);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, n.to_string().parse().unwrap());
            Gate::Respond(resp)
        }
        Fault::Hang => Gate::Hang,
        other => Gate::Pass(Some(other)),
    }
}

async fn serve(
    state: &Shared,
    label: &str,
    headers: &HeaderMap,
    build: impl FnOnce(&State_) -> Result<Value, Response>,
) -> Response {
    let fault = match gate(state, label, headers) {
        Gate::Respond(r) => return r,
        Gate::Hang => std::future::pending().await,
        Gate::Pass(f) => f,
    };
    let held = state.lock().unwrap().holds.get(label).cloned();
    if let Some(gate) = held {
        // Closed on release: every waiter wakes with an error, which is the signal.
        let _released = gate.acquire().await;
    }
    let body = {
        let st = state.lock().unwrap();
        match build(&st) {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
    let text = match fault {
        Some(Fault::Malformed) => "<html><body>502 Bad Gateway</body></html>".to_owned(),
        Some(Fault::Truncated) => {
            let full = body.to_string();
            full[..full.len() / 2].to_owned()
        }
        Some(Fault::Clipped) => {
            let mut body = body;
            body["report_clipped"] = json!(true);
            body.to_string()
        }
        _ => body.to_string(),
    };
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn page<T: Clone>(items: &[T], q: &HashMap<String, String>) -> Result<Vec<T>, Response> {
    let bad = |m: &str| error_body(StatusCode::BAD_REQUEST, "Bad request", m);
    let per_page: usize = q
        .get("per_page")
        .ok_or_else(|| bad("per_page is required"))?
        .parse()
        .map_err(|_| bad("per_page"))?;
    let page: usize = q
        .get("page")
        .ok_or_else(|| bad("page is required"))?
        .parse()
        .map_err(|_| bad("page"))?;
    Ok(items
        .iter()
        .skip(page * per_page)
        .take(per_page)
        .cloned()
        .collect())
}

fn policy_json(p: &FakePolicy) -> Value {
    json!({"id": p.id, "name": p.name, "query": "SELECT 1;", "description": "", "critical": p.critical,
        "author_id": 1, "author_name": "Admin", "author_email": "admin@example.com", "team_id": p.team_id,
        "resolution": format!("Fix {}", p.name), "platform": "darwin,windows",
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "passing_host_count": 0, "failing_host_count": 0, "host_count_updated_at": "2026-01-01T00:00:00Z"})
}

fn host_json(st: &State_, h: &FakeHost, policies: bool, software: bool) -> Value {
    let team_name = h
        .team_id
        .and_then(|t| st.teams.iter().find(|(id, _)| *id == t))
        .map(|(_, n)| n.clone());
    let mut v = json!({
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-11-20T08:00:00Z", "id": h.id,
        "detail_updated_at": h.seen_time, "seen_time": h.seen_time, "hostname": h.name, "uuid": h.uuid,
        "platform": h.platform, "osquery_version": "5.12.0", "os_version": "macOS 14.1.2", "build": "",
        "computer_name": h.name, "display_name": h.name, "status": "online", "display_text": h.name,
        "team_id": h.team_id, "team_name": team_name, "pack_stats": null, "additional": {},
        "issues": {"failing_policies_count": h.failing().len(), "total_issues_count": h.failing().len()},
        "maintenance_window": {"starts_at": "2024-06-18T13:27:18\u{2212}04:00", "timezone": "America/New_York"},
    });
    if policies {
        let list: Vec<Value> = h
            .responses
            .iter()
            .filter_map(|(id, r)| st.policies.iter().find(|p| p.id == *id).map(|p| (p, r)))
            .map(|(p, r)| {
                let mut pj = policy_json(p);
                pj["response"] = json!(r);
                pj
            })
            .collect();
        v["policies"] = json!(list);
    }
    if software {
        let vulns: Vec<Value> = h
            .cves
            .iter()
            .map(|c| json!({"cve": c, "details_link": ""}))
            .collect();
        v["software"] = json!([
            {"id": 1, "name": "xz", "version": "5.6.0", "source": "homebrew_packages", "browser": "",
             "generated_cpe": "", "vulnerabilities": if vulns.is_empty() { Value::Null } else { json!(vulns) }}
        ]);
    }
    v
}

type Q = Query<HashMap<String, String>>;

async fn teams(State(s): State<Shared>, headers: HeaderMap, Query(q): Q) -> Response {
    serve(&s, "teams", &headers, |st| {
        let all: Vec<Value> = st
            .teams
            .iter()
            .map(|(id, name)| {
                json!({"id": id, "name": name,
            "description": "", "user_count": 0, "host_count": 0, "agent_options": {}})
            })
            .collect();
        Ok(json!({"teams": page(&all, &q)?}))
    })
    .await
}

async fn global_policies(State(s): State<Shared>, headers: HeaderMap) -> Response {
    serve(&s, "global_policies", &headers, |st| {
        let list: Vec<Value> = st
            .policies
            .iter()
            .filter(|p| p.team_id.is_none())
            .map(policy_json)
            .collect();
        Ok(json!({"policies": list}))
    })
    .await
}

async fn team_policies(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    serve(&s, "team_policies", &headers, |st| {
        let own: Vec<Value> = st
            .policies
            .iter()
            .filter(|p| p.team_id == Some(id))
            .map(policy_json)
            .collect();
        let inherited: Vec<Value> = st
            .policies
            .iter()
            .filter(|p| p.team_id.is_none())
            .map(policy_json)
            .collect();
        Ok(json!({"policies": own, "inherited_policies": inherited}))
    })
    .await
}

async fn hosts(State(s): State<Shared>, headers: HeaderMap, Query(q): Q) -> Response {
    let label = if q.contains_key("policy_id") {
        "hosts_failing_policy"
    } else if q.contains_key("vulnerability") {
        "hosts_vulnerability"
    } else {
        "hosts"
    };
    serve(&s, label, &headers, |st| {
        let policy: Option<u64> = q.get("policy_id").and_then(|p| p.parse().ok());
        let populate = q.get("populate_policies").is_some_and(|v| v == "true");
        let selected: Vec<&FakeHost> = st
            .hosts
            .values()
            .filter(
                |h| match (policy, q.get("policy_response"), q.get("vulnerability")) {
                    (Some(p), Some(r), _) if r == "failing" => {
                        h.responses.get(&p).is_some_and(|x| x == "fail")
                    }
                    (Some(p), Some(r), _) if r == "passing" => {
                        h.responses.get(&p).is_some_and(|x| x == "pass")
                    }
                    (_, _, Some(cve)) => h.cves.contains(cve),
                    _ => true,
                },
            )
            .collect();
        let rows: Vec<Value> = page(&selected, &q)?
            .into_iter()
            .map(|h| host_json(st, h, populate, false))
            .collect();
        Ok(json!({"hosts": rows}))
    })
    .await
}

async fn host(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    serve(&s, "host", &headers, |st| match st.hosts.get(&id) {
        Some(h) => Ok(json!({"host": host_json(st, h, true, true)})),
        None => Err(error_body(
            StatusCode::NOT_FOUND,
            "Resource Not Found",
            &format!("Host {id} was not found in the datastore"),
        )),
    })
    .await
}

async fn report(State(s): State<Shared>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    serve(&s, "query_report", &headers, |st| {
        if id != st.query_id {
            return Err(error_body(StatusCode::NOT_FOUND, "Resource Not Found", &format!("Query {id} was not found in the datastore")));
        }
        let mut rows: Vec<Value> = Vec::new();
        for h in st.hosts.values() {
            for sha1 in &h.certs {
                rows.push(json!({"host_id": h.id, "host_name": h.name, "last_fetched": "2026-11-20T08:00:00Z",
                    "columns": {"sha1": sha1, "common_name": format!("{} device cert", h.name), "ca": "0",
                        "issuer": "/CN=Corp Device CA", "not_valid_after": "1893456000"}}));
            }
        }
        rows.extend(st.extra_rows.iter().cloned());
        Ok(json!({"query_id": id, "report_clipped": false, "results": rows}))
    })
    .await
}
