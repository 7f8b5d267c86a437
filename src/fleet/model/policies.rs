//! The policy catalogue and query reports (the certificate fingerprints).

use std::time::SystemTime;

use serde::Deserialize;

use super::{lenient_time, null_default};

/// `GET /api/v1/fleet/global/policies` and `/teams/{id}/policies`.
#[derive(Debug, Deserialize)]
pub struct PoliciesResponse {
    /// Policies of this scope.
    #[serde(default, deserialize_with = "null_default")]
    pub policies: Vec<Policy>,
    /// Team endpoint only: the global policies that also apply.
    #[serde(default, deserialize_with = "null_default")]
    pub inherited_policies: Vec<Policy>,
}

/// A policy in the catalogue.
#[derive(Debug, Deserialize)]
pub struct Policy {
    /// Policy id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Premium only; absent on Free means not critical.
    #[serde(default)]
    pub critical: bool,
    /// What to do when it fails; `""` when unset.
    #[serde(default, deserialize_with = "null_default")]
    pub resolution: String,
    /// Owning team; null for global policies.
    #[serde(default)]
    pub team_id: Option<u64>,
    /// Failing hosts, as of Fleet's last count.
    #[serde(default)]
    pub failing_host_count: Option<u64>,
}

// === saved queries and their reports ===

/// `GET /api/v1/fleet/reports/{id}` (formerly `/queries/{id}`). Fleet sends
/// the query as `query`; 4.82 and later repeat it as `report`.
#[derive(Debug, Deserialize)]
pub struct QueryResponse {
    /// The query, old name.
    #[serde(default)]
    pub query: Option<SavedQuery>,
    /// The query, new name.
    #[serde(default)]
    pub report: Option<SavedQuery>,
}

impl QueryResponse {
    /// The query, under whichever name Fleet sent it.
    pub fn into_query(self) -> Option<SavedQuery> {
        self.query.or(self.report)
    }
}

/// A saved query's settings that decide what its report holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SavedQuery {
    /// Query id.
    pub id: u64,
    /// Name.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// True: Fleet keeps no report (results only go to the log destination).
    #[serde(default)]
    pub discard_data: bool,
    /// `snapshot`, `differential` or `differential_ignore_removals`; Fleet's
    /// default, `snapshot`, when absent.
    #[serde(default, deserialize_with = "null_default")]
    pub logging: String,
    /// Seconds between runs; 0 means not scheduled.
    #[serde(default)]
    pub interval: u64,
}

/// `GET /api/v1/fleet/queries/{id}/report`.
#[derive(Debug, Deserialize)]
pub struct QueryReport {
    /// Query id.
    pub query_id: u64,
    /// True when the report hit Fleet's row cap; absent means false.
    #[serde(default)]
    pub report_clipped: bool,
    /// One row per result row per host.
    #[serde(default, deserialize_with = "null_default")]
    pub results: Vec<ReportRow>,
}

/// A query-report row.
#[derive(Debug, Deserialize)]
pub struct ReportRow {
    /// The host that sent it.
    pub host_id: u64,
    /// Its name.
    #[serde(default, deserialize_with = "null_default")]
    pub host_name: String,
    /// When Fleet stored the row.
    #[serde(default, deserialize_with = "lenient_time")]
    pub last_fetched: Option<SystemTime>,
    /// The columns we read.
    #[serde(default)]
    pub columns: ReportColumns,
}

/// Columns of a `certificates` query row; the rest are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct ReportColumns {
    /// SHA-1 of the certificate's DER, hex.
    #[serde(default)]
    pub sha1: Option<String>,
}

/// `GET /api/v1/fleet/hosts/{id}/queries/{query_id}`.
#[derive(Debug, Deserialize)]
pub struct HostQueryReport {
    /// Query id.
    pub query_id: u64,
    /// Host id.
    pub host_id: u64,
    /// Absent means false.
    #[serde(default)]
    pub report_clipped: bool,
    /// This host's rows.
    #[serde(default, deserialize_with = "null_default")]
    pub results: Vec<HostReportRow>,
}

/// A row of one host's report.
#[derive(Debug, Deserialize)]
pub struct HostReportRow {
    /// The columns we read.
    #[serde(default)]
    pub columns: ReportColumns,
}
