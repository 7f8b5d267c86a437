//! The certificate query report, decoded as it streams in.
//!
//! At 100,000 hosts with three certificates each the report is ~100 MB of
//! JSON. Buffering it and then parsing every row (host name, columns and all)
//! doubled the service's peak memory during a sync. Here the body's chunks
//! feed a blocking JSON decoder through a small bounded channel, and each row
//! is reduced on the spot to `(host_id, fingerprint)`, 32 bytes, so neither the
//! body nor the full rows are ever held. Requests, retries and errors behave as
//! for every other Fleet request.

use std::io::Read;

use serde::{Deserialize, Deserializer};
use tokio::sync::mpsc;

use super::{
    FleetClient, FleetError,
    client::{Outcome, classify, retry_after, transport_error},
};
use crate::fingerprint::Fingerprint;

/// Chunks in flight between the body and the decoder (backpressure).
const CHUNKS_IN_FLIGHT: usize = 8;

/// The certificate report reduced to what a sync uses.
#[derive(Debug, Deserialize)]
pub struct ReportFingerprints {
    /// True when the report hit Fleet's row cap; absent means false.
    #[serde(default)]
    pub report_clipped: bool,
    /// One entry per row, in Fleet's order.
    #[serde(default, deserialize_with = "null_rows")]
    pub results: Vec<FingerprintRow>,
    /// Set when Fleet broke off part-way after sending 200.
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

/// A report row: its host and its `columns.sha1`, `None` when missing or not
/// a SHA-1 (the sync counts those as skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct FingerprintRow {
    /// The host that sent the row.
    pub host_id: u64,
    /// The certificate's fingerprint.
    #[serde(default, rename = "columns", deserialize_with = "sha1_column")]
    pub sha1: Option<Fingerprint>,
}

fn null_rows<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FingerprintRow>, D::Error> {
    Ok(Option::<Vec<FingerprintRow>>::deserialize(d)?.unwrap_or_default())
}

fn sha1_column<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Fingerprint>, D::Error> {
    #[derive(Deserialize)]
    struct Columns {
        #[serde(default)]
        sha1: Option<String>,
    }
    let columns = Option::<Columns>::deserialize(d)?;
    Ok(columns
        .and_then(|c| c.sha1)
        .and_then(|s| Fingerprint::parse(&s).ok()))
}

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

enum Streamed {
    Done(ReportFingerprints),
    Body(reqwest::Error),
    Decode(String),
}

/// Feeds `resp`'s body to the decoder; returns the outcome and the bytes read.
async fn decode_streaming(mut resp: reqwest::Response) -> (Streamed, usize) {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let decoder = tokio::task::spawn_blocking(move || {
        let reader = std::io::BufReader::new(ChunkReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        });
        serde_json::from_reader::<_, ReportFingerprints>(reader)
    });
    let mut bytes = 0;
    let mut broke = None;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                bytes += chunk.len();
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
    let decoded = decoder.await;
    let outcome = match (broke, decoded) {
        (Some(e), _) => Streamed::Body(e),
        (None, Ok(Ok(report))) => Streamed::Done(report),
        (None, Ok(Err(e))) => Streamed::Decode(e.to_string()),
        (None, Err(e)) => Streamed::Decode(format!("decoder task failed: {e}")),
    };
    (outcome, bytes)
}

impl FleetClient {
    /// The certificate report of saved query `query_id`, streamed and reduced
    /// to fingerprints per host (see the module docs).
    pub async fn query_report_fingerprints(
        &self,
        query_id: u64,
    ) -> Result<ReportFingerprints, FleetError> {
        let endpoint = "query_report";
        let url = format!("{}/api/v1/fleet/queries/{query_id}/report", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self.http.get(&url).timeout(self.timeout).send().await;
            let (error, wait) = match sent {
                Err(e) => {
                    self.observe(endpoint, 0, 0);
                    (transport_error(endpoint, &e), None)
                }
                Ok(resp) if resp.status().is_success() => {
                    let status = resp.status().as_u16();
                    match decode_streaming(resp).await {
                        (Streamed::Done(report), bytes) => {
                            self.observe(endpoint, status, bytes);
                            match super::client::error_in_body(report.error.as_ref()) {
                                None => return Ok(report),
                                Some(message) => (FleetError::InBody { endpoint, message }, None),
                            }
                        }
                        (Streamed::Decode(message), bytes) => {
                            self.observe(endpoint, status, bytes);
                            return Err(FleetError::Decode { endpoint, message });
                        }
                        (Streamed::Body(e), _) => {
                            self.observe(endpoint, 0, 0);
                            (transport_error(endpoint, &e), None)
                        }
                    }
                }
                Ok(resp) => {
                    let status = resp.status();
                    let wait = retry_after(&resp);
                    let len = resp.bytes().await.map_or(0, |b| b.len());
                    self.observe(endpoint, status.as_u16(), len);
                    match classify(endpoint, status) {
                        Outcome::Fatal(FleetError::Status { status: 404, .. }) => {
                            return Err(FleetError::QueryNotFound(query_id));
                        }
                        Outcome::Fatal(e) => return Err(e),
                        Outcome::RateLimited => (FleetError::RateLimited { endpoint }, wait),
                        Outcome::Retry(e) => (e, None),
                        Outcome::Done => (
                            FleetError::Status {
                                endpoint,
                                status: status.as_u16(),
                            },
                            None,
                        ),
                    }
                }
            };
            if attempt >= self.retry.max_attempts {
                return Err(error);
            }
            let delay = self.retry.delay(attempt, wait);
            tracing::debug!(endpoint, attempt, ?delay, %error, "fleet request will be retried");
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_reduce_to_fingerprints_and_bad_sha1_reads_as_none() {
        let json = r#"{"query_id": 42, "results": [
            {"host_id": 1, "host_name": "a", "columns": {"sha1": "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01", "ca": "0"}},
            {"host_id": 2, "columns": {"sha1": "not hex"}},
            {"host_id": 3, "columns": {}},
            {"host_id": 4}
        ]}"#;
        let r: ReportFingerprints = serde_json::from_reader(json.as_bytes()).unwrap();
        assert!(!r.report_clipped);
        let fp = Fingerprint::parse("abcdef0123456789abcdef0123456789abcdef01").unwrap();
        let rows: Vec<(u64, Option<Fingerprint>)> =
            r.results.iter().map(|r| (r.host_id, r.sha1)).collect();
        assert_eq!(rows, vec![(1, Some(fp)), (2, None), (3, None), (4, None)]);
    }

    #[test]
    fn null_results_and_clipped_flag_read() {
        let r: ReportFingerprints =
            serde_json::from_str(r#"{"report_clipped": true, "results": null}"#).unwrap();
        assert!(r.report_clipped);
        assert_eq!(r.results, Vec::new());
    }
}
