//! The admin bearer token: read once from `admin.token_file`, kept only as
//! a SHA-256 digest, compared in constant time, never logged.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

/// Why the admin token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin.token_file: {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin.token_file: {path}: the file is empty")]
    Empty { path: PathBuf },
}

/// The admin bearer token. `Debug` never shows it.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8; 32]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Reads the token from `path` (surrounding whitespace trimmed).
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self::new(token))
    }

    /// A token from its value.
    pub fn new(token: &str) -> Self {
        // Keeping only a digest means equal-length comparison and no copy of
        // the secret lying around in memory dumps of this struct.
        Self(Arc::new(digest(token.as_bytes())))
    }

    /// True when `authorization` is `Bearer <token>`. Constant time in the
    /// presented value.
    pub fn verify(&self, authorization: Option<&str>) -> bool {
        let presented = authorization
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
            })
            .unwrap_or("");
        let presented = digest(presented.as_bytes());
        let diff = presented
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0 && !authorization.unwrap_or("").is_empty()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
