//! A fake Fleet REST API (axum on 127.0.0.1:0) speaking the real response
//! shapes of `shared/fleet-api/` for the endpoints fleet-authz calls.
//!
//! It generates `hosts` hosts with `fingerprints_per_host` certificates and a
//! policy catalogue, lets a test change a host between syncs, counts requests
//! per endpoint (labels match `FleetClient`'s: `teams`, `global_policies`,
//! `team_policies`, `hosts`, `hosts_failing_policy`, `hosts_vulnerability`,
//! `host`, `query_report`), checks the bearer token and injects faults.
//!
//! It also serves the scale benchmark (`benches/sync_scale.rs`): 100,000 hosts
//! with realistic rows (Fleet's hardware fields, 50–100 software items each
//! with `populate_software=true`), counted in requests and body bytes. Bodies
//! are written as text from pre-rendered parts, so a page of 1,000 fat hosts
//! costs the fake a few milliseconds, not the fleet-authz side's time.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
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

/// `body` as Fleet streams it when it fails part-way through its first
/// array: the elements before the midpoint, then the error.
fn broken_off(text: &str) -> String {
    let open = text.find('[').map_or(0, |i| i + 1);
    let cut = text[open..]
        .find("},{")
        .map(|_| {
            let half = open.max(text.len() / 2);
            text[half..].find("},{").map_or(open, |i| half + i + 1)
        })
        .unwrap_or(open);
    format!("{}],\"error\":\"{STREAM_ERROR}\"}}", &text[..cut])
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
    bytes: HashMap<String, usize>,
    extra_rows: Vec<Value>,
    /// Each policy's JSON without its closing brace, so a host row appends `response`.
    policy_prefix: HashMap<u64, String>,
    /// The software catalogue, each item rendered once.
    software: Vec<String>,
    software_per_host: usize,
    holds: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// Bodies by request URI, once [`FakeFleet::cache_bodies`] is called;
    /// cleared whenever the data changes.
    cache: Option<HashMap<String, Bytes>>,
    /// Fleet's `server_gzip_responses`: gzip the body when the client asks.
    gzip: bool,
}

impl State_ {
    /// The data changed: cached bodies are stale.
    fn changed(&mut self) {
        if let Some(cache) = &mut self.cache {
            cache.clear();
        }
    }
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

impl FakeFleet {
    /// Generates the data and serves it on 127.0.0.1:0.
    pub async fn start(spec: FakeSpec) -> Self {
        let state: Shared = Arc::new(Mutex::new(generate(&spec)));
        let mut app = Router::new();
        // Fleet serves the same handlers under `v1` and `latest` (its UI, and
        // Pomerium, call `latest`).
        for v in ["v1", "latest"] {
            app = app
                .route(&format!("/api/{v}/fleet/teams"), get(teams))
                .route(
                    &format!("/api/{v}/fleet/teams/{{id}}/policies"),
                    get(team_policies),
                )
                .route(
                    &format!("/api/{v}/fleet/global/policies"),
                    get(global_policies),
                )
                .route(&format!("/api/{v}/fleet/hosts"), get(hosts))
                .route(&format!("/api/{v}/fleet/hosts/{{id}}"), get(host))
                .route(
                    &format!("/api/{v}/fleet/queries/{{id}}/report"),
                    get(report),
                );
        }
        let app = app.with_state(Arc::clone(&state));
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
        let mut st = self.lock();
        f(st.hosts.get_mut(&id).unwrap());
        st.changed();
    }

    /// Deletes host `id` from Fleet.
    pub fn remove_host(&self, id: u64) {
        let mut st = self.lock();
        st.hosts.remove(&id);
        st.changed();
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

    /// Body bytes sent on `endpoint`.
    pub fn bytes(&self, endpoint: &str) -> usize {
        self.lock().bytes.get(endpoint).copied().unwrap_or(0)
    }

    /// Requests and body bytes over every endpoint.
    pub fn totals(&self) -> (usize, usize) {
        let st = self.lock();
        (st.counts.values().sum(), st.bytes.values().sum())
    }

    /// Zeroes the request and byte counts.
    pub fn reset_counts(&self) {
        let mut st = self.lock();
        st.counts.clear();
        st.bytes.clear();
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
        let mut st = self.lock();
        st.extra_rows.push(row);
        st.changed();
    }

    /// From now on, serves each distinct request's body from memory after
    /// building it once (until the data changes). For the scale benchmark:
    /// there a remote Fleet's own CPU must not compete with the Checks
    /// being measured on this machine.
    pub fn cache_bodies(&self) {
        self.lock().cache.get_or_insert_with(HashMap::new);
    }

    /// As Fleet's `server_gzip_responses: true`: from now on a request whose
    /// `Accept-Encoding` names gzip gets a gzip body (`Content-Encoding:
    /// gzip`); [`FakeFleet::bytes`] then counts the compressed bytes.
    pub fn serve_gzip(&self) {
        self.lock().gzip = true;
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
    uri: &Uri,
    build: impl FnOnce(&State_) -> Result<String, Response>,
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
        let mut st = state.lock().unwrap();
        let key = uri.to_string();
        match st.cache.as_ref().and_then(|c| c.get(&key)) {
            Some(cached) => cached.clone(),
            None => {
                let body = match build(&st) {
                    Ok(v) => Bytes::from(v),
                    Err(r) => return r,
                };
                if let Some(cache) = &mut st.cache {
                    cache.insert(key, body.clone());
                }
                body
            }
        }
    };
    // Bodies are built as `String`s: always UTF-8.
    let text = std::str::from_utf8(&body).unwrap();
    let gzip = state.lock().unwrap().gzip && accepts_gzip(headers);
    let encode = |b: Bytes| if gzip { compress(&b) } else { b };
    let body = match fault {
        Some(Fault::Malformed) => encode(Bytes::from_static(
            b"<html><body>502 Bad Gateway</body></html>",
        )),
        // The body breaks off halfway, as sent on the wire.
        Some(Fault::Truncated) if gzip => {
            let sent = compress(&body);
            sent.slice(..sent.len() / 2)
        }
        Some(Fault::Truncated) => body.slice(..text.floor_char_boundary(body.len() / 2)),
        Some(Fault::ErrorInBody) => encode(Bytes::from(broken_off(text))),
        Some(Fault::Clipped) => encode(Bytes::from(text.replacen(
            "\"report_clipped\":false",
            "\"report_clipped\":true",
            1,
        ))),
        // Compressed once per URI when bodies are cached, as built ones are.
        _ if gzip => match &mut state.lock().unwrap().cache {
            Some(cache) => cache
                .entry(format!("gzip {uri}"))
                .or_insert_with(|| compress(&body))
                .clone(),
            None => compress(&body),
        },
        _ => body,
    };
    *state
        .lock()
        .unwrap()
        .bytes
        .entry(label.to_owned())
        .or_default() += body.len();
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if gzip {
        let h = resp.headers_mut();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    resp
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| coding.split(';').next().is_some_and(|c| c.trim() == "gzip"))
}

/// gzip at the default level (6).
fn compress(body: &[u8]) -> Bytes {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).unwrap();
    Bytes::from(enc.finish().unwrap())
}

/// `(per_page, page)` from the query.
fn paging(q: &HashMap<String, String>) -> Result<(usize, usize), Response> {
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
    Ok((per_page, page))
}

fn page<T: Clone>(items: &[T], q: &HashMap<String, String>) -> Result<Vec<T>, Response> {
    let (per_page, page) = paging(q)?;
    Ok(items
        .iter()
        .skip(page * per_page)
        .take(per_page)
        .cloned()
        .collect())
}

fn policy_json(p: &FakePolicy) -> Value {
    json!({"id": p.id, "name": p.name,
        "query": "SELECT 1 FROM disk_encryption WHERE user_uuid IS NOT '' AND filevault_status = 'on' LIMIT 1;",
        "description": format!("Checks that {} holds on every device in scope.", p.name), "critical": p.critical,
        "author_id": 1, "author_name": "Admin", "author_email": "admin@example.com", "team_id": p.team_id,
        "resolution": format!("Fix {}", p.name), "platform": "darwin,windows",
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "passing_host_count": 0, "failing_host_count": 0, "host_count_updated_at": "2026-01-01T00:00:00Z"})
}

/// 400 software items (40 products × 10 versions), every ninth with CVEs.
fn software_catalogue() -> Vec<String> {
    const PRODUCTS: [(&str, &str); 40] = [
        ("Google Chrome.app", "google"),
        ("Firefox.app", "mozilla"),
        ("Slack.app", "slack"),
        ("zoom.us.app", "zoom"),
        ("Microsoft Word.app", "microsoft"),
        ("Microsoft Excel.app", "microsoft"),
        ("Microsoft Teams.app", "microsoft"),
        ("Visual Studio Code.app", "microsoft"),
        ("Docker.app", "docker"),
        ("iTerm.app", "iterm2"),
        ("1Password 7.app", "agilebits"),
        ("Safari.app", "apple"),
        ("Xcode.app", "apple"),
        ("Keynote.app", "apple"),
        ("Numbers.app", "apple"),
        ("Pages.app", "apple"),
        ("openssl", "openssl"),
        ("curl", "haxx"),
        ("git", "git-scm"),
        ("python@3.12", "python"),
        ("node", "nodejs"),
        ("go", "golang"),
        ("wget", "gnu"),
        ("jq", "jqlang"),
        ("sqlite", "sqlite"),
        ("libxml2", "xmlsoft"),
        ("zlib", "zlib"),
        ("readline", "gnu"),
        ("gettext", "gnu"),
        ("pcre2", "pcre"),
        ("ca-certificates", "mozilla"),
        ("libyaml", "pyyaml"),
        ("gnupg", "gnupg"),
        ("nmap", "nmap"),
        ("htop", "htop"),
        ("tmux", "tmux"),
        ("vim", "vim"),
        ("bash", "gnu"),
        ("zsh", "zsh"),
        ("ffmpeg", "ffmpeg"),
    ];
    let mut items = Vec::with_capacity(400);
    for (k, (name, vendor)) in PRODUCTS.iter().enumerate() {
        for v in 0..10 {
            let id = 100 + k * 10 + v;
            let version = format!("{}.{}.{}", 1 + k % 9, v, (k * 7 + v) % 13);
            let source = if name.ends_with(".app") {
                "apps"
            } else {
                "homebrew_packages"
            };
            let vulns = if id % 9 == 0 {
                let cves: Vec<Value> = (0..1 + id % 2)
                    .map(|n| {
                        let cve = format!("CVE-2023-{:05}", id * 10 + n);
                        json!({"cve": cve, "details_link": format!("https://nvd.nist.gov/vuln/detail/{cve}"),
                            "cvss_score": 7.5, "epss_probability": 0.01537, "cisa_known_exploit": false,
                            "cve_published": "2023-01-01T12:32:00Z", "resolved_in_version": format!("{}.{}.99", 1 + k % 9, v)})
                    })
                    .collect();
                json!(cves)
            } else {
                Value::Null
            };
            let path = if source == "apps" {
                format!("/Applications/{name}")
            } else {
                format!("/opt/homebrew/Cellar/{name}/{version}")
            };
            items.push(json!({"id": id, "name": name, "version": version, "source": source, "browser": "",
                "generated_cpe": format!("cpe:2.3:a:{vendor}:{}:{version}:*:*:*:*:macos:*:*", name.to_lowercase().replace(' ', "_")),
                "vulnerabilities": vulns, "installed_paths": [path]}).to_string());
        }
    }
    items
}

/// Appends host `h` as Fleet's hosts list and host detail render it.
fn write_host(out: &mut String, st: &State_, h: &FakeHost, policies: bool, software: bool) {
    let team_name = h
        .team_id
        .and_then(|t| st.teams.iter().find(|(id, _)| *id == t))
        .map(|(_, n)| n.clone());
    let failing = h.failing().len();
    let base = json!({
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-11-20T08:00:00Z", "id": h.id,
        "detail_updated_at": h.seen_time, "last_restarted_at": "2026-11-19T03:01:45Z",
        "software_updated_at": "2026-11-20T05:09:44Z", "label_updated_at": "2026-11-20T05:14:51Z",
        "policy_updated_at": "2026-11-20T07:33:15Z", "last_enrolled_at": "2026-02-26T22:33:12Z",
        "seen_time": h.seen_time, "refetch_requested": false, "hostname": h.name, "uuid": h.uuid,
        "platform": h.platform, "osquery_version": "5.12.0", "os_version": "macOS 14.1.2", "build": "23B92",
        "platform_like": "darwin", "code_name": "", "uptime": 8_305_000_000_000u64, "memory": 17_179_869_184u64,
    });
    // Two literals: one would pass `json!`'s macro recursion limit.
    let more = json!({
        "cpu_type": "arm64e", "cpu_subtype": "ARM64E", "cpu_brand": "Apple M2 Pro", "cpu_physical_cores": 10,
        "cpu_logical_cores": 10, "hardware_vendor": "Apple Inc.", "hardware_model": "Mac14,10",
        "hardware_version": "", "hardware_serial": format!("C02{:08}", h.id),
        "computer_name": h.name, "display_name": h.name, "public_ip": "203.0.113.10",
        "primary_ip": "10.0.1.23", "primary_mac": "3c:22:fb:12:34:56", "distributed_interval": 10,
        "config_tls_refresh": 10, "logger_tls_period": 10, "status": "online", "display_text": h.name,
        "team_id": h.team_id, "team_name": team_name, "gigs_disk_space_available": 174.98,
        "percent_disk_space_available": 71, "gigs_total_disk_space": 494, "pack_stats": null, "additional": {},
        "issues": {"failing_policies_count": failing, "critical_vulnerabilities_count": 0, "total_issues_count": failing},
        "mdm": {"encryption_key_available": true, "enrollment_status": "On (automatic)", "name": "Fleet",
            "server_url": "https://fleet.example.com/mdm/apple/mdm"},
        "maintenance_window": {"starts_at": "2024-06-18T13:27:18\u{2212}04:00", "timezone": "America/New_York"},
    });
    let (Value::Object(mut base), Value::Object(more)) = (base, more) else {
        unreachable!("both are object literals")
    };
    base.extend(more);
    let base = Value::Object(base).to_string();
    out.push_str(&base[..base.len() - 1]);
    if policies {
        out.push_str(",\"policies\":[");
        let mut first = true;
        for (id, r) in &h.responses {
            if let Some(prefix) = st.policy_prefix.get(id) {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(prefix);
                out.push_str(",\"response\":\"");
                out.push_str(r);
                out.push_str("\"}");
            }
        }
        out.push(']');
    }
    if software {
        let vulns: Vec<Value> = h
            .cves
            .iter()
            .map(|c| json!({"cve": c, "details_link": ""}))
            .collect();
        let xz = json!({"id": 1, "name": "xz", "version": "5.6.0", "source": "homebrew_packages", "browser": "",
            "generated_cpe": "", "vulnerabilities": if vulns.is_empty() { Value::Null } else { json!(vulns) }});
        out.push_str(",\"software\":[");
        out.push_str(&xz.to_string());
        let max = st.software_per_host;
        if max > 0 && !st.software.is_empty() {
            let n = max / 2 + (h.id as usize * 37) % (max - max / 2 + 1);
            let start = (h.id as usize * 17) % st.software.len();
            for k in 0..n {
                out.push(',');
                out.push_str(&st.software[(start + k * 3) % st.software.len()]);
            }
        }
        out.push(']');
    }
    out.push('}');
}

type Q = Query<HashMap<String, String>>;

async fn teams(State(s): State<Shared>, uri: Uri, headers: HeaderMap, Query(q): Q) -> Response {
    serve(&s, "teams", &headers, &uri, |st| {
        let all: Vec<Value> = st
            .teams
            .iter()
            .map(|(id, name)| {
                json!({"id": id, "name": name,
            "description": "", "user_count": 0, "host_count": 0, "agent_options": {}})
            })
            .collect();
        Ok(json!({"teams": page(&all, &q)?}).to_string())
    })
    .await
}

async fn global_policies(State(s): State<Shared>, uri: Uri, headers: HeaderMap) -> Response {
    serve(&s, "global_policies", &headers, &uri, |st| {
        let list: Vec<Value> = st
            .policies
            .iter()
            .filter(|p| p.team_id.is_none())
            .map(policy_json)
            .collect();
        Ok(json!({"policies": list}).to_string())
    })
    .await
}

async fn team_policies(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    serve(&s, "team_policies", &headers, &uri, |st| {
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
        Ok(json!({"policies": own, "inherited_policies": inherited}).to_string())
    })
    .await
}

async fn hosts(State(s): State<Shared>, uri: Uri, headers: HeaderMap, Query(q): Q) -> Response {
    let label = if q.contains_key("policy_id") {
        "hosts_failing_policy"
    } else if q.contains_key("vulnerability") {
        "hosts_vulnerability"
    } else {
        "hosts"
    };
    serve(&s, label, &headers, &uri, |st| {
        let (per_page, page) = paging(&q)?;
        let policy: Option<u64> = q.get("policy_id").and_then(|p| p.parse().ok());
        let flag = |k: &str| q.get(k).is_some_and(|v| v == "true");
        let (policies, software) = (flag("populate_policies"), flag("populate_software"));
        let selected = st.hosts.values().filter(|h| {
            match (policy, q.get("policy_response"), q.get("vulnerability")) {
                (Some(p), Some(r), _) if r == "failing" => {
                    h.responses.get(&p).is_some_and(|x| x == "fail")
                }
                (Some(p), Some(r), _) if r == "passing" => {
                    h.responses.get(&p).is_some_and(|x| x == "pass")
                }
                (_, _, Some(cve)) => h.cves.contains(cve) || h.os_cves.contains(cve),
                _ => true,
            }
        });
        let mut out = String::from("{\"hosts\":[");
        for (i, h) in selected.skip(page * per_page).take(per_page).enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_host(&mut out, st, h, policies, software);
        }
        out.push_str("]}");
        Ok(out)
    })
    .await
}

async fn host(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    serve(&s, "host", &headers, &uri, |st| match st.hosts.get(&id) {
        Some(h) => {
            let mut out = String::from("{\"host\":");
            write_host(&mut out, st, h, true, true);
            out.push('}');
            Ok(out)
        }
        None => Err(error_body(
            StatusCode::NOT_FOUND,
            "Resource Not Found",
            &format!("Host {id} was not found in the datastore"),
        )),
    })
    .await
}

async fn report(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    serve(&s, "query_report", &headers, &uri, |st| {
        if id != st.query_id {
            return Err(error_body(StatusCode::NOT_FOUND, "Resource Not Found", &format!("Query {id} was not found in the datastore")));
        }
        use std::fmt::Write as _;
        let mut out = format!("{{\"query_id\":{id},\"report_clipped\":false,\"results\":[");
        let mut first = true;
        for h in st.hosts.values() {
            for sha1 in &h.certs {
                if !first {
                    out.push(',');
                }
                first = false;
                // Names and hex need no JSON escaping.
                let _ = write!(out, "{{\"host_id\":{},\"host_name\":\"{}\",\"last_fetched\":\"2026-11-20T08:00:00Z\",\
                    \"columns\":{{\"sha1\":\"{sha1}\",\"common_name\":\"{} device cert\",\"ca\":\"0\",\
                    \"issuer\":\"/CN=Corp Device CA\",\"not_valid_after\":\"1893456000\"}}}}", h.id, h.name, h.name);
            }
        }
        for row in &st.extra_rows {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&row.to_string());
        }
        out.push_str("]}");
        Ok(out)
    })
    .await
}
