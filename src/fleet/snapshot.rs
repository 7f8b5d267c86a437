//! The on-disk snapshot of the last good posture (DESIGN.md §2), so a restart
//! serves at once, also while Fleet is down.
//!
//! The file is one `fleet_authz.v1.Snapshot` message, length-delimited (a
//! varint byte count, then the message, as protobuf's `writeDelimitedTo`).
//! Plain protobuf has no end marker, so a file cut between two fields would
//! decode "successfully" with hosts missing; the length prefix turns every
//! truncation into an error. It is written atomically: a temporary file in the
//! same directory, fsync, rename over the old one, fsync the directory, so a
//! crash leaves either the old snapshot or the new one, never half of one.
//! Loading never panics: a truncated, corrupt or newer-version file is an error
//! and the caller starts without it.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use prost::Message;

use super::Interner;
use crate::{
    atomic_file::write_atomically,
    duration::{from_unix_ms, unix_ms},
    fingerprint::Fingerprint,
    posture::{HostId, HostPosture, PolicyResponse, PolicyResult, PostureStore, Team},
    proto::v1,
};

/// The format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The `snapshot:` section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Where the snapshot file lives; its directory must be writable.
    pub path: PathBuf,
}

/// A snapshot read back from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSnapshot {
    /// Every host, `failing_since` included.
    pub hosts: Vec<HostPosture>,
    /// When that posture was last fetched from Fleet.
    pub synced_at: SystemTime,
}

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file-system operation failed.
    #[error("snapshot {path}: cannot {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    /// The bytes are not a snapshot (truncated or corrupt).
    #[error("snapshot {path}: corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    /// Written by a build with another format version.
    #[error(
        "snapshot {path}: unknown format version {version} (this build reads version {SNAPSHOT_VERSION})"
    )]
    Version { path: PathBuf, version: u32 },
    /// The store holds no synced posture, so there is nothing worth saving.
    #[error("snapshot {path}: nothing to save: the posture was never synced")]
    NotSynced { path: PathBuf },
}

/// Writes the store's posture to `path`, atomically.
pub fn save(path: &Path, store: &PostureStore) -> Result<(), SnapshotError> {
    let synced_at = store.synced_at().ok_or_else(|| SnapshotError::NotSynced {
        path: path.to_owned(),
    })?;
    let hosts = store.all_hosts();
    let bytes = encode(hosts.iter().map(|h| &**h), synced_at);
    write_atomically(path, &bytes).map_err(|e| SnapshotError::Io {
        path: path.to_owned(),
        op: e.op,
        source: e.source,
    })
}

/// Reads a snapshot written by [`save`].
pub fn load(path: &Path) -> Result<LoadedSnapshot, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
        path: path.to_owned(),
        op: "read",
        source,
    })?;
    decode(&bytes).map_err(|e| match e {
        DecodeError::Version(version) => SnapshotError::Version {
            path: path.to_owned(),
            version,
        },
        DecodeError::Corrupt(message) => SnapshotError::Corrupt {
            path: path.to_owned(),
            message,
        },
    })
}

/// The file's bytes for these hosts.
pub fn encode<'a>(
    hosts: impl IntoIterator<Item = &'a HostPosture>,
    synced_at: SystemTime,
) -> Vec<u8> {
    let message = v1::Snapshot {
        version: SNAPSHOT_VERSION,
        synced_at_unix_ms: unix_ms(synced_at),
        hosts: hosts.into_iter().map(host_to_proto).collect(),
    };
    message.encode_length_delimited_to_vec()
}

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A version this build does not read.
    Version(u32),
    /// Truncated or corrupt.
    Corrupt(String),
}

/// Parses the file's bytes.
pub fn decode(bytes: &[u8]) -> Result<LoadedSnapshot, DecodeError> {
    let mut buf = bytes;
    let len = prost::encoding::decode_varint(&mut buf)
        .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if len != buf.len() as u64 {
        return Err(DecodeError::Corrupt(format!(
            "length prefix says {len} bytes but {} follow (truncated or trailing data)",
            buf.len()
        )));
    }
    let message = v1::Snapshot::decode(buf).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if message.version != SNAPSHOT_VERSION {
        return Err(DecodeError::Version(message.version));
    }
    if message.synced_at_unix_ms == 0 {
        return Err(DecodeError::Corrupt("synced_at is missing".into()));
    }
    let mut interner = Interner::default();
    let hosts = message
        .hosts
        .into_iter()
        .map(|h| host_from_proto(h, &mut interner))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LoadedSnapshot {
        hosts,
        synced_at: from_unix_ms(message.synced_at_unix_ms),
    })
}

fn host_to_proto(h: &HostPosture) -> v1::Host {
    v1::Host {
        id: h.id.0,
        uuid: h.uuid.clone(),
        hardware_serial: h.hardware_serial.clone(),
        display_name: h.display_name.clone(),
        team_id: h.team.as_ref().and_then(|t| t.id),
        team_name: h
            .team
            .as_ref()
            .map(|t| t.name.to_string())
            .unwrap_or_default(),
        platform: h.platform.to_string(),
        os_version: h.os_version.to_string(),
        last_seen_unix_ms: h.last_seen.map(unix_ms),
        policies: h
            .policies
            .iter()
            .map(|p| v1::PolicyResult {
                id: p.meta.id,
                name: p.meta.name.to_string(),
                response: match p.response {
                    PolicyResponse::NotRun => 0,
                    PolicyResponse::Pass => 1,
                    PolicyResponse::Fail => 2,
                },
                critical: p.meta.critical,
                resolution: p.meta.resolution.as_deref().unwrap_or_default().to_owned(),
                failing_since_unix_ms: p.failing_since().map(unix_ms),
            })
            .collect(),
        cves: h.cves.iter().map(|c| c.to_string()).collect(),
        fingerprints: h
            .fingerprints
            .iter()
            .map(|f| f.as_bytes().to_vec())
            .collect(),
    }
}

fn fingerprint(bytes: &[u8], what: &str) -> Result<Fingerprint, DecodeError> {
    let raw: [u8; 20] = bytes.try_into().map_err(|_| {
        DecodeError::Corrupt(format!(
            "{what}: fingerprint has {} bytes, not 20",
            bytes.len()
        ))
    })?;
    Ok(Fingerprint::from_bytes(raw))
}

fn host_from_proto(h: v1::Host, interner: &mut Interner) -> Result<HostPosture, DecodeError> {
    let what = format!("host {}", h.id);
    let policies = h
        .policies
        .into_iter()
        .map(|p| {
            let response = match p.response {
                0 => PolicyResponse::NotRun,
                1 => PolicyResponse::Pass,
                2 => PolicyResponse::Fail,
                other => {
                    return Err(DecodeError::Corrupt(format!(
                        "{what}: policy {}: response {other}",
                        p.id
                    )));
                }
            };
            let meta = interner.policy(p.id, &p.name, p.critical, &p.resolution);
            Ok(PolicyResult::new(meta, response)
                .with_failing_since(p.failing_since_unix_ms.map(from_unix_ms)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let team = match (h.team_id, h.team_name.as_str()) {
        (None, "") => None,
        (id, name) => Some(Team {
            id,
            name: interner.intern(name),
        }),
    };
    Ok(HostPosture {
        id: HostId(h.id),
        uuid: h.uuid,
        hardware_serial: h.hardware_serial,
        display_name: h.display_name,
        team,
        platform: interner.intern(&h.platform),
        os_version: interner.intern(&h.os_version),
        last_seen: h.last_seen_unix_ms.map(from_unix_ms),
        policies,
        cves: h.cves.iter().map(|c| interner.intern(c)).collect(),
        fingerprints: h
            .fingerprints
            .iter()
            .map(|f| fingerprint(f, &what))
            .collect::<Result<_, _>>()?,
    })
}

/// Loads a snapshot into `store` so a restart serves at once, also while
/// Fleet is down. A missing, truncated or corrupt snapshot is reported and
/// ignored: the first sync fills the store instead.
pub fn restore(path: &Path, store: &PostureStore) {
    if !path.exists() {
        tracing::info!(path = %path.display(), "no snapshot yet; waiting for the first Fleet sync");
        return;
    }
    match load(path) {
        Ok(loaded) => {
            tracing::info!(path = %path.display(), hosts = loaded.hosts.len(), "posture restored from snapshot");
            store.replace_all(loaded.hosts, loaded.synced_at);
        }
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "snapshot unusable; ignoring it")
        }
    }
}
