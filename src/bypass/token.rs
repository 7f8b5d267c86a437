//! The page token of a bypass offer: HMAC-SHA256 over the certificate
//! fingerprint, the route and the token's expiry, so the form on one deny
//! page works only for the device it was shown to, on that route, for ten
//! minutes.
//!
//! Written `<expiry in Unix ms>.<MAC, base64url>`. The key is 32 random bytes
//! drawn at start unless `bypass.key_file` names one; with several replicas
//! behind one Service, give them all the same key file, or a page served by
//! one is refused by another.

use std::{path::Path, time::Duration, time::SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{
    duration::{from_unix_ms, unix_ms},
    fingerprint::Fingerprint,
};

/// How long a page's offer may be taken up.
pub const TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

/// Fewest key bytes accepted from `bypass.key_file`.
const MIN_KEY_LEN: usize = 32;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bypass offer is malformed")]
    Malformed,
    #[error("the bypass offer has expired: reload the page")]
    Expired,
    #[error("the bypass offer was not made to this device on this route")]
    Forged,
}

/// Why the key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("bypass.key_file: {path}: cannot read: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("bypass.key_file: {path}: needs at least {MIN_KEY_LEN} bytes, has {len}")]
    Short {
        path: std::path::PathBuf,
        len: usize,
    },
}

/// The HMAC key. Never printed.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// 32 random bytes, for this process only.
    pub fn random() -> Self {
        Self(rand::random::<[u8; 32]>().to_vec())
    }

    /// The key in `path` (surrounding whitespace trimmed).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let key = bytes.trim_ascii();
        if key.len() < MIN_KEY_LEN {
            return Err(KeyError::Short {
                path: path.to_owned(),
                len: key.len(),
            });
        }
        Ok(Self(key.to_vec()))
    }

    /// A token for `fingerprint` on `route`, valid from `now` for [`TOKEN_TTL`].
    pub fn issue(&self, fingerprint: &Fingerprint, route: &str, now: SystemTime) -> String {
        let expiry = unix_ms(now + TOKEN_TTL);
        let mac = self.mac(fingerprint, route, expiry).finalize().into_bytes();
        let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac);
        format!("{expiry}.{mac}")
    }

    /// Checks `token` for `fingerprint` on `route` at `now`; returns when it
    /// was issued. The MAC is compared in constant time.
    pub fn verify(
        &self,
        token: &str,
        fingerprint: &Fingerprint,
        route: &str,
        now: SystemTime,
    ) -> Result<SystemTime, TokenError> {
        let (expiry, mac) = token.trim().split_once('.').ok_or(TokenError::Malformed)?;
        let expiry: i64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
        let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Malformed)?;
        self.mac(fingerprint, route, expiry)
            .verify_slice(&mac)
            .map_err(|_| TokenError::Forged)?;
        let expires_at = from_unix_ms(expiry);
        if now >= expires_at {
            return Err(TokenError::Expired);
        }
        Ok(expires_at - TOKEN_TTL)
    }

    fn mac(&self, fingerprint: &Fingerprint, route: &str, expiry_ms: i64) -> Hmac<Sha256> {
        // Any key length is accepted by HMAC: this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        // Length-prefixed fields: no two (route, expiry) pairs share bytes.
        mac.update(b"fleet-authz bypass v1\0");
        mac.update(fingerprint.to_hex().as_bytes());
        mac.update(&(route.len() as u64).to_be_bytes());
        mac.update(route.as_bytes());
        mac.update(&expiry_ms.to_be_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 20])
    }

    #[test]
    fn a_token_holds_for_its_device_and_route_for_ten_minutes() {
        let key = TokenKey::random();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = key.issue(&fp(1), "default", t0);
        let later = t0 + Duration::from_secs(599);
        assert_eq!(key.verify(&token, &fp(1), "default", later), Ok(t0));
        assert_eq!(
            key.verify(&token, &fp(2), "default", later),
            Err(TokenError::Forged)
        );
        assert_eq!(
            key.verify(&token, &fp(1), "payroll", later),
            Err(TokenError::Forged)
        );
        assert_eq!(
            key.verify(&token, &fp(1), "default", t0 + TOKEN_TTL),
            Err(TokenError::Expired)
        );
        assert_eq!(
            TokenKey::random().verify(&token, &fp(1), "default", later),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn a_token_with_a_moved_expiry_or_garbage_is_refused() {
        let key = TokenKey::random();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = key.issue(&fp(1), "default", t0);
        let (expiry, mac) = token.split_once('.').unwrap();
        let moved = format!("{}.{mac}", expiry.parse::<i64>().unwrap() + 3_600_000);
        assert_eq!(
            key.verify(&moved, &fp(1), "default", t0),
            Err(TokenError::Forged)
        );
        for bad in ["", "abc", "1.", "x.AAAA", "1.%%%"] {
            assert!(key.verify(bad, &fp(1), "default", t0).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_key_file_must_hold_enough_bytes_and_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "short\n").unwrap();
        let err = TokenKey::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("needs at least 32 bytes, has 5"), "{err}");
        std::fs::write(&path, format!("{}\n", "k".repeat(40))).unwrap();
        let key = TokenKey::from_file(&path).unwrap();
        assert_eq!(format!("{key:?}"), "TokenKey(<redacted>)");
    }
}
