//! `fleet-authz explain`: asks the admin API for the decision on a
//! fingerprint, without a certificate or a request.

use std::{path::PathBuf, process::ExitCode};

use super::{EXIT_CONFIG, EXIT_UNAVAILABLE, check::describe_decision};

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
