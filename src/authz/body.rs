//! The deny body a person sees: JSON by default, an HTML page when the
//! request's `accept` prefers `text/html` (DESIGN.md §1.6). Pure functions.

use serde_json::{Value, json};

use crate::{
    duration::format_duration,
    fingerprint::Fingerprint,
    policy::{Decision, Reason},
    posture::HostPosture,
};

/// What a deny body says besides the decision itself.
#[derive(Debug, Clone, Copy)]
pub struct BodyContext<'a> {
    pub host: Option<&'a HostPosture>,
    pub fingerprint: Option<&'a Fingerprint>,
    /// Configured remediation URL, `{host_id}` / `{host_uuid}` not yet filled.
    pub remediation_url: Option<&'a str>,
    pub request_id: &'a str,
}

/// The decision as the JSON document of DESIGN.md §1.6.
pub fn decision_json(decision: &Decision, ctx: &BodyContext<'_>) -> Value {
    let mut doc = json!({
        "decision": decision.verdict(),
        "route": &*decision.route,
        "reasons": decision.reasons.iter().map(reason_json).collect::<Vec<_>>(),
        "request_id": ctx.request_id,
    });
    if decision.is_dry_run_deny() {
        doc["mode"] = json!("dry_run");
    }
    if let Some(h) = ctx.host {
        doc["host"] = json!({"id": h.id.0, "display_name": h.display_name, "team": h.team_name()});
    }
    if let Some(fp) = ctx.fingerprint {
        doc["certificate"] = json!({"sha1": fp.to_hex()});
    }
    if let Some(url) = remediation_url(ctx) {
        doc["remediation_url"] = json!(url);
    }
    doc
}

/// The remediation URL with `{host_id}` and `{host_uuid}` filled in.
pub fn remediation_url(ctx: &BodyContext<'_>) -> Option<String> {
    let url = ctx.remediation_url?;
    let (id, uuid) = ctx
        .host
        .map(|h| (h.id.0.to_string(), h.uuid.clone()))
        .unwrap_or_default();
    Some(url.replace("{host_id}", &id).replace("{host_uuid}", &uuid))
}

/// One reason as JSON, `kind` first.
pub fn reason_json(reason: &Reason) -> Value {
    let kind = reason.kind();
    match reason {
        Reason::NoClientCertificate { detail } | Reason::InvalidClientCertificate { detail } => {
            json!({"kind": kind, "detail": detail})
        }
        Reason::UnknownDevice => json!({"kind": kind}),
        Reason::FailingPolicy(p)
        | Reason::FailingCriticalPolicy(p)
        | Reason::FailingAnyPolicy(p) => json!({
            "kind": kind, "policy_id": p.policy_id, "name": &*p.name, "critical": p.critical,
            "resolution": p.resolution.as_deref(),
        }),
        Reason::Vulnerability { cve } => json!({"kind": kind, "cve": &**cve}),
        Reason::LastSeenOver { last_seen, limit } => json!({
            "kind": kind,
            "last_seen": last_seen.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            "limit": format_duration(*limit),
        }),
        Reason::StalePosture { age, limit } => {
            json!({"kind": kind, "age": format_duration(*age), "limit": format_duration(*limit)})
        }
        Reason::Requirement {
            requirement,
            expected,
            actual,
        } => json!({
            "kind": kind, "requirement": requirement.as_str(), "expected": expected, "actual": actual,
        }),
        Reason::BreakGlass { grant_id, reason } => {
            json!({"kind": kind, "grant_id": grant_id, "reason": reason})
        }
    }
}

/// True when `accept` ranks `text/html` above `application/json` (q-values;
/// a bare `*/*` does not count as preferring HTML).
pub fn prefers_html(accept: &str) -> bool {
    let (mut html, mut json) = (0.0_f32, 0.0_f32);
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html = html.max(q),
            "application/json" | "application/*" => json = json.max(q),
            "*/*" => json = json.max(q * 0.999),
            _ => {}
        }
    }
    html > 0.0 && html > json
}

/// A self-contained HTML page telling the person what to fix.
pub fn decision_html(decision: &Decision, ctx: &BodyContext<'_>) -> String {
    let mut items = String::new();
    for r in &decision.reasons {
        items.push_str("<li>");
        items.push_str(&reason_html(r));
        items.push_str("</li>\n");
    }
    let device = ctx
        .host
        .map(|h| {
            format!(
                "<p>Device: <strong>{}</strong></p>",
                escape(&h.display_name)
            )
        })
        .unwrap_or_default();
    let link = remediation_url(ctx)
        .map(|u| format!("<p><a href=\"{0}\">Open your device page in Fleet</a> to see every check and how to fix it.</p>", escape(&u)))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Access blocked: your device needs attention</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}li{{margin:.5rem 0}}small{{color:#666}}</style></head>\n\
<body><h1>Your device needs attention</h1>\n<p>Access to <strong>{route}</strong> was blocked because of your device's security posture.</p>\n{device}\n<ul>\n{items}</ul>\n{link}\n<p><small>Request {rid}</small></p></body></html>\n",
        route = escape(&decision.route),
        rid = escape(ctx.request_id),
    )
}

fn reason_html(r: &Reason) -> String {
    match r {
        Reason::NoClientCertificate { .. } => "No device certificate was presented. Use a managed device with its certificate installed.".to_owned(),
        Reason::InvalidClientCertificate { detail } => format!("The device certificate could not be read ({}).", escape(detail)),
        Reason::UnknownDevice => "This device is not enrolled in Fleet. Enroll it, or ask IT for help.".to_owned(),
        Reason::FailingPolicy(p) | Reason::FailingCriticalPolicy(p) | Reason::FailingAnyPolicy(p) => {
            let mut s = format!("<strong>{}</strong>{} is failing.", escape(&p.name), if p.critical { " (critical)" } else { "" });
            if let Some(fix) = &p.resolution {
                s.push_str(&format!(" How to fix: {}", escape(fix)));
            }
            s
        }
        Reason::Vulnerability { cve } => format!("Software on this device is affected by {}. Update it.", escape(cve)),
        Reason::LastSeenOver { limit, .. } => format!(
            "This device has not checked in with Fleet in the last {}. Connect it to the network and make sure Fleet Desktop is running.",
            format_duration(*limit)
        ),
        Reason::StalePosture { .. } => "Device posture could not be refreshed recently. Try again in a few minutes.".to_owned(),
        Reason::Requirement { requirement, expected, .. } => format!(
            "This service requires a device whose {} is one of: {}.",
            requirement.as_str(),
            escape(&expected.join(", "))
        ),
        Reason::BreakGlass { reason, .. } => format!("Emergency access granted: {}", escape(reason)),
    }
}

/// Minimal HTML escaping for text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation_prefers_html_only_when_ranked_higher() {
        assert!(prefers_html(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(!prefers_html("*/*"));
        assert!(!prefers_html("application/json"));
        assert!(!prefers_html("text/html;q=0.5, application/json"));
        assert!(!prefers_html(""));
        assert!(prefers_html("text/html"));
    }

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
