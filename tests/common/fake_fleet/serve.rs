//! The fake's request handling shared by every endpoint: the bearer token,
//! injected faults, holds, request and byte counts, cached bodies and gzip.

use std::collections::HashMap;

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{
    endless::endless,
    render::broken_off,
    spec::{Fault, FleetVersion, STREAM_ERROR, Shared, State_},
};

enum Gate {
    Respond(Response),
    Hang,
    Pass(Option<Fault>),
}

pub(super) fn error_body(status: StatusCode, message: &str, reason: &str) -> Response {
    let body = json!({"message": message, "errors": [{"name": "base", "reason": reason}],
        "uuid": "1272014b-902b-4b36-bcdb-75fde5eac1fc"});
    (status, axum::Json(body)).into_response()
}

/// The answer to a path this Fleet does not serve (an old Fleet asked for
/// the renamed paths), counted as `unknown_path`.
pub(super) fn not_served(st: &mut State_, uri: &Uri) -> Response {
    *st.counts.entry("unknown_path".to_owned()).or_default() += 1;
    *st.path_counts.entry("unknown").or_default() += 1;
    error_body(
        StatusCode::NOT_FOUND,
        "Resource Not Found",
        &format!("path {} was not found", uri.path()),
    )
}

/// Which path set `uri` belongs to, for [`super::FakeFleet::path_count`].
fn path_set(uri: &Uri) -> Option<&'static str> {
    let path = uri.path();
    let under = |p: &str| path.contains(&format!("/fleet/{p}"));
    if under("fleets") || under("reports") {
        Some("renamed")
    } else if under("teams") || under("queries") {
        Some("legacy")
    } else {
        None
    }
}

fn gate(state: &Shared, label: &str, headers: &HeaderMap, uri: &Uri) -> Gate {
    let mut st = state.lock().unwrap();
    let set = path_set(uri);
    if set == Some("renamed") && st.version == FleetVersion::Legacy {
        return Gate::Respond(not_served(&mut st, uri));
    }
    *st.counts.entry(label.to_owned()).or_default() += 1;
    if let Some(set) = set {
        *st.path_counts.entry(set).or_default() += 1;
    }
    let expected = format!("Bearer {}", st.token);
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        return Gate::Respond(error_body(
            StatusCode::UNAUTHORIZED,
            "Authentication failed",
            "Authentication failed",
        ));
    }
    if let Some(spared) = st.spared.get_mut(label).filter(|n| **n > 0) {
        *spared -= 1;
        return Gate::Pass(None);
    }
    let fault = match st.faults.get_mut(label) {
        None => return Gate::Pass(None),
        Some((fault, remaining)) => {
            let fault = fault.clone();
            if let Some(n) = remaining {
                *n -= 1;
                if *n == 0 {
                    st.faults.remove(label);
                }
            }
            fault
        }
    };
    match fault {
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            Gate::Respond(error_body(
                status,
                status.canonical_reason().unwrap_or("error"),
                "injected fault",
            ))
        }
        Fault::Unauthorized => Gate::Respond(error_body(
            StatusCode::UNAUTHORIZED,
            "Authentication failed",
            "Authentication failed",
        )),
        Fault::RateLimited {
            retry_after_secs: n,
        } => {
            let msg = format!("limit exceeded, retry after: {n}s");
            let mut resp = error_body(StatusCode::TOO_MANY_REQUESTS, &msg, &msg);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, n.to_string().parse().unwrap());
            Gate::Respond(resp)
        }
        Fault::Hang => Gate::Hang,
        other => Gate::Pass(Some(other)),
    }
}

pub(super) async fn serve(
    state: &Shared,
    label: &str,
    headers: &HeaderMap,
    uri: &Uri,
    build: impl FnOnce(&State_) -> Result<String, Response>,
) -> Response {
    let fault = match gate(state, label, headers, uri) {
        Gate::Respond(r) => return r,
        Gate::Hang => std::future::pending().await,
        Gate::Pass(Some(Fault::Endless)) => {
            let gzip = state.lock().unwrap().gzip && accepts_gzip(headers);
            return endless(state, label, gzip);
        }
        Gate::Pass(f) => f,
    };
    let held = state.lock().unwrap().holds.get(label).cloned();
    if let Some(gate) = held {
        // Closed on release: every waiter wakes with an error, which is the signal.
        let _released = gate.acquire().await;
    }
    let body = {
        let mut st = state.lock().unwrap();
        let key = uri.to_string();
        match st.cache.as_ref().and_then(|c| c.get(&key)) {
            Some(cached) => cached.clone(),
            None => {
                let body = match build(&st) {
                    Ok(v) => Bytes::from(v),
                    Err(r) => return r,
                };
                if let Some(cache) = &mut st.cache {
                    cache.insert(key, body.clone());
                }
                body
            }
        }
    };
    // Bodies are built as `String`s: always UTF-8.
    let text = std::str::from_utf8(&body).unwrap();
    let gzip = state.lock().unwrap().gzip && accepts_gzip(headers);
    let encode = |b: Bytes| if gzip { compress(&b) } else { b };
    let body = match fault {
        Some(Fault::Malformed) => encode(Bytes::from_static(
            b"<html><body>502 Bad Gateway</body></html>",
        )),
        // The body breaks off halfway, as sent on the wire.
        Some(Fault::Truncated) if gzip => {
            let sent = compress(&body);
            sent.slice(..sent.len() / 2)
        }
        Some(Fault::Truncated) => body.slice(..text.floor_char_boundary(body.len() / 2)),
        Some(Fault::ErrorInBody) => encode(Bytes::from(broken_off(text))),
        Some(Fault::ErrorField) => {
            let whole = text.strip_suffix('}').unwrap_or(text);
            encode(Bytes::from(format!(
                "{whole},\"error\":\"{STREAM_ERROR}\"}}"
            )))
        }
        // Compressed once per URI when bodies are cached, as built ones are.
        _ if gzip => match &mut state.lock().unwrap().cache {
            Some(cache) => cache
                .entry(format!("gzip {uri}"))
                .or_insert_with(|| compress(&body))
                .clone(),
            None => compress(&body),
        },
        _ => body,
    };
    *state
        .lock()
        .unwrap()
        .bytes
        .entry(label.to_owned())
        .or_default() += body.len();
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if gzip {
        let h = resp.headers_mut();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    resp
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| coding.split(';').next().is_some_and(|c| c.trim() == "gzip"))
}

/// gzip at the default level (6).
fn compress(body: &[u8]) -> Bytes {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).unwrap();
    Bytes::from(enc.finish().unwrap())
}

/// `(per_page, page)` from the query.
pub(super) fn paging(q: &HashMap<String, String>) -> Result<(usize, usize), Response> {
    let bad = |m: &str| error_body(StatusCode::BAD_REQUEST, "Bad request", m);
    let per_page: usize = q
        .get("per_page")
        .ok_or_else(|| bad("per_page is required"))?
        .parse()
        .map_err(|_| bad("per_page"))?;
    let page: usize = q
        .get("page")
        .ok_or_else(|| bad("page is required"))?
        .parse()
        .map_err(|_| bad("page"))?;
    Ok((per_page, page))
}

pub(super) fn page<T: Clone>(items: &[T], q: &HashMap<String, String>) -> Result<Vec<T>, Response> {
    let (per_page, page) = paging(q)?;
    Ok(items
        .iter()
        .skip(page * per_page)
        .take(per_page)
        .cloned()
        .collect())
}
