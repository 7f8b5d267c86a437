//! The `cluster:` section (DESIGN.md §8): where NATS is, the prefix of every
//! bucket, stream and subject, the shared HMAC key and the leader lease.
//! Checked once at load, so a bad block exits 64 naming the key. The key
//! itself is read here only to check it is there; it lives in [`Signer`]
//! (`sign.rs`), whose `Debug` prints nothing of it, and is never logged.
//!
//! [`Signer`]: super::sign::Signer

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::duration::serde_human;

/// Shortest lease: below a second, a busy NATS or a GC pause would make
/// leaders flap, and every replica renews or checks three times per TTL.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

/// Shortest accepted key: HMAC-SHA256 is as strong as its key up to 32 bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// `cluster:` as written in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `nats://host:4222` (or `tls://`); several servers separated by commas.
    pub nats_url: String,
    /// A NATS `.creds` file (JWT + nkey seed), when the account needs one.
    #[serde(default)]
    pub nats_credentials_file: Option<PathBuf>,
    /// A CA bundle for NATS's TLS; TLS is then required.
    #[serde(default)]
    pub nats_ca_file: Option<PathBuf>,
    /// Prefix of every bucket, stream and subject.
    #[serde(default = "default_name")]
    pub name: String,
    /// The shared HMAC-SHA256 key (required).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The leader lease; a lost leader is replaced within about this.
    #[serde(with = "serde_human", default = "default_lease_ttl")]
    pub lease_ttl: Duration,
}

fn default_name() -> String {
    "fleet-authz".to_owned()
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(15)
}

impl ClusterConfig {
    /// A config for `nats_url` with the defaults of DESIGN.md §8.
    pub fn new(nats_url: impl Into<String>, key_file: impl Into<PathBuf>) -> Self {
        Self {
            nats_url: nats_url.into(),
            nats_credentials_file: None,
            nats_ca_file: None,
            name: default_name(),
            key_file: Some(key_file.into()),
            lease_ttl: default_lease_ttl(),
        }
    }

    /// Checks what serde cannot, the key file included; the error is
    /// `(key, problem)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, problem: String| Err((format!("cluster.{key}"), problem));
        if self.nats_url.trim().is_empty() {
            return err("nats_url", "must name a NATS server".into());
        }
        for url in self.nats_url.split(',').map(str::trim) {
            let scheme = url.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("nats" | "tls")) || url.ends_with("://") {
                return err(
                    "nats_url",
                    format!("`{url}` is not a nats:// or tls:// URL (like nats://nats:4222)"),
                );
            }
        }
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return err(
                "name",
                format!(
                    "`{}` must be letters, digits, `-` or `_` (it prefixes buckets, streams and subjects)",
                    self.name
                ),
            );
        }
        if self.lease_ttl < MIN_LEASE_TTL {
            return err("lease_ttl", "must be at least 1s".into());
        }
        for (key, path) in [
            ("nats_credentials_file", &self.nats_credentials_file),
            ("nats_ca_file", &self.nats_ca_file),
        ] {
            if let Some(path) = path
                && let Err(e) = std::fs::metadata(path)
            {
                return err(key, format!("{}: cannot read: {e}", path.display()));
            }
        }
        let Some(path) = &self.key_file else {
            return err(
                "key_file",
                "required: a file holding the key every replica shares (at least 32 random bytes)"
                    .into(),
            );
        };
        read_key(path)
            .map(|_| ())
            .map_err(|problem| ("cluster.key_file".to_owned(), problem))
    }
}

/// The key bytes of `path`, surrounding whitespace trimmed (a Secret made
/// with `echo` ends in a newline). The message never quotes the key.
pub fn read_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let key = raw.trim_ascii();
    if key.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    if key.len() < MIN_KEY_BYTES {
        return Err(format!(
            "{}: the key has {} bytes; use at least {MIN_KEY_BYTES} (e.g. `head -c 32 /dev/urandom | base64`)",
            path.display(),
            key.len()
        ));
    }
    Ok(key.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(dir: &tempfile::TempDir, key: &str) -> ClusterConfig {
        let path = dir.path().join("key");
        std::fs::write(&path, key).unwrap();
        ClusterConfig::new("nats://127.0.0.1:4222", path)
    }

    #[test]
    fn a_good_block_passes_and_each_bad_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = with_key(&dir, &format!("{}\n", "k".repeat(32)));
        assert_eq!(good.validate(), Ok(()));
        type Change = dyn Fn(&mut ClusterConfig);
        let cases: [(&Change, &str, &str); 5] = [
            (
                &|c| c.nats_url = "http://x".into(),
                "cluster.nats_url",
                "not a nats://",
            ),
            (
                &|c| c.name = "a.b".into(),
                "cluster.name",
                "must be letters",
            ),
            (
                &|c| c.lease_ttl = Duration::from_millis(500),
                "cluster.lease_ttl",
                "at least 1s",
            ),
            (&|c| c.key_file = None, "cluster.key_file", "required"),
            (
                &|c| c.key_file = Some("/nonexistent/key".into()),
                "cluster.key_file",
                "cannot read",
            ),
        ];
        for (change, key, problem) in cases {
            let mut c = good.clone();
            change(&mut c);
            let (k, p) = c.validate().unwrap_err();
            assert_eq!(k, key);
            assert!(p.contains(problem), "{p}");
        }
    }

    #[test]
    fn an_empty_or_short_key_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_, p) = with_key(&dir, " \n").validate().unwrap_err();
        assert!(p.ends_with("the file is empty"), "{p}");
        let (_, p) = with_key(&dir, "short-secret").validate().unwrap_err();
        assert!(
            p.contains("has 12 bytes") && !p.contains("short-secret"),
            "{p}"
        );
    }
}
