//! Durations in configuration and policy files: `150ms`, `30s`, `15m`, `24h`,
//! `3d`, or combinations (`1h30m`), parsed by `humantime`; and the shared
//! way configuration and policy loaders report YAML errors by key; and
//! instants as Unix milliseconds, the one form every file and metric uses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds of `t` (negative before 1970), saturating.
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The instant `ms` Unix milliseconds after (or, negative, before) 1970.
pub fn from_unix_ms(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// Parses a human duration such as `30s`, `15m`, `24h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("not a duration ({e}); use forms like 150ms, 30s, 15m, 24h, 3d"))
}

/// Formats a duration compactly in hours, minutes, seconds and milliseconds
/// (`24h`, `1h30m`, `150ms`), the units people write in policy files.
/// Milliseconds show only below one second.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let (secs, ms) = (
        d.as_secs(),
        if d.as_secs() == 0 {
            d.subsec_millis()
        } else {
            0
        },
    );
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(ms), "ms"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

/// Splits a YAML deserialization error into (key path, problem). serde's
/// message starts with the key path when it knows one
/// (`routes[0].deny: unknown field ...`); otherwise the key is `(document)`.
pub fn split_yaml_error(error: &yaml_serde::Error) -> (String, String) {
    let msg = error.to_string();
    match msg.split_once(": ") {
        Some((key, rest)) if !key.contains(' ') => (key.to_owned(), rest.to_owned()),
        _ => ("(document)".to_owned(), msg),
    }
}

/// Serde adapter: `#[serde(with = "crate::duration::serde_human")]`.
pub mod serde_human {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Deserializes a human duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// Serializes as a human duration string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
}

/// Serde adapter for `Option<Duration>`.
pub mod serde_human_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserializes an optional human duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_common_forms() {
        assert_eq!(parse_duration("150ms"), Ok(Duration::from_millis(150)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(3 * 86_400)));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert_eq!(format_duration(Duration::from_secs(4 * 3600)), "4h");
        assert_eq!(
            format_duration(Duration::from_secs(86_400 + 90)),
            "24h1m30s"
        );
        assert_eq!(format_duration(Duration::from_millis(150)), "150ms");
    }
}
