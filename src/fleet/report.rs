//! The certificate query report's JSON, decoded row by row and reduced on
//! the spot to each row's host and fingerprints ([`ReportFingerprints`]),
//! with the rows bounded; [`super::stream`] feeds it a page's body as it
//! arrives.
//!
//! `columns.sha1` holds one fingerprint per row for a query that returns a
//! row per certificate, or several, separated by commas or whitespace, for
//! the recommended one-row-per-host query (`group_concat(sha1, ',')`).

use std::{cell::Cell, io::Read};

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor},
};

use crate::fingerprint::Fingerprint;

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
