//! Serde DTOs mirroring Fleet's JSON (see `tests/fixtures/fleet-api/` for the real
//! shapes). Only the fields we use, plus what parsing needs, are modelled, and
//! unknown fields are ignored, because Fleet adds fields in every release.
//!
//! Fleet's quirks are absorbed here, not downstream: `null` where a list is
//! expected reads as empty; a policy `response` of `""` is "not run"; fields
//! that only Fleet Premium sends (`critical`, CVSS scores) default when absent;
//! a time that is not RFC 3339 (Fleet's zero time, a Unicode minus in
//! `maintenance_window.starts_at`) reads as `None` rather than failing the
//! whole response. These types are public only so `tests/` can check them
//! against the fixtures; outside `fleet/` use the domain `HostPosture`.

mod catalog;
mod hosts;
mod policies;

pub use catalog::*;
pub use hosts::*;
pub use policies::*;

use std::time::SystemTime;

use serde::{Deserialize, Deserializer};

/// `null` or absent → `T::default()`.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An RFC 3339 time, or `None` when absent, null, before 1970 or unparseable.
fn lenient_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    let raw = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
    Ok(raw.and_then(|s| humantime::parse_rfc3339_weak(&s).ok()))
}
