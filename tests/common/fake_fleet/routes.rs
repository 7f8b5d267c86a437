//! One handler per Fleet endpoint the fake serves, with Fleet's answers for
//! a Free license (402), an old Fleet (404), a team-scoped token, and the
//! certificate query's settings.

use std::collections::HashMap;

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, Uri},
    response::Response,
};
use serde_json::{Value, json};

use super::{
    render::{policy_json, report_body, write_host},
    serve::{error_body, not_served, page, paging, serve},
    spec::{FleetVersion, Shared, State_},
};

type Q = Query<HashMap<String, String>>;

/// Fleet's answer to a Premium-only endpoint on Fleet Free.
fn requires_premium() -> Response {
    error_body(
        StatusCode::PAYMENT_REQUIRED,
        "Requires Fleet Premium license",
        "missing or invalid license",
    )
}

/// `{old: value}`, and from Fleet 4.82 on `{old: value, new: value}`: Fleet
/// repeats a renamed key under both names.
fn under_both_names(st: &State_, old: &str, new: &str, value: Value) -> String {
    let mut answer = serde_json::Map::new();
    if st.version == FleetVersion::Renamed {
        answer.insert(new.to_owned(), value.clone());
    }
    answer.insert(old.to_owned(), value);
    Value::Object(answer).to_string()
}

fn not_found(what: &str) -> Response {
    error_body(
        StatusCode::NOT_FOUND,
        "Resource Not Found",
        &format!("{what} was not found in the datastore"),
    )
}

/// A path this Fleet does not serve (the new paths on an old Fleet).
pub(super) async fn unknown_path(State(s): State<Shared>, uri: Uri) -> Response {
    not_served(&mut s.lock().unwrap(), &uri)
}

pub(super) async fn teams(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Q,
) -> Response {
    serve(&s, "teams", &headers, &uri, |st| {
        if !st.premium {
            return Err(requires_premium());
        }
        let all: Vec<Value> = st
            .teams
            .iter()
            .filter(|(id, _)| st.scope.is_none_or(|team| team == *id))
            .map(|(id, name)| {
                json!({"id": id, "name": name,
            "description": "", "user_count": 0, "host_count": 0, "agent_options": {}})
            })
            .collect();
        Ok(under_both_names(
            st,
            "teams",
            "fleets",
            json!(page(&all, &q)?),
        ))
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

/// `/teams/{id}/policies`; team 0 holds the policies of hosts in no team
/// and is counted as `unassigned_policies`.
pub(super) async fn team_policies(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    let label = if id == 0 {
        "unassigned_policies"
    } else {
        "team_policies"
    };
    serve(&s, label, &headers, &uri, |st| {
        if !st.premium {
            return Err(requires_premium());
        }
        let known = if id == 0 {
            st.unassigned
        } else {
            st.teams.iter().any(|(t, _)| *t == id)
        };
        if !known {
            return Err(not_found(&format!("Team {id}")));
        }
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
        let selected = st.hosts.values().filter(|h| st.visible(h)).filter(|h| {
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
        Some(h) if !st.visible(h) => {
            Err(error_body(StatusCode::FORBIDDEN, "forbidden", "forbidden"))
        }
        Some(h) => {
            let mut out = String::from("{\"host\":");
            write_host(&mut out, st, h, true, true);
            out.push('}');
            Ok(out)
        }
        None => Err(not_found(&format!("Host {id}"))),
    })
    .await
}

/// The saved query itself: `/queries/{id}`, `/reports/{id}`.
pub(super) async fn query(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<u64>,
) -> Response {
    serve(&s, "query", &headers, &uri, |st| {
        let Some(q) = st.query.as_ref().filter(|_| id == st.query_id) else {
            return Err(not_found(&format!("Query {id}")));
        };
        let query = json!({"id": id, "name": "device certificates",
            "query": "SELECT group_concat(sha1, ',') AS sha1 FROM certificates WHERE ca = 0;",
            "description": "", "team_id": null, "interval": 3600, "platform": "", "min_osquery_version": "",
            "automations_enabled": false, "logging": q.logging, "saved": true, "observer_can_run": false,
            "discard_data": q.discard_data, "author_id": 1, "author_name": "Admin",
            "author_email": "admin@example.com", "packs": [], "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z"});
        Ok(under_both_names(st, "query", "report", query))
    })
    .await
}

/// The saved query's report: `/queries/{id}/report`, `/reports/{id}/report`.
pub(super) async fn report(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Query(q): Q,
) -> Response {
    serve(&s, "query_report", &headers, &uri, |st| {
        if id != st.query_id || st.query.is_none() {
            return Err(not_found(&format!("Query {id}")));
        }
        let asked = match st.report_pages && q.contains_key("per_page") {
            true => Some(paging(&q)?),
            false => None,
        };
        Ok(report_body(st, id, asked))
    })
    .await
}
