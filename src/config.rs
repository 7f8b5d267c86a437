//! The service configuration file (DESIGN.md §3): strict YAML
//! (`deny_unknown_fields`), durations like `30s`, validated once at start.
//! A bad file is a [`ConfigError`] naming the file, the key and the problem;
//! `main` turns it into exit code 64.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

pub use crate::telemetry::{LogFormat, TelemetryConfig};
use crate::{duration::serde_human, identity::IdentityConfig};

/// A configuration (or policy) file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

/// The placeholders `remediation_url` may hold, filled per device. Fleet's
/// own device page is no target: its URL carries a token that rotates
/// every hour (DESIGN.md §7).
pub const REMEDIATION_PLACEHOLDERS: [&str; 3] = ["{host_id}", "{host_uuid}", "{hardware_serial}"];

/// Checks `remediation_url`: an http(s) URL whose only `{…}` are the
/// [`REMEDIATION_PLACEHOLDERS`].
fn check_remediation_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("`{url}` is not an http(s) URL"));
    }
    let allowed = REMEDIATION_PLACEHOLDERS.join(", ");
    let mut rest = url;
    while let Some(open) = rest.find(['{', '}']) {
        let after = &rest[open..];
        let close = after.find('}').filter(|_| after.starts_with('{'));
        let Some(close) = close else {
            return Err(format!(
                "`{url}` has an unmatched brace; placeholders are {allowed}"
            ));
        };
        let placeholder = &after[..=close];
        if !REMEDIATION_PLACEHOLDERS.contains(&placeholder) {
            return Err(format!(
                "unknown placeholder `{placeholder}` in `{url}`; placeholders are {allowed}"
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// The whole validated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listen: Listen,
    /// Fleet REST API as the posture source.
    #[serde(default)]
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// A posture file as the source (instead of `fleet`).
    #[serde(default)]
    pub posture_file: Option<PathBuf>,
    #[serde(default)]
    pub snapshot: Option<crate::fleet::snapshot::SnapshotConfig>,
    #[serde(default)]
    pub identity: IdentityConfig,
    pub policy_file: PathBuf,
    /// Optional link to the organisation's own help page, shown on deny
    /// pages; may hold the [`REMEDIATION_PLACEHOLDERS`].
    #[serde(default)]
    pub remediation_url: Option<String>,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// The self-service bypass's page-token key.
    #[serde(default)]
    pub bypass: BypassConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Cluster mode over NATS JetStream (DESIGN.md §8); absent = standalone.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// Listen addresses. Port 0 picks a free port (tests).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// ext_authz, health, reflection, admin gRPC: `ip:port`, or
    /// `unix:/path/to.sock` for an Envoy on the same host or in the same pod.
    #[serde(default = "default_grpc")]
    pub grpc: GrpcListen,
    /// `/livez`, `/readyz`, `/metrics`, `/v1/*`.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// On the HTTP port: longest wait for a request's whole header block
    /// (slowloris connections are closed after it).
    #[serde(with = "serde_human", default = "default_http_header_timeout")]
    pub http_header_timeout: Duration,
    /// On the HTTP port: a connection with no byte either way for this long
    /// is closed, also between keep-alive requests.
    #[serde(with = "serde_human", default = "default_http_idle_timeout")]
    pub http_idle_timeout: Duration,
}

fn default_http_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_http_idle_timeout() -> Duration {
    Duration::from_secs(120)
}

fn default_grpc() -> GrpcListen {
    GrpcListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 9191)))
}

/// Where the gRPC services listen.
///
/// A Unix socket (mode 0660, see `net::bind_unix`) admits only its owner
/// and group, where a TCP port on 127.0.0.1 admits every process that
/// shares the network namespace: in Kubernetes, every container of the pod.
/// It is written as gRPC writes Unix addresses: `unix:/abs/path`,
/// `unix:///abs/path` or `unix:relative/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcListen {
    /// A TCP address; port 0 picks a free port.
    Tcp(SocketAddr),
    /// A Unix domain socket at this path.
    Unix(PathBuf),
}

impl std::str::FromStr for GrpcListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(format!("`{s}` names no socket path"));
            }
            return Ok(Self::Unix(path.into()));
        }
        s.parse().map(Self::Tcp).map_err(|_| {
            format!("`{s}` is neither ip:port (like 127.0.0.1:9191) nor unix:/path/to.sock")
        })
    }
}

impl<'de> Deserialize<'de> for GrpcListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so a bad value fails inside the deserializer and the
        // error names the key (`listen.grpc`), not just the enclosing map.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GrpcListen;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("ip:port or unix:/path/to.sock")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<GrpcListen, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl std::fmt::Display for GrpcListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            http: default_http(),
            http_header_timeout: default_http_header_timeout(),
            http_idle_timeout: default_http_idle_timeout(),
        }
    }
}

/// The admin API: its bearer token and where break-glass grants are kept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// File holding the admin bearer token; `/v1/*` and Admin RPCs need it.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where break-glass grants are kept so they survive a restart (JSON,
    /// written atomically). Without it grants live in memory only.
    #[serde(default)]
    pub grants_file: Option<PathBuf>,
}

/// `bypass:`: how deny pages sign their bypass offers (DESIGN.md §9).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BypassConfig {
    /// HMAC key of the page tokens (at least 32 bytes). Without it each
    /// process draws a random key at start: set it when several replicas
    /// serve one host, so an offer made by one is accepted by another.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// Graceful shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight requests may take after SIGTERM.
    #[serde(with = "serde_human", default = "default_grace")]
    pub grace: Duration,
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: default_grace(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::input::read_bounded(path, crate::input::MAX_POLICY_BYTES).map_err(
            |message| ConfigError {
                file: path.to_owned(),
                key: "(file)".to_owned(),
                message,
            },
        )?;
        Self::from_yaml(&text, path)
    }

    /// Parses and validates configuration YAML; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
        crate::input::refuse_aliases(text).map_err(|problem| err("(file)", problem))?;
        let config: Config = yaml_serde::from_str(text).map_err(|e| {
            let (key, problem) = crate::duration::split_yaml_error(&e);
            err(&key, problem)
        })?;
        match (&config.fleet, &config.posture_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "posture_file",
                    "give either fleet or posture_file, not both".to_owned(),
                ));
            }
            (None, None) => {
                return Err(err(
                    "fleet",
                    "a posture source is required: fleet or posture_file".to_owned(),
                ));
            }
            _ => {}
        }
        let timeouts = [
            (
                "listen.http_header_timeout",
                config.listen.http_header_timeout,
            ),
            ("listen.http_idle_timeout", config.listen.http_idle_timeout),
        ];
        if let Some((key, _)) = timeouts.iter().find(|(_, d)| d.is_zero()) {
            return Err(err(key, "must be greater than zero".to_owned()));
        }
        if let Some(fleet) = &config.fleet {
            fleet.validate().map_err(|m| match m.split_once(": ") {
                Some((key, rest)) => err(key, rest.to_owned()),
                None => err("fleet", m),
            })?;
        }
        if let Some(cluster) = &config.cluster {
            if config.fleet.is_none() {
                return Err(err(
                    "cluster",
                    "needs fleet: as the posture source (replicas share its sync)".to_owned(),
                ));
            }
            cluster
                .validate()
                .map_err(|(key, problem)| err(&key, problem))?;
        }
        if let Some(url) = &config.remediation_url {
            check_remediation_url(url).map_err(|m| err("remediation_url", m))?;
        }
        if let Some(endpoint) = &config.telemetry.otlp_endpoint
            && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
        {
            return Err(err(
                "telemetry.otlp_endpoint",
                format!("`{endpoint}` is not an http(s) URL"),
            ));
        }
        Ok(config)
    }

    /// `fleet.max_staleness` when Fleet is the source; a posture file never
    /// goes stale (its hosts' `last_seen` carries their age).
    pub fn max_staleness(&self) -> Option<Duration> {
        self.fleet.as_ref().map(|f| f.max_staleness)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(remediation_url: &str) -> Result<Config, ConfigError> {
        let yaml = format!(
            "posture_file: p.yaml\npolicy_file: policy.yaml\nremediation_url: \"{remediation_url}\"\n"
        );
        Config::from_yaml(&yaml, Path::new("/etc/fleet-authz/config.yaml"))
    }

    #[test]
    fn remediation_url_takes_only_the_three_placeholders() {
        for ok in [
            "https://it.example.com/help",
            "https://it.example.com/help?host={host_id}&uuid={host_uuid}",
            "http://it.example.com/devices/{hardware_serial}",
        ] {
            assert_eq!(load(ok).unwrap().remediation_url.as_deref(), Some(ok));
        }
        let err = load("https://fleet.example.com/device/{device_token}").unwrap_err();
        assert_eq!(
            (err.file.as_path(), err.key.as_str()),
            (Path::new("/etc/fleet-authz/config.yaml"), "remediation_url")
        );
        assert_eq!(
            err.message,
            "unknown placeholder `{device_token}` in `https://fleet.example.com/device/{device_token}`; \
             placeholders are {host_id}, {host_uuid}, {hardware_serial}"
        );
        for bad in [
            "https://x.example/{host_id",
            "https://x.example/host_id}",
            "https://x.example/{{host_id}}",
        ] {
            let err = load(bad).unwrap_err();
            assert_eq!(err.key, "remediation_url", "{bad}");
            assert!(
                err.message.contains("placeholder"),
                "{bad}: {}",
                err.message
            );
        }
        assert_eq!(
            load("fleet.example.com/{host_id}").unwrap_err().message,
            "`fleet.example.com/{host_id}` is not an http(s) URL"
        );
    }

    #[test]
    fn http_timeouts_default_and_must_be_positive() {
        let c = load("https://it.example.com/help").unwrap();
        assert_eq!(c.listen.http_header_timeout, Duration::from_secs(10));
        assert_eq!(c.listen.http_idle_timeout, Duration::from_secs(120));
        for key in ["http_header_timeout", "http_idle_timeout"] {
            let yaml =
                format!("listen: {{{key}: 0s}}\nposture_file: p.yaml\npolicy_file: policy.yaml\n");
            let err = Config::from_yaml(&yaml, Path::new("/c.yaml")).unwrap_err();
            assert_eq!(
                (err.key.as_str(), err.message.as_str()),
                (
                    format!("listen.{key}").as_str(),
                    "must be greater than zero"
                )
            );
        }
    }
}
