//! Certificate fingerprints: the key that joins a TLS client certificate to a
//! Fleet host. Fleet's `certificates` table reports SHA-1 over the DER bytes in
//! column `sha1`; we keep the 20 raw bytes and print lower-case hex.

use std::{fmt, str::FromStr};

/// SHA-1 over a certificate's DER bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 20]);

/// A fingerprint string that is not 40 hex digits (colons allowed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SHA-1 fingerprint: expected 40 hex digits, with or without colons")]
pub struct FingerprintError;

impl Fingerprint {
    /// Wraps 20 raw bytes.
    pub const fn from_bytes(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }

    /// The SHA-1 of `der`.
    pub fn of_der(der: &[u8]) -> Self {
        use sha1::Digest;
        Self(sha1::Sha1::digest(der).into())
    }

    /// The 20 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// Lower-case hex, no colons (Fleet's `columns.sha1` form).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first `n` hex digits, for logs.
    pub fn prefix(&self, n: usize) -> String {
        let mut s = self.to_hex();
        s.truncate(n);
        s
    }

    /// Parses hex in any case, with or without `:` separators, trimming space.
    pub fn parse(s: &str) -> Result<Self, FingerprintError> {
        let mut out = [0u8; 20];
        let mut digits = s.trim().bytes().filter(|b| *b != b':');
        for byte in out.iter_mut() {
            let hi = digits.next().and_then(hex_value).ok_or(FingerprintError)?;
            let lo = digits.next().and_then(hex_value).ok_or(FingerprintError)?;
            *byte = (hi << 4) | lo;
        }
        if digits.next().is_some() {
            return Err(FingerprintError);
        }
        Ok(Self(out))
    }
}

/// The value of one hex digit, any case.
pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_colon_and_upper_case_forms() {
        let plain = "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3";
        let colons = "A9:4A:8F:E5:CC:B1:9B:A6:1C:4C:08:73:D3:91:E9:87:98:2F:BB:D3";
        assert_eq!(Fingerprint::parse(plain), Fingerprint::parse(colons));
        assert_eq!(Fingerprint::parse(colons).unwrap().to_hex(), plain);
        assert_eq!(Fingerprint::of_der(b"test").to_hex(), plain);
    }

    #[test]
    fn rejects_wrong_lengths_and_digits() {
        assert_eq!(Fingerprint::parse(""), Err(FingerprintError));
        assert_eq!(Fingerprint::parse("a94a"), Err(FingerprintError));
        assert_eq!(
            Fingerprint::parse("a94a8fe5ccb19ba61c4c0873d391e987982fbbd3ff"),
            Err(FingerprintError)
        );
        assert_eq!(
            Fingerprint::parse("g94a8fe5ccb19ba61c4c0873d391e987982fbbd3"),
            Err(FingerprintError)
        );
    }
}
