//! `POST /.fleet-authz/bypass` on the HTTP listener: takes up the bypass a
//! deny page offered. Envoy routes the path here with ext_authz off and sets
//! `x-forwarded-client-cert` itself (SANITIZE_SET), so the device is the one
//! whose certificate Envoy verified; nothing in the form names a device.
//!
//! Checks, in order, each refusal storing nothing: same origin (`Origin`,
//! `Sec-Fetch-Site`) → 403; the forwarded certificate → 403; the page token
//! (this device, this route, 10 minutes) → 403; a reason → 400; the deny
//! still bypassable and the daily limit and the token unspent → 403. Success
//! is a 303 back to the page. A form over 16 KiB is 413.

use std::{sync::Arc, time::SystemTime};

use axum::{
    Form, Router,
    extract::{DefaultBodyLimit, State, rejection::FormRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::Deserialize;

use super::{BYPASS_PATH, Door};
use crate::{
    fingerprint::Fingerprint,
    grants::{BypassLimits, BypassRefusal, GrantRequest, GrantSubject},
    html::escape,
    identity::{XFCC_HEADER, xfcc_certificate},
    telemetry::metrics::ResultLabels,
};

/// Longest reason kept, in characters.
const MAX_REASON: usize = 500;

/// The route of the bypass endpoint.
pub fn router(door: Arc<Door>) -> Router {
    Router::new()
        .route(BYPASS_PATH, post(take_bypass))
        .layer(DefaultBodyLimit::max(16 * 1024))
        .with_state(door)
}

/// The form on the deny page. Other fields are ignored: the device comes
/// from the certificate alone.
#[derive(Debug, Default, Deserialize)]
struct BypassForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    route: String,
    #[serde(default)]
    reason: String,
    /// The deny page's path and query, to return to.
    #[serde(default)]
    return_to: String,
}

/// Why a bypass was refused.
#[derive(Debug)]
enum Refusal {
    CrossOrigin(String),
    NoCertificate(String),
    Token(String),
    MissingReason,
    NotEligible(String),
    Store(String),
}

impl Refusal {
    /// HTTP status and the `result` label of `fleet_authz_bypass_requests_total`.
    fn status_and_label(&self) -> (StatusCode, &'static str) {
        match self {
            Self::CrossOrigin(_) => (StatusCode::FORBIDDEN, "cross_origin"),
            Self::NoCertificate(_) => (StatusCode::FORBIDDEN, "no_certificate"),
            Self::Token(_) => (StatusCode::FORBIDDEN, "bad_token"),
            Self::MissingReason => (StatusCode::BAD_REQUEST, "missing_reason"),
            Self::NotEligible(_) => (StatusCode::FORBIDDEN, "not_eligible"),
            Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "error"),
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::CrossOrigin(m)
            | Self::NoCertificate(m)
            | Self::Token(m)
            | Self::NotEligible(m)
            | Self::Store(m) => m,
            Self::MissingReason => "Say why you need to continue: the reason is required.",
        }
    }
}

async fn take_bypass(
    State(door): State<Arc<Door>>,
    headers: HeaderMap,
    form: Result<Form<BypassForm>, FormRejection>,
) -> Response {
    // An oversized form is refused as such; any other bad form is read as
    // empty, and the checks below refuse it.
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return (StatusCode::PAYLOAD_TOO_LARGE, "form too large\n").into_response();
        }
        Err(_) => BypassForm::default(),
    };
    let back = return_path(&form.return_to).to_owned();
    let taken = door.take(&headers, form, SystemTime::now()).await;
    let metrics = &door.authorizer.metrics;
    let result = match &taken {
        Ok(()) => "granted",
        Err(refusal) => refusal.status_and_label().1,
    };
    metrics
        .bypass_requests
        .get_or_create(&ResultLabels { result })
        .inc();
    match taken {
        Ok(()) => {
            let location = HeaderValue::from_str(&back).unwrap_or(HeaderValue::from_static("/"));
            (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
        }
        Err(refusal) => refused(&refusal, &back),
    }
}

/// The page's own path when it is one (`/…`, not `//host`), else `/`: the
/// 303 never leaves the origin.
fn return_path(raw: &str) -> &str {
    let local = raw.starts_with('/')
        && !raw.starts_with("//")
        && !raw.contains('\\')
        && raw.len() <= 2048
        && !raw.chars().any(char::is_control);
    if local { raw } else { "/" }
}

fn refused(refusal: &Refusal, back: &str) -> Response {
    let (status, _) = refusal.status_and_label();
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Bypass refused</title></head>\n<body><main><h1>Bypass refused</h1>\
<p>{}</p><p><a href=\"{}\">Back to the page</a></p></main></body></html>\n",
        escape(refusal.message()),
        escape(back)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

// === impl Door ===

impl Door {
    /// Checks one bypass request and stores the grant; `Err` stores nothing.
    async fn take(
        self: &Arc<Self>,
        headers: &HeaderMap,
        form: BypassForm,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        same_origin(headers).map_err(Refusal::CrossOrigin)?;
        let fingerprint = self.forwarded_fingerprint(headers)?;
        let issued_at = self
            .key
            .verify(&form.token, &fingerprint, &form.route, now)
            .map_err(|e| Refusal::Token(e.to_string()))?;
        let reason: String = form.reason.trim().chars().take(MAX_REASON).collect();
        if reason.is_empty() {
            return Err(Refusal::MissingReason);
        }
        let (host, rule) = self.eligible(fingerprint, &form.route, now)?;
        let request = GrantRequest {
            subject: GrantSubject::Host(host),
            reason,
            granted_by: "self-service".to_owned(),
            duration: rule.duration,
            bypass_route: Some(form.route.clone()),
        };
        let limits = BypassLimits {
            max_per_day: rule.max_per_day,
            token_issued_at: issued_at,
        };
        let grants = Arc::clone(&self.grants);
        let given =
            tokio::task::spawn_blocking(move || grants.grant_bypass(host, request, limits, now))
                .await
                .map_err(|e| Refusal::Store(e.to_string()))?
                .map_err(|e| Refusal::Store(e.to_string()))?;
        let grant = given.map_err(|refusal| match refusal {
            BypassRefusal::TokenSpent => Refusal::Token(refusal.to_string()),
            BypassRefusal::LimitReached(_) => Refusal::NotEligible(refusal.to_string()),
        })?;
        tracing::warn!(
            grant_id = grant.id,
            host_id = host.0,
            route = %form.route,
            reason = %grant.reason,
            expires_at = %humantime::format_rfc3339_seconds(grant.expires_at),
            "self-service bypass given"
        );
        Ok(())
    }

    /// The device whose certificate Envoy forwarded, from XFCC only.
    fn forwarded_fingerprint(&self, headers: &HeaderMap) -> Result<Fingerprint, Refusal> {
        let value = headers
            .get(XFCC_HEADER)
            .ok_or_else(|| Refusal::NoCertificate("no client certificate was forwarded".into()))?
            .to_str()
            .map_err(|_| {
                Refusal::NoCertificate("the forwarded certificate is unreadable".into())
            })?;
        xfcc_certificate(value, self.xfcc_element)
            .map(|der| Fingerprint::of_der(&der))
            .map_err(|e| Refusal::NoCertificate(format!("the forwarded certificate: {e}")))
    }

    /// The host and the route's bypass rule, when this device is denied on
    /// `route` for failing non-critical policies only.
    fn eligible(
        &self,
        fingerprint: Fingerprint,
        route: &str,
        now: SystemTime,
    ) -> Result<(crate::posture::HostId, crate::policy::BypassRule), Refusal> {
        let refuse = |m: &str| Refusal::NotEligible(m.to_owned());
        let outcome = self
            .authorizer
            .decide_named(fingerprint, route, now)
            .ok_or_else(|| refuse("this route no longer exists"))?;
        if outcome.decision.allowed {
            return Err(refuse("this device is not denied on this route"));
        }
        let host = outcome
            .host
            .as_ref()
            .map(|h| h.id)
            .ok_or_else(|| refuse("this device is not enrolled in Fleet"))?;
        let offer = self
            .offer(&outcome, now)
            .ok_or_else(|| refuse("this deny cannot be bypassed: fix the failing checks"))?;
        let rule = crate::policy::BypassRule {
            duration: offer.duration,
            max_per_day: offer.max_per_day,
        };
        Ok((host, rule))
    }
}

/// Refuses a request not sent by a page of the same origin: `Origin` must be
/// present and equal the request's scheme and host, and `Sec-Fetch-Site`,
/// when sent, must be `same-origin`.
fn same_origin(headers: &HeaderMap) -> Result<(), String> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site")
        && site != "same-origin"
    {
        return Err(format!("a {site} request cannot take a bypass"));
    }
    let origin = get("origin").ok_or("the request has no Origin")?;
    let host = get("host").ok_or("the request has no Host")?;
    let scheme = get("x-forwarded-proto").unwrap_or("https");
    let expected = format!("{scheme}://{host}");
    if origin.eq_ignore_ascii_case(&expected) {
        Ok(())
    } else {
        Err(format!("a request from {origin} cannot take a bypass here"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_a_same_origin_post_passes() {
        let base = [
            ("host", "app.example.com:8443"),
            ("x-forwarded-proto", "https"),
        ];
        let with =
            |extra: &[(&'static str, &'static str)]| headers(&[base.as_slice(), extra].concat());
        assert_eq!(
            same_origin(&with(&[
                ("origin", "https://app.example.com:8443"),
                ("sec-fetch-site", "same-origin")
            ])),
            Ok(())
        );
        assert!(same_origin(&with(&[("origin", "https://app.example.com:8443")])).is_ok());
        for bad in [
            &[("origin", "https://evil.example")][..],
            &[("origin", "http://app.example.com:8443")][..],
            &[("origin", "null")][..],
            &[][..],
            &[
                ("origin", "https://app.example.com:8443"),
                ("sec-fetch-site", "cross-site"),
            ][..],
            &[
                ("origin", "https://app.example.com:8443"),
                ("sec-fetch-site", "same-site"),
            ][..],
        ] {
            assert!(same_origin(&with(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_303_never_leaves_the_origin() {
        assert_eq!(return_path("/payroll/q3?x=1"), "/payroll/q3?x=1");
        for bad in [
            "",
            "https://evil.example/",
            "//evil.example/",
            "/\\evil",
            "x",
            "/a\nb",
        ] {
            assert_eq!(return_path(bad), "/", "{bad:?}");
        }
    }
}
