//! Hosts: list pages, detail, device mapping and health.

use std::time::SystemTime;

use serde::{Deserialize, Deserializer};

use super::{Policy, lenient_time, null_default};

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
    /// The hardware serial number (`C02…` on a Mac); `""` when unknown.
    #[serde(default, deserialize_with = "null_default")]
    pub hardware_serial: String,
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
