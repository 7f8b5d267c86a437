//! Teams, vulnerabilities, software versions, host certificates and errors.

use std::time::SystemTime;

use serde::Deserialize;

use super::{Software, lenient_time, null_default};

/// `GET /api/v1/fleet/fleets` (formerly `/teams`). Fleet 4.82 names the
/// list `fleets` and, for old clients, repeats it as `teams`.
#[derive(Debug, Deserialize)]
pub struct TeamsResponse {
    /// One page of teams.
    #[serde(default, deserialize_with = "null_default")]
    pub teams: Vec<TeamDto>,
    /// The same page under its new name.
    #[serde(default, deserialize_with = "null_default")]
    pub fleets: Vec<TeamDto>,
}

impl TeamsResponse {
    /// The page, under whichever name Fleet sent it.
    pub fn into_teams(self) -> Vec<TeamDto> {
        if self.teams.is_empty() {
            self.fleets
        } else {
            self.teams
        }
    }
}

/// A team.
#[derive(Debug, Deserialize)]
pub struct TeamDto {
    /// Team id.
    pub id: u64,
    /// Team name.
    pub name: String,
}

/// `GET /api/v1/fleet/vulnerabilities`.
#[derive(Debug, Deserialize)]
pub struct VulnerabilitiesResponse {
    /// One page.
    #[serde(default, deserialize_with = "null_default")]
    pub vulnerabilities: Vec<Vulnerability>,
    /// Total count.
    #[serde(default)]
    pub count: u64,
    /// Paging hints.
    #[serde(default)]
    pub meta: Option<Meta>,
}

/// `GET /api/v1/fleet/vulnerabilities/{cve}`.
#[derive(Debug, Deserialize)]
pub struct VulnerabilityResponse {
    /// The CVE.
    pub vulnerability: Vulnerability,
}

/// A CVE known to Fleet.
#[derive(Debug, Deserialize)]
pub struct Vulnerability {
    /// `CVE-2022-30190`.
    pub cve: String,
    /// Affected hosts.
    #[serde(default)]
    pub hosts_count: u64,
    /// Premium only.
    #[serde(default)]
    pub cvss_score: Option<f64>,
    /// Premium only.
    #[serde(default)]
    pub cisa_known_exploit: Option<bool>,
    /// Vulnerability detail only: affected software.
    #[serde(default, deserialize_with = "null_default")]
    pub software: Vec<Software>,
}

/// `GET /api/v1/fleet/software/versions`.
#[derive(Debug, Deserialize)]
pub struct SoftwareVersionsResponse {
    /// Total count.
    #[serde(default)]
    pub count: u64,
    /// One page.
    #[serde(default, deserialize_with = "null_default")]
    pub software: Vec<Software>,
    /// Paging hints.
    #[serde(default)]
    pub meta: Option<Meta>,
}

/// Fleet's `meta` paging hints.
#[derive(Debug, Default, Deserialize)]
pub struct Meta {
    /// More pages follow.
    #[serde(default)]
    pub has_next_results: bool,
    /// Pages precede.
    #[serde(default)]
    pub has_previous_results: bool,
}

/// `GET /api/v1/fleet/hosts/{id}/certificates` (Fleet ≥ 4.65; no SHA-1 field).
#[derive(Debug, Deserialize)]
pub struct HostCertificatesResponse {
    /// One page.
    #[serde(default, deserialize_with = "null_default")]
    pub certificates: Vec<HostCertificate>,
    /// Paging hints.
    #[serde(default)]
    pub meta: Option<Meta>,
}

/// A certificate in a host's keychain.
#[derive(Debug, Deserialize)]
pub struct HostCertificate {
    /// Row id.
    pub id: u64,
    /// Subject CN.
    #[serde(default, deserialize_with = "null_default")]
    pub common_name: String,
    /// Is a CA certificate.
    #[serde(default)]
    pub certificate_authority: bool,
    /// Expiry.
    #[serde(default, deserialize_with = "lenient_time")]
    pub not_valid_after: Option<SystemTime>,
    /// `system` or `user`.
    #[serde(default, deserialize_with = "null_default")]
    pub source: String,
}

/// Fleet's error body (`{"message": …, "errors": [{name, reason}]}`).
#[derive(Debug, Deserialize)]
pub struct ErrorResponse {
    /// Summary.
    #[serde(default)]
    pub message: String,
    /// Details.
    #[serde(default, deserialize_with = "null_default")]
    pub errors: Vec<ErrorDetail>,
    /// Request id, when sent.
    #[serde(default)]
    pub uuid: Option<String>,
}

/// One error detail.
#[derive(Debug, Deserialize)]
pub struct ErrorDetail {
    /// Field, or `base`.
    #[serde(default)]
    pub name: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
}
