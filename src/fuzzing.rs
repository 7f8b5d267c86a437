//! Entry points for the fuzz targets in `fuzz/` that the public API does not
//! already offer. Each calls the code the service runs, unchanged; nothing
//! else uses this module.

use serde::de::DeserializeOwned;

use crate::fleet::FleetError;

/// Reads a Fleet response body as `R` exactly as the client does after a
/// 200: a non-empty top-level `error` is a failure, then the typed model.
pub fn fleet_answer<R: DeserializeOwned>(
    endpoint: &'static str,
    body: &[u8],
) -> Result<R, FleetError> {
    crate::fleet::parse_answer(endpoint, body)
}
