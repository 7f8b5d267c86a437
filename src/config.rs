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
    /// Shown on deny pages; `{host_id}` and `{host_uuid}` are filled in.
    #[serde(default)]
    pub remediation_url: Option<String>,
    #[serde(default)]
    pub admin: Option<AdminConfig>,
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
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            key: "(file)".to_owned(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and validates configuration YAML; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: origin.to_owned(),
            key: key.to_owned(),
            message,
        };
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
        if let Some(url) = &config.remediation_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(err(
                "remediation_url",
                format!("`{url}` is not an http(s) URL"),
            ));
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
