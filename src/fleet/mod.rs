//! PLACEHOLDER until the fleet branch lands.
use std::time::Duration;
/// Fleet source configuration (placeholder).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct FleetConfig {
    #[serde(with = "crate::duration::serde_human", default = "ms")]
    pub max_staleness: Duration,
    #[serde(flatten)]
    pub rest: std::collections::BTreeMap<String, yaml_serde::Value>,
}
fn ms() -> Duration {
    Duration::from_secs(900)
}
impl FleetConfig {
    /// Placeholder validation.
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
