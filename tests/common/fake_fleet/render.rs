//! Fleet's JSON as the fake writes it: hosts, policies, software, streamed errors.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::spec::{
    FakeHost, FakePolicy, FleetVersion, HOST_ROW_LIMIT, ReportRows, STREAM_ERROR, State_,
};

/// `body` as Fleet streams it when it fails part-way through its first
/// array: the elements before the midpoint, then the error.
pub(super) fn broken_off(text: &str) -> String {
    let open = text.find('[').map_or(0, |i| i + 1);
    let cut = text[open..]
        .find("},{")
        .map(|_| {
            let half = open.max(text.len() / 2);
            text[half..].find("},{").map_or(open, |i| half + i + 1)
        })
        .unwrap_or(open);
    format!("{}],\"error\":\"{STREAM_ERROR}\"}}", &text[..cut])
}

pub(super) fn policy_json(p: &FakePolicy) -> Value {
    json!({"id": p.id, "name": p.name,
        "query": "SELECT 1 FROM disk_encryption WHERE user_uuid IS NOT '' AND filevault_status = 'on' LIMIT 1;",
        "description": format!("Checks that {} holds on every device in scope.", p.name), "critical": p.critical,
        "author_id": 1, "author_name": "Admin", "author_email": "admin@example.com", "team_id": p.team_id,
        "resolution": format!("Fix {}", p.name), "platform": "darwin,windows",
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        "passing_host_count": 0, "failing_host_count": 0, "host_count_updated_at": "2026-01-01T00:00:00Z"})
}

/// 400 software items (40 products × 10 versions), every ninth with CVEs.
pub(super) fn software_catalogue() -> Vec<String> {
    const PRODUCTS: [(&str, &str); 40] = [
        ("Google Chrome.app", "google"),
        ("Firefox.app", "mozilla"),
        ("Slack.app", "slack"),
        ("zoom.us.app", "zoom"),
        ("Microsoft Word.app", "microsoft"),
        ("Microsoft Excel.app", "microsoft"),
        ("Microsoft Teams.app", "microsoft"),
        ("Visual Studio Code.app", "microsoft"),
        ("Docker.app", "docker"),
        ("iTerm.app", "iterm2"),
        ("1Password 7.app", "agilebits"),
        ("Safari.app", "apple"),
        ("Xcode.app", "apple"),
        ("Keynote.app", "apple"),
        ("Numbers.app", "apple"),
        ("Pages.app", "apple"),
        ("openssl", "openssl"),
        ("curl", "haxx"),
        ("git", "git-scm"),
        ("python@3.12", "python"),
        ("node", "nodejs"),
        ("go", "golang"),
        ("wget", "gnu"),
        ("jq", "jqlang"),
        ("sqlite", "sqlite"),
        ("libxml2", "xmlsoft"),
        ("zlib", "zlib"),
        ("readline", "gnu"),
        ("gettext", "gnu"),
        ("pcre2", "pcre"),
        ("ca-certificates", "mozilla"),
        ("libyaml", "pyyaml"),
        ("gnupg", "gnupg"),
        ("nmap", "nmap"),
        ("htop", "htop"),
        ("tmux", "tmux"),
        ("vim", "vim"),
        ("bash", "gnu"),
        ("zsh", "zsh"),
        ("ffmpeg", "ffmpeg"),
    ];
    let mut items = Vec::with_capacity(400);
    for (k, (name, vendor)) in PRODUCTS.iter().enumerate() {
        for v in 0..10 {
            let id = 100 + k * 10 + v;
            let version = format!("{}.{}.{}", 1 + k % 9, v, (k * 7 + v) % 13);
            let source = if name.ends_with(".app") {
                "apps"
            } else {
                "homebrew_packages"
            };
            let vulns = if id % 9 == 0 {
                let cves: Vec<Value> = (0..1 + id % 2)
                    .map(|n| {
                        let cve = format!("CVE-2023-{:05}", id * 10 + n);
                        json!({"cve": cve, "details_link": format!("https://nvd.nist.gov/vuln/detail/{cve}"),
                            "cvss_score": 7.5, "epss_probability": 0.01537, "cisa_known_exploit": false,
                            "cve_published": "2023-01-01T12:32:00Z", "resolved_in_version": format!("{}.{}.99", 1 + k % 9, v)})
                    })
                    .collect();
                json!(cves)
            } else {
                Value::Null
            };
            let path = if source == "apps" {
                format!("/Applications/{name}")
            } else {
                format!("/opt/homebrew/Cellar/{name}/{version}")
            };
            items.push(json!({"id": id, "name": name, "version": version, "source": source, "browser": "",
                "generated_cpe": format!("cpe:2.3:a:{vendor}:{}:{version}:*:*:*:*:macos:*:*", name.to_lowercase().replace(' ', "_")),
                "vulnerabilities": vulns, "installed_paths": [path]}).to_string());
        }
    }
    items
}

/// Appends host `h` as Fleet's hosts list and host detail render it.
pub(super) fn write_host(
    out: &mut String,
    st: &State_,
    h: &FakeHost,
    policies: bool,
    software: bool,
) {
    let team_name = h
        .team_id
        .and_then(|t| st.teams.iter().find(|(id, _)| *id == t))
        .map(|(_, n)| n.clone());
    let failing = h.failing().len();
    let base = json!({
        "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-11-20T08:00:00Z", "id": h.id,
        "detail_updated_at": h.seen_time, "last_restarted_at": "2026-11-19T03:01:45Z",
        "software_updated_at": "2026-11-20T05:09:44Z", "label_updated_at": "2026-11-20T05:14:51Z",
        "policy_updated_at": "2026-11-20T07:33:15Z", "last_enrolled_at": "2026-02-26T22:33:12Z",
        "seen_time": h.seen_time, "refetch_requested": false, "hostname": h.name, "uuid": h.uuid,
        "platform": h.platform, "osquery_version": "5.12.0", "os_version": "macOS 14.1.2", "build": "23B92",
        "platform_like": "darwin", "code_name": "", "uptime": 8_305_000_000_000u64, "memory": 17_179_869_184u64,
    });
    // Two literals: one would pass `json!`'s macro recursion limit.
    let more = json!({
        "cpu_type": "arm64e", "cpu_subtype": "ARM64E", "cpu_brand": "Apple M2 Pro", "cpu_physical_cores": 10,
        "cpu_logical_cores": 10, "hardware_vendor": "Apple Inc.", "hardware_model": "Mac14,10",
        "hardware_version": "", "hardware_serial": h.serial,
        "computer_name": h.name, "display_name": h.name, "public_ip": "203.0.113.10",
        "primary_ip": "10.0.1.23", "primary_mac": "3c:22:fb:12:34:56", "distributed_interval": 10,
        "config_tls_refresh": 10, "logger_tls_period": 10, "status": "online", "display_text": h.name,
        "team_id": h.team_id, "team_name": team_name, "gigs_disk_space_available": 174.98,
        "percent_disk_space_available": 71, "gigs_total_disk_space": 494, "pack_stats": null, "additional": {},
        "issues": {"failing_policies_count": failing, "critical_vulnerabilities_count": 0, "total_issues_count": failing},
        "mdm": {"encryption_key_available": true, "enrollment_status": "On (automatic)", "name": "Fleet",
            "server_url": "https://fleet.example.com/mdm/apple/mdm"},
        "maintenance_window": {"starts_at": "2024-06-18T13:27:18\u{2212}04:00", "timezone": "America/New_York"},
    });
    let (Value::Object(mut base), Value::Object(more)) = (base, more) else {
        unreachable!("both are object literals")
    };
    base.extend(more);
    let base = Value::Object(base).to_string();
    out.push_str(&base[..base.len() - 1]);
    if policies {
        out.push_str(",\"policies\":[");
        let mut first = true;
        for (id, r) in &h.responses {
            if let Some(prefix) = st.policy_prefix.get(id) {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(prefix);
                out.push_str(",\"response\":\"");
                out.push_str(r);
                out.push_str("\"}");
            }
        }
        out.push(']');
    }
    if software {
        let vulns: Vec<Value> = h
            .cves
            .iter()
            .map(|c| json!({"cve": c, "details_link": ""}))
            .collect();
        let xz = json!({"id": 1, "name": "xz", "version": "5.6.0", "source": "homebrew_packages", "browser": "",
            "generated_cpe": "", "vulnerabilities": if vulns.is_empty() { Value::Null } else { json!(vulns) }});
        out.push_str(",\"software\":[");
        out.push_str(&xz.to_string());
        let max = st.software_per_host;
        if max > 0 && !st.software.is_empty() {
            let n = max / 2 + (h.id as usize * 37) % (max - max / 2 + 1);
            let start = (h.id as usize * 17) % st.software.len();
            for k in 0..n {
                out.push(',');
                out.push_str(&st.software[(start + k * 3) % st.software.len()]);
            }
        }
        out.push(']');
    }
    out.push('}');
}

/// One row of the certificate query's report.
enum Row<'a> {
    /// A host's row: its `columns.sha1`.
    Host(&'a FakeHost, String),
    /// A row a test added as it is.
    Extra(&'a Value),
}

/// The rows Fleet holds for the certificate query, by Fleet's rules: a host
/// that sends more than [`HOST_ROW_LIMIT`] rows is dropped whole, and a host
/// whose rows would take the report past the cap is left out (hosts are
/// taken in id order, as if they reported in that order). Also whether the
/// report is clipped: it holds as many rows as the cap.
fn stored_rows(st: &State_) -> (Vec<Row<'_>>, bool) {
    let cap = if st.cap_at_least_hosts {
        st.report_cap.max(st.hosts.len())
    } else {
        st.report_cap
    };
    let mut rows = Vec::new();
    for h in st.hosts.values().filter(|h| h.in_report) {
        let sent: Vec<String> = match st.report_rows {
            ReportRows::PerCertificate => h.certs.clone(),
            ReportRows::PerHost => vec![h.certs.join(",")],
        };
        if sent.len() > HOST_ROW_LIMIT || rows.len() + sent.len() > cap {
            continue;
        }
        rows.extend(sent.into_iter().map(|sha1| Row::Host(h, sha1)));
    }
    let clipped = rows.len() >= cap;
    (rows, clipped)
}

/// The report's body; `asked` is `(per_page, page)` when it is paged.
pub(super) fn report_body(st: &State_, id: u64, asked: Option<(usize, usize)>) -> String {
    let discarded = st.query.as_ref().is_some_and(|q| q.discard_data);
    let (mut rows, clipped) = match discarded {
        // Fleet keeps nothing for such a query and answers an empty report.
        true => (Vec::new(), false),
        false => stored_rows(st),
    };
    rows.retain(|r| match r {
        Row::Host(h, _) => st.visible(h),
        Row::Extra(_) => true,
    });
    if !discarded {
        rows.extend(st.extra_rows.iter().map(Row::Extra));
    }
    let (skip, take) = asked.map_or((0, rows.len()), |(per_page, page)| {
        (per_page * page, per_page)
    });
    let mut out = format!("{{\"query_id\":{id},");
    if st.version == FleetVersion::Renamed {
        let _ = write!(out, "\"report_id\":{id},");
    }
    let _ = write!(out, "\"report_clipped\":{clipped},\"results\":[");
    for (i, row) in rows.iter().skip(skip).take(take).enumerate() {
        if i > 0 {
            out.push(',');
        }
        match row {
            // Names and hex need no JSON escaping.
            Row::Host(h, sha1) => {
                let _ = write!(
                    out,
                    "{{\"host_id\":{},\"host_name\":\"{}\",\"last_fetched\":\"2026-11-20T08:00:00Z\",\
                    \"columns\":{{\"sha1\":\"{sha1}\",\"common_name\":\"{} device cert\",\"ca\":\"0\",\
                    \"issuer\":\"/CN=Corp Device CA\",\"not_valid_after\":\"1893456000\"}}}}",
                    h.id, h.name, h.name
                );
            }
            Row::Extra(value) => out.push_str(&value.to_string()),
        }
    }
    out.push(']');
    if asked.is_some() {
        let _ = write!(
            out,
            ",\"meta\":{{\"has_next_results\":{},\"has_previous_results\":{}}}",
            rows.len() > skip + take,
            skip > 0
        );
    }
    out.push('}');
    out
}
