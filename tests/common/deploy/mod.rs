//! Helpers for `tests/deploy_configs.rs` and `tests/deploy_kubernetes.rs`:
//! where the repository and its `deploy/` files are, YAML loading, and the
//! checks that run the external tools (Envoy, kubectl's kustomize,
//! kubernetes-validate; found or installed by `common::tools`).
//!
//! Nothing here knows the expected contents of a file: the assertions live in
//! the test functions, so a failing test names the file and what differs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure panics the test"
)]

pub mod dockerfile;
pub mod envoy;
pub mod fleet_authz;
pub mod istio;
pub mod kube;
pub mod pod;
pub mod prometheus_rule;

use std::path::{Path, PathBuf};

use yaml_serde::Value;

/// The repository root (the crate's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `deploy/` in the repository.
pub fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// A kustomize overlay under `deploy/kubernetes/overlays/`.
pub fn overlay(name: &str) -> PathBuf {
    deploy_dir().join("kubernetes/overlays").join(name)
}

/// The YAML files under `deploy/` of one kind.
pub fn files_of_kind(kind: FileKind) -> Vec<PathBuf> {
    yaml_files(&deploy_dir())
        .into_iter()
        .filter(|p| classify(p) == kind)
        .collect()
}

/// `path` relative to the repository root, for messages.
pub fn rel(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every YAML document in a string, empty documents skipped.
pub fn parse_docs(text: &str, origin: &str) -> Vec<Value> {
    use serde::Deserialize;
    yaml_serde::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: bad yaml: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// The single YAML document in a file.
pub fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = parse_docs(&text, &path.display().to_string());
    assert_eq!(
        docs.len(),
        1,
        "{}: expected one YAML document",
        path.display()
    );
    docs.remove(0)
}

/// Every `.yaml` / `.yml` file under `dir`, sorted, recursively.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    files_with_ext(dir, &["yaml", "yml"])
}

/// Every file under `dir` whose extension is one of `exts`, sorted.
pub fn files_with_ext(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// What a YAML file under `deploy/` is, judged by its top-level keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// An Envoy bootstrap (`static_resources`).
    Envoy,
    /// A fleet-authz config (`listen` or `policy_file`).
    FleetAuthzConfig,
    /// A fleet-authz route policy (`version` and `routes` or `defaults`).
    Policy,
    /// A kustomization.
    Kustomization,
    /// Kubernetes or Istio objects (`apiVersion` and `kind`).
    Manifest,
    /// Anything else (a posture file, a patch without kind...).
    Other,
}

/// Classifies one YAML file by its first document's top-level keys.
pub fn classify(path: &Path) -> FileKind {
    let text = std::fs::read_to_string(path).unwrap();
    let docs = parse_docs(&text, &path.display().to_string());
    let Some(first) = docs.first() else {
        return FileKind::Other;
    };
    let has = |k: &str| first.get(k).is_some();
    let kind = first.get("kind").and_then(Value::as_str);
    if has("static_resources") {
        FileKind::Envoy
    } else if matches!(kind, Some("Kustomization" | "Component")) {
        FileKind::Kustomization
    } else if has("apiVersion") && kind.is_some() {
        FileKind::Manifest
    } else if has("listen") || has("policy_file") {
        FileKind::FleetAuthzConfig
    } else if has("version") && (has("routes") || has("defaults")) {
        FileKind::Policy
    } else {
        FileKind::Other
    }
}

/// `value` at a dotted path of mapping keys (`spec.template.spec`).
pub fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// The string at a dotted path, or a panic naming the path and `origin`.
pub fn str_at<'a>(value: &'a Value, path: &str, origin: &str) -> &'a str {
    at(value, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{origin}: no string at {path}"))
}
