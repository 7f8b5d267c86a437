//! One Fleet request and its retries: what a status means, how long to wait,
//! and reading the body, including the error Fleet may put inside a 200.
//!
//! Retried: 5xx, 408, 429, timeouts, connection errors, and a 200 whose body
//! ends with an `error` (Fleet broke off a streamed list). 429, 408 and 503
//! wait for `retry-after` when Fleet sends one (capped at 60 s, never shorter
//! than the backoff, see [`RetryPolicy::delay`](super::RetryPolicy::delay)).
//! Not retried, because retrying cannot fix them: 401 (token wrong), 403 (the
//! token's user lacks a role), 404 and other 4xx, malformed bodies, and
//! bodies over `fleet.max_body_bytes` (see [`body`](super::body)).

use std::{future::Future, time::Duration};

use reqwest::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::{
    FleetClient, FleetError,
    body::{BodyError, read_capped},
};

/// What one attempt came to.
pub(super) enum Attempt<T> {
    /// Finished: an answer, or an error retrying cannot fix.
    Done(Result<T, FleetError>),
    /// Worth another try, after at least `retry-after` when Fleet sent one.
    Retry(FleetError, Option<Duration>),
}

/// What an HTTP status means for the request.
pub(super) enum Outcome {
    Done,
    Fatal(FleetError),
    Retry(FleetError),
}

pub(super) fn classify(endpoint: &'static str, status: StatusCode) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Done,
        401 => Outcome::Fatal(FleetError::TokenRejected { status: 401 }),
        403 => Outcome::Fatal(FleetError::Forbidden { endpoint }),
        429 => Outcome::Retry(FleetError::RateLimited { endpoint }),
        408 | 500..=599 => Outcome::Retry(FleetError::Status {
            endpoint,
            status: status.as_u16(),
        }),
        other => Outcome::Fatal(FleetError::Status {
            endpoint,
            status: other,
        }),
    }
}

/// The attempt's outcome for a non-2xx `status`.
pub(super) fn refused<T>(
    endpoint: &'static str,
    status: StatusCode,
    wait: Option<Duration>,
) -> Attempt<T> {
    match classify(endpoint, status) {
        Outcome::Retry(error) => Attempt::Retry(error, wait),
        Outcome::Fatal(error) => Attempt::Done(Err(error)),
        Outcome::Done => Attempt::Done(Err(FleetError::Status {
            endpoint,
            status: status.as_u16(),
        })),
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
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
pub(crate) fn parse_answer<R: DeserializeOwned>(
    endpoint: &'static str,
    body: &[u8],
) -> Result<R, FleetError> {
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

impl FleetClient {
    /// GET `path` as `R`, with retries.
    pub(super) async fn get<R: DeserializeOwned + Send + 'static>(
        &self,
        endpoint: &'static str,
        path: &str,
        query: &[(&'static str, String)],
    ) -> Result<R, FleetError> {
        let url = format!("{}{path}", self.base);
        self.with_retries(endpoint, || self.attempt(endpoint, &url, query))
            .await
    }

    /// Runs `attempt` until it is done or `max_attempts` ran out, waiting
    /// [`RetryPolicy::delay`](super::RetryPolicy::delay) between tries.
    pub(super) async fn with_retries<T, Fut>(
        &self,
        endpoint: &'static str,
        mut attempt: impl FnMut() -> Fut,
    ) -> Result<T, FleetError>
    where
        Fut: Future<Output = Attempt<T>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let (error, wait) = match attempt().await {
                Attempt::Done(result) => return result,
                Attempt::Retry(error, wait) => (error, wait),
            };
            if tries >= self.retry.max_attempts {
                return Err(error);
            }
            let delay = self.retry.delay(tries, wait);
            tracing::debug!(endpoint, attempt = tries, ?delay, %error, "fleet request will be retried");
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends a GET with the request timeout; a connection error or timeout
    /// is counted and comes back as the attempt's outcome (a retry).
    pub(super) async fn send<T>(
        &self,
        endpoint: &'static str,
        url: &str,
        query: &[(&'static str, String)],
    ) -> Result<reqwest::Response, Attempt<T>> {
        let sent = self.http.get(url).query(query).timeout(self.timeout);
        sent.send().await.map_err(|e| {
            self.observe(endpoint, 0, 0);
            Attempt::Retry(transport_error(endpoint, &e), None)
        })
    }

    /// `resp`'s body within `fleet.max_body_bytes`. Past it the attempt is
    /// done, not retried: the same Fleet would send the same answer.
    async fn read_body<T>(
        &self,
        endpoint: &'static str,
        resp: reqwest::Response,
    ) -> Result<bytes::Bytes, Attempt<T>> {
        let status = resp.status().as_u16();
        match read_capped(resp, self.max_body_bytes).await {
            Ok(body) => Ok(body),
            Err(BodyError::Broken(e)) => {
                self.observe(endpoint, 0, 0);
                Err(Attempt::Retry(transport_error(endpoint, &e), None))
            }
            Err(BodyError::TooLarge { read }) => {
                self.observe(
                    endpoint,
                    status,
                    usize::try_from(read).unwrap_or(usize::MAX),
                );
                Err(Attempt::Done(Err(self.body_too_large(endpoint))))
            }
        }
    }

    /// The error for an answer over `fleet.max_body_bytes`, counted and logged.
    pub(super) fn body_too_large(&self, endpoint: &'static str) -> FleetError {
        let error = FleetError::BodyTooLarge {
            endpoint,
            limit: self.max_body_bytes,
        };
        self.limit_hit("fleet_body", &error);
        error
    }

    async fn attempt<R: DeserializeOwned + Send + 'static>(
        &self,
        endpoint: &'static str,
        url: &str,
        query: &[(&'static str, String)],
    ) -> Attempt<R> {
        let resp = match self.send(endpoint, url, query).await {
            Ok(resp) => resp,
            Err(retry) => return retry,
        };
        let (status, wait) = (resp.status(), retry_after(&resp));
        let body = match self.read_body(endpoint, resp).await {
            Ok(body) => body,
            Err(attempt) => return attempt,
        };
        self.observe(endpoint, status.as_u16(), body.len());
        if !status.is_success() {
            return refused(endpoint, status, wait);
        }
        match decode(endpoint, body).await {
            // Fleet broke off part-way: retry, as a 5xx.
            Err(e @ FleetError::InBody { .. }) => Attempt::Retry(e, None),
            other => Attempt::Done(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_as_fatal_or_retry() {
        let msg = |s: u16| match classify("hosts", StatusCode::from_u16(s).unwrap()) {
            Outcome::Done => "done".to_owned(),
            Outcome::Fatal(e) => format!("fatal: {e}"),
            Outcome::Retry(e) => format!("retry: {e}"),
        };
        assert_eq!(msg(200), "done");
        assert_eq!(msg(401), "fatal: fleet api token rejected (status 401)");
        assert_eq!(
            msg(403),
            "fatal: fleet hosts: access denied (status 403): the api token's user cannot read \
             this; use an api-only user with the global observer role"
        );
        assert_eq!(msg(404), "fatal: fleet hosts: unexpected status 404");
        assert_eq!(msg(408), "retry: fleet hosts: unexpected status 408");
        assert_eq!(
            msg(429),
            "retry: fleet hosts: rate limited (status 429) on every attempt"
        );
        assert_eq!(msg(503), "retry: fleet hosts: unexpected status 503");
    }

    #[test]
    fn an_error_inside_a_200_is_found_and_an_empty_one_is_not() {
        #[derive(Debug, serde::Deserialize)]
        struct Teams {
            teams: Vec<u64>,
        }
        let err = parse_answer::<Teams>("teams", br#"{"teams":[1,2],"error":"deadline"}"#);
        assert_eq!(
            err.unwrap_err().to_string(),
            "fleet teams: answer ended with an error: deadline"
        );
        for body in [
            &br#"{"teams":[1],"error":""}"#[..],
            br#"{"teams":[1],"error":null}"#,
            br#"{"teams":[1]}"#,
        ] {
            assert_eq!(parse_answer::<Teams>("teams", body).unwrap().teams, [1]);
        }
    }
}
