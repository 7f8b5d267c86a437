//! Command-line interface: `serve`, `check-config`, `check`.
//! `check` sends a real Envoy `Check` to a running service and prints the
//! decision the way a person reads it.

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
        /// The service's gRPC address.
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
                Ok(body) => {
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
                        for key in ["name", "cve", "last_seen", "limit", "detail", "requirement"] {
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
                }
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
    let mut client = match AuthorizationClient::connect(addr.to_owned()).await {
        Ok(c) => c,
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
