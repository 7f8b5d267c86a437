//! The fake's HTTP side: authentication, faults, holds, caching, gzip, and one
//! handler per Fleet endpoint.

use std::collections::HashMap;

use axum::{
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{
    render::{broken_off, policy_json, write_host},
    spec::{Fault, Shared, State_},
};

enum Gate {
    Respond(Response),
    Hang,
    Pass(Option<Fault>),
}

fn error_body(status: StatusCode, message: &str, reason: &str) -> Response {
    let body = json!({"message": message, "errors": [{"name": "base", "reason": reason}],
        "uuid": "1272014b-902b-4b36-bcdb-75fde5eac1fc"});
    (status, axum::Json(body)).into_response()
}

fn gate(state: &Shared, label: &str, headers: &HeaderMap) -> Gate {
    let mut st = state.lock().unwrap();
    *st.counts.entry(label.to_owned()).or_default() += 1;
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

async fn serve(
    state: &Shared,
    label: &str,
    headers: &HeaderMap,
    uri: &Uri,
    build: impl FnOnce(&State_) -> Result<String, Response>,
) -> Response {
    let fault = match gate(state, label, headers) {
        Gate::Respond(r) => return r,
        Gate::Hang => std::future::pending().await,
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
        Some(Fault::Clipped) => encode(Bytes::from(text.replacen(
            "\"report_clipped\":false",
            "\"report_clipped\":true",
            1,
        ))),
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
fn paging(q: &HashMap<String, String>) -> Result<(usize, usize), Response> {
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

fn page<T: Clone>(items: &[T], q: &HashMap<String, String>) -> Result<Vec<T>, Response> {
    let (per_page, page) = paging(q)?;
    Ok(items
        .iter()
        .skip(page * per_page)
        .take(per_page)
        .cloned()
        .collect())
}

type Q = Query<HashMap<String, String>>;

pub(super) async fn teams(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    serve(&s, "teams", &headers, &uri, |st| {
        let all: Vec<Value> = st
            .teams
            .iter()
            .map(|(id, name)| {
                json!({"id": id, "name": name,
            "description": "", "user_count": 0, "host_count": 0, "agent_options": {}})
            })
            .collect();
        Ok(json!({"teams": page(&all, &q)?}).to_string())
    })
    .await
}

pub(super) async fn global_policies(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    serve(&s, "global_policies", &headers, &uri, |st| {
        let list: Vec<Value> = st
            .policies
            .iter()
            .filter(|p| p.team_id.is_none())
            .map(policy_json)
            .collect();
        Ok(json!({"policies": list}).to_string())
    })
    .await
}

pub(super) async fn team_policies(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    serve(&s, "team_policies", &headers, &uri, |st| {
        let own: Vec<Value> = st
            .policies
            .iter()
            .filter(|p| p.team_id == Some(id))
            .map(policy_json)
            .collect();
        let inherited: Vec<Value> = st
            .policies
            .iter()
            .filter(|p| p.team_id.is_none())
            .map(policy_json)
            .collect();
        Ok(json!({"policies": own, "inherited_policies": inherited}).to_string())
    })
    .await
}

pub(super) async fn hosts(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    let label = if q.contains_key("policy_id") {
        "hosts_failing_policy"
    } else if q.contains_key("vulnerability") {
        "hosts_vulnerability"
    } else {
        "hosts"
    };
    serve(&s, label, &headers, &uri, |st| {
        let (per_page, page) = paging(&q)?;
        let policy: Option<u64> = q.get("policy_id").and_then(|p| p.parse().ok());
        let flag = |k: &str| q.get(k).is_some_and(|v| v == "true");
        let (policies, software) = (flag("populate_policies"), flag("populate_software"));
        let selected = st.hosts.values().filter(|h| {
            match (policy, q.get("policy_response"), q.get("vulnerability")) {
                (Some(p), Some(r), _) if r == "failing" => {
                    h.responses.get(&p).is_some_and(|x| x == "fail")
                }
                (Some(p), Some(r), _) if r == "passing" => {
                    h.responses.get(&p).is_some_and(|x| x == "pass")
                }
                (_, _, Some(cve)) => h.cves.contains(cve) || h.os_cves.contains(cve),
                _ => true,
            }
        });
        let mut out = String::from("{\"hosts\":[");
        for (i, h) in selected.skip(page * per_page).take(per_page).enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_host(&mut out, st, h, policies, software);
        }
        out.push_str("]}");
        Ok(out)
    })
    .await
}

pub(super) async fn host(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    serve(&s, "host", &headers, &uri, |st| match st.hosts.get(&id) {
        Some(h) => {
            let mut out = String::from("{\"host\":");
            write_host(&mut out, st, h, true, true);
            out.push('}');
            Ok(out)
        }
        None => Err(error_body(
            StatusCode::NOT_FOUND,
            "Resource Not Found",
            &format!("Host {id} was not found in the datastore"),
        )),
    })
    .await
}

pub(super) async fn report(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    serve(&s, "query_report", &headers, &uri, |st| {
        if id != st.query_id {
            return Err(error_body(StatusCode::NOT_FOUND, "Resource Not Found", &format!("Query {id} was not found in the datastore")));
        }
        use std::fmt::Write as _;
        let mut out = format!("{{\"query_id\":{id},\"report_clipped\":false,\"results\":[");
        let mut first = true;
        for h in st.hosts.values() {
            for sha1 in &h.certs {
                if !first {
                    out.push(',');
                }
                first = false;
                // Names and hex need no JSON escaping.
                let _ = write!(out, "{{\"host_id\":{},\"host_name\":\"{}\",\"last_fetched\":\"2026-11-20T08:00:00Z\",\
                    \"columns\":{{\"sha1\":\"{sha1}\",\"common_name\":\"{} device cert\",\"ca\":\"0\",\
                    \"issuer\":\"/CN=Corp Device CA\",\"not_valid_after\":\"1893456000\"}}}}", h.id, h.name, h.name);
            }
        }
        for row in &st.extra_rows {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&row.to_string());
        }
        out.push_str("]}");
        Ok(out)
    })
    .await
}
