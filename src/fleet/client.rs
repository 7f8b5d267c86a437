//! `FleetClient`: the only code that speaks HTTP to Fleet.
//!
//! Every request carries the bearer token (a sensitive header, so it is never
//! printed) and its own timeout, body included. Paged endpoints are walked
//! with an explicit `per_page` and `page` from 0 until a short page. 429 waits
//! for `retry-after`; 5xx, timeouts and connection errors retry with
//! exponential backoff and full jitter, for a bounded number of attempts.
//! 401/403, 404 and malformed bodies are not retried: retrying cannot fix them.

use reqwest::{StatusCode, Url, header};
use serde::de::DeserializeOwned;
use std::{sync::Arc, time::Duration};

use super::retry::{FleetStats, Observer, RetryPolicy};
use super::{
    FleetConfig, FleetError, Token,
    model::{
        HostDetailResponse, HostIdsResponse, HostsResponse, PoliciesResponse, Policy, QueryReport,
        TeamDto, TeamsResponse,
    },
};

/// Hard stop for paging against a server that ignores `per_page`.
const MAX_PAGES: u32 = 100_000;

/// An HTTP client for Fleet's REST API.
pub struct FleetClient {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    pub(super) timeout: Duration,
    page_size: u32,
    pub(super) retry: RetryPolicy,
    stats: Arc<FleetStats>,
    observer: Option<Arc<dyn Observer>>,
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
            stats: Arc::new(FleetStats::default()),
            observer: None,
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

    /// Every team. Fleet Free has no teams and answers 402: that is none.
    pub async fn teams(&self) -> Result<Vec<TeamDto>, FleetError> {
        match self
            .paged("teams", "/api/v1/fleet/teams", &[], |r: TeamsResponse| {
                r.teams
            })
            .await
        {
            Err(FleetError::Status { status: 402, .. }) => Ok(Vec::new()),
            other => other,
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
        self.get(
            "team_policies",
            &format!("/api/v1/fleet/teams/{team_id}/policies"),
            &[],
        )
        .await
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

    /// The stored report of saved query `query_id` (the certificate query).
    pub async fn query_report(&self, query_id: u64) -> Result<QueryReport, FleetError> {
        let path = format!("/api/v1/fleet/queries/{query_id}/report");
        match self.get("query_report", &path, &[]).await {
            Err(FleetError::Status { status: 404, .. }) => Err(FleetError::QueryNotFound(query_id)),
            other => other,
        }
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

    pub(super) fn observe(&self, endpoint: &'static str, status: u16, bytes: usize) {
        self.stats.on_request(endpoint, status, bytes);
        if let Some(o) = &self.observer {
            o.on_request(endpoint, status, bytes);
        }
    }

    async fn get<R: DeserializeOwned + Send + 'static>(
        &self,
        endpoint: &'static str,
        path: &str,
        query: &[(&'static str, String)],
    ) -> Result<R, FleetError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.max_attempts;
            let sent = self
                .http
                .get(&url)
                .query(query)
                .timeout(self.timeout)
                .send()
                .await;
            let (error, wait) = match sent {
                Err(e) => {
                    self.observe(endpoint, 0, 0);
                    (transport_error(endpoint, &e), None)
                }
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = retry_after(&resp);
                    match resp.bytes().await {
                        Err(e) => {
                            self.observe(endpoint, 0, 0);
                            (transport_error(endpoint, &e), None)
                        }
                        Ok(body) => {
                            self.observe(endpoint, status.as_u16(), body.len());
                            match classify(endpoint, status) {
                                Outcome::Done => match decode(endpoint, body).await {
                                    // Fleet broke off part-way: retry, as a 5xx.
                                    Err(e @ FleetError::InBody { .. }) => (e, None),
                                    other => return other,
                                },
                                Outcome::Fatal(e) => return Err(e),
                                Outcome::RateLimited => {
                                    (FleetError::RateLimited { endpoint }, retry_after)
                                }
                                Outcome::Retry(e) => (e, None),
                            }
                        }
                    }
                }
            };
            if last {
                return Err(error);
            }
            let delay = self.retry.delay(attempt, wait);
            tracing::debug!(endpoint, attempt, ?delay, %error, "fleet request will be retried");
            tokio::time::sleep(delay).await;
        }
    }
}

pub(super) enum Outcome {
    Done,
    Fatal(FleetError),
    RateLimited,
    Retry(FleetError),
}

pub(super) fn classify(endpoint: &'static str, status: StatusCode) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Done,
        401 | 403 => Outcome::Fatal(FleetError::TokenRejected {
            status: status.as_u16(),
        }),
        429 => Outcome::RateLimited,
        500..=599 => Outcome::Retry(FleetError::Status {
            endpoint,
            status: status.as_u16(),
        }),
        other => Outcome::Fatal(FleetError::Status {
            endpoint,
            status: other,
        }),
    }
}

/// `retry-after` in seconds (Fleet sends seconds; HTTP dates are ignored).
pub(super) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let raw = resp.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    raw.trim().parse::<u64>().ok().map(Duration::from_secs)
}

pub(super) fn transport_error(endpoint: &'static str, e: &reqwest::Error) -> FleetError {
    if e.is_timeout() {
        FleetError::Timeout { endpoint }
    } else {
        FleetError::Transport {
            endpoint,
            message: error_chain(e),
        }
    }
}

/// The error and its causes, without the URL reqwest likes to add.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.dedup();
    parts.join(": ")
}

/// Bodies at least this large are parsed off the async workers, so a sync
/// of a big fleet never delays the Checks sharing those threads.
const OFFLOAD_BYTES: usize = 64 * 1024;

/// A non-empty top-level `error` in a Fleet answer, as its message.
pub(super) fn error_in_body(error: Option<&serde_json::Value>) -> Option<String> {
    match error? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.trim().is_empty() => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Reads `body` as `R`, failing on a non-empty top-level `error` (which the
/// typed models would ignore as an unknown key).
fn parse_answer<R: DeserializeOwned>(endpoint: &'static str, body: &[u8]) -> Result<R, FleetError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        error: Option<serde_json::Value>,
    }
    let decode_error = |e: serde_json::Error| FleetError::Decode {
        endpoint,
        message: e.to_string(),
    };
    // Most answers never mention "error": skip the second scan for them.
    if memchr::memmem::find(body, b"\"error\"").is_some()
        && let Ok(Probe { error }) = serde_json::from_slice::<Probe>(body)
        && let Some(message) = error_in_body(error.as_ref())
    {
        return Err(FleetError::InBody { endpoint, message });
    }
    serde_json::from_slice(body).map_err(decode_error)
}

async fn decode<R: DeserializeOwned + Send + 'static>(
    endpoint: &'static str,
    body: bytes::Bytes,
) -> Result<R, FleetError> {
    let large = body.len() >= OFFLOAD_BYTES;
    let parse = move || parse_answer(endpoint, &body);
    if !large {
        return parse();
    }
    tokio::task::spawn_blocking(parse)
        .await
        .map_err(|e| FleetError::Decode {
            endpoint,
            message: format!("decoder task failed: {e}"),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_as_fatal_retry_or_rate_limited() {
        let msg = |s: u16| match classify("hosts", StatusCode::from_u16(s).unwrap()) {
            Outcome::Done => "done".to_owned(),
            Outcome::Fatal(e) => format!("fatal: {e}"),
            Outcome::RateLimited => "rate limited".to_owned(),
            Outcome::Retry(e) => format!("retry: {e}"),
        };
        assert_eq!(msg(200), "done");
        assert_eq!(msg(401), "fatal: fleet api token rejected (status 401)");
        assert_eq!(msg(403), "fatal: fleet api token rejected (status 403)");
        assert_eq!(msg(404), "fatal: fleet hosts: unexpected status 404");
        assert_eq!(msg(429), "rate limited");
        assert_eq!(msg(503), "retry: fleet hosts: unexpected status 503");
    }

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
