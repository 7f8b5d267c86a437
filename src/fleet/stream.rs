//! The certificate query report, decoded as it streams in, page by page.
//!
//! At 100,000 hosts with three certificates each the report is ~100 MB of
//! JSON. Buffering it and then parsing every row (host name, columns and all)
//! doubled the service's peak memory during a sync. Here the body's chunks
//! feed a blocking JSON decoder through a small bounded channel, and each row
//! is reduced on the spot to its host and fingerprints, so neither the body
//! nor the full rows are ever held. Requests, retries and errors behave as
//! for every other Fleet request.
//!
//! Newer Fleets page the report when asked (`page`, `per_page`) and then
//! answer with a `meta` object; pages are read until `has_next_results` is
//! false, so a 100,000-host report never has to arrive within one
//! `request_timeout`. A Fleet that does not page ignores the parameters and
//! sends the whole report, without `meta`, in one answer. The JSON itself
//! is decoded in [`super::report`].

use std::io::Read;

use tokio::sync::mpsc;

use super::{
    FleetClient, FleetError,
    body::{BodyError, Budget, read_capped},
    paths::Family,
    report::{ReportError, ReportFingerprints},
    request::{Attempt, error_in_body, refused, retry_after, transport_error},
};

/// Chunks in flight between the body and the decoder (backpressure).
const CHUNKS_IN_FLIGHT: usize = 8;

/// Hard stop for paging against a server that always says there is more.
const MAX_PAGES: u32 = 100_000;

/// A `Read` over body chunks sent from the async side; `Err` in the channel
/// means the body broke off.
struct ChunkReader {
    rx: mpsc::Receiver<Result<Vec<u8>, ()>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => (self.chunk, self.pos) = (chunk, 0),
                Some(Err(())) => return Err(std::io::Error::other("response body broke off")),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What a streamed page came to, once its body was read whole or stopped.
enum Streamed {
    Done(ReportFingerprints),
    Decode(String),
    /// Past `fleet.max_body_bytes`: reading stopped.
    TooLarge,
    /// Past the rows left under `fleet.max_report_rows`.
    TooManyRows,
}

/// Feeds `resp`'s body to the decoder, within `budget` bytes and `max_rows`
/// rows; returns the outcome (an error when the body broke off) and the
/// bytes read.
async fn decode_streaming(
    mut resp: reqwest::Response,
    mut budget: Budget,
    max_rows: u64,
) -> (Result<Streamed, reqwest::Error>, u64) {
    if budget.refuses_length(resp.content_length()) {
        return (Ok(Streamed::TooLarge), 0);
    }
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let decoder = tokio::task::spawn_blocking(move || {
        let reader = std::io::BufReader::new(ChunkReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        });
        ReportFingerprints::decode(reader, max_rows)
    });
    let mut broke = None;
    let mut too_large = false;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) if !budget.take(chunk.len()) => {
                // Dropping the sender ends the decoder; its error is moot.
                too_large = true;
                break;
            }
            Ok(Some(chunk)) => {
                if tx.send(Ok(chunk.to_vec())).await.is_err() {
                    break; // the decoder already failed; its error says why
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Err(())).await;
                broke = Some(e);
                break;
            }
        }
    }
    drop(tx);
    drop(resp);
    let decoded = decoder.await;
    let outcome = match (broke, decoded) {
        (Some(e), _) => return (Err(e), budget.read()),
        _ if too_large => Streamed::TooLarge,
        (None, Ok(Ok(report))) => Streamed::Done(report),
        (None, Ok(Err(ReportError::TooManyRows))) => Streamed::TooManyRows,
        (None, Ok(Err(ReportError::Json(e)))) => Streamed::Decode(e.to_string()),
        (None, Err(e)) => Streamed::Decode(format!("decoder task failed: {e}")),
    };
    (Ok(outcome), budget.read())
}

impl FleetClient {
    /// The certificate report of saved query `query_id`, page by page,
    /// streamed and reduced to fingerprints per host (see the module docs).
    pub async fn query_report_fingerprints(
        &self,
        query_id: u64,
    ) -> Result<ReportFingerprints, FleetError> {
        let report = self
            .renamed(Family::Queries, |segment| {
                let url = format!("{}/api/v1/fleet/{segment}/{query_id}/report", self.base);
                async move { self.report_pages(&url).await }
            })
            .await;
        match report {
            Err(FleetError::Status { status: 404, .. }) => Err(FleetError::QueryNotFound(query_id)),
            other => other,
        }
    }

    async fn report_pages(&self, url: &str) -> Result<ReportFingerprints, FleetError> {
        let mut all = ReportFingerprints::default();
        for page in 0..MAX_PAGES {
            let query = [
                ("order_key", "host_id".to_owned()),
                ("per_page", self.page_size.to_string()),
                ("page", page.to_string()),
            ];
            let rows_left = self
                .max_report_rows
                .saturating_sub(all.results.len() as u64);
            let part = self
                .with_retries("query_report", || self.report_page(url, &query, rows_left))
                .await?;
            all.report_clipped |= part.report_clipped;
            all.results.extend(part.results);
            if !part.meta.is_some_and(|m| m.has_next_results) {
                return Ok(all);
            }
        }
        Err(FleetError::TooManyPages {
            endpoint: "query_report",
            pages: MAX_PAGES,
        })
    }

    async fn report_page(
        &self,
        url: &str,
        query: &[(&'static str, String)],
        rows_left: u64,
    ) -> Attempt<ReportFingerprints> {
        let endpoint = "query_report";
        let resp = match self.send(endpoint, url, query).await {
            Ok(resp) => resp,
            Err(retry) => return retry,
        };
        let status = resp.status();
        if !status.is_success() {
            let wait = retry_after(&resp);
            // The status decides; a body that broke off does not matter.
            let len = match read_capped(resp, self.max_body_bytes).await {
                Ok(body) => body.len(),
                Err(BodyError::Broken(_)) => 0,
                Err(BodyError::TooLarge { .. }) => {
                    return Attempt::Done(Err(self.body_too_large(endpoint)));
                }
            };
            self.observe(endpoint, status.as_u16(), len);
            return refused(endpoint, status, wait);
        }
        let budget = Budget::new(self.max_body_bytes);
        let (streamed, bytes) = decode_streaming(resp, budget, rows_left).await;
        let streamed = match streamed {
            Ok(streamed) => streamed,
            Err(e) => {
                self.observe(endpoint, 0, 0);
                return Attempt::Retry(transport_error(endpoint, &e), None);
            }
        };
        self.observe(
            endpoint,
            status.as_u16(),
            usize::try_from(bytes).unwrap_or(usize::MAX),
        );
        match streamed {
            Streamed::Done(report) => match error_in_body(report.error.as_ref()) {
                None => Attempt::Done(Ok(report)),
                Some(message) => Attempt::Retry(FleetError::InBody { endpoint, message }, None),
            },
            Streamed::Decode(message) => {
                Attempt::Done(Err(FleetError::Decode { endpoint, message }))
            }
            Streamed::TooLarge => Attempt::Done(Err(self.body_too_large(endpoint))),
            Streamed::TooManyRows => {
                let error = FleetError::TooManyRows {
                    endpoint,
                    limit: self.max_report_rows,
                };
                self.limit_hit("report_rows", &error);
                Attempt::Done(Err(error))
            }
        }
    }
}
