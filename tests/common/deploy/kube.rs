//! Kubernetes manifests under test: kustomize renders an overlay (kubectl's
//! built-in kustomize, offline), and kubernetes-validate checks each object
//! against the schema of its kind and version for a given Kubernetes release.

use std::path::Path;
use std::process::Command;

use yaml_serde::Value;

use super::{parse_docs, str_at};
use crate::common::tools;

/// The Kubernetes release the manifests must be valid for: the oldest one
/// still commonly run that has GA gRPC probes and autoscaling/v2.
pub const KUBE_VERSION: &str = "1.31.0";

/// `kubectl kustomize DIR` output, or a panic with kustomize's error.
pub fn render(dir: &Path) -> String {
    let out = Command::new(tools::kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `render` parsed into objects.
pub fn render_objects(dir: &Path) -> Vec<Value> {
    parse_docs(&render(dir), &dir.display().to_string())
}

/// What kubernetes-validate said about one file.
pub struct SchemaReport {
    /// Exit status 0.
    pub ok: bool,
    /// Objects reported as `passed`.
    pub passed: usize,
    /// Lines that are not `INFO ... passed` (errors, and warnings such as
    /// "couldn't find schema", which the tool does not count as failures).
    pub problems: Vec<String>,
}

/// Runs `kubernetes_validate --strict` (unknown fields are errors) on `file`.
pub fn validate_schema(file: &Path) -> SchemaReport {
    let out = Command::new(tools::python())
        .args(["-m", "kubernetes_validate", "--strict", "-k", KUBE_VERSION])
        .arg(file)
        .env("PYTHONPATH", tools::kubernetes_validate())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (passed, problems): (Vec<&str>, Vec<&str>) = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .partition(|l| l.starts_with("INFO ") && l.contains(" passed for resource "));
    let mut problems: Vec<String> = problems.into_iter().map(str::to_owned).collect();
    problems.extend(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::to_owned),
    );
    SchemaReport {
        ok: out.status.success(),
        passed: passed.len(),
        problems,
    }
}

/// `kind/name` of an object.
pub fn id(obj: &Value) -> String {
    format!(
        "{}/{}",
        str_at(obj, "kind", "object"),
        str_at(obj, "metadata.name", "object")
    )
}

/// Whether `name` is `base` itself or `base` with kustomize's hash suffix.
pub fn is_generated(name: &str, base: &str) -> bool {
    name == base
        || name
            .strip_prefix(base)
            .and_then(|s| s.strip_prefix('-'))
            .is_some_and(|hash| {
                hash.len() == 10
                    && hash
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            })
}

/// The one object of `kind` whose name is `name` (hash suffix allowed).
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o.get("kind").and_then(Value::as_str) == Some(kind))
        .filter(|o| is_generated(str_at(o, "metadata.name", kind), name))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} named {name}, found {}",
        found.len()
    );
    found[0]
}

/// `metadata.labels` / `matchLabels` as sorted `key=value` pairs.
pub fn labels(map: Option<&Value>) -> Vec<String> {
    let mut out: Vec<String> = map
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{}={}", k.as_str().unwrap_or(""), v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Whether every `key=value` of `selector` is among `pod_labels`.
pub fn selects(selector: &[String], pod_labels: &[String]) -> bool {
    !selector.is_empty() && selector.iter().all(|s| pod_labels.contains(s))
}

/// `data[key]` of a ConfigMap or Secret (keys may contain dots, so not via
/// a dotted path).
pub fn data<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.get("data")
        .and_then(|d| d.get(key))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{} has no data.{key}", id(obj)))
}
