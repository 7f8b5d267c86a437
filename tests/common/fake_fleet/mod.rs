//! A fake Fleet REST API (axum on 127.0.0.1:0) speaking the real response
//! shapes of `tests/fixtures/fleet-api/` for the endpoints fleet-authz calls.
//!
//! It generates `hosts` hosts with `fingerprints_per_host` certificates and a
//! policy catalogue, lets a test change a host between syncs, counts requests
//! per endpoint (labels match `FleetClient`'s: `teams`, `global_policies`,
//! `team_policies`, `unassigned_policies` (team 0), `hosts`,
//! `hosts_failing_policy`, `hosts_vulnerability`, `host`, `query`,
//! `query_report`; `unknown_path` for a path this Fleet does not serve),
//! checks the bearer token and injects faults.
//!
//! It behaves as Fleet does where that matters to a sync (DESIGN.md §7):
//! the report cap with Fleet's row rules, errors inside a 200, team 0,
//! Fleet Free's 402, host detail without OS CVEs, the old and the renamed
//! path sets ([`FleetVersion`]), a paged report, the certificate query's
//! settings, and a token whose user sees only one team.
//!
//! It also serves the scale benchmark (`benches/sync_scale.rs`): 100,000 hosts
//! with realistic rows (Fleet's hardware fields, 50–100 software items each
//! with `populate_software=true`), counted in requests and body bytes. Bodies
//! are written as text from pre-rendered parts, so a page of 1,000 fat hosts
//! costs the fake a few milliseconds, not the fleet-authz side's time.

mod endless;
mod render;
mod routes;
mod serve;
pub mod service;
mod spec;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{Router, routing::get};
use fleet_authz::{
    fingerprint::Fingerprint,
    fleet::{FleetClient, FleetConfig, Poller, RetryPolicy, Token},
    posture::PostureStore,
};
use serde_json::json;

use routes::{global_policies, host, hosts, query, report, team_policies, teams, unknown_path};
// Each test binary uses a part of these.
#[allow(unused_imports)]
pub use spec::{
    CVE, FakeHost, FakeQuery, FakeSpec, Fault, FleetVersion, HOST_ROW_LIMIT, ReportRows,
    STREAM_ERROR,
};
use spec::{Shared, State_, generate};

/// A running fake Fleet (a clone is another handle on the same fake).
#[derive(Clone)]
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

impl FakeFleet {
    /// Generates the data and serves it on 127.0.0.1:0.
    pub async fn start(spec: FakeSpec) -> Self {
        let state: Shared = Arc::new(Mutex::new(generate(&spec)));
        let mut app = Router::new();
        // Fleet serves the same handlers under `v1` and `latest` (its UI, and
        // Pomerium, call `latest`). 4.82 renamed teams to fleets and queries
        // to reports, keeping the old paths as aliases; a `Legacy` fake
        // answers the new ones 404 (see `serve::gate`).
        for v in ["v1", "latest"] {
            let at = |p: &str| format!("/api/{v}/fleet/{p}");
            for (teams_at, queries_at) in [("fleets", "reports"), ("teams", "queries")] {
                app = app
                    .route(&at(teams_at), get(teams))
                    .route(
                        &at(&format!("{teams_at}/{{id}}/policies")),
                        get(team_policies),
                    )
                    .route(&at(&format!("{queries_at}/{{id}}")), get(query))
                    .route(&at(&format!("{queries_at}/{{id}}/report")), get(report));
            }
            app = app
                .route(&at("global/policies"), get(global_policies))
                .route(&at("hosts"), get(hosts))
                .route(&at("hosts/{id}"), get(host));
        }
        let app = app.fallback(unknown_path);
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

    /// Gives host `id` the certificate `fp` and makes it pass every policy:
    /// the device a test presents.
    pub fn enrol(&self, id: u64, fp: &Fingerprint) {
        self.update_host(id, |h| {
            h.certs.push(fp.to_hex().to_uppercase());
            h.responses.values_mut().for_each(|r| *r = "pass".into());
        });
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

    /// Injects `fault` on `endpoint` after its next `spared` requests.
    pub fn set_fault_after(&self, endpoint: &str, fault: Fault, spared: u32) {
        let mut st = self.lock();
        st.faults.insert(endpoint.to_owned(), (fault, None));
        st.spared.insert(endpoint.to_owned(), spared);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        let mut st = self.lock();
        st.faults.clear();
        st.spared.clear();
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

    /// Zeroes the request, path set and byte counts.
    pub fn reset_counts(&self) {
        let mut st = self.lock();
        st.counts.clear();
        st.path_counts.clear();
        st.bytes.clear();
    }

    /// A `fleet:` config for this fake: query 42, 10 per page, 250ms timeout.
    pub fn config(&self) -> FleetConfig {
        let mut c = FleetConfig::new(self.url(), 42);
        c.page_size = 10;
        c.request_timeout = Duration::from_millis(250);
        c
    }

    /// A poller over [`Self::client`] publishing into a new store.
    pub fn poller(&self, config: FleetConfig) -> (Poller, Arc<PostureStore>) {
        let store = Arc::new(PostureStore::new());
        let client = Arc::new(self.client(&config));
        (Poller::new(client, Arc::clone(&store), &config), store)
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

    /// Requests to each path set: `renamed` (`/fleets`, `/reports`),
    /// `legacy` (`/teams`, `/queries`), `unknown` (not served: 404).
    pub fn path_count(&self, set: &str) -> usize {
        self.lock().path_counts.get(set).copied().unwrap_or(0)
    }

    /// Changes the certificate query's settings; `None` deletes it.
    pub fn update_query(&self, f: impl FnOnce(&mut Option<FakeQuery>)) {
        let mut st = self.lock();
        f(&mut st.query);
        st.changed();
    }

    /// Upgrades (or downgrades) Fleet between syncs.
    pub fn set_version(&self, version: FleetVersion) {
        let mut st = self.lock();
        st.version = version;
        st.changed();
    }

    /// Changes the certificate query's SQL to return rows shaped as `rows`
    /// (Fleet keeps the stored rows until hosts report again; here they
    /// change at once).
    pub fn set_report_rows(&self, rows: ReportRows) {
        let mut st = self.lock();
        st.report_rows = rows;
        st.changed();
    }

    /// Sets Fleet's `report_cap`, and whether the host count raises it.
    pub fn set_report_cap(&self, cap: usize, at_least_hosts: bool) {
        let mut st = self.lock();
        (st.report_cap, st.cap_at_least_hosts) = (cap, at_least_hosts);
        st.changed();
    }

    /// As when the certificate query's SQL is edited: Fleet deletes its
    /// stored rows; hosts come back as they report ([`FakeHost::in_report`]).
    pub fn clear_report(&self) {
        let mut st = self.lock();
        st.hosts.values_mut().for_each(|h| h.in_report = false);
        st.changed();
    }

    /// The token's user now sees only team `team`'s hosts (`None`: all).
    pub fn scope_token_to_team(&self, team: Option<u64>) {
        let mut st = self.lock();
        st.scope = team;
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
