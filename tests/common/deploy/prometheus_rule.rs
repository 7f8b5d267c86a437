//! The `PrometheusRule` resource (`monitoring.coreos.com/v1`), written for
//! these tests from the Prometheus Operator's API reference: what a rules
//! file holds, every struct rejecting unknown keys, durations in Prometheus'
//! form. Kubernetes schemas do not cover the Operator's CRDs, so this stands
//! in for them, as [`super::istio`] does for Istio's.

#![allow(dead_code)] // Fields exist to be parsed, not all are read.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::istio::{self, Object};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusRuleSpec {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub name: String,
    pub interval: Option<String>,
    pub limit: Option<u64>,
    pub query_offset: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// An alerting rule (`alert`) or a recording rule (`record`), not both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub alert: Option<String>,
    pub record: Option<String>,
    pub expr: String,
    #[serde(rename = "for")]
    pub for_: Option<String>,
    pub keep_firing_for: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Parses one PrometheusRule and checks what serde cannot: the API
/// version and kind, one of `alert` / `record` per rule, unique group
/// names, and durations (`1h30m`, `90s`, `0`).
pub fn parse(text: &str) -> Result<Object<PrometheusRuleSpec>, String> {
    let rule = istio::parse::<PrometheusRuleSpec>(text)?;
    if (rule.api_version.as_str(), rule.kind.as_str())
        != ("monitoring.coreos.com/v1", "PrometheusRule")
    {
        return Err(format!(
            "not a PrometheusRule: {} {}",
            rule.api_version, rule.kind
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for group in &rule.spec.groups {
        if group.name.is_empty() || !names.insert(group.name.as_str()) {
            return Err(format!("group name {:?} empty or repeated", group.name));
        }
        for d in group.interval.iter().chain(&group.query_offset) {
            check_duration(d)?;
        }
        for r in &group.rules {
            if r.alert.is_some() == r.record.is_some() {
                return Err(format!(
                    "rule {:?}: exactly one of alert and record",
                    r.expr
                ));
            }
            for d in r.for_.iter().chain(&r.keep_firing_for) {
                check_duration(d)?;
            }
        }
    }
    Ok(rule)
}

/// A Prometheus duration: `0`, or number-unit pairs in the order y w d h m s ms.
fn check_duration(text: &str) -> Result<(), String> {
    const UNITS: [&str; 7] = ["y", "w", "d", "h", "m", "s", "ms"];
    if text == "0" {
        return Ok(());
    }
    let mut rest = text;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let after = &rest[digits..];
        let unit = UNITS[next_unit..]
            .iter()
            .rposition(|u| after.starts_with(u) && !(*u == "m" && after.starts_with("ms")))
            .map(|i| i + next_unit);
        match (digits, unit) {
            (1.., Some(i)) => {
                rest = &after[UNITS[i].len()..];
                next_unit = i + 1;
            }
            _ => return Err(format!("invalid duration {text:?}")),
        }
    }
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    Ok(())
}
