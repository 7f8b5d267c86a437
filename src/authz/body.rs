//! The deny body a person sees: JSON by default, an HTML page when the
//! request's `accept` prefers `text/html` (DESIGN.md §1.6). Pure functions.

use serde::{Serialize, Serializer, ser::SerializeMap};
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
    /// Configured remediation URL, its placeholders not yet filled.
    pub remediation_url: Option<&'a str>,
    pub request_id: &'a str,
}

/// The decision as the JSON document of DESIGN.md §1.6.
pub fn decision_json(decision: &Decision, ctx: &BodyContext<'_>) -> Value {
    serde_json::to_value(DecisionBody { decision, ctx }).unwrap_or(Value::Null)
}

/// The same document as text: the deny body. Serialized straight from the
/// decision, without building a `Value` first (it is on the deny path).
pub fn decision_json_string(decision: &Decision, ctx: &BodyContext<'_>) -> String {
    serde_json::to_string(&DecisionBody { decision, ctx }).unwrap_or_default()
}

/// Serializes as the deny body, keys in the documented order.
struct DecisionBody<'a> {
    decision: &'a Decision,
    ctx: &'a BodyContext<'a>,
}

impl Serialize for DecisionBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (d, ctx) = (self.decision, self.ctx);
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("decision", d.verdict())?;
        if d.is_dry_run_deny() {
            map.serialize_entry("mode", "dry_run")?;
        }
        map.serialize_entry("route", &*d.route)?;
        if let Some(h) = ctx.host {
            map.serialize_entry(
                "host",
                &json!({"id": h.id.0, "display_name": h.display_name, "team": h.team_name()}),
            )?;
        }
        if let Some(fp) = ctx.fingerprint {
            map.serialize_entry("certificate", &json!({"sha1": fp.to_hex()}))?;
        }
        let reasons: Vec<ReasonBody<'_>> = d.reasons.iter().map(ReasonBody).collect();
        map.serialize_entry("reasons", &reasons)?;
        if let Some(url) = remediation_url(ctx) {
            map.serialize_entry("remediation_url", &url)?;
        }
        map.serialize_entry("request_id", ctx.request_id)?;
        map.end()
    }
}

/// The remediation URL with `{host_id}`, `{host_uuid}` and
/// `{hardware_serial}` filled in, percent-encoded (a serial may hold
/// spaces); empty for an unknown device.
pub fn remediation_url(ctx: &BodyContext<'_>) -> Option<String> {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let url = ctx.remediation_url?;
    if !url.contains('{') {
        return Some(url.to_owned());
    }
    let (id, uuid, serial) = ctx
        .host
        .map(|h| (h.id.0.to_string(), &*h.uuid, &*h.hardware_serial))
        .unwrap_or_default();
    let encode = |v: &str| percent_encoding::utf8_percent_encode(v, KEEP).to_string();
    Some(
        url.replace("{host_id}", &id)
            .replace("{host_uuid}", &encode(uuid))
            .replace("{hardware_serial}", &encode(serial)),
    )
}

/// One reason as JSON, `kind` first.
pub fn reason_json(reason: &Reason) -> Value {
    serde_json::to_value(ReasonBody(reason)).unwrap_or(Value::Null)
}

/// Serializes one reason, `kind` first.
struct ReasonBody<'a>(&'a Reason);

impl Serialize for ReasonBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let reason = self.0;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("kind", reason.kind())?;
        match reason {
            Reason::NoClientCertificate { detail }
            | Reason::InvalidClientCertificate { detail } => {
                map.serialize_entry("detail", detail)?;
            }
            Reason::UnknownDevice => {}
            Reason::FailingPolicy(p)
            | Reason::FailingCriticalPolicy(p)
            | Reason::FailingAnyPolicy(p) => {
                map.serialize_entry("policy_id", &p.policy_id)?;
                map.serialize_entry("name", &*p.name)?;
                map.serialize_entry("critical", &p.critical)?;
                map.serialize_entry("resolution", &p.resolution.as_deref())?;
            }
            Reason::Vulnerability { cve } => map.serialize_entry("cve", &**cve)?,
            Reason::LastSeenOver { last_seen, limit } => {
                let seen = last_seen.map(|t| humantime::format_rfc3339_seconds(t).to_string());
                map.serialize_entry("last_seen", &seen)?;
                map.serialize_entry("limit", &format_duration(*limit))?;
            }
            Reason::StalePosture { age, limit } => {
                map.serialize_entry("age", &format_duration(*age))?;
                map.serialize_entry("limit", &format_duration(*limit))?;
            }
            Reason::Requirement {
                requirement,
                expected,
                actual,
            } => {
                map.serialize_entry("requirement", requirement.as_str())?;
                map.serialize_entry("expected", expected)?;
                map.serialize_entry("actual", actual)?;
            }
            Reason::BreakGlass { grant_id, reason } => {
                map.serialize_entry("grant_id", grant_id)?;
                map.serialize_entry("reason", reason)?;
            }
        }
        map.end()
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
