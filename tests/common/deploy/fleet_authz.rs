//! Runs `fleet-authz check-config` on the configs under `deploy/`. Paths that
//! only exist inside a container (Secrets, ConfigMap mounts, the snapshot
//! volume) are swapped for files in a temporary directory first; the policy
//! named by an absolute `policy_file` is the file of the same name next to
//! the config (how the kustomize base ships them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use yaml_serde::Value;

use super::repo_root;

/// A config copied into a temporary directory, ready for check-config.
pub struct Prepared {
    /// Keeps the directory alive.
    pub _dir: tempfile::TempDir,
    /// The rewritten config.
    pub config: PathBuf,
    /// The repository policy file it uses, if any.
    pub policy: Option<PathBuf>,
}

fn is_missing_absolute(path: &str) -> bool {
    Path::new(path).is_absolute() && !Path::new(path).exists()
}

/// Copies `source` with container-only paths rewritten (see module doc).
/// `edit` may change the parsed config before it is written.
pub fn prepare(source: &Path, edit: &dyn Fn(&mut Value)) -> Prepared {
    let dir = tempfile::tempdir().unwrap();
    let mut config: Value =
        yaml_serde::from_str(&std::fs::read_to_string(source).unwrap()).unwrap();
    let mut policy = None;
    if let Some(Value::String(p)) = config.get_mut("policy_file") {
        let local = if is_missing_absolute(p) {
            let name = Path::new(p.as_str()).file_name().unwrap();
            let beside = source.parent().unwrap().join(name);
            // A component's config uses the base's policy ConfigMap.
            let base = repo_root().join("deploy/kubernetes/base/config").join(name);
            if beside.exists() { beside } else { base }
        } else {
            repo_root().join(p.as_str())
        };
        assert!(
            local.exists(),
            "{}: policy_file {p} has no file {}",
            source.display(),
            local.display()
        );
        let copy = dir.path().join("policy.yaml");
        std::fs::copy(&local, &copy).unwrap();
        *p = copy.display().to_string();
        policy = Some(local);
    }
    for section in ["fleet", "admin"] {
        if let Some(Value::String(token)) = config
            .get_mut(section)
            .and_then(|s| s.get_mut("token_file"))
            && is_missing_absolute(token)
        {
            let file = dir.path().join(format!("{section}-token"));
            std::fs::write(&file, "test-token-not-a-secret").unwrap();
            *token = file.display().to_string();
        }
    }
    if let Some(Value::String(key)) = config
        .get_mut("cluster")
        .and_then(|c| c.get_mut("key_file"))
        && is_missing_absolute(key)
    {
        let file = dir.path().join("cluster-key");
        std::fs::write(&file, "test-cluster-key-not-a-secret-0123456789").unwrap();
        *key = file.display().to_string();
    }
    if let Some(Value::String(snapshot)) =
        config.get_mut("snapshot").and_then(|s| s.get_mut("path"))
    {
        *snapshot = dir.path().join("snapshot.pb").display().to_string();
    }
    edit(&mut config);
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml_serde::to_string(&config).unwrap()).unwrap();
    Prepared {
        _dir: dir,
        config: path,
        policy,
    }
}

/// `fleet-authz check-config --config FILE`, run from the repository root
/// (relative paths in the shipped configs are relative to it).
pub fn check_config(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleet-authz"))
        .arg("check-config")
        .arg("--config")
        .arg(config)
        .current_dir(repo_root())
        .output()
        .unwrap()
}
