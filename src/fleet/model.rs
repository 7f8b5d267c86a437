//! Serde DTOs mirroring Fleet's JSON (see `shared/fleet-api/` for the real
//! shapes). Only the fields we use, plus what parsing needs, are modelled, and
//! unknown fields are ignored, because Fleet adds fields in every release.
//!
//! Fleet's quirks are absorbed here, not downstream: `null` where a list is
//! expected reads as empty; a policy `response` of `""` is "not run"; fields
//! that only Fleet Premium sends (`critical`, CVSS scores) default when absent;
//! a time that is not RFC 3339 (Fleet's zero time, a Unicode minus in
//! `maintenance_window.starts_at`) reads as `None` rather than failing the
//! whole response. These types are public only so `tests/` can check them
//! against the fixtures; outside `fleet/` use the domain `HostPosture`.

use std::time::SystemTime;

use serde::{Deserialize, Deserializer};

/// `null` or absent → `T::default()`.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An RFC 3339 time, or `None` when absent, null, before 1970 or unparseable.
fn lenient_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    let raw = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
    Ok(raw.and_then(|s| humantime::parse_rfc3339_weak(&s).ok()))
}

// === hosts ===

/// `GET /api/v1/fleet/hosts` (any filter).
#[derive(Debug, Deserialize)]
pub struct HostsResponse {
    /// One page of hosts.
    #[serde(default, deserialize_with = "null_default")]
    pub hosts: Vec<Host>,
}

/// A hosts page where only ids matter (membership queries).
#[derive(Debug, Deserialize)]
pub struct HostIdsResponse {
    /// One page of host ids.
    #[serde(default, deserialize_with = "null_default")]
    pub hosts: Vec<HostRef>,
}

/// A host row reduced to its id.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct HostRef {
    /// Fleet host id.
    pub id: u64,
}

/// `GET /api/v1/fleet/hosts/{id}` and `/hosts/identifier/{x}`.
#[derive(Debug, Deserialize)]
pub struct HostDetailResponse {
    /// The host.
    pub host: Host,
}

/// `GET /api/v1/fleet/device/{token}` (Fleet Desktop's view of a host).
#[derive(Debug, Deserialize)]
pub struct DeviceHostResponse {
    /// The host.
    pub host: Host,
    /// Whether self-service software is offered.
    #[serde(default)]
    pub self_service: bool,
    /// Fleet's license, when sent.
    #[serde(default)]
    pub license: Option<License>,
}

/// Fleet's license tier.
#[derive(Debug, Deserialize)]
pub struct License {
    /// `free` or `premium`.
    #[serde(default)]
    pub tier: String,
}

/// A host as Fleet lists or details it.
#[derive(Debug, Deserialize)]
pub struct Host {
    /// Fleet host id.
    pub id: u64,
    /// Hardware UUID.
    #[serde(default, deserialize_with = "null_default")]
    pub uuid: String,
    /// osquery's hostname.
    #[serde(default, deserialize_with = "null_default")]
    pub hostname: String,
    /// The name Fleet shows (computer name, else hostname).
    #[serde(default, deserialize_with = "null_default")]
    pub display_name: String,
    /// The OS's computer name.
    #[serde(default, deserialize_with = "null_default")]
    pub computer_name: String,
    /// `darwin`, `windows`, `ubuntu`, `rhel`, …
    #[serde(default, deserialize_with = "null_default")]
    pub platform: String,
    /// Human OS version, `macOS 14.1.2`.
    #[serde(default, deserialize_with = "null_default")]
    pub os_version: String,
    /// Last check-in.
    #[serde(default, deserialize_with = "lenient_time")]
    pub seen_time: Option<SystemTime>,
    /// Last time host details were refreshed.
    #[serde(default, deserialize_with = "lenient_time")]
    pub detail_updated_at: Option<SystemTime>,
    /// Team id; null when the host has no team (or on Fleet Free).
    #[serde(default)]
    pub team_id: Option<u64>,
    /// Team name; null like `team_id`.
    #[serde(default)]
    pub team_name: Option<String>,
    /// `online`, `offline`, …
    #[serde(default, deserialize_with = "null_default")]
    pub status: String,
    /// Policy results: present on host detail and with `populate_policies=true`.
    #[serde(default)]
    pub policies: Option<Vec<HostPolicy>>,
    /// Installed software: on host detail and with `populate_software=true`.
    #[serde(default)]
    pub software: Option<Vec<Software>>,
    /// Counts of failing policies and critical CVEs.
    #[serde(default)]
    pub issues: Option<Issues>,
    /// Kept as strings: Fleet's own example has a Unicode minus in the offset.
    #[serde(default)]
    pub maintenance_window: Option<MaintenanceWindow>,
}

/// One policy's result on one host.
#[derive(Debug, Deserialize)]
pub struct HostPolicy {
    /// Policy id.
    pub id: u64,
    /// Policy name.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// `pass`, `fail`, or `""` (not run or not applicable).
    #[serde(default, deserialize_with = "policy_response")]
    pub response: Response,
    /// Premium only; absent on Free means not critical.
    #[serde(default)]
    pub critical: bool,
    /// What the person should do; `""` when unset.
    #[serde(default, deserialize_with = "null_default")]
    pub resolution: String,
}

/// A policy's result as Fleet reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Response {
    /// `pass`
    Pass,
    /// `fail`
    Fail,
    /// `""`, null, absent, or anything else.
    #[default]
    NotRun,
}

fn policy_response<'de, D: Deserializer<'de>>(d: D) -> Result<Response, D::Error> {
    let raw = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
    Ok(match raw.as_deref() {
        Some("pass") => Response::Pass,
        Some("fail") => Response::Fail,
        _ => Response::NotRun,
    })
}

/// `issues` on a host.
#[derive(Debug, Default, Deserialize)]
pub struct Issues {
    /// Failing policies.
    #[serde(default)]
    pub failing_policies_count: u64,
    /// Premium only.
    #[serde(default)]
    pub critical_vulnerabilities_count: Option<u64>,
    /// Sum of the above.
    #[serde(default)]
    pub total_issues_count: u64,
}

/// `maintenance_window`: left as text on purpose (see the type's field docs).
#[derive(Debug, Deserialize)]
pub struct MaintenanceWindow {
    /// As Fleet sent it; not parsed.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// IANA zone name.
    #[serde(default)]
    pub timezone: Option<String>,
}

/// A software item, with the CVEs Fleet matched to it.
#[derive(Debug, Deserialize)]
pub struct Software {
    /// Software id.
    pub id: u64,
    /// Name.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Version.
    #[serde(default, deserialize_with = "null_default")]
    pub version: String,
    /// `null` in Fleet when there are none.
    #[serde(default, deserialize_with = "null_default")]
    pub vulnerabilities: Vec<SoftwareVulnerability>,
    /// Hosts with this version (software versions list).
    #[serde(default)]
    pub hosts_count: Option<u64>,
}

/// A CVE on a software item.
#[derive(Debug, Deserialize)]
pub struct SoftwareVulnerability {
    /// `CVE-2009-5155`.
    pub cve: String,
    /// Premium only.
    #[serde(default)]
    pub cvss_score: Option<f64>,
    /// Premium only.
    #[serde(default)]
    pub resolved_in_version: Option<String>,
}

/// `GET /api/v1/fleet/hosts/{id}/device_mapping`.
#[derive(Debug, Deserialize)]
pub struct DeviceMappingResponse {
    /// Host id.
    pub host_id: u64,
    /// Emails tied to the host.
    #[serde(default, deserialize_with = "null_default")]
    pub device_mapping: Vec<DeviceMapping>,
}

/// One email tied to a host.
#[derive(Debug, Deserialize)]
pub struct DeviceMapping {
    /// The email.
    pub email: String,
    /// Where Fleet learnt it.
    #[serde(default)]
    pub source: String,
}

/// `GET /api/v1/fleet/hosts/{id}/health`.
#[derive(Debug, Deserialize)]
pub struct HostHealthResponse {
    /// Host id.
    pub host_id: u64,
    /// The report.
    pub health: HostHealth,
}

/// A host's health report.
#[derive(Debug, Deserialize)]
pub struct HostHealth {
    /// When Fleet computed it.
    #[serde(default, deserialize_with = "lenient_time")]
    pub updated_at: Option<SystemTime>,
    /// Failing policies count.
    #[serde(default)]
    pub failing_policies_count: u64,
    /// Premium only.
    #[serde(default)]
    pub failing_critical_policies_count: Option<u64>,
    /// The failing policies.
    #[serde(default, deserialize_with = "null_default")]
    pub failing_policies: Vec<Policy>,
    /// Vulnerable software.
    #[serde(default, deserialize_with = "null_default")]
    pub vulnerable_software: Vec<Software>,
}

// === policies ===

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

// === query reports ===

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

// === teams, vulnerabilities, software ===

/// `GET /api/v1/fleet/teams`.
#[derive(Debug, Deserialize)]
pub struct TeamsResponse {
    /// One page of teams.
    #[serde(default, deserialize_with = "null_default")]
    pub teams: Vec<TeamDto>,
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
