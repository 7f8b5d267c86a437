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
//! sends the whole report, without `meta`, in one answer.
//!
//! `columns.sha1` holds one fingerprint per row for a query that returns a
//! row per certificate, or several, separated by commas or whitespace, for
//! the recommended one-row-per-host query (`group_concat(sha1, ',')`).

use std::{cell::Cell, io::Read};

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor},
};
use tokio::sync::mpsc;

use super::{
    FleetClient, FleetError,
    body::{BodyError, Budget, read_capped},
    paths::Family,
    request::{Attempt, error_in_body, refused, retry_after, transport_error},
};
use crate::fingerprint::Fingerprint;

/// Chunks in flight between the body and the decoder (backpressure).
const CHUNKS_IN_FLIGHT: usize = 8;

/// Hard stop for paging against a server that always says there is more.
const MAX_PAGES: u32 = 100_000;

/// The certificate report reduced to what a sync uses.
#[derive(Debug, Default)]
pub struct ReportFingerprints {
    /// True when the report hit Fleet's row cap; absent means false.
    pub report_clipped: bool,
    /// One entry per row, in Fleet's order.
    pub results: Vec<FingerprintRow>,
    /// Set when Fleet broke off part-way after sending 200.
    pub error: Option<serde_json::Value>,
    /// Present when Fleet paged the answer.
    pub meta: Option<PageMeta>,
}

/// Why a report page could not be decoded.
#[derive(Debug)]
pub enum ReportError {
    /// It held more rows than the decoder was allowed to take.
    TooManyRows,
    /// Not the JSON of a report.
    Json(serde_json::Error),
}

impl ReportFingerprints {
    /// Decodes one report answer from `reader`, refusing it as soon as it
    /// holds more than `max_rows` rows, so an endless report never grows
    /// the row list past the bound.
    pub fn decode(reader: impl Read, max_rows: u64) -> Result<Self, ReportError> {
        let over = Cell::new(false);
        let mut de = serde_json::Deserializer::from_reader(reader);
        let decoded = ReportSeed {
            max_rows,
            over: &over,
        }
        .deserialize(&mut de)
        .and_then(|report| de.end().map(|()| report));
        match decoded {
            Ok(report) => Ok(report),
            Err(_) if over.get() => Err(ReportError::TooManyRows),
            Err(e) => Err(ReportError::Json(e)),
        }
    }
}

/// Decodes a report's top-level object; `results` through [`RowsSeed`].
struct ReportSeed<'a> {
    max_rows: u64,
    over: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for ReportSeed<'_> {
    type Value = ReportFingerprints;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReportSeed<'_> {
    type Value = ReportFingerprints;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a query report object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut report = ReportFingerprints::default();
        let mut seen = [false; 4];
        while let Some(key) = map.next_key::<String>()? {
            let field = ["report_clipped", "results", "error", "meta"]
                .iter()
                .position(|k| *k == key);
            if let Some(i) = field
                && std::mem::replace(&mut seen[i], true)
            {
                return Err(de::Error::custom(format!("duplicate field `{key}`")));
            }
            match field {
                Some(0) => report.report_clipped = map.next_value()?,
                Some(1) => {
                    report.results = map.next_value_seed(RowsSeed {
                        max_rows: self.max_rows,
                        over: self.over,
                    })?;
                }
                Some(2) => report.error = map.next_value()?,
                Some(3) => report.meta = map.next_value()?,
                _ => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(report)
    }
}

/// Decodes `results` (a list, or null for none), failing at row
/// `max_rows + 1` and setting `over`.
struct RowsSeed<'a> {
    max_rows: u64,
    over: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_> {
    type Value = Vec<FingerprintRow>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_> {
    type Value = Vec<FingerprintRow>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of report rows")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut rows = Vec::new();
        while let Some(row) = seq.next_element::<FingerprintRow>()? {
            if rows.len() as u64 >= self.max_rows {
                self.over.set(true);
                return Err(de::Error::custom("more report rows than allowed"));
            }
            rows.push(row);
        }
        Ok(rows)
    }
}

/// Fleet's paging hints on a report page.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct PageMeta {
    /// More pages follow.
    #[serde(default)]
    pub has_next_results: bool,
}

/// A report row: its host and the fingerprints in its `columns.sha1`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FingerprintRow {
    /// The host that sent the row.
    pub host_id: u64,
    /// What `columns.sha1` held.
    #[serde(
        default = "Sha1Column::missing",
        rename = "columns",
        deserialize_with = "sha1_column"
    )]
    pub sha1: Sha1Column,
}

/// The fingerprints of one row's `columns.sha1`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sha1Column {
    /// Every value that is a SHA-1, in order. Empty when the column is
    /// empty or null: the host reported no certificate.
    pub fingerprints: Vec<Fingerprint>,
    /// The column was missing, or held a value that is not a SHA-1 (those
    /// values are left out; the sync counts the row as skipped).
    pub malformed: bool,
}

impl Sha1Column {
    /// No `sha1` column at all: the query does not select it.
    fn missing() -> Self {
        Self {
            fingerprints: Vec::new(),
            malformed: true,
        }
    }

    /// Splits `raw` on commas and whitespace and parses each value.
    pub fn parse(raw: &str) -> Self {
        let mut column = Self::default();
        for value in raw
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|v| !v.is_empty())
        {
            match Fingerprint::parse(value) {
                Ok(fp) if !column.fingerprints.contains(&fp) => column.fingerprints.push(fp),
                Ok(_) => {}
                Err(_) => column.malformed = true,
            }
        }
        column
    }
}

fn sha1_column<'de, D: Deserializer<'de>>(d: D) -> Result<Sha1Column, D::Error> {
    /// Tells `"sha1": null` (present, empty) from no `sha1` key.
    fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
    #[derive(Deserialize)]
    struct Columns {
        #[serde(default, deserialize_with = "present")]
        sha1: Option<Option<String>>,
    }
    Ok(match Option::<Columns>::deserialize(d)? {
        None | Some(Columns { sha1: None }) => Sha1Column::missing(),
        Some(Columns { sha1: Some(None) }) => Sha1Column::default(),
        Some(Columns {
            sha1: Some(Some(raw)),
        }) => Sha1Column::parse(&raw),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(hex: &str) -> Fingerprint {
        Fingerprint::parse(hex).unwrap()
    }

    #[test]
    fn rows_reduce_to_fingerprints_and_bad_values_are_flagged() {
        let json = r#"{"query_id": 42, "results": [
            {"host_id": 1, "host_name": "a", "columns": {"sha1": "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01", "ca": "0"}},
            {"host_id": 2, "columns": {"sha1": "not hex"}},
            {"host_id": 3, "columns": {}},
            {"host_id": 4},
            {"host_id": 5, "columns": {"sha1": ""}},
            {"host_id": 6, "columns": {"sha1": null}}
        ]}"#;
        let r = ReportFingerprints::decode(json.as_bytes(), u64::MAX).unwrap();
        assert!(!r.report_clipped);
        assert!(r.meta.is_none());
        let rows: Vec<(u64, usize, bool)> = r
            .results
            .iter()
            .map(|r| (r.host_id, r.sha1.fingerprints.len(), r.sha1.malformed))
            .collect();
        assert_eq!(
            rows,
            [
                (1, 1, false),
                (2, 0, true),
                (3, 0, true),
                (4, 0, true),
                (5, 0, false),
                (6, 0, false)
            ]
        );
        assert_eq!(
            r.results[0].sha1.fingerprints,
            [fp("abcdef0123456789abcdef0123456789abcdef01")]
        );
    }

    #[test]
    fn one_row_per_host_splits_on_commas_and_whitespace_and_keeps_the_good_values() {
        let a = "abcdef0123456789abcdef0123456789abcdef01";
        let b = "0123456789ABCDEF0123456789ABCDEF01234567";
        let c = "11:22:33:44:55:66:77:88:99:00:11:22:33:44:55:66:77:88:99:00";
        let column = Sha1Column::parse(&format!("{a},{b}\n {c}\t,{a},"));
        assert_eq!(column.fingerprints, [fp(a), fp(b), fp(c)]);
        assert!(!column.malformed);
        let column = Sha1Column::parse(&format!("{a}, nonsense ,{b}"));
        assert_eq!(column.fingerprints, [fp(a), fp(b)]);
        assert!(column.malformed);
    }

    #[test]
    fn null_results_clipped_flag_and_paging_hints_read() {
        let r = ReportFingerprints::decode(
            &br#"{"report_clipped": true, "results": null, "meta": {"has_next_results": true, "has_previous_results": false}}"#[..],
            u64::MAX,
        )
        .unwrap();
        assert!(r.report_clipped);
        assert_eq!(r.results, Vec::new());
        assert!(r.meta.unwrap().has_next_results);
    }

    #[test]
    fn rows_past_the_bound_stop_the_decoder() {
        let json =
            br#"{"results": [{"host_id": 1}, {"host_id": 2}, {"host_id": 3}], "query_id": 1}"#;
        assert_eq!(
            ReportFingerprints::decode(&json[..], 3)
                .unwrap()
                .results
                .len(),
            3
        );
        assert!(matches!(
            ReportFingerprints::decode(&json[..], 2),
            Err(ReportError::TooManyRows)
        ));
        assert!(matches!(
            ReportFingerprints::decode(&json[..], 0),
            Err(ReportError::TooManyRows)
        ));
        let twice = br#"{"results": [], "results": []}"#;
        let Err(ReportError::Json(e)) = ReportFingerprints::decode(&twice[..], 9) else {
            panic!("a duplicate key decoded");
        };
        assert!(e.to_string().contains("duplicate field `results`"), "{e}");
    }
}
