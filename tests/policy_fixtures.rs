//! Table-driven policy tests: each file in `tests/fixtures/policy/` holds a
//! policy, a posture (in the posture-file format) and cases with the expected
//! decision, route, reason kinds, policy ids and CVEs. Files under `invalid/`
//! must be refused with the error their first line names.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a failure panics the test"
)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use fleet_authz::{
    duration::parse_duration,
    policy::{RequestFacts, Subject, evaluate, parse_policy},
    posture::{HostId, HostPosture, PostureStore, parse_posture_file},
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    policy: String,
    posture: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// A host id, or `unknown`, `none`, `invalid`.
    device: yaml_serde::Value,
    #[serde(default)]
    context: HashMap<String, String>,
    #[serde(default)]
    authority: String,
    #[serde(default = "root")]
    path: String,
    posture_age: Option<String>,
    max_staleness: Option<String>,
    /// How long the host's failing policies have been failing.
    failing_for: Option<String>,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    allowed: Option<bool>,
    answer_allows: Option<bool>,
    route: Option<String>,
    kinds: Option<Vec<String>>,
    policies: Option<Vec<u64>>,
    cves: Option<Vec<String>>,
    status: Option<u16>,
}

fn root() -> String {
    "/".to_owned()
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy")
}

fn dur(s: &Option<String>) -> Option<Duration> {
    s.as_deref().map(|s| parse_duration(s).unwrap())
}

fn run_fixture(file: &str) -> usize {
    let path = fixture_dir().join(file);
    let fixture: Fixture = yaml_serde::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let policy = parse_policy(&fixture.policy, &path).unwrap_or_else(|e| panic!("{e}"));
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let hosts = parse_posture_file(&fixture.posture, false, now)
        .unwrap()
        .hosts;
    for case in &fixture.cases {
        // Publish through the store so failing_since is set as in production:
        // an earlier sync without these hosts, then the one that first saw
        // them fail `failing_for` ago.
        let store = PostureStore::new();
        let published_at = dur(&case.failing_for).map_or(now, |d| now - d);
        store.replace_all(Vec::new(), published_at - Duration::from_secs(60));
        store.replace_all(hosts.clone(), published_at);
        let host: Option<std::sync::Arc<HostPosture>>;
        let subject = match &case.device {
            yaml_serde::Value::Number(n) => {
                host = store.host(HostId(n.as_u64().unwrap()));
                Subject::Host(
                    host.as_deref()
                        .unwrap_or_else(|| panic!("{}: no host {n}", case.name)),
                )
            }
            yaml_serde::Value::String(s) if s == "unknown" => Subject::Unknown,
            yaml_serde::Value::String(s) if s == "none" => Subject::NoCertificate("no certificate"),
            yaml_serde::Value::String(s) if s == "invalid" => {
                Subject::InvalidCertificate("not PEM")
            }
            other => panic!("{}: bad device {other:?}", case.name),
        };
        let facts = RequestFacts {
            context: &case.context,
            authority: &case.authority,
            path: &case.path,
            posture_age: dur(&case.posture_age),
            max_staleness: dur(&case.max_staleness),
        };
        let route = policy.route(&facts);
        let d = evaluate(route, &facts, subject, now);
        let ctx = format!("{file}: {}: got {d:?}", case.name);
        let e = &case.expect;
        if let Some(allowed) = e.allowed {
            assert_eq!(d.allowed, allowed, "{ctx}");
        }
        if let Some(answer) = e.answer_allows {
            assert_eq!(d.answer_allows(), answer, "{ctx}");
        }
        if let Some(route) = &e.route {
            assert_eq!(&*d.route, route, "{ctx}");
        }
        if let Some(kinds) = &e.kinds {
            assert_eq!(&d.reason_kinds(), kinds, "{ctx}");
        }
        if let Some(ids) = &e.policies {
            let got: Vec<u64> = d
                .reasons
                .iter()
                .filter_map(|r| r.policy())
                .map(|p| p.policy_id)
                .collect();
            assert_eq!(&got, ids, "{ctx}");
        }
        if let Some(cves) = &e.cves {
            let got: Vec<String> = d
                .reasons
                .iter()
                .filter_map(|r| match r {
                    fleet_authz::policy::Reason::Vulnerability { cve } => Some(cve.to_string()),
                    _ => None,
                })
                .collect();
            assert_eq!(&got, cves, "{ctx}");
        }
        if let Some(status) = e.status {
            assert_eq!(d.deny_status, status, "{ctx}");
        }
    }
    fixture.cases.len()
}

#[test]
fn every_deny_operator() {
    assert_eq!(run_fixture("operators.yaml"), 14);
}

#[test]
fn every_match_kind() {
    assert_eq!(run_fixture("matching.yaml"), 12);
}

#[test]
fn every_mode_and_setting() {
    assert_eq!(run_fixture("modes.yaml"), 22);
}

#[test]
fn failing_policy_reason_carries_name_and_resolution() {
    let path = fixture_dir().join("operators.yaml");
    let fixture: Fixture = yaml_serde::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let policy = parse_policy(&fixture.policy, &path).unwrap();
    let now = SystemTime::now();
    let hosts = parse_posture_file(&fixture.posture, false, now)
        .unwrap()
        .hosts;
    let context = HashMap::new();
    let facts = RequestFacts {
        context: &context,
        authority: "",
        path: "/",
        posture_age: None,
        max_staleness: None,
    };
    let d = evaluate(policy.route(&facts), &facts, Subject::Host(&hosts[1]), now);
    let p = d.reasons[0].policy().unwrap();
    assert_eq!(
        (p.policy_id, &*p.name, p.critical),
        (12, "Gatekeeper enabled", true)
    );
    assert_eq!(p.resolution.as_deref(), Some("Turn on Gatekeeper"));
}

#[test]
fn invalid_policy_files_name_the_key_and_problem() {
    let dir = fixture_dir().join("invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .unwrap();
        let err = parse_policy(&text, &path)
            .expect_err(&path.display().to_string())
            .to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(
            err.contains(expect),
            "{}: expected `{expect}` in `{err}`",
            path.display()
        );
        checked += 1;
    }
    assert_eq!(checked, 15);
}

#[test]
fn demo_policy_and_routes_load() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/demo/policy.yaml");
    let policy = fleet_authz::policy::load_policy(&path).unwrap();
    let names: Vec<&str> = policy.routes.iter().map(|(_, r)| &*r.name).collect();
    assert_eq!(names, ["payroll", "wiki"]);
    assert_eq!(policy.cves().len(), 1);
    let payroll = policy.route_named("payroll").unwrap();
    assert_eq!(payroll.title.as_deref(), Some("Payroll"));
    let bypass = payroll.bypass.unwrap();
    assert_eq!(
        (bypass.duration, bypass.max_per_day),
        (Duration::from_secs(3600), 2)
    );
    assert_eq!(policy.default.bypass, None, "only payroll offers one");
    assert_eq!(
        policy.deny_page.support_text.as_deref(),
        Some("IT help desk")
    );
}
