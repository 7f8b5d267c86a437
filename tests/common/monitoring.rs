//! The alert rules and the Grafana dashboard under `deploy/monitoring/`, for
//! `tests/monitoring.rs`: where they are, the metric names their PromQL
//! names, the series names a `/metrics` text declares, and promtool runs
//! (promtool from `common::tools`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use yaml_serde::Value;

use crate::common::{deploy, tools};

/// The prefix of every metric fleet-authz exports.
pub const PREFIX: &str = "fleet_authz_";

/// `deploy/monitoring/`.
pub fn monitoring_dir() -> PathBuf {
    deploy::deploy_dir().join("monitoring")
}

/// The plain rules file, for Prometheus' `rule_files`.
pub fn rules_file() -> PathBuf {
    monitoring_dir().join("fleet-authz.rules.yaml")
}

/// The same rules as a PrometheusRule in the kustomize base.
pub fn prometheus_rule_file() -> PathBuf {
    deploy::deploy_dir().join("kubernetes/base/prometheusrule.yaml")
}

/// The Grafana dashboard.
pub fn dashboard_file() -> PathBuf {
    monitoring_dir().join("grafana-dashboard.json")
}

/// One alerting rule, as written.
#[derive(Debug)]
pub struct Alert {
    pub name: String,
    pub expr: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// The alerting rules of a `groups:` list.
pub fn alerts(groups: &Value) -> Vec<Alert> {
    let strings = |v: Option<&Value>| -> BTreeMap<String, String> {
        v.and_then(Value::as_mapping)
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_owned(),
                    v.as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    groups
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .map(|r| Alert {
            name: r["alert"].as_str().unwrap().to_owned(),
            expr: r["expr"].as_str().unwrap().to_owned(),
            labels: strings(r.get("labels")),
            annotations: strings(r.get("annotations")),
        })
        .collect()
}

/// The metric names (`fleet_authz_*`) in a PromQL expression; quoted
/// strings (label values) are skipped.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            let mut escaped = false;
            for (_, q) in chars.by_ref() {
                if q == c && !escaped {
                    break;
                }
                escaped = q == '\\' && !escaped;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = start + c.len_utf8();
            while let Some(&(i, n)) = chars.peek() {
                if !(n.is_ascii_alphanumeric() || n == '_' || n == ':') {
                    break;
                }
                end = i + n.len_utf8();
                chars.next();
            }
            if expr[start..end].starts_with(PREFIX) {
                names.insert(expr[start..end].to_owned());
            }
        }
    }
    names
}

/// The series names a `/metrics` text declares, from its `# TYPE` lines
/// (a counter `x` is sampled as `x_total`, a histogram as `x_bucket`,
/// `x_sum`, `x_count`). A labelled family no event has touched yet has no
/// sample line, but is declared all the same.
pub fn exported_series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .flat_map(|(name, kind)| {
            let suffixes: &[&str] = match kind.trim() {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            suffixes.iter().map(move |s| format!("{name}{s}"))
        })
        .collect()
}

/// promtool's exit status and its whole output.
pub fn promtool(args: &[&str], files: &[&Path]) -> (bool, String) {
    let out = Command::new(tools::promtool())
        .args(args)
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The committed unit tests (`deploy/monitoring/tests/*.yaml`), parsed.
pub fn unit_tests() -> Vec<(PathBuf, Value)> {
    deploy::yaml_files(&monitoring_dir().join("tests"))
        .into_iter()
        .map(|p| {
            let v = deploy::read_yaml(&p);
            (p, v)
        })
        .collect()
}

/// Each unit test file completed for promtool and written into `out`: the
/// rules file by absolute path, and each expected alert's `description`
/// (static runbook text) taken from the rules, so the committed tests list
/// only what they are about: labels and the rendered summary.
pub fn completed_unit_tests(alerts: &[Alert], out: &Path) -> Vec<PathBuf> {
    let description = |name: &str| -> Value {
        let alert = alerts.iter().find(|a| a.name == name);
        let text = alert.and_then(|a| a.annotations.get("description"));
        Value::from(
            text.unwrap_or_else(|| panic!("no alert {name} with a description"))
                .as_str(),
        )
    };
    let mut written = Vec::new();
    for (path, mut test) in unit_tests() {
        test["rule_files"] = Value::Sequence(vec![Value::from(rules_file().to_str().unwrap())]);
        for case in test["tests"].as_sequence_mut().unwrap() {
            for check in case["alert_rule_test"].as_sequence_mut().unwrap() {
                let name = check["alertname"].as_str().unwrap().to_owned();
                for expected in check["exp_alerts"].as_sequence_mut().unwrap() {
                    expected["exp_annotations"]["description"] = description(&name);
                }
            }
        }
        let file = out.join(path.file_name().unwrap());
        std::fs::write(&file, yaml_serde::to_string(&test).unwrap()).unwrap();
        written.push(file);
    }
    written
}

/// The `expr` of every target of every panel, with the panel's title.
pub fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap_or("").to_owned()))
        })
        .collect()
}
