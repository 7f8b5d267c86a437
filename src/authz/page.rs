//! The deny page (DESIGN.md §9): what was blocked, the device, every failing
//! check with Fleet's resolution, when Fleet last heard from the device,
//! what to do (Fleet Desktop → My device → fix → Refetch → try again), the
//! bypass offer when there is one, the support contact and the request id.
//!
//! One self-contained document: inline CSS, no external asset, readable at
//! 320 px, dark by `prefers-color-scheme`. Every value from Fleet, the policy
//! or the request is HTML-escaped; a resolution's line breaks and numbered
//! or bulleted steps become paragraphs and lists, never raw HTML.

use std::time::{Duration, SystemTime};

use super::body::{BodyContext, remediation_url};
use crate::html::escape;
use crate::{
    bypass::{BYPASS_PATH, Offer},
    duration::format_duration,
    policy::{Decision, DenyPage, Reason},
};

/// What the person is told to do when Fleet can tell them what to fix.
/// The JSON body's `next_steps` and `fleet-authz check` say the same.
pub const FLEET_DESKTOP_STEPS: [&str; 4] = [
    "Open Fleet Desktop (the Fleet icon in the menu bar or system tray) and choose \"My device\".",
    "Fix each failing check, as its resolution below says.",
    "Click \"Refetch\" so Fleet checks this device again.",
    "Try again.",
];

/// The page's facts that do not come from the decision.
#[derive(Debug, Clone, Default)]
pub struct PageFacts {
    /// The route's `title`, else the request's host name.
    pub title: String,
    /// The path (and query) of the denied request: where "Try again" and a
    /// bypass return to.
    pub return_to: String,
    pub support: DenyPage,
    pub offer: Option<Offer>,
    /// The route the offer is for.
    pub route: String,
}

/// The steps that apply to `decision`: Fleet Desktop's when a check on the
/// device failed, none otherwise (the reasons then say what to do).
pub fn next_steps(decision: &Decision) -> &'static [&'static str] {
    let fixable = decision.reasons.iter().any(|r| {
        r.policy().is_some()
            || matches!(
                r,
                Reason::Vulnerability { .. } | Reason::LastSeenOver { .. }
            )
    });
    if fixable { &FLEET_DESKTOP_STEPS } else { &[] }
}

const STYLE: &str = "\
:root{color-scheme:light dark;--bg:#fff;--fg:#1b1f24;--muted:#50565e;--card:#f4f6f8;--line:#d5d9de;\
--accent:#0b57d0;--on-accent:#fff;--crit:#b3261e;--on-crit:#fff}\
@media (prefers-color-scheme:dark){:root{--bg:#15171a;--fg:#e8eaed;--muted:#bdc1c6;--card:#202327;\
--line:#3c4043;--accent:#8ab4f8;--on-accent:#0b1a33;--crit:#f2b8b5;--on-crit:#410e0b}}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif}\
main{max-width:42rem;margin:0 auto;padding:1.5rem 1rem 2rem;overflow-wrap:anywhere}\
h1{font-size:1.6rem;line-height:1.25;margin:0 0 .5rem}h2{font-size:1.15rem;margin:1.75rem 0 .5rem}\
h3{font-size:1rem;margin:0 0 .25rem}a{color:var(--accent)}\
.facts{display:grid;grid-template-columns:auto 1fr;gap:.25rem 1rem;margin:1rem 0}.facts dt{color:var(--muted)}.facts dd{margin:0}\
@media (max-width:30rem){.facts{grid-template-columns:1fr;gap:0}.facts dd{margin-bottom:.5rem}}\
.checks{list-style:none;padding:0;margin:0}\
.check{background:var(--card);border:1px solid var(--line);border-radius:.5rem;padding:.75rem 1rem;margin:.5rem 0}\
.check p,.check ol,.check ul{margin:.25rem 0}.badge{display:inline-block;font-size:.8rem;font-weight:600;\
padding:0 .4rem;border-radius:.25rem;background:var(--crit);color:var(--on-crit);vertical-align:middle}\
.steps li{margin:.25rem 0}\
button{font:inherit;font-weight:600;padding:.6rem 1.1rem;border-radius:.4rem;border:1px solid var(--accent);cursor:pointer}\
.primary{background:var(--accent);color:var(--on-accent)}.secondary{background:transparent;color:var(--accent)}\
.bypass{border-top:1px solid var(--line);margin-top:1.75rem}\
label{display:block;font-weight:600;margin:.5rem 0 .25rem}\
textarea{width:100%;min-height:4.5rem;font:inherit;color:var(--fg);background:var(--bg);border:1px solid var(--muted);border-radius:.4rem;padding:.5rem}\
footer{border-top:1px solid var(--line);margin-top:2rem;padding-top:.75rem;color:var(--muted);font-size:.9rem}\
code{font-size:.85rem}";

/// The whole page.
pub fn decision_html(decision: &Decision, ctx: &BodyContext<'_>, page: &PageFacts) -> String {
    let title = escape(&page.title);
    let mut out = String::with_capacity(8 * 1024);
    out.push_str(&format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"color-scheme\" content=\"light dark\">\
<title>Access to {title} blocked</title><style>{STYLE}</style></head>\n<body><main>\n\
<h1>Your device needs attention</h1>\n\
<p>Access to <strong>{title}</strong> was blocked because of this device's security checks.</p>\n"
    ));
    out.push_str(&device_facts(ctx));
    out.push_str("<h2>What failed</h2>\n<ul class=\"checks\">\n");
    for reason in &decision.reasons {
        out.push_str("<li class=\"check\">");
        out.push_str(&reason_html(reason));
        out.push_str("</li>\n");
    }
    out.push_str("</ul>\n");
    out.push_str(&steps_html(decision));
    if let Some(offer) = &page.offer {
        out.push_str(&offer_html(offer, page));
    }
    out.push_str(&footer_html(ctx, &page.support));
    out.push_str("</main></body></html>\n");
    out
}

fn device_facts(ctx: &BodyContext<'_>) -> String {
    let Some(host) = ctx.host else {
        return String::new();
    };
    let seen = match host.last_seen {
        Some(t) => format!(
            "<time datetime=\"{iso}\" title=\"{iso}\">{}</time>",
            ago(ctx.now, t),
            iso = humantime::format_rfc3339_seconds(t)
        ),
        None => "never".to_owned(),
    };
    format!(
        "<dl class=\"facts\"><dt>Device</dt><dd id=\"device\">{}</dd>\
<dt>Fleet last heard from it</dt><dd id=\"last-seen\">{seen}</dd></dl>\n",
        escape(&host.display_name)
    )
}

fn steps_html(decision: &Decision) -> String {
    let steps = next_steps(decision);
    let mut out = String::from("<h2>What to do</h2>\n");
    if !steps.is_empty() {
        out.push_str(
            "<ol class=\"steps\">\
<li>Open <strong>Fleet Desktop</strong> (the Fleet icon in the menu bar or system tray) and choose <strong>My device</strong>.</li>\
<li>Fix each failing check, as its resolution above says.</li>\
<li>Click <strong>Refetch</strong> so Fleet checks this device again.</li>\
<li>Try again.</li></ol>\n",
        );
    }
    out.push_str(
        "<p><button type=\"button\" id=\"try-again\" class=\"primary\" onclick=\"location.reload()\">Try again</button></p>\n",
    );
    out
}

fn offer_html(offer: &Offer, page: &PageFacts) -> String {
    let length = human_duration(offer.duration);
    let Some(token) = &offer.token else {
        return format!(
            "<section class=\"bypass\" aria-labelledby=\"bypass-h\"><h2 id=\"bypass-h\">Can't fix it now?</h2>\
<p>You have used the {} bypasses this service allows in a day. Fix the checks above, or ask for help.</p></section>\n",
            offer.max_per_day
        );
    };
    format!(
        "<section class=\"bypass\" aria-labelledby=\"bypass-h\"><h2 id=\"bypass-h\">Can't fix it now?</h2>\n\
<p>None of these checks is critical, so you may continue for {length} and fix them later \
({remaining} of {max} left in 24 hours). Your IT team sees the reason you give.</p>\n\
<form method=\"post\" action=\"{BYPASS_PATH}\">\
<input type=\"hidden\" name=\"token\" value=\"{token}\">\
<input type=\"hidden\" name=\"route\" value=\"{route}\">\
<input type=\"hidden\" name=\"return_to\" value=\"{back}\">\
<label for=\"reason\">Why do you need to continue now?</label>\
<textarea id=\"reason\" name=\"reason\" required maxlength=\"500\"></textarea>\
<p><button type=\"submit\" class=\"secondary\">Continue for {length}</button></p></form></section>\n",
        remaining = offer.remaining,
        max = offer.max_per_day,
        token = escape(token),
        route = escape(&page.route),
        back = escape(&page.return_to),
    )
}

fn footer_html(ctx: &BodyContext<'_>, support: &DenyPage) -> String {
    let mut out = String::from("<footer>");
    let text = support.support_text.as_deref().map(escape);
    let link = support.support_url.as_deref().map(|u| {
        let label = u.strip_prefix("mailto:").unwrap_or(u);
        format!("<a href=\"{}\">{}</a>", escape(u), escape(label))
    });
    match (text, link) {
        (None, None) => out.push_str("<p>Need help? Contact your IT team"),
        (Some(t), None) => out.push_str(&format!("<p id=\"support\">Need help? {t}")),
        (None, Some(l)) => out.push_str(&format!("<p id=\"support\">Need help? {l}")),
        (Some(t), Some(l)) => out.push_str(&format!("<p id=\"support\">Need help? {t}: {l}")),
    }
    out.push_str(" and give them the request ID below.</p>");
    if let Some(url) = remediation_url(ctx) {
        out.push_str(&format!(
            "<p>More about these checks: <a href=\"{0}\">{0}</a></p>",
            escape(&url)
        ));
    }
    out.push_str(&format!(
        "<p>Request ID: <code id=\"request-id\">{}</code></p></footer>\n",
        escape(ctx.request_id)
    ));
    out
}

fn reason_html(r: &Reason) -> String {
    match r {
        Reason::FailingPolicy(p) | Reason::FailingCriticalPolicy(p) | Reason::FailingAnyPolicy(p) => {
            let badge = if p.critical { " <span class=\"badge\">critical</span>" } else { "" };
            let fix = p
                .resolution
                .as_deref()
                .map(resolution_html)
                .unwrap_or_else(|| "<p>Fleet gives no resolution for this check: ask your IT team.</p>".to_owned());
            format!("<h3>{}{badge}</h3><div class=\"fix\">{fix}</div>", escape(&p.name))
        }
        Reason::NoClientCertificate { .. } => "<h3>No device certificate</h3><p>Use a managed device with its certificate installed.</p>".to_owned(),
        Reason::InvalidClientCertificate { detail } => format!("<h3>Unreadable device certificate</h3><p>{}</p>", escape(detail)),
        Reason::UnknownDevice => "<h3>Device not enrolled</h3><p>This device is not enrolled in Fleet. Enroll it, or ask your IT team for help.</p>".to_owned(),
        Reason::Vulnerability { cve } => format!("<h3>Vulnerable software ({})</h3><p>Update the affected software, then Refetch in Fleet Desktop.</p>", escape(cve)),
        Reason::LastSeenOver { limit, .. } => format!(
            "<h3>Not checked in for over {}</h3><p>Connect the device to the network and make sure Fleet Desktop is running.</p>",
            format_duration(*limit)
        ),
        Reason::StalePosture { .. } => "<h3>Device checks are out of date</h3><p>fleet-authz could not refresh the device checks recently. Try again in a few minutes.</p>".to_owned(),
        Reason::Requirement { requirement, expected, .. } => format!(
            "<h3>Device not allowed here</h3><p>This service requires a device whose {} is one of: {}.</p>",
            requirement.as_str(),
            escape(&expected.join(", "))
        ),
        Reason::BreakGlass { reason, .. } => format!("<h3>Emergency access</h3><p>{}</p>", escape(reason)),
        Reason::Bypass { expires_at, .. } => format!(
            "<h3>Bypass in use</h3><p>Until {}.</p>",
            humantime::format_rfc3339_seconds(*expires_at)
        ),
    }
}

/// Fleet's resolution text as paragraphs and lists: lines starting `1.` or
/// `1)` become an ordered list, `-`, `*` or `•` an unordered one, other
/// lines paragraphs; blank lines only separate.
pub fn resolution_html(text: &str) -> String {
    let mut out = String::new();
    let mut open: Option<&str> = None;
    for line in text.lines().map(str::trim) {
        let (list, item) = match list_item(line) {
            Some((list, item)) => (Some(list), item),
            None => (None, line),
        };
        if open != list {
            if let Some(tag) = open.take() {
                out.push_str(&format!("</{tag}>"));
            }
            if let Some(tag) = list {
                out.push_str(&format!("<{tag}>"));
                open = Some(tag);
            }
        }
        match list {
            Some(_) => out.push_str(&format!("<li>{}</li>", escape(item))),
            None if !item.is_empty() => out.push_str(&format!("<p>{}</p>", escape(item))),
            None => {}
        }
    }
    if let Some(tag) = open {
        out.push_str(&format!("</{tag}>"));
    }
    out
}

/// `("ol", rest)` for `1. rest` / `1) rest`, `("ul", rest)` for `- rest`.
fn list_item(line: &str) -> Option<(&'static str, &str)> {
    for bullet in ["- ", "* ", "• "] {
        if let Some(rest) = line.strip_prefix(bullet) {
            return Some(("ul", rest.trim_start()));
        }
    }
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    let rest = line.get(digits..)?;
    let rest = rest
        .strip_prefix(". ")
        .or_else(|| rest.strip_prefix(") "))?;
    (digits > 0 && digits <= 3).then(|| ("ol", rest.trim_start()))
}

/// "1 hour", "30 minutes", "90 seconds".
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = if secs >= 3600 && secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else if secs >= 60 && secs.is_multiple_of(60) {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// "just now", "5 minutes ago", "3 hours ago", "2 days ago".
fn ago(now: SystemTime, then: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    let (n, unit) = match secs {
        0..60 => return "just now".to_owned(),
        60..3600 => (secs / 60, "minute"),
        3600..86_400 => (secs / 3600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_keep_their_steps_and_never_pass_markup() {
        let text = "Turn on the firewall:\n1. Open System Settings\n2) Choose <Network>\n\n- then reboot\nDone & dusted";
        assert_eq!(
            resolution_html(text),
            "<p>Turn on the firewall:</p><ol><li>Open System Settings</li><li>Choose &lt;Network&gt;</li></ol>\
<ul><li>then reboot</li></ul><p>Done &amp; dusted</p>"
        );
        assert_eq!(resolution_html("2024. A year"), "<p>2024. A year</p>");
    }

    #[test]
    fn durations_and_ages_read_as_words() {
        assert_eq!(human_duration(Duration::from_secs(3600)), "1 hour");
        assert_eq!(human_duration(Duration::from_secs(1800)), "30 minutes");
        assert_eq!(human_duration(Duration::from_secs(2)), "2 seconds");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now, now - Duration::from_secs(300)), "5 minutes ago");
        assert_eq!(ago(now, now - Duration::from_secs(7200)), "2 hours ago");
        assert_eq!(ago(now, now - Duration::from_secs(86_400)), "1 day ago");
    }
}
