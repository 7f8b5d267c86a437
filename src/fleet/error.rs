//! `FleetError`: everything that can go wrong talking to Fleet. Messages are
//! lowercase, name the endpoint or key, and never contain the API token.

/// A failed Fleet request, sync or token load.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FleetError {
    /// The token could not be loaded; `from` names the file or variable.
    #[error("{from}: {message}")]
    Token { from: String, message: String },
    /// The HTTP client could not be built (bad URL, bad CA file).
    #[error("fleet client: {0}")]
    Client(String),
    /// 401: the token is wrong or expired.
    #[error("fleet api token rejected (status {status})")]
    TokenRejected { status: u16 },
    /// 403: the token is valid but its user may not read this. Retrying
    /// cannot help; the user needs another role.
    #[error(
        "fleet {endpoint}: access denied (status 403): the api token's user cannot read this; \
         use an api-only user with the global observer role"
    )]
    Forbidden { endpoint: &'static str },
    /// 404 on the certificate query (both path sets).
    #[error("certificate_query_id {0} not found")]
    QueryNotFound(u64),
    /// The certificate query exists but a setting keeps its report from
    /// holding what a sync needs.
    #[error("certificate query {query_id}: {setting} is {value}; {fix}")]
    QuerySetting {
        query_id: u64,
        /// The query's setting, as Fleet names it (`discard_data`, `logging`).
        setting: &'static str,
        /// Its value, as Fleet sent it.
        value: String,
        /// What to change.
        fix: &'static str,
    },
    /// 404 on a single host.
    #[error("fleet host {0} not found")]
    HostNotFound(u64),
    /// Any other status we do not retry, or a retried one that never cleared.
    #[error("fleet {endpoint}: unexpected status {status}")]
    Status { endpoint: &'static str, status: u16 },
    /// 429 on every attempt.
    #[error("fleet {endpoint}: rate limited (status 429) on every attempt")]
    RateLimited { endpoint: &'static str },
    /// No answer within `request_timeout`, on every attempt.
    #[error("fleet {endpoint}: timed out")]
    Timeout { endpoint: &'static str },
    /// Connection refused, reset, TLS failure and the like, on every attempt.
    #[error("fleet {endpoint}: request failed: {message}")]
    Transport {
        endpoint: &'static str,
        message: String,
    },
    /// The body was not the JSON we expect (malformed or truncated).
    #[error("fleet {endpoint}: malformed json: {message}")]
    Decode {
        endpoint: &'static str,
        message: String,
    },
    /// A 200 whose body carries a top-level `error`: Fleet streams large
    /// lists and, when something fails part-way, ends the body with
    /// `],"error":"…"}`. The rows before it are not the whole answer.
    #[error("fleet {endpoint}: answer ended with an error: {message}")]
    InBody {
        endpoint: &'static str,
        message: String,
    },
    /// The answer, decompressed, grew past `fleet.max_body_bytes`: reading
    /// stopped there. Not retried: the same Fleet sends the same answer.
    #[error(
        "fleet {endpoint}: answer larger than fleet.max_body_bytes ({limit} bytes); reading \
         stopped there (raise the limit if this Fleet's answers are that big)"
    )]
    BodyTooLarge { endpoint: &'static str, limit: u64 },
    /// The certificate report held more rows than `fleet.max_report_rows`.
    #[error(
        "fleet {endpoint}: report has more than fleet.max_report_rows ({limit}) rows; reading \
         stopped there (raise the limit if the report is that big)"
    )]
    TooManyRows { endpoint: &'static str, limit: u64 },
    /// A paged endpoint never returned a short page.
    #[error("fleet {endpoint}: gave up after {pages} pages without a short page")]
    TooManyPages { endpoint: &'static str, pages: u32 },
    /// The shrink guard held a cycle back: it saw far fewer hosts or
    /// fingerprints than the last good posture (DESIGN.md §7).
    #[error(
        "fleet sync not published: {what} fell from {before} to {after}, more than fleet.max_drop \
         ({max_drop}) allows; if Fleet is right, POST /v1/sync {{\"accept_drop\": true}} publishes it"
    )]
    Shrunk {
        /// `hosts` or `fingerprints`.
        what: &'static str,
        before: usize,
        after: usize,
        max_drop: f64,
    },
}

impl FleetError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Token { .. } => "token",
            Self::Client(_) => "client",
            Self::TokenRejected { .. } => "token_rejected",
            Self::Forbidden { .. } => "forbidden",
            Self::QueryNotFound(_) => "query_not_found",
            Self::QuerySetting { .. } => "query_setting",
            Self::HostNotFound(_) => "host_not_found",
            Self::Status { .. } => "status",
            Self::RateLimited { .. } => "rate_limited",
            Self::Timeout { .. } => "timeout",
            Self::Transport { .. } => "transport",
            Self::Decode { .. } => "decode",
            Self::InBody { .. } => "error_in_body",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::TooManyRows { .. } => "too_many_rows",
            Self::TooManyPages { .. } => "too_many_pages",
            Self::Shrunk { .. } => "shrunk",
        }
    }
}
