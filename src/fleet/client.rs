//! `FleetClient`: the only code that speaks HTTP to Fleet.
//!
//! Every request carries the bearer token (a sensitive header, so it is never
//! printed) and its own timeout, body included. Paged endpoints are walked
//! with an explicit `per_page` and `page` from 0 until a short page. Retries
//! are in [`request`](super::request); the renamed path sets (`/fleets` or
//! `/teams`, `/reports` or `/queries`) in [`paths`](super::paths).

use reqwest::{Url, header};
use serde::de::DeserializeOwned;
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::paths::{Family, PathChoice};
use super::request::error_chain;
use super::retry::{FleetStats, Observer, RetryPolicy};
use super::{
    FleetConfig, FleetError, Token,
    model::{
        HostDetailResponse, HostIdsResponse, HostsResponse, PoliciesResponse, Policy,
        QueryResponse, SavedQuery, TeamDto, TeamsResponse,
    },
};

/// Hard stop for paging against a server that ignores `per_page`.
const MAX_PAGES: u32 = 100_000;

/// A bound hit again within this long is counted but not logged again.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// An HTTP client for Fleet's REST API.
pub struct FleetClient {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    pub(super) timeout: Duration,
    pub(super) page_size: u32,
    pub(super) retry: RetryPolicy,
    /// `fleet.max_body_bytes`: the most of one answer read, decompressed.
    pub(super) max_body_bytes: u64,
    /// `fleet.max_report_rows`: the most certificate report rows read.
    pub(super) max_report_rows: u64,
    /// When a bound hit was last logged.
    warned: Mutex<Option<Instant>>,
    stats: Arc<FleetStats>,
    observer: Option<Arc<dyn Observer>>,
    pub(super) paths: PathChoice,
}

impl std::fmt::Debug for FleetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// Installs rustls' ring provider once per process; a second install (or one
/// by another component) is fine, so its error is ignored.
fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

impl FleetClient {
    /// A client for `config.url` authenticating with `token`.
    pub fn new(
        config: &FleetConfig,
        token: &Token,
        retry: RetryPolicy,
    ) -> Result<Self, FleetError> {
        install_crypto_provider();
        let base = config.url.trim_end_matches('/').to_owned();
        Url::parse(&base)
            .map_err(|e| FleetError::Client(format!("fleet.url: not a valid url ({e})")))?;
        let mut auth = header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| {
                FleetError::Client(
                    "fleet api token contains characters not allowed in a header".into(),
                )
            })?;
        auth.set_sensitive(true);
        let mut headers = header::HeaderMap::new();
        headers.insert(header::AUTHORIZATION, auth);
        headers.insert(
            header::ACCEPT,
            header::HeaderValue::from_static("application/json"),
        );
        let mut builder = reqwest::Client::builder()
            .tls_backend_rustls()
            .default_headers(headers)
            .user_agent(concat!("fleet-authz/", env!("CARGO_PKG_VERSION")))
            // Asks for gzip and inflates it as the body streams in. A Fleet
            // with `server_gzip_responses` enabled then sends a sync in about
            // 1/25 of the bytes (BENCHMARKS.md); one without it ignores the
            // header.
            .gzip(true)
            .connect_timeout(config.request_timeout);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                FleetError::Client(format!(
                    "fleet.ca_file {}: cannot read: {e}",
                    path.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                FleetError::Client(format!(
                    "fleet.ca_file {}: not pem certificates: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(FleetError::Client(format!(
                    "fleet.ca_file {}: no certificates",
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| FleetError::Client(error_chain(&e)))?;
        Ok(Self {
            http,
            base,
            timeout: config.request_timeout,
            page_size: config.page_size,
            retry,
            max_body_bytes: config.max_body_bytes,
            max_report_rows: config.max_report_rows,
            warned: Mutex::new(None),
            stats: Arc::new(FleetStats::default()),
            observer: None,
            paths: PathChoice::default(),
        })
    }

    /// Also reports every exchange to `observer` (metrics).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Totals since the client was built.
    pub fn stats(&self) -> &Arc<FleetStats> {
        &self.stats
    }

    /// Every team, or `None` on Fleet Free, which has no teams (402).
    pub async fn teams(&self) -> Result<Option<Vec<TeamDto>>, FleetError> {
        let listed = self
            .renamed(Family::Teams, |segment| {
                let path = format!("/api/v1/fleet/{segment}");
                async move {
                    self.paged("teams", &path, &[], TeamsResponse::into_teams)
                        .await
                }
            })
            .await;
        match listed {
            Err(FleetError::Status { status: 402, .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    /// The global policy catalogue.
    pub async fn global_policies(&self) -> Result<Vec<Policy>, FleetError> {
        let r: PoliciesResponse = self
            .get("global_policies", "/api/v1/fleet/global/policies", &[])
            .await?;
        Ok(r.policies)
    }

    /// A team's own policies (inherited global ones are in `inherited_policies`).
    pub async fn team_policies(&self, team_id: u64) -> Result<PoliciesResponse, FleetError> {
        self.renamed(Family::Teams, |segment| {
            let path = format!("/api/v1/fleet/{segment}/{team_id}/policies");
            async move { self.get("team_policies", &path, &[]).await }
        })
        .await
    }

    /// The policies of hosts in no team: Fleet Premium keeps them at team
    /// id 0. A Fleet that predates them answers 404, and Fleet Free 402:
    /// both mean there are none.
    pub async fn unassigned_policies(&self) -> Result<Vec<Policy>, FleetError> {
        let answer = self
            .renamed(Family::Teams, |segment| {
                let path = format!("/api/v1/fleet/{segment}/0/policies");
                async move {
                    self.get::<PoliciesResponse>("unassigned_policies", &path, &[])
                        .await
                }
            })
            .await;
        match answer {
            Ok(r) => Ok(r.policies),
            Err(FleetError::Status {
                status: 402 | 404, ..
            }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Saved query `query_id` itself (its settings, not its report).
    pub async fn saved_query(&self, query_id: u64) -> Result<SavedQuery, FleetError> {
        let answer = self
            .renamed(Family::Queries, |segment| {
                let path = format!("/api/v1/fleet/{segment}/{query_id}");
                async move { self.get::<QueryResponse>("query", &path, &[]).await }
            })
            .await;
        match answer {
            Ok(r) => r.into_query().ok_or(FleetError::Decode {
                endpoint: "query",
                message: "the answer holds no query".into(),
            }),
            Err(FleetError::Status { status: 404, .. }) => Err(FleetError::QueryNotFound(query_id)),
            Err(e) => Err(e),
        }
    }

    /// Every host, ordered by id; with `populate_policies` each row carries
    /// every policy result.
    pub async fn hosts(
        &self,
        populate_policies: bool,
    ) -> Result<Vec<super::model::Host>, FleetError> {
        let mut all = Vec::new();
        self.hosts_by_page(populate_policies, |page| all.extend(page))
            .await?;
        Ok(all)
    }

    /// Like [`Self::hosts`], but hands each page to `each` as it arrives, so a
    /// caller that maps rows to something smaller never holds every row.
    pub async fn hosts_by_page(
        &self,
        populate_policies: bool,
        each: impl FnMut(Vec<super::model::Host>),
    ) -> Result<(), FleetError> {
        let mut query = vec![("order_key", "id".to_owned())];
        if populate_policies {
            query.push(("populate_policies", "true".to_owned()));
        }
        self.paged_each(
            "hosts",
            "/api/v1/fleet/hosts",
            &query,
            |r: HostsResponse| r.hosts,
            each,
        )
        .await
    }

    /// Ids of hosts failing policy `policy_id`.
    pub async fn hosts_failing_policy(&self, policy_id: u64) -> Result<Vec<u64>, FleetError> {
        let query = [
            ("order_key", "id".to_owned()),
            ("policy_id", policy_id.to_string()),
            ("policy_response", "failing".to_owned()),
        ];
        let refs = self.paged(
            "hosts_failing_policy",
            "/api/v1/fleet/hosts",
            &query,
            |r: HostIdsResponse| r.hosts,
        );
        Ok(refs.await?.into_iter().map(|h| h.id).collect())
    }

    /// Ids of hosts affected by `cve`.
    pub async fn hosts_with_vulnerability(&self, cve: &str) -> Result<Vec<u64>, FleetError> {
        let query = [
            ("order_key", "id".to_owned()),
            ("vulnerability", cve.to_owned()),
        ];
        let refs = self.paged(
            "hosts_vulnerability",
            "/api/v1/fleet/hosts",
            &query,
            |r: HostIdsResponse| r.hosts,
        );
        Ok(refs.await?.into_iter().map(|h| h.id).collect())
    }

    /// One host's detail, with its policies and software.
    pub async fn host(&self, id: u64) -> Result<super::model::Host, FleetError> {
        let path = format!("/api/v1/fleet/hosts/{id}");
        match self.get::<HostDetailResponse>("host", &path, &[]).await {
            Ok(r) => Ok(r.host),
            Err(FleetError::Status { status: 404, .. }) => Err(FleetError::HostNotFound(id)),
            Err(e) => Err(e),
        }
    }

    async fn paged<R: DeserializeOwned + Send + 'static, T>(
        &self,
        endpoint: &'static str,
        path: &str,
        query: &[(&'static str, String)],
        items: impl Fn(R) -> Vec<T>,
    ) -> Result<Vec<T>, FleetError> {
        let mut all = Vec::new();
        self.paged_each(endpoint, path, query, items, |batch| all.extend(batch))
            .await?;
        Ok(all)
    }

    async fn paged_each<R: DeserializeOwned + Send + 'static, T>(
        &self,
        endpoint: &'static str,
        path: &str,
        query: &[(&'static str, String)],
        items: impl Fn(R) -> Vec<T>,
        mut each: impl FnMut(Vec<T>),
    ) -> Result<(), FleetError> {
        for page in 0..MAX_PAGES {
            let mut q = query.to_vec();
            q.push(("per_page", self.page_size.to_string()));
            q.push(("page", page.to_string()));
            let batch = items(self.get(endpoint, path, &q).await?);
            let short = batch.len() < self.page_size as usize;
            each(batch);
            if short {
                return Ok(());
            }
        }
        Err(FleetError::TooManyPages {
            endpoint,
            pages: MAX_PAGES,
        })
    }

    /// Counts `error`, a bound being hit (`limit` is the label of
    /// `fleet_authz_limits_hit_total`), and logs it at most every 10 s.
    pub(super) fn limit_hit(&self, limit: &'static str, error: &FleetError) {
        if let Some(o) = &self.observer {
            o.on_limit(limit);
        }
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *warned = Some(Instant::now());
            tracing::warn!(limit, %error, "fleet answer refused by a bound");
        }
    }

    pub(super) fn observe(&self, endpoint: &'static str, status: u16, bytes: usize) {
        self.stats.on_request(endpoint, status, bytes);
        if let Some(o) = &self.observer {
            o.on_request(endpoint, status, bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_debug_never_shows_the_token() {
        let config = FleetConfig::new("https://fleet.example.com/", 1);
        let client =
            FleetClient::new(&config, &Token::new("s3cret"), RetryPolicy::default()).unwrap();
        let shown = format!("{client:?}");
        assert_eq!(
            shown,
            "FleetClient { base: \"https://fleet.example.com\", .. }"
        );
    }
}
