//! The on-disk snapshot of the last good posture (DESIGN.md §2).

use std::path::PathBuf;

/// The `snapshot:` section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Where the snapshot file lives; its directory must be writable.
    pub path: PathBuf,
}
