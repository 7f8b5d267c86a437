//! `fleet-authz check`: sends a real Envoy `Check` for a certificate to a
//! running service and prints the decision the way a person reads it.

use std::process::ExitCode;

use envoy_types::pb::envoy::service::auth::v3::{
    CheckResponse, authorization_client::AuthorizationClient, check_response::HttpResponse,
};

use super::{EXIT_CONFIG, EXIT_UNAVAILABLE, grpc_channel};
use crate::authz::request::build_check_request;

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
