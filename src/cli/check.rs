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
                Ok(body) => {
                    out.push_str(&describe_decision(&body));
                    if let Some(id) = body["request_id"].as_str() {
                        out.push_str(&format!("  request id: {id}\n"));
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

/// Renders a decision JSON document (deny body or explain answer) for
/// people: what was blocked, the device and when Fleet last heard from it,
/// every reason with its fix, what to do, the bypass offer, grace warnings
/// and who to ask: the facts of the deny page.
pub fn describe_decision(body: &serde_json::Value) -> String {
    let mut out = String::new();
    if let Some(title) = body["title"].as_str() {
        out.push_str(&format!("  blocked: {title}\n"));
    }
    if let Some(route) = body["route"].as_str() {
        out.push_str(&format!("  route: {route}\n"));
    }
    if let Some(host) = body["host"].as_object() {
        out.push_str(&format!(
            "  host: {} ({})\n",
            host["display_name"].as_str().unwrap_or("?"),
            host["id"]
        ));
        if let Some(seen) = host.get("last_seen").and_then(|v| v.as_str()) {
            out.push_str(&format!("  fleet last heard from it: {seen}\n"));
        }
    }
    for r in body["reasons"].as_array().into_iter().flatten() {
        out.push_str(&describe_reason(r));
    }
    out.push_str(&describe_page(body));
    if let Some(url) = body["remediation_url"].as_str() {
        out.push_str(&format!("  remediation: {url}\n"));
    }
    out
}

fn describe_reason(r: &serde_json::Value) -> String {
    let mut out = format!("  - {}", r["kind"].as_str().unwrap_or("?"));
    for key in [
        "name",
        "cve",
        "last_seen",
        "limit",
        "detail",
        "requirement",
        "grant_id",
        "reason",
        "expires_at",
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
        let mut lines = fix.lines();
        out.push_str(&format!("      fix: {}\n", lines.next().unwrap_or("")));
        for line in lines {
            out.push_str(&format!("           {line}\n"));
        }
    }
    out
}

/// Steps, warnings, the bypass offer and the support contact.
fn describe_page(body: &serde_json::Value) -> String {
    let mut out = String::new();
    let steps = body["next_steps"].as_array().into_iter().flatten();
    for (i, step) in steps.filter_map(|s| s.as_str()).enumerate() {
        if i == 0 {
            out.push_str("  what to do:\n");
        }
        out.push_str(&format!("    {}. {step}\n", i + 1));
    }
    for w in body["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  warning: policy {} is failing and denies from {}\n",
            w["policy_id"],
            w["deadline"].as_str().unwrap_or("?")
        ));
    }
    if let Some(b) = body["bypass"].as_object() {
        let duration = b["duration"].as_str().unwrap_or("?");
        if b["token"].is_string() {
            out.push_str(&format!(
                "  bypass: may continue for {duration} with a reason, from the deny page in a browser ({} of {} left in 24h)\n",
                b["remaining"], b["max_per_day"]
            ));
        } else {
            out.push_str(&format!(
                "  bypass: none left ({} in 24h used)\n",
                b["max_per_day"]
            ));
        }
    }
    if let Some(s) = body["support"].as_object() {
        let parts: Vec<&str> = ["text", "url"]
            .iter()
            .filter_map(|k| s.get(*k).and_then(|v| v.as_str()))
            .collect();
        out.push_str(&format!("  support: {}\n", parts.join(" ")));
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
