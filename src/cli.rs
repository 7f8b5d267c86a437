//! Command-line interface: `serve`, `check-config`, `check`, `explain`.
//! `check` sends a real Envoy `Check` to a running service and prints the
//! decision the way a person reads it; `explain` asks the admin API for the
//! decision on a fingerprint, without a certificate or a request.

use std::{collections::HashMap, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use envoy_types::pb::envoy::{
    config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier},
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, attribute_context,
        authorization_client::AuthorizationClient, check_response::HttpResponse,
    },
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

/// URL-encodes PEM the way Envoy does for `source.certificate` and XFCC.
pub fn url_encode_pem(pem: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(pem, SET).to_string()
}

/// Builds the CheckRequest `check` sends.
pub fn build_check_request(
    pem: &str,
    context: &[(String, String)],
    host: &str,
    path: &str,
    xfcc: bool,
) -> CheckRequest {
    let encoded = url_encode_pem(pem);
    let mut headers = HashMap::from([
        (":authority".to_owned(), host.to_owned()),
        (":path".to_owned(), path.to_owned()),
        (":method".to_owned(), "GET".to_owned()),
        ("x-request-id".to_owned(), "fleet-authz-cli".to_owned()),
    ]);
    if xfcc {
        headers.insert(
            "x-forwarded-client-cert".to_owned(),
            format!("Cert=\"{encoded}\""),
        );
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(attribute_context::Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".to_owned(),
                        port_specifier: Some(PortSpecifier::PortValue(50000)),
                        ..Default::default()
                    })),
                }),
                certificate: if xfcc { String::new() } else { encoded },
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "fleet-authz-cli".to_owned(),
                    method: "GET".to_owned(),
                    host: host.to_owned(),
                    path: path.to_owned(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: context.iter().cloned().collect(),
            ..Default::default()
        }),
    }
}

/// The HTTP header map of `req` (created if absent), to add headers to a
/// request [`build_check_request`] made.
pub fn request_headers(req: &mut CheckRequest) -> &mut HashMap<String, String> {
    &mut req
        .attributes
        .get_or_insert_default()
        .request
        .get_or_insert_default()
        .http
        .get_or_insert_default()
        .headers
}

/// Renders a CheckResponse for people: decision, reasons, headers.
pub fn describe_response(response: &CheckResponse, verbose: bool) -> (bool, String) {
    let mut out = String::new();
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            out.push_str("ALLOW\n");
            for h in ok.headers.iter().filter_map(|h| h.header.as_ref()) {
                out.push_str(&format!("  sets {}: {}\n", h.key, h.value));
            }
            (true, out)
        }
        Some(HttpResponse::DeniedResponse(denied)) => {
            let status = denied.status.as_ref().map_or(403, |s| s.code);
            out.push_str(&format!("DENY (HTTP {status})\n"));
            match serde_json::from_str::<serde_json::Value>(&denied.body) {
                Ok(body) => out.push_str(&describe_decision(&body)),
                Err(_) => out.push_str("  (body is not JSON)\n"),
            }
            if verbose {
                out.push_str(&format!("  body: {}\n", denied.body));
            }
            (false, out)
        }
        _ => (
            false,
            "the answer carries no OK or denied HTTP response\n".to_owned(),
        ),
    }
}

/// Renders a decision JSON document (deny body or explain answer): route,
/// host, every reason with its fix, the remediation link.
pub fn describe_decision(body: &serde_json::Value) -> String {
    let mut out = String::new();
    if let Some(route) = body["route"].as_str() {
        out.push_str(&format!("  route: {route}\n"));
    }
    if let Some(host) = body["host"].as_object() {
        out.push_str(&format!(
            "  host: {} ({})\n",
            host["display_name"].as_str().unwrap_or("?"),
            host["id"]
        ));
    }
    for r in body["reasons"].as_array().into_iter().flatten() {
        out.push_str(&format!("  - {}", r["kind"].as_str().unwrap_or("?")));
        for key in [
            "name",
            "cve",
            "last_seen",
            "limit",
            "detail",
            "requirement",
            "grant_id",
            "reason",
        ] {
            if let Some(v) = r.get(key).filter(|v| !v.is_null()) {
                out.push_str(&format!(
                    " {key}={}",
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                ));
            }
        }
        out.push('\n');
        if let Some(fix) = r["resolution"].as_str() {
            out.push_str(&format!("      fix: {fix}\n"));
        }
    }
    if let Some(url) = body["remediation_url"].as_str() {
        out.push_str(&format!("  remediation: {url}\n"));
    }
    out
}

/// Why `explain` got no decision.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("{path}: cannot read the admin token: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error("the service refused (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
}

/// Asks `addr`'s `/v1/explain` for the decision on `sha1`; returns whether
/// the answer is allow, and the decision described for people.
pub async fn explain(
    addr: &str,
    token_file: Option<&std::path::Path>,
    sha1: &str,
    context: &[(String, String)],
    host: &str,
    path: &str,
) -> Result<(bool, String), ExplainError> {
    let token = match token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|source| ExplainError::Token {
                    path: p.to_owned(),
                    source,
                })?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let unreachable = |e: reqwest::Error| ExplainError::Unreachable {
        addr: addr.to_owned(),
        message: e.to_string(),
    };
    // reqwest is built without a default TLS provider; plain HTTP needs none,
    // but the client builder wants one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().build().map_err(unreachable)?;
    let params = crate::admin::http::explain_params(sha1, context, host, path);
    let mut request = client
        .get(format!("{}/v1/explain", addr.trim_end_matches('/')))
        .query(&params);
    if let Some(t) = &token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.map_err(unreachable)?;
    if status != 200 {
        return Err(ExplainError::Refused {
            status,
            message: body["error"].as_str().unwrap_or("no detail").to_owned(),
        });
    }
    let allowed = body["answer"].as_str() == Some("allow");
    let mut out = match (allowed, body["decision"].as_str()) {
        (true, Some("deny")) => "ALLOW (dry run: the policy denies)\n".to_owned(),
        (true, _) => "ALLOW\n".to_owned(),
        (false, _) => "DENY\n".to_owned(),
    };
    out.push_str(&describe_decision(&body));
    Ok((allowed, out))
}

/// Runs `explain`: prints the decision and returns the exit code.
pub async fn run_explain(
    addr: &str,
    token_file: Option<&std::path::Path>,
    sha1: &str,
    context: &[(String, String)],
    host: &str,
    path: &str,
) -> ExitCode {
    match explain(addr, token_file, sha1, context, host, path).await {
        Ok((allowed, text)) => {
            print!("{text}");
            if allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e @ ExplainError::Unreachable { .. }) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Runs `check`: prints the decision and returns the exit code.
pub async fn run_check(
    cert: &std::path::Path,
    context: &[(String, String)],
    addr: &str,
    host: &str,
    path: &str,
    xfcc: bool,
    verbose: bool,
) -> ExitCode {
    let pem = match std::fs::read_to_string(cert) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", cert.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let request = build_check_request(&pem, context, host, path, xfcc);
    let mut client = match grpc_channel(addr).await {
        Ok(c) => AuthorizationClient::new(c),
        Err(e) => {
            eprintln!("cannot connect to {addr}: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    match client.check(request).await {
        Ok(response) => {
            let (allowed, text) = describe_response(response.get_ref(), verbose);
            print!("{text}");
            if allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(status) => {
            eprintln!("Check failed: {} {}", status.code(), status.message());
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
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
