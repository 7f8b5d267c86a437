//! PLACEHOLDER until the fleet branch lands.
/// Snapshot configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    pub path: std::path::PathBuf,
}
