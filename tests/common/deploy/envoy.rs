//! Envoy configs under test: the TLS files they name are swapped for
//! generated certificates (the real ones live in Secrets or are demo files),
//! then `envoy --mode validate` loads the config as Envoy would at start.
//! Envoy itself is found or installed by `common::tools`.

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_serde::Value;

use crate::common::certs::TestPki;
use crate::common::tools::envoy_bin;

use super::repo_root;

/// Keys of Envoy's TLS messages whose `{filename: ...}` is a certificate file.
const CERT_KEYS: [&str; 3] = ["certificate_chain", "private_key", "trusted_ca"];

/// Certificates for validate mode: the test PKI's CA and server
/// certificate, written as `ca.pem`, `server.pem` and `server-key.pem`.
pub struct DemoCerts {
    dir: tempfile::TempDir,
}

impl DemoCerts {
    /// Generates the PKI and writes its files.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().unwrap();
        TestPki::new().write_envoy_files(dir.path());
        Self { dir }
    }

    /// The file that stands in for the one under `key` (see [`CERT_KEYS`]).
    fn file_for(&self, key: &str) -> PathBuf {
        let name = match key {
            "certificate_chain" => "server.pem",
            "private_key" => "server-key.pem",
            _ => "ca.pem",
        };
        self.dir.path().join(name)
    }

    /// The directory holding the files, for writing configs next to them.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Every certificate `filename` in an Envoy config, as (key, filename).
pub fn cert_files(config: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    visit_cert_files(config, &mut |key, file| {
        out.push((key.to_owned(), file.clone()))
    });
    out
}

fn visit_cert_files(value: &Value, f: &mut dyn FnMut(&str, &String)) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                let key = k.as_str().unwrap_or_default();
                if let (true, Some(Value::String(file))) =
                    (CERT_KEYS.contains(&key), v.get("filename"))
                {
                    f(key, file);
                }
                visit_cert_files(v, f);
            }
        }
        Value::Sequence(seq) => seq.iter().for_each(|v| visit_cert_files(v, f)),
        _ => {}
    }
}

/// `config` with each certificate filename replaced by `replace(key, old)`.
pub fn map_cert_files(config: &Value, replace: &dyn Fn(&str, &str) -> String) -> Value {
    let mut out = config.clone();
    map_in_place(&mut out, replace);
    out
}

fn map_in_place(value: &mut Value, replace: &dyn Fn(&str, &str) -> String) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().unwrap_or_default().to_owned();
                if CERT_KEYS.contains(&key.as_str())
                    && let Some(Value::String(file)) = v.get_mut("filename")
                {
                    *file = replace(&key, file);
                }
                map_in_place(v, replace);
            }
        }
        Value::Sequence(seq) => seq.iter_mut().for_each(|v| map_in_place(v, replace)),
        _ => {}
    }
}

/// `config` with its certificate files pointing at `certs`.
pub fn with_demo_certs(config: &Value, certs: &DemoCerts) -> Value {
    map_cert_files(config, &|key, _| certs.file_for(key).display().to_string())
}

/// The documented substitution between the root `envoy.yaml` and a copy
/// deployed elsewhere: only the certificate directory differs, so each
/// certificate path is reduced to `<certs>/<file name>`.
pub fn normalise_cert_dirs(config: &Value) -> Value {
    map_cert_files(config, &|_, file| {
        let name = Path::new(file)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(file);
        format!("<certs>/{name}")
    })
}

/// Result of `envoy --mode validate`.
pub struct Validation {
    /// Whether Envoy exited 0.
    pub ok: bool,
    /// stdout and stderr together, for the assertion message.
    pub output: String,
}

/// Writes `config` into `certs`' directory and runs `envoy --mode validate`
/// on it from the repository root.
pub fn validate(config: &Value, name: &str, certs: &DemoCerts) -> Validation {
    let file = certs.dir().join(format!("{}.yaml", name.replace('/', "_")));
    std::fs::write(&file, yaml_serde::to_string(config).unwrap()).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&file)
        .current_dir(repo_root())
        .output()
        .unwrap();
    Validation {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The first place where `a` and `b` differ, as `path: a-value vs b-value`.
pub fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Mapping(ma), Value::Mapping(mb)) => {
            let keys = ma.keys().chain(mb.keys().filter(|k| !ma.contains_key(*k)));
            for key in keys {
                let name = format!("{path}.{}", key.as_str().unwrap_or("?"));
                match (ma.get(key), mb.get(key)) {
                    (Some(x), Some(y)) => {
                        if let Some(d) = first_difference(x, y, &name) {
                            return Some(d);
                        }
                    }
                    (x, y) => return Some(format!("{name}: {x:?} vs {y:?}")),
                }
            }
            None
        }
        (Value::Sequence(sa), Value::Sequence(sb)) if sa.len() == sb.len() => sa
            .iter()
            .zip(sb)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a:?} vs {b:?}")),
    }
}
