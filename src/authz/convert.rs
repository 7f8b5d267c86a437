//! The only place that knows Envoy's ext_authz types: `CheckRequest` →
//! request facts, `Decision` → `CheckResponse`. Pure and unit-tested.

use std::{borrow::Cow, collections::HashMap, sync::LazyLock};

use envoy_types::pb::{
    envoy::{
        config::core::v3::{
            HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
        },
        service::auth::v3::{
            CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
            check_response::HttpResponse,
        },
        r#type::v3::{HttpStatus, StatusCode as HttpStatusCode},
    },
    google::{
        protobuf::{Struct, Value, value::Kind},
        rpc,
    },
};

use super::{
    body::{self, BodyContext},
    page::{self, PageFacts},
    wire,
};
use crate::{
    identity::Headers,
    policy::{Decision, Reason, warning_header},
    posture::HostPosture,
};

/// Identity headers set on allowed requests; client-sent copies never pass.
pub const IDENTITY_HEADERS: [&str; 4] = [
    "x-fleet-host-id",
    "x-fleet-host-uuid",
    "x-fleet-host-name",
    "x-fleet-team",
];
/// Comma-separated reason kinds on a deny (and on a dry-run allow).
pub const REASON_HEADER: &str = "x-fleet-authz-reason";
/// Set to `deny` when a dry-run route would have denied.
pub const DRY_RUN_HEADER: &str = "x-fleet-authz-dry-run";
/// On allows while failing policies are inside `grace`:
/// `<policy id>;deadline=<RFC 3339>`, comma-separated (DESIGN.md §9).
pub const WARNING_HEADER: &str = "x-fleet-authz-warning";
/// On allows by a self-service bypass: its RFC 3339 expiry.
pub const BYPASS_HEADER: &str = "x-fleet-authz-bypass";

static EMPTY: LazyLock<HashMap<String, String>> = LazyLock::new(HashMap::new);

/// The request headers, from either request type.
#[derive(Debug, Clone, Copy)]
pub enum HeaderView<'a> {
    /// The generated `CheckRequest`'s map (admin API, CLI, tests).
    Map(&'a HashMap<String, String>),
    /// The lean request's list (the gRPC service).
    List(wire::HeaderList<'a>),
}

impl<'a> HeaderView<'a> {
    /// The raw value of header `name` (lower-case), borrowed from the request.
    pub fn get_bytes(self, name: &str) -> Option<&'a [u8]> {
        match self {
            Self::Map(map) => map.get(name).map(String::as_bytes),
            Self::List(list) => list.get_bytes(name),
        }
    }

    /// The value of header `name` as text; `None` when absent or not UTF-8.
    pub fn get(self, name: &str) -> Option<&'a str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

impl Headers for HeaderView<'_> {
    fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.get_bytes(name)
    }
}

/// What fleet-authz reads from a `CheckRequest`, borrowed. Host, path and
/// request id are text with U+FFFD for bytes that are not UTF-8 (a copy
/// only then); the certificate stays raw bytes for identity to judge.
#[derive(Debug, Clone)]
pub struct CheckFacts<'a> {
    /// Request headers, lower-case names.
    pub headers: HeaderView<'a>,
    /// Per-route `context_extensions`.
    pub context: &'a HashMap<String, String>,
    /// `source.certificate` (URL-encoded PEM), empty when not sent.
    pub peer_certificate: &'a [u8],
    pub authority: Cow<'a, str>,
    pub path: Cow<'a, str>,
    /// Envoy's request id (`x-request-id`).
    pub request_id: Cow<'a, str>,
}

impl<'a> CheckFacts<'a> {
    /// Borrows the facts out of a request; absent parts read as empty.
    pub fn from_request(req: &'a CheckRequest) -> Self {
        let attrs = req.attributes.as_ref();
        let http = attrs
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        Self::assemble(
            HeaderView::Map(http.map_or(&*EMPTY, |h| &h.headers)),
            attrs.map_or(&*EMPTY, |a| &a.context_extensions),
            attrs
                .and_then(|a| a.source.as_ref())
                .map_or(&[], |s| s.certificate.as_bytes()),
            http.map_or([const { Cow::Borrowed("") }; 3], |h| {
                [h.host.as_str(), h.path.as_str(), h.id.as_str()].map(Cow::Borrowed)
            }),
        )
    }

    /// The same from the lean request the gRPC service decodes.
    pub fn from_lean(req: &'a wire::CheckRequest) -> Self {
        let attrs = req.attributes.as_ref();
        let http = attrs
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        Self::assemble(
            HeaderView::List(wire::HeaderList(http.map_or(&[], |h| &h.headers))),
            attrs.map_or(&*EMPTY, |a| &a.context_extensions),
            attrs
                .and_then(|a| a.source.as_ref())
                .map_or(&[], |s| &s.certificate[..]),
            http.map_or([const { Cow::Borrowed("") }; 3], |h| {
                [&h.host, &h.path, &h.id].map(|b| wire::text(b))
            }),
        )
    }

    /// `[host, path, id]` fall back to the `:authority` and `x-request-id`
    /// headers when empty.
    fn assemble(
        headers: HeaderView<'a>,
        context: &'a HashMap<String, String>,
        peer_certificate: &'a [u8],
        [host, path, id]: [Cow<'a, str>; 3],
    ) -> Self {
        let or_header = |value: Cow<'a, str>, name: &str| {
            if value.is_empty() {
                wire::text(headers.get_bytes(name).unwrap_or_default())
            } else {
                value
            }
        };
        Self {
            headers,
            context,
            peer_certificate,
            authority: or_header(host, ":authority"),
            path,
            request_id: or_header(id, "x-request-id"),
        }
    }

    /// A header by lower-case name, or "".
    pub fn header(&self, name: &str) -> &'a str {
        self.headers.get(name).unwrap_or("")
    }
}

/// Longest identity header value sent upstream, in bytes.
pub const MAX_IDENTITY_HEADER_BYTES: usize = 256;

/// A header value made from Fleet data (a computer's name, a team's):
/// control characters dropped (a CR, LF or NUL would make Envoy refuse the
/// request, locking the device out by its own name), surrounding
/// whitespace trimmed, cut to [`MAX_IDENTITY_HEADER_BYTES`] on a character
/// boundary.
pub fn header_safe(value: &str) -> String {
    // Nearly every name is fine as it is: one scan, one copy.
    let clean = value.len() <= MAX_IDENTITY_HEADER_BYTES
        && !value.chars().any(char::is_control)
        && value.trim().len() == value.len();
    if clean {
        return value.to_owned();
    }
    let mut out: String = value.chars().filter(|c| !c.is_control()).collect();
    let trimmed = out.trim();
    if trimmed.len() != out.len() {
        out = trimmed.to_owned();
    }
    if out.len() > MAX_IDENTITY_HEADER_BYTES {
        let cut = out.floor_char_boundary(MAX_IDENTITY_HEADER_BYTES);
        out.truncate(cut);
        out.truncate(out.trim_end().len());
    }
    out
}

fn header(key: &str, value: impl Into<String>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.into(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn string_value(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// Builds Envoy's answer. `accept` picks JSON or HTML for a deny body.
pub fn to_response(decision: &Decision, ctx: &BodyContext<'_>, accept: &str) -> CheckResponse {
    let kinds = decision.reason_kinds().join(",");
    let mut metadata = Struct::default();
    metadata
        .fields
        .insert("route".to_owned(), string_value(&*decision.route));
    metadata
        .fields
        .insert("decision".to_owned(), string_value(decision.verdict()));
    if !kinds.is_empty() {
        metadata
            .fields
            .insert("reasons".to_owned(), string_value(kinds.clone()));
    }
    if let Some(h) = ctx.host {
        metadata
            .fields
            .insert("host_id".to_owned(), string_value(h.id.0.to_string()));
    }
    let notes = AllowNotes::of(decision);
    if let Some(w) = &notes.warning {
        metadata
            .fields
            .insert("warnings".to_owned(), string_value(w.clone()));
    }
    if let Some(b) = &notes.bypass {
        metadata
            .fields
            .insert("bypass".to_owned(), string_value(b.clone()));
    }
    let (code, http_response) = if decision.answer_allows() {
        (
            rpc::Code::Ok,
            HttpResponse::OkResponse(ok_response(decision, ctx.host, &kinds, notes)),
        )
    } else {
        (
            rpc::Code::PermissionDenied,
            HttpResponse::DeniedResponse(denied_response(decision, ctx, accept, kinds)),
        )
    };
    CheckResponse {
        status: Some(rpc::Status {
            code: code as i32,
            ..Default::default()
        }),
        http_response: Some(http_response),
        dynamic_metadata: Some(metadata),
    }
}

/// What an allow tells the app besides identity: the grace warnings and the
/// bypass expiry, as header values.
struct AllowNotes {
    warning: Option<String>,
    bypass: Option<String>,
}

impl AllowNotes {
    fn of(decision: &Decision) -> Self {
        let bypass = decision.reasons.iter().find_map(|r| match r {
            Reason::Bypass { expires_at, .. } => {
                Some(humantime::format_rfc3339_seconds(*expires_at).to_string())
            }
            _ => None,
        });
        Self {
            warning: warning_header(&decision.warnings),
            bypass,
        }
    }
}

fn ok_response(
    decision: &Decision,
    host: Option<&HostPosture>,
    kinds: &str,
    notes: AllowNotes,
) -> OkHttpResponse {
    let mut headers = Vec::with_capacity(5);
    let mut remove = Vec::new();
    let values: [Option<String>; 4] = match host {
        // unknown_device: allow, or stale_posture: allow with no host
        None => [None, None, None, None],
        Some(h) => [
            Some(h.id.0.to_string()),
            Some(header_safe(&h.uuid)).filter(|s| !s.is_empty()),
            Some(header_safe(&h.display_name)).filter(|s| !s.is_empty()),
            h.team_name().map(header_safe).filter(|s| !s.is_empty()),
        ],
    };
    for (name, value) in IDENTITY_HEADERS.iter().zip(values) {
        match value {
            // Overwrite replaces any client-sent copy, so no removal needed.
            Some(v) => headers.push(header(name, v)),
            None => remove.push((*name).to_owned()),
        }
    }
    let mut response_headers_to_add = Vec::new();
    if decision.is_dry_run_deny() {
        headers.push(header(DRY_RUN_HEADER, "deny"));
        headers.push(header(REASON_HEADER, kinds));
        response_headers_to_add.push(header(DRY_RUN_HEADER, "deny"));
    } else {
        remove.push(DRY_RUN_HEADER.to_owned());
        remove.push(REASON_HEADER.to_owned());
    }
    // Set, or removed so a client cannot send its own.
    for (name, value) in [
        (WARNING_HEADER, notes.warning),
        (BYPASS_HEADER, notes.bypass),
    ] {
        match value {
            Some(v) => headers.push(header(name, v)),
            None => remove.push(name.to_owned()),
        }
    }
    OkHttpResponse {
        headers,
        headers_to_remove: remove,
        response_headers_to_add,
        ..Default::default()
    }
}

fn denied_response(
    decision: &Decision,
    ctx: &BodyContext<'_>,
    accept: &str,
    kinds: String,
) -> DeniedHttpResponse {
    let html = body::prefers_html(accept);
    let (content_type, body) = if html {
        let fallback = PageFacts::default();
        (
            "text/html; charset=utf-8",
            page::decision_html(decision, ctx, ctx.page.unwrap_or(&fallback)),
        )
    } else {
        (
            "application/json",
            body::decision_json_string(decision, ctx),
        )
    };
    let status = HttpStatusCode::try_from(i32::from(decision.deny_status))
        .unwrap_or(HttpStatusCode::Forbidden);
    DeniedHttpResponse {
        status: Some(HttpStatus {
            code: status as i32,
        }),
        headers: vec![
            header(REASON_HEADER, kinds),
            header("content-type", content_type),
            header("cache-control", "no-store"),
        ],
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_names_become_safe_header_values() {
        assert_eq!(header_safe("Anna's MacBook"), "Anna's MacBook");
        assert_eq!(header_safe(" Ben\r\nX-Evil: 1\0 "), "BenX-Evil: 1");
        assert_eq!(header_safe("caf\u{e9}\u{7f}\t"), "caf\u{e9}");
        let long = "\u{e9}".repeat(200);
        let cut = header_safe(&long);
        assert!(
            cut.len() <= MAX_IDENTITY_HEADER_BYTES && cut.len() >= MAX_IDENTITY_HEADER_BYTES - 1
        );
        assert!(cut.chars().all(|c| c == '\u{e9}'));
        assert_eq!(header_safe("\n\r"), "");
    }
}
