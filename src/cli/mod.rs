//! Command-line interface: `serve`, `check-config`, `check`, `explain`.
//! `check` sends a real Envoy `Check` to a running service and prints the
//! decision the way a person reads it; `explain` asks the admin API for the
//! decision on a fingerprint, without a certificate or a request.

mod check;
mod explain;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use self::{
    check::{describe_decision, describe_response, run_check},
    explain::{ExplainError, explain, run_explain},
};

/// EX_USAGE: bad configuration or arguments.
pub const EXIT_CONFIG: u8 = 64;
/// EX_UNAVAILABLE: the service could not be reached.
pub const EXIT_UNAVAILABLE: u8 = 69;

/// fleet-authz: Envoy ext_authz by FleetDM device posture.
#[derive(Debug, Parser)]
#[command(name = "fleet-authz", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve ext_authz (gRPC) and the HTTP endpoints.
    Serve {
        /// Configuration file.
        #[arg(long, env = "FLEET_AUTHZ_CONFIG", default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Validate the configuration and the policy file it names, then exit.
    CheckConfig {
        /// Configuration file.
        #[arg(long, env = "FLEET_AUTHZ_CONFIG", default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Send one Check for a certificate to a running service and print the
    /// decision. Exit code 0 = allowed, 1 = denied, 69 = unreachable.
    Check {
        /// PEM file of the device certificate.
        #[arg(long)]
        cert: PathBuf,
        /// Envoy context_extensions, `key=value` (repeatable).
        #[arg(long = "context", value_parser = parse_key_value)]
        context: Vec<(String, String)>,
        /// The service's gRPC address: a URL, or `unix:/path/to.sock` when
        /// `listen.grpc` is a Unix socket.
        #[arg(long, default_value = "http://127.0.0.1:9191")]
        addr: String,
        /// `:authority` of the simulated request.
        #[arg(long, default_value = "app.example.com")]
        host: String,
        /// Path of the simulated request.
        #[arg(long, default_value = "/")]
        path: String,
        /// Send the certificate in `x-forwarded-client-cert` (as Istio does)
        /// instead of `source.certificate`.
        #[arg(long)]
        xfcc: bool,
        /// Print the raw deny body too.
        #[arg(long)]
        verbose: bool,
    },
    /// Ask a running service (admin API) for the decision, with every
    /// reason, on a certificate fingerprint. Exit code 0 = allowed,
    /// 1 = denied, 64 = refused (bad input or token), 69 = unreachable.
    Explain {
        /// SHA-1 fingerprint of the device certificate (hex, colons ok).
        #[arg(long)]
        sha1: String,
        /// Envoy context_extensions, `key=value` (repeatable).
        #[arg(long = "context", value_parser = parse_key_value)]
        context: Vec<(String, String)>,
        /// The service's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        addr: String,
        /// File holding the admin bearer token.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// `:authority` of the simulated request.
        #[arg(long, default_value = "app.example.com")]
        host: String,
        /// Path of the simulated request.
        #[arg(long, default_value = "/")]
        path: String,
    },
}

/// Parses `key=value`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

/// A gRPC channel to `addr`: an `http(s)://` URL, or a Unix socket in the
/// form `listen.grpc` takes (`unix:/path/to.sock`).
pub async fn grpc_channel(
    addr: &str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let Ok(crate::config::GrpcListen::Unix(path)) = addr.parse() else {
        return tonic::transport::Endpoint::from_shared(addr.to_owned())?
            .connect()
            .await;
    };
    // The URL only fills `:authority`; the connector ignores it.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
}
