//! Hot reload of the policy file and the posture file: on change (a watch on
//! each file's *directory*, so Kubernetes ConfigMap symlink swaps are seen) and
//! on demand (SIGHUP, admin). A bad new file keeps the last good one, logs the
//! error and counts it. Reloads whose bytes did not change are skipped.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use notify::Watcher;
use tokio::sync::{mpsc, watch};

use crate::{
    admin::SyncTrigger,
    decision::BoxFuture,
    policy::{Policy, parse_policy},
    posture::{PostureStore, parse_posture_file},
    telemetry::metrics::{Metrics, ResultLabels},
};

/// Called with each newly applied policy.
pub type PolicyHook = Box<dyn Fn(&Policy) + Send + Sync>;

/// What can be reloaded, and where the results go.
pub struct Reloader {
    pub policy_path: PathBuf,
    pub policy: Arc<ArcSwap<Policy>>,
    pub posture_path: Option<PathBuf>,
    pub store: Arc<PostureStore>,
    pub metrics: Arc<Metrics>,
    /// Hash of the last bytes applied, per file, to skip no-op events.
    seen: Mutex<[Option<u64>; 2]>,
    /// Counts reload attempts that applied or failed, so tests and admin
    /// callers can await "the watcher has acted" instead of sleeping.
    attempts: watch::Sender<u64>,
    /// Told about every policy applied (the Fleet poller's CVE list).
    pub on_policy: Option<PolicyHook>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("policy_path", &self.policy_path)
            .field("posture_path", &self.posture_path)
            .finish_non_exhaustive()
    }
}

/// The outcome of one reload attempt of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    Applied,
    Unchanged,
    Failed(String),
}

impl Reloader {
    /// A reloader for these files; the current contents count as applied.
    pub fn new(
        policy_path: PathBuf,
        policy: Arc<ArcSwap<Policy>>,
        posture_path: Option<PathBuf>,
        store: Arc<PostureStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let seen =
            [Some(&policy_path), posture_path.as_ref()].map(|p| p.and_then(|p| content_hash(p)));
        Self {
            policy_path,
            policy,
            posture_path,
            store,
            metrics,
            seen: Mutex::new(seen),
            attempts: watch::Sender::new(0),
            on_policy: None,
        }
    }

    /// A receiver whose value grows by one after every reload attempt that
    /// applied a file or failed (unchanged files do not count).
    pub fn attempts(&self) -> watch::Receiver<u64> {
        self.attempts.subscribe()
    }

    /// Reloads the policy file if its bytes changed.
    pub fn reload_policy(&self) -> ReloadOutcome {
        let outcome = self.reload_slot(0, &self.policy_path.clone(), |path, text| {
            let policy = parse_policy(text, path).map_err(|e| e.to_string())?;
            if let Some(hook) = &self.on_policy {
                hook(&policy);
            }
            self.policy.store(Arc::new(policy));
            Ok(())
        });
        self.count(&self.metrics.policy_reloads, &outcome, "policy");
        outcome
    }

    /// Reloads the posture file (if one is configured) if its bytes changed.
    pub fn reload_posture(&self) -> ReloadOutcome {
        let Some(path) = self.posture_path.clone() else {
            return ReloadOutcome::Unchanged;
        };
        let outcome = self.reload_slot(1, &path, |path, text| {
            let now = SystemTime::now();
            let json = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json"));
            let file = parse_posture_file(text, json, now)
                .map_err(|message| format!("{}: {message}", path.display()))?;
            self.store.replace_all(file.hosts, now);
            Ok(())
        });
        self.count(&self.metrics.posture_reloads, &outcome, "posture file");
        outcome
    }

    /// Both files; what SIGHUP does.
    pub fn reload_all(&self) -> (ReloadOutcome, ReloadOutcome) {
        (self.reload_policy(), self.reload_posture())
    }

    fn reload_slot(
        &self,
        slot: usize,
        path: &Path,
        apply: impl FnOnce(&Path, &str) -> Result<(), String>,
    ) -> ReloadOutcome {
        // Read once: the bytes hashed are the bytes applied.
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                return ReloadOutcome::Failed(format!(
                    "{}: (file): cannot read: {e}",
                    path.display()
                ));
            }
        };
        let hash = Some(hash_of(text.as_bytes()));
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen[slot] == hash {
            return ReloadOutcome::Unchanged;
        }
        match apply(path, &text) {
            Ok(()) => {
                seen[slot] = hash;
                ReloadOutcome::Applied
            }
            Err(e) => ReloadOutcome::Failed(e),
        }
    }

    fn count(
        &self,
        family: &prometheus_client::metrics::family::Family<
            ResultLabels,
            prometheus_client::metrics::counter::Counter,
        >,
        outcome: &ReloadOutcome,
        what: &str,
    ) {
        let result = match outcome {
            ReloadOutcome::Applied => {
                tracing::info!(file = what, "reloaded");
                "success"
            }
            ReloadOutcome::Unchanged => return,
            ReloadOutcome::Failed(error) => {
                tracing::error!(file = what, %error, "reload failed; keeping the last good version");
                "failure"
            }
        };
        family.get_or_create(&ResultLabels { result }).inc();
        self.attempts.send_modify(|n| *n += 1);
    }

    /// Watches the files' directories and reloads on change until `shutdown`.
    /// Events are coalesced for `settle` so an editor's or kubelet's burst of
    /// writes causes one reload.
    pub async fn watch(
        self: Arc<Self>,
        settle: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> notify::Result<()> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let names: Vec<std::ffi::OsString> = [Some(&self.policy_path), self.posture_path.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|p| p.file_name().map(ToOwned::to_owned))
            .collect();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // inotify also reports opens and reads, including our own
                // reads of the files: reacting to those would reload forever.
                // Other files in the directory (a log file, say) are not ours.
                if let Ok(event) = event
                    && !matches!(event.kind, notify::EventKind::Access(_))
                    && event.paths.iter().any(|p| concerns_us(p, &names))
                {
                    let _ = tx.send(());
                }
            })?;
        let mut dirs: Vec<PathBuf> = [Some(&self.policy_path), self.posture_path.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| parent_dir(p))
            .collect();
        dirs.dedup();
        for dir in &dirs {
            watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                got = rx.recv() => {
                    if got.is_none() {
                        return Ok(());
                    }
                    // Coalesce a burst: wait until no event arrives for `settle`.
                    while let Ok(Some(())) = tokio::time::timeout(settle, rx.recv()).await {}
                    let this = Arc::clone(&self);
                    // File reads and YAML parsing are blocking work.
                    let _ = tokio::task::spawn_blocking(move || this.reload_all()).await;
                }
            }
        }
    }
}

/// Forced sync for the posture-file source (`POST /v1/sync`, `Admin.Sync`):
/// re-read the file now.
#[derive(Debug)]
pub struct FileSync(pub Arc<Reloader>);

impl SyncTrigger for FileSync {
    fn sync_now(&self) -> BoxFuture<'_, Result<usize, String>> {
        let reloader = Arc::clone(&self.0);
        Box::pin(async move {
            let store = Arc::clone(&reloader.store);
            match tokio::task::spawn_blocking(move || reloader.reload_posture()).await {
                Ok(ReloadOutcome::Failed(error)) => Err(error),
                Ok(_) => Ok(store.host_count()),
                Err(error) => Err(format!("posture reload task failed: {error}")),
            }
        })
    }
}

/// True when a change to `path` may change one of the watched files:
/// the file itself (editors rename a temporary over it), or Kubernetes'
/// atomic ConfigMap update, which swaps `..data` and `..<timestamp>`
/// entries beside the files.
fn concerns_us(path: &Path, names: &[std::ffi::OsString]) -> bool {
    path.file_name().is_some_and(|name| {
        names.iter().any(|n| n == name) || name.as_encoded_bytes().starts_with(b"..")
    })
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn content_hash(path: &Path) -> Option<u64> {
    std::fs::read(path).ok().map(|bytes| hash_of(&bytes))
}

fn hash_of(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn only_the_watched_files_and_configmap_swaps_concern_the_watcher() {
        let names = vec!["policy.yaml".into(), "posture.json".into()];
        let yes = [
            "/etc/fa/policy.yaml",
            "/etc/fa/posture.json",
            "/etc/fa/..data",
            "/etc/fa/..2026_11_30_12_00_00.123",
        ];
        let no = [
            "/etc/fa/fleet-authz.log",
            "/etc/fa/.policy.yaml.swp",
            "/etc/fa/policy.yaml~",
            "/etc/fa/other.yaml",
        ];
        for p in yes {
            assert!(super::concerns_us(Path::new(p), &names), "{p}");
        }
        for p in no {
            assert!(!super::concerns_us(Path::new(p), &names), "{p}");
        }
    }
}
