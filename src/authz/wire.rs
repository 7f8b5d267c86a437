//! The parts of Envoy's `CheckRequest` that fleet-authz reads, decoded
//! without copying.
//!
//! The generated `CheckRequest` decodes everything Envoy sends: addresses,
//! timestamps, method, scheme, TLS session, and the header map into a
//! `HashMap<String, String>` (two allocations and a SipHash insert per
//! header). A decision reads six things: the headers, `path`, `host`, `id`,
//! `source.certificate` and `context_extensions`. These messages declare
//! only those fields with Envoy's field numbers, so prost skips the rest on
//! the wire, and they hold strings as `Bytes` slices of the received buffer
//! (tonic's decode buffer hands them out without a copy). Headers stay a
//! list, looked up by a linear scan: Envoy sends a few dozen at most.
//!
//! Strings are UTF-8 on the wire by protobuf's rules, but Envoy passes on
//! header bytes as the client sent them. A header value that is not UTF-8 is
//! still present: identity reads raw bytes and refuses such a value (it never
//! falls through to the next source). Host, path and request id are read
//! with U+FFFD in place of invalid bytes, which keeps every prefix and
//! suffix match on their valid parts exactly as on the raw bytes.

use std::{borrow::Cow, collections::HashMap};

use bytes::Bytes;

use crate::identity::Headers;

/// `envoy.service.auth.v3.CheckRequest`, the fields fleet-authz reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    #[prost(map = "string, string", tag = "10")]
    pub context_extensions: HashMap<String, String>,
}

/// `AttributeContext.Peer`: only the certificate.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    /// URL-encoded PEM of the peer's certificate.
    #[prost(bytes = "bytes", tag = "5")]
    pub certificate: Bytes,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`: id, headers, path, host.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub id: Bytes,
    /// A protobuf map is a repeated key/value message on the wire.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Header>,
    #[prost(bytes = "bytes", tag = "4")]
    pub path: Bytes,
    #[prost(bytes = "bytes", tag = "5")]
    pub host: Bytes,
}

/// One entry of the `headers` map.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Header {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `bytes` as text, invalid UTF-8 replaced by U+FFFD (no copy when valid).
pub fn text(bytes: &[u8]) -> Cow<'_, str> {
    // `from_utf8` is the fast check; the lossy walk only for the rare rest.
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The header list of a lean request. Later entries win, as in a map.
#[derive(Debug, Clone, Copy)]
pub struct HeaderList<'a>(pub &'a [Header]);

impl Headers for HeaderList<'_> {
    fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.get_bytes(name)
    }
}

impl<'a> HeaderList<'a> {
    /// The raw value of header `name` (lower-case), borrowed from the request.
    pub fn get_bytes(self, name: &str) -> Option<&'a [u8]> {
        self.0
            .iter()
            .rev()
            .find(|h| h.key.as_ref() == name.as_bytes())
            .map(|h| h.value.as_ref())
    }

    /// The value of header `name` as text; `None` when absent or not UTF-8.
    pub fn get(self, name: &str) -> Option<&'a str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header as `(name, value)`, skipping any that is not UTF-8.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|h| {
            Some((
                std::str::from_utf8(&h.key).ok()?,
                std::str::from_utf8(&h.value).ok()?,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn decodes_what_fleet_authz_reads_from_a_full_envoy_request() {
        let mut full = crate::authz::request::build_check_request(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            &[("app".to_owned(), "payroll".to_owned())],
            "app.example.com",
            "/reports/q3",
            true,
        );
        let http = full
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .unwrap();
        http.scheme = "https".into();
        http.protocol = "HTTP/2".into();
        http.headers.insert("accept".into(), "text/html".into());
        let full_bytes = full.encode_to_vec();

        let lean = CheckRequest::decode(Bytes::from(full_bytes)).unwrap();
        let attrs = lean.attributes.unwrap();
        let http = attrs.request.unwrap().http.unwrap();
        assert_eq!(text(&http.id), "fleet-authz-cli");
        assert_eq!(text(&http.path), "/reports/q3");
        assert_eq!(text(&http.host), "app.example.com");
        let headers = HeaderList(&http.headers);
        assert_eq!(headers.header("accept"), Some("text/html"));
        assert_eq!(headers.header(":method"), Some("GET"));
        assert!(
            headers
                .header("x-forwarded-client-cert")
                .unwrap()
                .starts_with("Cert=\"-----BEGIN%20CERTIFICATE")
        );
        assert_eq!(headers.header("missing"), None);
        assert_eq!(headers.iter().count(), 6);
        assert_eq!(attrs.context_extensions["app"], "payroll");
        // XFCC mode: the peer certificate is left empty.
        assert!(attrs.source.unwrap().certificate.is_empty());
    }

    #[test]
    fn lean_and_generated_requests_give_the_same_facts() {
        use crate::authz::convert::CheckFacts;
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        for xfcc in [false, true] {
            let full = crate::authz::request::build_check_request(
                pem,
                &[("app".to_owned(), "hr".to_owned())],
                "hr.example.com",
                "/people",
                xfcc,
            );
            let lean = CheckRequest::decode(Bytes::from(full.encode_to_vec())).unwrap();
            let (a, b) = (
                CheckFacts::from_request(&full),
                CheckFacts::from_lean(&lean),
            );
            assert_eq!(a.peer_certificate, b.peer_certificate);
            assert_eq!(!a.peer_certificate.is_empty(), !xfcc);
            assert_eq!(
                (&a.authority, &a.path, &a.request_id, a.context),
                (&b.authority, &b.path, &b.request_id, b.context)
            );
            let headers = &full.attributes.as_ref().unwrap().request.as_ref().unwrap();
            for name in headers.http.as_ref().unwrap().headers.keys() {
                assert_eq!(a.header(name), b.header(name), "{name}");
            }
        }
    }

    #[test]
    fn a_header_value_that_is_not_utf8_is_present_as_bytes_and_absent_as_text() {
        let list = [
            Header {
                key: Bytes::from_static(b"x-bad"),
                value: Bytes::from_static(&[0xff, 0xfe]),
            },
            Header {
                key: Bytes::from_static(b"x-dup"),
                value: Bytes::from_static(b"first"),
            },
            Header {
                key: Bytes::from_static(b"x-dup"),
                value: Bytes::from_static(b"second"),
            },
        ];
        let headers = HeaderList(&list);
        assert_eq!(headers.header("x-bad"), None);
        assert_eq!(headers.header_bytes("x-bad"), Some(&[0xff, 0xfe][..]));
        assert_eq!(headers.header_bytes("x-none"), None);
        assert_eq!(headers.header("x-dup"), Some("second"));
        assert_eq!(text(&[b'/', b'a', 0xc3]), "/a\u{fffd}");
    }
}
