//! Client identity: turns what Envoy forwards (the peer certificate attribute,
//! `x-forwarded-client-cert`, RFC 9440 `client-cert`, or a proxy's own header)
//! into the client certificate's DER bytes and fingerprints.
//!
//! This module is pure: it sees header values as strings and knows nothing of
//! Envoy's protobuf types. The certificate comes from the first configured
//! source that is present; a present source that does not parse is an error
//! and never falls through to the next one, so a client cannot smuggle a
//! second certificate past a broken first one. The certificate itself is not
//! verified here (Envoy did the TLS handshake); we only check that the bytes
//! look like one DER certificate, so garbage is denied as invalid instead of
//! being looked up as an unknown device.

mod cache;
mod pem;
mod xfcc;

use std::{collections::HashMap, fmt, hash::BuildHasher};

use serde::de::{self, MapAccess, Visitor};

use crate::fingerprint::Fingerprint;

pub use cache::FingerprintCache;
pub use pem::{client_cert_header_to_der, url_pem_to_der};
pub use xfcc::{parse_xfcc, xfcc_certificate};

/// Header Envoy uses for the forwarded client certificate.
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";
/// RFC 9440 header carrying the DER certificate as a structured byte sequence.
pub const CLIENT_CERT_HEADER: &str = "client-cert";

/// Where a certificate may come from, in config order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Envoy's `attributes.source.certificate` (URL-encoded PEM).
    PeerCertificate,
    /// The `x-forwarded-client-cert` header, `Cert="<URL-encoded PEM>"`.
    Xfcc,
    /// The RFC 9440 `client-cert` header, `:<base64 DER>:`.
    ClientCert,
    /// A header (lower-case name) holding a URL-encoded PEM.
    Header(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerCertificate => f.write_str("peer certificate"),
            Self::Xfcc => f.write_str(XFCC_HEADER),
            Self::ClientCert => f.write_str(CLIENT_CERT_HEADER),
            Self::Header(name) => f.write_str(name),
        }
    }
}

const SOURCE_EXPECTED: &str = "peer_certificate, xfcc, client_cert or {header: <name>}";

impl<'de> serde::Deserialize<'de> for Source {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SourceVisitor)
    }
}

struct SourceVisitor;

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = Source;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an identity source: {SOURCE_EXPECTED}")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Source, E> {
        match v {
            "peer_certificate" => Ok(Source::PeerCertificate),
            "xfcc" => Ok(Source::Xfcc),
            "client_cert" => Ok(Source::ClientCert),
            other => Err(E::custom(format!(
                "unknown identity source {other:?}: expected {SOURCE_EXPECTED}"
            ))),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Source, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::custom(format!(
                "empty identity source: expected {SOURCE_EXPECTED}"
            )));
        };
        if key != "header" {
            return Err(de::Error::custom(format!(
                "unknown identity source key {key:?}: expected {SOURCE_EXPECTED}"
            )));
        }
        let name: String = map.next_value()?;
        if map.next_key::<String>()?.is_some() {
            return Err(de::Error::custom(
                "identity source {header: <name>} takes exactly one key",
            ));
        }
        let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(de::Error::custom(format!(
                "identity source header {name:?} is not a valid header name"
            )));
        }
        Ok(Source::Header(name.to_ascii_lowercase()))
    }
}

/// Which element of a multi-element `x-forwarded-client-cert` is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XfccElement {
    /// Exactly one element is allowed; more is refused.
    #[default]
    Only,
    /// The first element (the proxy nearest the client appended it first).
    First,
    /// The last element (appended by the proxy right in front of us).
    Last,
}

/// The `identity:` section of the config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Sources tried in order; the first present one decides.
    #[serde(default = "default_sources", deserialize_with = "non_empty_sources")]
    pub sources: Vec<Source>,
    /// Which XFCC element to trust.
    #[serde(default)]
    pub xfcc_element: XfccElement,
}

fn default_sources() -> Vec<Source> {
    vec![Source::PeerCertificate, Source::Xfcc, Source::ClientCert]
}

fn non_empty_sources<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Source>, D::Error> {
    let sources = <Vec<Source> as serde::Deserialize>::deserialize(d)?;
    if sources.is_empty() {
        // An empty list would deny every request as no_client_certificate.
        return Err(de::Error::custom("identity sources must not be empty"));
    }
    Ok(sources)
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            sources: default_sources(),
            xfcc_element: XfccElement::Only,
        }
    }
}

/// Longest certificate source value read, in bytes. A URL-encoded PEM leaf
/// is 2-5 KB and Envoy's default limit for all request headers together is
/// 60 KiB, so a longer value is refused as invalid, never decoded or cached.
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;

/// Read-only access to the request's headers by lower-case name.
pub trait Headers {
    /// The raw value of header `name` (lower-case), if sent. Bytes, not
    /// text: a client can send any byte, and a value that is not text must
    /// still count as present for identity.
    fn header_bytes(&self, name: &str) -> Option<&[u8]>;

    /// The value of header `name` as text; `None` when absent or not UTF-8.
    /// For tracing and content negotiation only, never for identity.
    fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

impl<S: BuildHasher> Headers for HashMap<String, String, S> {
    fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(String::as_bytes)
    }
}

/// The client certificate of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The DER bytes.
    pub der: Vec<u8>,
    /// SHA-1 over `der`: the key Fleet reports.
    pub sha1: Fingerprint,
    /// SHA-256 over `der`.
    pub sha256: [u8; 32],
    /// Where it was found.
    pub source: Source,
}

impl ClientCertificate {
    /// Fingerprints `der`, which was found in `source`.
    pub fn from_der(der: Vec<u8>, source: Source) -> Self {
        use sha2::Digest;
        Self {
            sha1: Fingerprint::of_der(&der),
            sha256: sha2::Sha256::digest(&der).into(),
            der,
            source,
        }
    }
}

/// Why no certificate could be taken from the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// None of the configured sources is present.
    #[error("no client certificate: none of the configured sources is present")]
    Missing,
    /// A source is present but does not hold a certificate.
    #[error("{}: {problem}", origin_name(.origin))]
    Invalid {
        /// The source; `None` when a decoding function was called directly.
        origin: Option<Source>,
        /// What is wrong with it.
        problem: Problem,
    },
}

fn origin_name(origin: &Option<Source>) -> String {
    origin
        .as_ref()
        .map_or_else(|| "certificate".to_owned(), Source::to_string)
}

impl IdentityError {
    /// True for [`IdentityError::Missing`] (deny reason `no_client_certificate`);
    /// every other error is `invalid_client_certificate`.
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Missing)
    }

    fn at(self, source: &Source) -> Self {
        match self {
            Self::Missing => Self::Missing,
            Self::Invalid { problem, .. } => Self::Invalid {
                origin: Some(source.clone()),
                problem,
            },
        }
    }
}

/// What is wrong with a present certificate source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `%` not followed by two hex digits.
    #[error("invalid percent-encoding at byte {at}")]
    PercentEncoding {
        /// Byte offset of the `%`.
        at: usize,
    },
    /// No `-----BEGIN CERTIFICATE-----` line.
    #[error("not a PEM certificate")]
    NotPem,
    /// A BEGIN line without a matching END line.
    #[error("PEM certificate has no END CERTIFICATE line")]
    UnterminatedPem,
    /// The PEM body is not standard base64.
    #[error("PEM certificate body is not valid base64")]
    PemBase64,
    /// The bytes are not one DER SEQUENCE holding a SEQUENCE.
    #[error("not a DER-encoded certificate")]
    NotDer,
    /// `client-cert` is not `:<base64>:`.
    #[error("not an RFC 9440 byte sequence")]
    NotByteSequence,
    /// More than one XFCC element while `xfcc_element` is `only`.
    #[error("more than one element and xfcc_element is only")]
    MultipleElements,
    /// The chosen XFCC element has two `Cert` keys.
    #[error("duplicate Cert key")]
    DuplicateCert,
    /// The chosen XFCC element has no `Cert` key.
    #[error("no Cert key in the chosen element")]
    MissingCert,
    /// A `"` inside an unquoted key or value.
    #[error("stray double quote at byte {at}")]
    StrayQuote {
        /// Byte offset of the quote.
        at: usize,
    },
    /// A quoted value without its closing quote.
    #[error("unterminated quoted value starting at byte {at}")]
    UnterminatedQuote {
        /// Byte offset of the opening quote.
        at: usize,
    },
    /// Something other than `;`, `,` or the end after a closing quote.
    #[error("unexpected character after quoted value at byte {at}")]
    AfterQuote {
        /// Byte offset of the character.
        at: usize,
    },
    /// A pair without `=`, or with an empty key (this covers empty elements).
    #[error("expected key=value at byte {at}")]
    ExpectedPair {
        /// Byte offset where the pair starts.
        at: usize,
    },
    /// The value is not UTF-8 text.
    #[error("not UTF-8 text (invalid byte at {at})")]
    NotUtf8 {
        /// Byte offset of the first invalid byte.
        at: usize,
    },
    /// The header is sent but holds nothing but whitespace.
    #[error("present but empty")]
    Empty,
    /// The value is longer than [`MAX_SOURCE_BYTES`].
    #[error("{len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Takes the certificate from the first configured source that is present.
/// A present source that does not hold a readable certificate (not UTF-8,
/// empty, oversized, badly encoded) is an error; it never falls through to
/// the next source, so a client cannot smuggle a second certificate past a
/// broken first one.
pub fn identify(
    cfg: &IdentityConfig,
    peer_certificate: &(impl AsRef<[u8]> + ?Sized),
    headers: &impl Headers,
) -> Result<ClientCertificate, IdentityError> {
    let (source, value) =
        select(cfg, peer_certificate.as_ref(), headers).ok_or(IdentityError::Missing)?;
    let der = decode(cfg, source, value)?;
    Ok(ClientCertificate::from_der(der, source.clone()))
}

/// The first configured source that is present, with its raw value. The
/// peer certificate is present when non-empty (protobuf cannot tell an
/// empty field from an unset one); a header is present when sent at all,
/// whatever its value. Callers that cache fingerprints key on this pair.
pub fn select<'a>(
    cfg: &'a IdentityConfig,
    peer_certificate: &'a [u8],
    headers: &'a impl Headers,
) -> Option<(&'a Source, &'a [u8])> {
    cfg.sources.iter().find_map(|source| {
        let value = match source {
            Source::PeerCertificate => Some(peer_certificate).filter(|v| !v.is_empty()),
            Source::Xfcc => headers.header_bytes(XFCC_HEADER),
            Source::ClientCert => headers.header_bytes(CLIENT_CERT_HEADER),
            Source::Header(name) => headers.header_bytes(name),
        };
        value.map(|v| (source, v))
    })
}

/// The certificate's DER from one source's raw value.
pub fn decode(
    cfg: &IdentityConfig,
    source: &Source,
    value: &[u8],
) -> Result<Vec<u8>, IdentityError> {
    readable(value)
        .map_err(|problem| IdentityError::Invalid {
            origin: None,
            problem,
        })
        .and_then(|text| match source {
            Source::Xfcc => xfcc_certificate(text, cfg.xfcc_element),
            Source::ClientCert => client_cert_header_to_der(text),
            Source::PeerCertificate | Source::Header(_) => url_pem_to_der(text),
        })
        .map_err(|e| e.at(source))
}

/// A present value as text, or why it cannot be read at all.
fn readable(value: &[u8]) -> Result<&str, Problem> {
    if value.len() > MAX_SOURCE_BYTES {
        return Err(Problem::TooLarge {
            len: value.len(),
            max: MAX_SOURCE_BYTES,
        });
    }
    let text = std::str::from_utf8(value).map_err(|e| Problem::NotUtf8 {
        at: e.valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Err(Problem::Empty);
    }
    Ok(text)
}

#[cfg(test)]
mod tests;
